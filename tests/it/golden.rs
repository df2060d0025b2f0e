//! Golden tests of the window engine (`tests/golden/*.test`, `.slt` in spirit): a pipeline,
//! input events in arrival order, the expected table rows and late rows. Each case runs the
//! real path (decode → dedup → windows → Parquet in a temporary lake) and reads the tables
//! back with `eventide::query`, four times: with the micro-batches as written, one event per
//! batch, one batch, and with a restart from saved window state at each `---`.
//!
//! Format: sections `pipeline:` (TOML), `input:`, `output:` and `late:` (CSV, header first,
//! compared as sorted lines). Input lines are `[@<stream>] <id> <type> <time> [k=v …]` (time
//! `HH:MM:SS` after 2026-01-01T00:00:00Z; `k=v` go to `data`, numbers stay numbers; the
//! stream is `events` unless given), `---` (end of a micro-batch) or `idle <duration>` (that
//! much processing time passes with no input).
//! Times in the output print the same way, negative before the base.

use std::path::Path;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, TimestampMicrosecondType};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use eventide::lake_sql::LakeQuery;
use eventide::replay::Replayer;
use eventide::sink::lake::Lake;
use eventide::window::{Pipelines, plan, spec};

const BASE_US: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

struct Case {
    pipeline: String,
    input: Vec<String>,
    output: Vec<String>,
    late: Vec<String>,
}

fn parse_case(text: &str) -> Case {
    let mut case = Case { pipeline: String::new(), input: vec![], output: vec![], late: vec![] };
    let mut section = "";
    for line in text.lines() {
        match line.trim_end() {
            "pipeline:" | "input:" | "output:" | "late:" => {
                section = line.trim_end();
                continue;
            }
            _ => {}
        }
        if line.trim_start().starts_with('#') && section != "pipeline:" || line.trim().is_empty() {
            continue;
        }
        let l = line.trim().to_string();
        match section {
            "pipeline:" => {
                case.pipeline.push_str(line);
                case.pipeline.push('\n');
            }
            "input:" => case.input.push(l),
            "output:" => case.output.push(l),
            "late:" => case.late.push(l),
            _ => panic!("text before the first section: {line}"),
        }
    }
    case
}

/// `HH:MM:SS[.ffffff]` → µs after the base.
fn rel_time(s: &str) -> i64 {
    let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let parts: Vec<&str> = s.split(':').collect();
    let secs: f64 = parts[2].parse().unwrap();
    let us = (parts[0].parse::<i64>().unwrap() * 3600 + parts[1].parse::<i64>().unwrap() * 60) * 1_000_000
        + (secs * 1e6).round() as i64;
    if neg { -us } else { us }
}

fn fmt_time(us: i64) -> String {
    let d = us - BASE_US;
    let (sign, d) = if d < 0 { ("-", -d) } else { ("", d) };
    let (s, frac) = (d / 1_000_000, d % 1_000_000);
    let base = format!("{sign}{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
    if frac == 0 { base } else { format!("{base}.{frac:06}") }
}

fn event_json(line: &str) -> String {
    let mut it = line.split_whitespace();
    let (id, ty, t) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    let mut data = serde_json::Map::new();
    for kv in it {
        let (k, v) = kv.split_once('=').expect("k=v");
        let val = v.parse::<f64>().map(serde_json::Value::from).unwrap_or_else(|_| v.into());
        data.insert(k.to_string(), val);
    }
    let ts = eventide::generator::rfc3339(BASE_US + rel_time(t));
    serde_json::json!({"event_id": id, "event_type": ty, "timestamp": ts, "version": "1", "data": data}).to_string()
}

fn render(batches: &[RecordBatch]) -> Vec<String> {
    let mut rows = Vec::new();
    for b in batches {
        let fmts: Vec<Box<dyn Fn(usize) -> String>> = b
            .columns()
            .iter()
            .map(|c| -> Box<dyn Fn(usize) -> String> {
                if matches!(c.data_type(), DataType::Timestamp(_, _)) {
                    let a = c.as_primitive::<TimestampMicrosecondType>().clone();
                    Box::new(move |i| fmt_time(a.value(i)))
                } else {
                    let c = c.clone();
                    Box::new(move |i| {
                        let opts = FormatOptions::default().with_null("NULL");
                        ArrayFormatter::try_new(c.as_ref(), &opts).unwrap().value(i).to_string()
                    })
                }
            })
            .collect();
        for i in 0..b.num_rows() {
            rows.push(fmts.iter().map(|f| f(i)).collect::<Vec<_>>().join(","));
        }
    }
    rows
}

/// How a case's events are cut into micro-batches: as written, one per event, or all in
/// one (`idle` lines still end a batch); or as written with a restart at each cut (commit,
/// save the window state, continue in fresh pipelines restored from it). The results must
/// not depend on it.
#[derive(Debug, Clone, Copy)]
enum Cuts {
    AsWritten,
    EachEvent,
    One,
    RestartAt,
}

async fn run_case(path: &Path, cuts: Cuts) {
    let text = std::fs::read_to_string(path).unwrap();
    let case = parse_case(&text);
    let path = &path.with_extension(format!("test ({cuts:?} batches)"));
    let file = path.with_extension("toml");
    let spec = spec::parse(&case.pipeline, &file).unwrap_or_else(|p| panic!("{p:?}"));
    let compiled = plan::compile(&spec).await.unwrap_or_else(|p| panic!("{p}"));
    let pipelines = Pipelines::new(vec![(spec.clone(), compiled)]).unwrap();
    let tables = pipelines.output_schemas();
    // The streams the input reads, declared as a live run declares its configured streams.
    let mut streams: Vec<String> = Vec::new();
    for l in case.input.iter().filter(|l| *l != "---" && !l.starts_with("idle ")) {
        let s = l.strip_prefix('@').and_then(|l| l.split_once(' ')).map_or("events", |(s, _)| s);
        if !streams.iter().any(|x| x == s) {
            streams.push(s.to_string());
        }
    }
    let mut pipelines = pipelines;
    pipelines.declare_streams(&streams);
    let mut r = Replayer::new(pipelines, Duration::from_secs(3600), "events");
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    for line in &case.input {
        if line == "---" {
            if !matches!(cuts, Cuts::One) {
                r.end_batch().unwrap();
            }
            if matches!(cuts, Cuts::RestartAt) {
                r.pipelines.commit(&lake, "golden").await.unwrap();
                let state = r.pipelines.save_state().unwrap();
                let mut fresh = Pipelines::new(vec![(spec.clone(), plan::compile(&spec).await.unwrap())]).unwrap();
                assert_eq!(fresh.restore_state(&state).unwrap(), vec![spec.name.clone()]);
                fresh.declare_streams(&streams);
                r.pipelines = fresh;
            }
        } else if let Some(d) = line.strip_prefix("idle ") {
            r.end_batch().unwrap();
            let d = eventide::config::Dur::parse(d).unwrap().0;
            r.pipelines.on_tick(Instant::now() + d).unwrap();
        } else if let Some((stream, line)) = line.strip_prefix('@').and_then(|l| l.split_once(' ')) {
            r.feed_from(&event_json(line), stream, || (file.clone(), 0)).unwrap();
            if matches!(cuts, Cuts::EachEvent) {
                r.end_batch().unwrap();
            }
        } else {
            r.feed(&event_json(line), || (file.clone(), 0)).unwrap();
            if matches!(cuts, Cuts::EachEvent) {
                r.end_batch().unwrap();
            }
        }
    }
    r.finish(&lake, "golden").await.unwrap();
    let q = LakeQuery::open(&lake, &tables).await.unwrap();
    let name = &spec.name;
    let (_, out) = q.sql(&format!("SELECT * EXCEPT (window_date) FROM {name}")).await.unwrap();
    let mut got = render(&out);
    let header = tables[0].1.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(",");
    got.sort();
    let mut want: Vec<String> = case.output.iter().skip(1).cloned().collect();
    want.sort();
    assert_eq!(case.output.first().map(String::as_str), Some(header.as_str()), "{}: output header", path.display());
    assert_eq!(got, want, "{}: output rows", path.display());

    let late_sql = "SELECT window_start, window_end, event_id FROM late_events";
    let mut late = match q.sql(late_sql).await {
        Ok((_, b)) => render(&b),
        Err(_) => Vec::new(), // no late file written
    };
    late.sort();
    let mut want_late: Vec<String> = case.late.iter().skip(1).cloned().collect();
    want_late.sort();
    assert_eq!(late, want_late, "{}: late rows", path.display());
}

#[tokio::test]
async fn golden_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "test"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "golden cases missing in {}", dir.display());
    for f in files {
        for cuts in [Cuts::AsWritten, Cuts::EachEvent, Cuts::One, Cuts::RestartAt] {
            run_case(&f, cuts).await;
        }
    }
}
