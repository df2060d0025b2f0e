//! Unit tests of the window engine's resource bounds (its results are covered by the golden
//! and property tests in `tests/it/`).

use std::path::Path;
use std::time::Duration;

use super::{Pipelines, live, plan, spec};
use crate::replay::Replayer;

async fn replayer(toml: &str) -> Replayer {
    let s = spec::parse(toml, Path::new("t.toml")).unwrap();
    let c = plan::compile(&s).await.unwrap();
    Replayer::new(Pipelines::new(vec![(s, c)]).unwrap(), Duration::from_secs(3600), "events")
}

fn line(i: u64, t_us: i64) -> String {
    let ty = ["order.created", "payment.completed", "cart.item_added"][(i % 3) as usize];
    format!(
        r#"{{"event_id":"e{i}","event_type":"{ty}","timestamp":"{}","data":{{"amount":{}}}}}"#,
        crate::generator::rfc3339(t_us),
        i % 1000
    )
}

/// Window state is groups × open windows: ten times more events into one long window
/// do not grow it.
#[tokio::test]
async fn state_is_bounded_by_groups_not_events() {
    for window in [r#"{ kind = "tumbling", size = "1d" }"#, r#"{ kind = "hopping", size = "1h", slide = "1m" }"#] {
        let mut r = replayer(&format!(
            "window = {window}\nfields = {{ amount = \"double\" }}\n\
             sql = \"SELECT event_type, count(*) AS n, sum(amount) AS s, min(amount) AS lo, max(amount) AS hi FROM events GROUP BY event_type\"\n"
        ))
        .await;
        let base = 1_767_225_600_000_000i64;
        let mut sizes = Vec::new();
        for i in 0..300_000u64 {
            // 300k events over 3 hours: after the first hour the hopping windows close as
            // fast as they open (60 slides of 3 groups each), the daily window has 3 groups.
            r.feed(&line(i, base + i as i64 * 36_000), || ("t".into(), i)).unwrap();
            if i == 109_999 || i == 299_999 {
                r.end_batch().unwrap();
                sizes.push(r.pipelines.queries()[0].state_bytes());
            }
        }
        assert!(sizes[0] > 0);
        assert!(sizes[1] <= sizes[0] * 3 / 2, "{window}: state grew from {} to {} bytes", sizes[0], sizes[1]);
        assert!(sizes[1] < 2 << 20, "{window}: {} bytes of state", sizes[1]);
    }
}

/// A dashboard polling a live window (each request freezes what arrived since the last)
/// leaves a few frozen states per slide, not one per request, and sees every event, however
/// little the state grows (`count(DISTINCT …)` over few values; no GROUP BY).
#[tokio::test]
async fn live_polls_keep_few_frozen_states() {
    let mut r = replayer(
        "window = { kind = \"tumbling\", size = \"1h\" }\nfields = { amount = \"double\" }\n\
         sql = \"SELECT count(*) AS n, count(DISTINCT amount) AS d FROM events\"\n",
    )
    .await;
    let base = 1_767_225_600_000_000i64;
    let mut most = 0;
    for i in 0..20_000u64 {
        r.feed(&line(i, base + i as i64 * 1000), || ("t".into(), i)).unwrap();
        if i % 10 == 9 {
            r.end_batch().unwrap();
            let (open, _) =
                r.pipelines.live_rows(&r.pipelines.queries()[0].spec.name.clone(), live::Starts::ALL).unwrap().unwrap();
            let n = open.iter().map(|b| b.num_rows()).sum::<usize>();
            assert_eq!(n, 1, "one open window");
            let frozen = r.pipelines.queries()[0].frozen_per_slide();
            most = most.max(frozen.iter().copied().max().unwrap_or(0));
        }
    }
    assert!(most <= 8, "a slide kept {most} frozen states");
    // The last view has every event: 20,000 of them, 1,000 distinct amounts.
    let (open, _) =
        r.pipelines.live_rows(&r.pipelines.queries()[0].spec.name.clone(), live::Starts::ALL).unwrap().unwrap();
    let b = &open[0];
    let col = |name: &str| {
        b.column_by_name(name).unwrap().as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().value(0)
    };
    assert_eq!((col("n"), col("d")), (20_000, 1000));
}

/// The merger's committed progress is kept for a pipeline defined as then, and dropped for
/// one whose definition changed (its windows under the new definition all still merge).
#[tokio::test]
async fn the_merger_starts_over_for_a_changed_pipeline() {
    use std::collections::BTreeMap;

    use super::merge::Merger;
    use crate::checkpoint::WindowBound;

    let toml = "window = { kind = \"tumbling\", size = \"1m\" }\nsql = \"SELECT count(*) AS n FROM events\"\n";
    let s = spec::parse(toml, Path::new("counts.toml")).unwrap();
    let c = plan::compile(&s).await.unwrap();
    let mut pipelines = Pipelines::new(vec![(s, c)]).unwrap();
    pipelines.emit_partials().unwrap();
    let name = pipelines.queries()[0].spec.name.clone();
    let now = pipelines.queries()[0].fingerprint_hash();
    let progress = BTreeMap::from([(name.clone(), 120_000_000i64)]);
    let bound = |fingerprint| BTreeMap::from([(name.clone(), WindowBound { fingerprint, closed_before: 120_000_000 })]);

    let same = Merger::resume(progress.clone(), progress.clone(), BTreeMap::new(), &bound(now), &pipelines);
    assert_eq!(same.merged(), &progress);
    assert_eq!(same.keep(), &progress);
    let changed = Merger::resume(progress.clone(), progress.clone(), BTreeMap::new(), &bound(now ^ 1), &pipelines);
    assert!(changed.merged().is_empty() && changed.keep().is_empty());
}

/// A live view of a tumbling window (read in place from its `LivePartial`) equals the
/// window's final rows had the input ended there: every aggregate kind (DataFusion's, read
/// through their states, and `count(DISTINCT)` of strings, kept as sets; FILTER too), with
/// checkpoints (which freeze the window's open partial) and restores (which drop the live
/// partial, so the next view rebuilds it from the saved states) between the views.
#[tokio::test]
async fn live_views_equal_the_final_rows_so_far() {
    use arrow::array::{Array, RecordBatch};

    let toml = "window = { kind = \"tumbling\", size = \"1h\" }\n\
        fields = { amount = \"double\", customer_id = \"string\" }\n\
        sql = \"SELECT event_type, count(*) AS n, sum(amount) AS s, min(amount) AS lo, max(amount) AS hi, \
        avg(amount) AS mean, count(DISTINCT customer_id) AS customers, \
        count(DISTINCT customer_id) FILTER (WHERE amount > 500) AS big, count(DISTINCT amount) AS amounts, \
        approx_distinct(customer_id) AS approx, max(customer_id) AS last_customer \
        FROM events GROUP BY event_type HAVING count(*) > 1\"\n";
    let base = 1_767_225_600_000_000i64;
    let event = |i: u64| {
        let ty = ["order.created", "payment.completed", "cart.item_added"][(i % 3) as usize];
        // Integer amounts: sums are exact whatever order they are added in.
        let customer = if i.is_multiple_of(11) { "null".to_string() } else { format!("\"c{}\"", (i * 7919) % 1500) };
        format!(
            r#"{{"event_id":"e{i}","event_type":"{ty}","timestamp":"{}","data":{{"amount":{},"customer_id":{customer}}}}}"#,
            crate::generator::rfc3339(base + i as i64 * 1000),
            (i * 31) % 1000
        )
    };
    let sorted = |batches: Vec<RecordBatch>| {
        let b = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
        let key = b.column_by_name("event_type").unwrap();
        let idx = arrow::compute::sort_to_indices(key, None, None).unwrap();
        arrow::compute::take_record_batch(&b, &idx).unwrap()
    };
    let mut live = replayer(toml).await;
    let name = live.pipelines.queries()[0].spec.name.clone();
    let mut views = 0;
    for k in 0..3000u64 {
        live.feed(&event(k), || ("t".into(), k)).unwrap();
        if k % 97 != 96 {
            continue;
        }
        views += 1;
        live.end_batch().unwrap();
        if views % 3 == 0 {
            let saved = live.pipelines.save_state().unwrap();
            if views % 2 == 0 {
                assert_eq!(live.pipelines.restore_state(&saved).unwrap(), vec![name.clone()]);
            }
        }
        let (open, pending) = live.pipelines.live_rows(&name, live::Starts::ALL).unwrap().unwrap();
        assert!(pending.is_empty());
        let mut oracle = replayer(toml).await;
        for i in 0..=k {
            oracle.feed(&event(i), || ("t".into(), i)).unwrap();
        }
        oracle.pipelines.flush().unwrap();
        let (still_open, closed) = oracle.pipelines.live_rows(&name, live::Starts::ALL).unwrap().unwrap();
        assert!(still_open.is_empty());
        let (got, want) = (sorted(open), sorted(closed));
        assert_eq!(got.num_rows(), 3, "view {views}");
        assert_eq!(got, want, "view {views} after {} events", k + 1);
        assert!(
            got.column_by_name("customers")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap()
                .value(0)
                > 0
        );
    }
    // Views after the checkpoints still read one frozen state per checkpoint at most.
    assert!(live.pipelines.queries()[0].frozen_per_slide().iter().all(|&n| n <= 8));
}

/// One tumbling minute, its events grouped by type.
const MINUTE_BY_TYPE: &str = "window = { kind = \"tumbling\", size = \"1m\" }\nfields = { amount = \"double\" }\n\
                              sql = \"SELECT event_type, count(*) AS n FROM events GROUP BY event_type\"\n";

/// A [`MINUTE_BY_TYPE`] replayer whose minute 0 (three event types) is processed and open,
/// and whose buffered events (minute 5, not processed yet) move the watermark past it.
async fn minute_zero_about_to_close() -> Replayer {
    let mut r = replayer(MINUTE_BY_TYPE).await;
    let base = 1_767_225_600_000_000i64;
    let at = |i| move || ("t".into(), i);
    for i in 0..30u64 {
        r.feed(&line(i, base + i as i64 * 1_000_000), at(i)).unwrap();
    }
    r.end_batch().unwrap();
    for i in 30..33u64 {
        r.feed(&line(i, base + 300_000_000 + i as i64), at(i)).unwrap();
    }
    r
}

/// Pipelines' part of checkpoint 1 in an in-memory lake: `between` runs after the part is
/// taken and before its blobs are written.
async fn checkpoint_in_memory(
    pipelines: &mut Pipelines,
    between: impl FnOnce(&mut Pipelines),
) -> (crate::checkpoint::Checkpoints, crate::checkpoint::Manifest) {
    use crate::checkpoint::{Checkpointed, Checkpoints, manifest};
    let lake = crate::sink::lake::Lake::from_store(std::sync::Arc::new(object_store::memory::InMemory::new()));
    let cp = Checkpoints::new(lake.clone(), Default::default(), "g", "c");
    let (mut m, mut blobs) = (manifest(&cp, 1, 0), cp.epoch_blobs(1));
    pipelines.save(&mut blobs, &mut m).await.unwrap();
    between(pipelines);
    blobs.write(&lake).await.unwrap();
    (cp, m)
}

/// Fresh pipelines restored from `m`.
async fn restored(cp: &crate::checkpoint::Checkpoints, m: &crate::checkpoint::Manifest) -> Pipelines {
    use crate::checkpoint::Checkpointed;
    let mut p = replayer(MINUTE_BY_TYPE).await.pipelines;
    p.restore(cp, m).await.unwrap();
    p
}

/// A checkpoint takes the tables' rows on the loop and the window state on the window
/// thread, after the events buffered since the last batch: rows of the windows those events
/// close are in neither the tables' part nor the state, so the state blob carries them.
/// Restored from that checkpoint, the pipelines have every row, waiting to be saved again.
#[tokio::test]
async fn a_checkpoint_keeps_the_rows_its_window_work_closes() {
    let mut r = minute_zero_about_to_close().await;
    assert_eq!(r.pipelines.pending_rows(), 0);
    let (cp, m) = checkpoint_in_memory(&mut r.pipelines, |_| {}).await;
    assert!(m.table_parts.is_empty(), "no table rows before the window work");
    r.pipelines.settle().unwrap();
    // Minute 0's three event types.
    assert_eq!(r.pipelines.pending_rows(), 3);

    let mut restored = restored(&cp, &m).await;
    assert_eq!(restored.pending_rows(), 3);
    let rows = |t: Vec<(String, Vec<arrow::array::RecordBatch>)>| {
        t.iter().flat_map(|(_, b)| b).map(arrow::array::RecordBatch::num_rows).sum::<usize>()
    };
    // Saved by neither yet: the next checkpoint's tables part takes them.
    assert_eq!(rows(restored.take_tables()), 3);
    assert_eq!(rows(r.pipelines.take_tables()), 3);
    assert_eq!(restored.queries()[0].open_windows(), r.pipelines.queries()[0].open_windows());
}

/// Rows closed on the window worker reach the tables when the loop collects them (a tick, a
/// live request, a settle), which may come before or after a checkpoint's part of their
/// pipeline ran: whatever the timing, each row is in the checkpoint's table part or in its
/// window state, never in neither.
#[tokio::test]
async fn closed_rows_are_in_a_checkpoint_whatever_the_collecting_timing() {
    for pause_us in [0, 300, 3_000, 30_000] {
        let mut r = minute_zero_about_to_close().await;
        // Queued on the worker; a tick collects what has run by then.
        r.pipelines.process_in_background().unwrap();
        std::thread::sleep(Duration::from_micros(pause_us));
        r.pipelines.on_tick(std::time::Instant::now()).unwrap();
        let (cp, m) = checkpoint_in_memory(&mut r.pipelines, |p| p.on_tick(std::time::Instant::now()).unwrap()).await;
        r.pipelines.settle().unwrap();
        assert_eq!(r.pipelines.pending_rows(), 3, "pause {pause_us} µs");
        assert_eq!(restored(&cp, &m).await.pending_rows(), 3, "pause {pause_us} µs");
    }
}

/// A slide's large merges run on the pool while its pipeline goes on: checkpoints taken
/// while one runs save the states it merges, the merge takes their place at a later
/// freeze, a slide keeps few states, and the live view and a restore see every event.
#[tokio::test]
async fn large_merges_run_on_the_pool_and_lose_nothing() {
    const TOML: &str = "window = { kind = \"tumbling\", size = \"1h\" }\nfields = { amount = \"double\" }\n\
                        sql = \"SELECT count(*) AS n, count(DISTINCT amount) AS d FROM events\"\n";
    let mut r = replayer(TOML).await;
    let base = 1_767_225_600_000_000i64;
    let distinct = |i: u64| {
        format!(
            r#"{{"event_id":"e{i}","event_type":"order.created","timestamp":"{}","data":{{"amount":{i}}}}}"#,
            crate::generator::rfc3339(base + i as i64 * 10)
        )
    };
    let (mut merges, mut most) = (0, 0);
    let mut last = None;
    for round in 0..16u64 {
        for i in round * 6000..(round + 1) * 6000 {
            r.feed(&distinct(i), || ("t".into(), i)).unwrap();
        }
        r.end_batch().unwrap();
        r.pipelines.settle().unwrap();
        last = Some(checkpoint_in_memory(&mut r.pipelines, |_| {}).await);
        r.pipelines.settle().unwrap();
        merges += r.pipelines.queries()[0].merges_running();
        most = most.max(r.pipelines.queries()[0].frozen_per_slide().into_iter().max().unwrap_or(0));
    }
    assert!(merges > 0, "no merge went to the pool");
    assert!(most <= 2 * 8 + 1, "a slide kept {most} states");
    // Once done, a merge takes its states' place at the next freeze (a checkpoint's).
    for _ in 0..500 {
        if r.pipelines.queries()[0].merges_running() == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        checkpoint_in_memory(&mut r.pipelines, |_| {}).await;
        r.pipelines.settle().unwrap();
    }
    assert_eq!(r.pipelines.queries()[0].merges_running(), 0, "a merge was never put in place");
    assert!(r.pipelines.queries()[0].frozen_per_slide().iter().all(|&n| n <= 8));
    let counts = |p: &mut Pipelines| {
        let name = p.queries()[0].spec.name.clone();
        let (open, _) = p.live_rows(&name, live::Starts::ALL).unwrap().unwrap();
        let col = |c: &str| {
            open[0].column_by_name(c).unwrap().as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().value(0)
        };
        (col("n"), col("d"))
    };
    assert_eq!(counts(&mut r.pipelines), (96_000, 96_000));
    let (cp, m) = last.unwrap();
    let mut restored = replayer(TOML).await.pipelines;
    crate::checkpoint::Checkpointed::restore(&mut restored, &cp, &m).await.unwrap();
    assert_eq!(counts(&mut restored), (96_000, 96_000));
}
