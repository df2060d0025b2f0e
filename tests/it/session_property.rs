//! Property test of session windows: the engine (sessions as slots of groups accumulators,
//! bridged and closed in the bookkeeping, folded and evaluated by a compaction per batch)
//! against a naive model that keeps each key's sessions in a list and aggregates by hand.
//!
//! For random inputs (out-of-order events that bridge sessions, very late events, rows that
//! WHERE filters out but that still move the watermark, duplicates, HAVING), random gaps,
//! out-of-orderness and lateness, random micro-batch cuts, live views and restarts from
//! saved state: the session table and the late table must equal the model's exactly.

use std::collections::HashSet;
use std::time::Duration;

use eventide::lake_sql::LakeQuery;
use eventide::replay::Replayer;
use eventide::sink::lake::Lake;
use eventide::window::{Pipelines, plan, spec};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const BASE_US: i64 = 1_767_225_600_000_000;

struct Model {
    key: String,
    start: i64,
    last: i64,
    closed: bool,
    n: u64,
    total: i64,
}

async fn one_case(seed: u64) -> (usize, usize, usize) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let gap_s = [5i64, 20, 60][rng.random_range(0..3)];
    let ooo_s = [0i64, 5, 30][rng.random_range(0..3)];
    let late_s = [0i64, 10][rng.random_range(0..2)];
    let (gap, ooo, lateness) = (gap_s * 1_000_000, ooo_s * 1_000_000, late_s * 1_000_000);
    let toml = format!(
        "name = \"sess\"\nwindow = {{ kind = \"session\", gap = \"{gap_s}s\" }}\nwatermark = \"{ooo_s}s\"\n\
         allowed_lateness = \"{late_s}s\"\nfields = {{ amount = \"int\", customer = \"string\" }}\n\
         sql = \"SELECT customer, count(*) AS n, sum(amount) AS total FROM events WHERE amount >= 50 GROUP BY customer HAVING count(*) > 1\"\n"
    );
    let spec = spec::parse(&toml, std::path::Path::new("sess.toml")).unwrap();
    let fresh = || async { Pipelines::new(vec![(spec.clone(), plan::compile(&spec).await.unwrap())]).unwrap() };
    let pipelines = fresh().await;
    let tables = pipelines.output_schemas();
    let mut replay = Replayer::new(pipelines, Duration::from_secs(86_400), "events");
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();

    // Bursts per customer with pauses around the gap, so sessions form, end and get bridged
    // by out-of-order events; 3% very late; 5% duplicates.
    let n = rng.random_range(300..2000);
    let mut events: Vec<(String, i64, i64, String)> = Vec::new(); // id, t, amount, customer
    let mut arrivals = Vec::new();
    let mut clock = BASE_US;
    for i in 0..n {
        if !events.is_empty() && rng.random_bool(0.05) {
            arrivals.push(rng.random_range(events.len().saturating_sub(30)..events.len()));
            continue;
        }
        clock += rng.random_range(0..gap / 3);
        let mut t = clock - rng.random_range(0..(ooo + gap / 2));
        if rng.random_bool(0.03) {
            t -= rng.random_range(0..4 * gap);
        }
        t -= t.rem_euclid(1000); // timestamps carry milliseconds
        events.push((format!("e{i}"), t, rng.random_range(0..200), format!("c{}", rng.random_range(0..8))));
        arrivals.push(events.len() - 1);
    }
    for &j in &arrivals {
        let (id, t, amount, customer) = &events[j];
        let line = serde_json::json!({
            "event_id": id, "event_type": "x.y", "timestamp": eventide::generator::rfc3339(*t),
            "data": {"amount": amount, "customer": customer}
        })
        .to_string();
        replay.feed(&line, || ("sess".into(), 0)).unwrap();
        if rng.random_bool(0.02) {
            replay.end_batch().unwrap();
        }
        if rng.random_bool(0.005) {
            replay.end_batch().unwrap();
            let (open, _) = replay.pipelines.live_rows("sess", eventide::window::live::Starts::ALL).unwrap().unwrap();
            assert!(open.iter().all(|b| b.num_rows() > 0));
        }
        if rng.random_bool(0.005) {
            replay.pipelines.commit(&lake, "sess").await.unwrap();
            let state = replay.pipelines.save_state().unwrap();
            let mut restored = fresh().await;
            assert_eq!(restored.restore_state(&state).unwrap(), vec!["sess".to_string()]);
            replay.pipelines = restored;
        }
    }
    replay.finish(&lake, "sess").await.unwrap();

    // The model: the same rules, one row at a time, every session in a plain list.
    let (mut want, mut want_late) = (Vec::new(), Vec::new());
    let mut sessions: Vec<Model> = Vec::new();
    let mut seen = HashSet::new();
    let mut max_t = i64::MIN;
    let mut bridged = 0;
    // HAVING count(*) > 1: single-event sessions are evaluated but not written.
    let emit = |s: &Model, out: &mut Vec<String>| {
        if s.n > 1 {
            out.push(format!("{},{},{},{},{}", s.start, s.last + gap, s.key, s.n, s.total));
        }
    };
    for &j in &arrivals {
        let (id, t, amount, key) = &events[j];
        if !seen.insert(id.clone()) {
            continue;
        }
        max_t = max_t.max(*t);
        let wm = max_t - ooo;
        if *amount >= 50 {
            let touching: Vec<usize> = (0..sessions.len())
                .filter(|&i| {
                    let s = &sessions[i];
                    s.key == *key && s.start < t + gap && *t < s.last + gap
                })
                .collect();
            if let Some(&c) = touching.iter().find(|&&i| sessions[i].closed) {
                want_late.push(format!("{},{},{id}", sessions[c].start, sessions[c].last + gap));
            } else if touching.is_empty() {
                if t + gap + lateness <= wm {
                    want_late.push(format!("{t},{},{id}", t + gap));
                } else {
                    sessions.push(Model { key: key.clone(), start: *t, last: *t, closed: false, n: 1, total: *amount });
                }
            } else {
                let target = touching[0];
                bridged += touching.len() - 1;
                for &o in touching[1..].iter().rev() {
                    let other = sessions.remove(o);
                    let s = &mut sessions[target];
                    (s.start, s.last, s.n, s.total) =
                        (s.start.min(other.start), s.last.max(other.last), s.n + other.n, s.total + other.total);
                }
                let s = &mut sessions[target];
                (s.start, s.last, s.n, s.total) = (s.start.min(*t), s.last.max(*t), s.n + 1, s.total + amount);
            }
        }
        for s in sessions.iter_mut().filter(|s| !s.closed && s.last + gap + lateness <= wm) {
            s.closed = true;
            emit(s, &mut want);
        }
        sessions.retain(|s| !(s.closed && s.last + 2 * gap + lateness <= wm));
    }
    for s in sessions.iter().filter(|s| !s.closed) {
        emit(s, &mut want);
    }

    let q = LakeQuery::open(&lake, &tables).await.unwrap();
    let rows = |sql: &'static str| {
        let q = &q;
        async move {
            let Ok((_, batches)) = q.sql(sql).await else { return Vec::new() };
            let mut out = Vec::new();
            for b in batches {
                let fmts: Vec<_> = b
                    .columns()
                    .iter()
                    .map(|c| arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &Default::default()).unwrap())
                    .collect();
                for i in 0..b.num_rows() {
                    out.push(fmts.iter().map(|f| f.value(i).to_string()).collect::<Vec<_>>().join(","));
                }
            }
            out.sort();
            out
        }
    };
    let got =
        rows("SELECT CAST(window_start AS BIGINT), CAST(window_end AS BIGINT), customer, n, total FROM sess").await;
    let got_late =
        rows("SELECT CAST(window_start AS BIGINT), CAST(window_end AS BIGINT), event_id FROM late_events").await;
    want.sort();
    want_late.sort();
    assert_eq!(got, want, "seed {seed}: session rows (gap {gap_s}s, watermark {ooo_s}s, lateness {late_s}s)");
    assert_eq!(got_late, want_late, "seed {seed}: late rows");
    (want.len(), want_late.len(), bridged)
}

#[tokio::test]
async fn sessions_equal_a_naive_model() {
    let (mut rows, mut late, mut bridged) = (0, 0, 0);
    for seed in 0..24 {
        let (r, l, b) = one_case(seed).await;
        rows += r;
        late += l;
        bridged += b;
    }
    // The cases exercise what they are meant to.
    assert!(rows > 500 && late > 20 && bridged > 20, "rows {rows}, late {late}, bridged {bridged}");
    eprintln!("sessions: {rows} rows, {late} late, {bridged} bridged");
}
