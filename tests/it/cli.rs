//! The binary's user-facing behaviour: `eventide validate` points at file, line and fix.

use std::process::Command;

fn validate(toml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("eventide.toml");
    std::fs::write(&file, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_eventide")).arg("validate").arg("--config").arg(&file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    (out.status.success(), text.replace(&file.display().to_string(), "FILE"))
}

#[test]
fn validate_accepts_a_good_file() {
    let (ok, text) = validate("streams = [\"orders\"]\ngroup = \"analytics\"\nroll_age = \"10s\"\n");
    assert!(ok, "{text}");
    assert!(text.contains("OK"), "{text}");
}

#[test]
fn validate_names_file_line_and_fix() {
    let (ok, text) =
        validate("streams = [\"orders\"]\nroll_age = \"2m\"\nclaim_min_idle = \"1m\"\nstart_id = \"latest\"\n");
    assert!(!ok);
    assert!(text.contains("FILE:3: claim_min_idle:") && text.contains("2 × roll_age"), "{text}");
    assert!(text.contains("FILE:4: start_id:") && text.contains("`0`, `$`"), "{text}");

    let (ok, text) = validate("streams = [\"orders\"]\nstreem = \"x\"\n");
    assert!(!ok);
    assert!(text.contains("FILE") && text.contains("line 2") && text.contains("unknown field `streem`"), "{text}");

    let (ok, text) = validate("block = \"5\"\n");
    assert!(!ok);
    assert!(text.contains("line 1") && text.contains("no unit"), "{text}");
}
