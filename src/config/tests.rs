use super::*;

#[test]
fn defaults_are_valid() {
    assert_eq!(Config::default().check(), vec![]);
}

#[test]
fn parses_a_file_and_refuses_unknown_keys_with_position() {
    let text = "redis_url = \"redis://127.0.0.1:7000\"\nstreams = [\"orders\", \"payments\"]\nroll_age = \"10s\"\nroll_bytes = \"64MiB\"\n";
    let c = Config::from_toml(text, Path::new("eventide.toml")).unwrap();
    assert_eq!(c.streams, vec!["orders", "payments"]);
    assert_eq!(c.roll_age.0, Duration::from_secs(10));
    assert_eq!(c.roll_bytes.0, 64 << 20);

    let err = Config::from_toml("group = \"g\"\nstreems = [\"x\"]\n", Path::new("e.toml")).unwrap_err().to_string();
    assert!(err.contains("e.toml") && err.contains("line 2") && err.contains("streems"), "{err}");
    let err = Config::from_toml("block = \"2\"\n", Path::new("e.toml")).unwrap_err().to_string();
    assert!(err.contains("line 1") && err.contains("no unit"), "{err}");
}

#[test]
fn semantic_problems_name_the_key() {
    let c = Config { streams: vec![], roll_age: Dur::secs(120), start_id: "latest".into(), ..Config::default() };
    let keys: Vec<&str> = c.check().iter().map(|p| p.key).collect();
    assert_eq!(keys, vec!["streams", "start_id", "claim_min_idle"]);
    assert!(c.run_options().is_err());
    assert_eq!(line_of("a = 1\n  streams = []\n", "streams"), Some(2));
}

#[test]
fn the_example_file_parses_to_the_defaults() {
    let text = include_str!("../../eventide.example.toml");
    let cfg = Config::from_toml(text, Path::new("eventide.example.toml")).unwrap();
    assert_eq!(cfg, Config::default(), "eventide.example.toml shows every default");
}

#[test]
fn a_shard_gets_its_keys_its_writer_and_its_share_of_every_bound() {
    let c = Config { shards: 4, pipelines: String::new(), ..Config::default() };
    let o = c.run_options().unwrap();
    let s = o.for_shard(crate::names::ShardId { index: 2, count: 4 });
    assert_eq!(s.source.streams, ["events:{2}"]);
    assert_eq!(s.archive.writer, format!("{}-s2", o.archive.writer));
    assert_eq!(s.dedup_max_bytes, o.dedup_max_bytes / 4);
    assert_eq!(s.archive.max_buffered_bytes, o.archive.max_buffered_bytes / 4);
    assert_eq!(s.source.read_max_bytes, o.source.read_max_bytes / 4);
    // Pipelines over several shards: their windows are merged across shards.
    let with_pipelines = Config { shards: 4, ..Config::default() };
    assert_eq!(with_pipelines.run_options().unwrap().shards, 4);
}
