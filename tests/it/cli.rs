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
    let (ok, text) = validate("streams = [\"orders\"]\notlp_endpoint = \"localhost:4318\"\notlp_sample_ratio = 2.0\n");
    assert!(!ok);
    assert!(text.contains("FILE:2: otlp_endpoint:") && text.contains("http://"), "{text}");
    assert!(text.contains("FILE:3: otlp_sample_ratio:") && text.contains("0..=1"), "{text}");
}

fn validate_pipelines(files: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_eventide"))
        .args(["validate", "--config", "/dev/null", "--pipelines"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    (out.status.success(), text.replace(&format!("{}/", dir.path().display()), ""))
}

#[test]
fn validate_accepts_the_example_pipelines() {
    let out = Command::new(env!("CARGO_BIN_EXE_eventide"))
        .args(["validate", "--config", "/dev/null", "--pipelines"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for name in ["revenue_per_minute", "checkout_funnel", "customer_sessions", "payment_failure_rate"] {
        assert!(text.contains(&format!("OK (pipeline {name},")), "{name}: {text}");
    }
    assert!(text.contains("window_start, window_end, event_type, events, revenue"), "{text}");
}

#[test]
fn validate_points_at_pipeline_file_line_and_fix() {
    let window = "window = { kind = \"tumbling\", size = \"1m\" }\n";
    let (ok, text) = validate_pipelines(&[
        (
            "bad_column.toml",
            &format!(
                "{window}fields = {{ amount = \"double\" }}\nsql = \"\"\"\nSELECT event_type,\n  sum(amout) AS revenue\nFROM events GROUP BY event_type\n\"\"\"\n"
            ),
        ),
        ("bad_syntax.toml", &format!("{window}sql = \"SELEC count(*) FROM events\"\n")),
        ("no_size.toml", "window = { kind = \"tumbling\" }\nsql = \"SELECT count(*) AS n FROM events\"\n"),
        ("bad_unit.toml", &format!("{window}watermark = \"5 parsecs\"\nsql = \"SELECT count(*) AS n FROM events\"\n")),
        ("typo.toml", &format!("{window}windw = 1\nsql = \"SELECT count(*) AS n FROM events\"\n")),
        (
            "hop.toml",
            "window = { kind = \"hopping\", size = \"10m\", slide = \"3m\" }\nsql = \"SELECT count(*) AS n FROM events\"\n",
        ),
        (
            "order.toml",
            &format!("{window}sql = \"SELECT event_type, count(*) AS n FROM events GROUP BY event_type ORDER BY n\"\n"),
        ),
        (
            "bad_type.toml",
            &format!("{window}fields = {{ amount = \"money\" }}\nsql = \"SELECT count(*) AS n FROM events\"\n"),
        ),
        ("events.toml", &format!("{window}sql = \"SELECT count(*) AS n FROM events\"\n")),
        (
            "session_updates.toml",
            "window = { kind = \"session\", gap = \"30m\" }\nemit = \"updates\"\nsql = \"SELECT count(*) AS n FROM events\"\n",
        ),
        ("bad_emit.toml", &format!("{window}emit = \"sometimes\"\nsql = \"SELECT count(*) AS n FROM events\"\n")),
    ]);
    assert!(!ok, "{text}");
    let has = |needle: &str| assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    has("bad_column.toml:5: ");
    has("amout");
    has("bad_syntax.toml:2: ");
    has("no_size.toml:1: a tumbling window needs `size`");
    has("bad_unit.toml:2: ");
    has("unknown unit");
    has("typo.toml:2: ");
    has("unknown field `windw`");
    has("hop.toml:1: hopping window size must be a multiple of slide");
    has("order.toml:2: ORDER BY is not supported");
    has("bad_type.toml:2: field `amount`: unknown type \"money\"");
    has("events.toml: \"events\" is reserved");
    has("session_updates.toml:2: emit = \"updates\" works with tumbling and hopping windows");
    has("bad_emit.toml:2: unknown variant `sometimes`, expected `final` or `updates`");
}

#[test]
fn replay_then_query_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let pipes = dir.path().join("pipes");
    std::fs::create_dir(&pipes).unwrap();
    std::fs::write(
        pipes.join("per_type.toml"),
        "window = { kind = \"tumbling\", size = \"1m\" }\nwatermark = \"0s\"\nfields = { amount = \"double\" }\n\
         sql = \"SELECT event_type, count(*) AS n, sum(amount) AS total FROM events GROUP BY event_type\"\n",
    )
    .unwrap();
    let ev = |id: &str, ty: &str, t: &str, amount: u32| {
        format!(
            r#"{{"event_id":"{id}","event_type":"{ty}","timestamp":"2026-01-01T00:{t}Z","data":{{"amount":{amount}}}}}"#
        )
    };
    let lines = [
        ev("a", "order.created", "00:05", 10),
        ev("b", "order.created", "00:30", 5),
        "{\"event_id\": \"c\",".to_string(),
        ev("a", "order.created", "00:05", 10),
        ev("d", "payment.completed", "01:10", 7),
    ];
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let lake = dir.path().join("lake");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_eventide")).args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {text}");
        text.replace(&format!("{}/", dir.path().display()), "")
    };
    let (p, l) = (pipes.to_str().unwrap(), lake.to_str().unwrap());
    let text = run(&["replay", input.to_str().unwrap(), "--pipelines", p, "--lake", l]);
    assert!(text.contains("replayed 5 lines from 1 file(s)"), "{text}");
    assert!(text.contains("3 accepted, 1 duplicates, 1 rejected"), "{text}");
    assert!(text.contains("rejected events.jsonl:3: invalid_json"), "{text}");
    let csv = run(&[
        "query",
        "--pipelines",
        p,
        "--lake",
        l,
        "--format",
        "csv",
        "SELECT window_start, event_type, n, total FROM per_type ORDER BY window_start, event_type",
    ]);
    assert_eq!(
        csv.trim(),
        "window_start,event_type,n,total\n2026-01-01T00:00:00Z,order.created,2,15.0\n2026-01-01T00:01:00Z,payment.completed,1,7.0"
    );
    let json = run(&["query", "--pipelines", p, "--lake", l, "--format", "json", "SELECT count(*) AS n FROM per_type"]);
    assert_eq!(json.trim(), r#"{"n":2}"#);
}

/// Every `EVENTIDE_*` variable the Kubernetes example sets is one `eventide run` reads.
#[test]
fn the_kubernetes_example_sets_only_real_settings() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_eventide")).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let yaml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/k8s/eventide.yaml")).unwrap();
    let vars: Vec<&str> = yaml
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- name: "))
        .map(|v| v.split('#').next().unwrap_or_default().trim())
        .filter(|v| v.starts_with("EVENTIDE_"))
        .collect();
    assert!(vars.len() >= 10, "{vars:?}");
    for v in vars {
        // (`EVENTIDE_REDIS_PASSWORD` is no flag: the help names it in the text.)
        assert!(help.contains(v), "{v} is not a setting of `eventide run`:\n{help}");
    }
}

/// `--log-format json`: every log line is one JSON object (level, message and the event's
/// fields at the top). The filter is `--log`, else `EVENTIDE_LOG`, else `RUST_LOG`. A
/// missing pipelines directory is warned about.
#[test]
fn logs_as_json_lines_and_honours_rust_log() {
    let redis = crate::support::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let run = |env: &[(&str, &str)], extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_eventide"));
        c.args(["run", "--config", "/dev/null", "--redis-url", &redis.url(), "--stream", "quiet", "--http-addr", ""])
            .args(["--exit-when-idle", "300ms", "--block", "50ms", "--lake"])
            .arg(dir.path())
            .args(extra)
            .env_remove("EVENTIDE_LOG")
            .env_remove("RUST_LOG")
            .envs(env.iter().copied());
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{env:?} {extra:?}: {err}");
        err
    };
    let json = run(&[], &["--log-format", "json", "--pipelines", "/no/such/pipelines"]);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object: {l}: {e}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["level"] == "INFO" && l["message"] == "Starting pipeline." && l["group"] == "eventide"),
        "{json}"
    );
    // A pipelines directory that is not there is said, not silently taken as none.
    assert!(
        lines.iter().any(|l| l["level"] == "WARN"
            && l["message"].as_str().is_some_and(|m| m.starts_with("No pipelines directory here"))
            && l["pipelines"] == "/no/such/pipelines"),
        "{json}"
    );
    assert!(!run(&[("RUST_LOG", "warn")], &[]).contains("Starting pipeline"), "RUST_LOG=warn shows info lines");
    let both = run(&[("RUST_LOG", "warn"), ("EVENTIDE_LOG", "info")], &[]);
    assert!(both.contains("Starting pipeline"), "EVENTIDE_LOG comes before RUST_LOG: {both}");
    let flag = run(&[("EVENTIDE_LOG", "info")], &["--log", "warn"]);
    assert!(!flag.contains("Starting pipeline"), "--log comes first: {flag}");
}

/// A second instance on a host where the API's address is taken says which flag to change.
#[test]
fn an_api_address_in_use_names_the_flag_to_change() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let lake = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_eventide"))
        .args(["run", "--config", "/dev/null", "--redis-url", "redis://127.0.0.1:1", "--pipelines", ""])
        .args(["--http-addr", &addr, "--lake"])
        .arg(lake.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("in use") && text.contains("--http-addr") && text.contains(&addr), "{text}");
}
