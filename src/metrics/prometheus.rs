//! Prometheus text exposition (format 0.0.4) of a [`Snapshot`]. Metric names are constants
//! here, every family has HELP and TYPE, counters end in `_total`, times are seconds and
//! label values are bounded (streams, pipelines, reasons; never ids).

use std::fmt::Write as _;
use std::time::Instant;

use super::{PROM_BOUNDS_MS, PromHistogram, Snapshot};
use crate::decode::Reason;

pub const READ: &str = "eventide_entries_read_total";
pub const ACCEPTED: &str = "eventide_events_accepted_total";
pub const DUPLICATES: &str = "eventide_events_duplicate_total";
pub const INVALID: &str = "eventide_events_invalid_total";
pub const ACKED: &str = "eventide_entries_acked_total";
pub const CLAIMED: &str = "eventide_entries_claimed_total";
pub const DELETED_PENDING: &str = "eventide_entries_deleted_pending_total";
pub const BEYOND_HORIZON: &str = "eventide_events_beyond_dedup_horizon_total";
pub const DISCONNECTS: &str = "eventide_redis_disconnects_total";
pub const FILES: &str = "eventide_parquet_files_total";
pub const ROWS: &str = "eventide_parquet_rows_total";
pub const BYTES: &str = "eventide_parquet_bytes_total";
pub const DURABLE_LATENCY: &str = "eventide_publish_to_durable_seconds";
pub const PROCESS_LATENCY: &str = "eventide_publish_to_processed_seconds";
pub const COMMIT_DURATION: &str = "eventide_commit_duration_seconds";
pub const LAST_COMMIT: &str = "eventide_last_commit_timestamp_seconds";
pub const CHECKPOINTS: &str = "eventide_checkpoints_total";
pub const CHECKPOINTS_INLINE: &str = "eventide_checkpoints_inline_total";
pub const CHECKPOINTS_EARLY: &str = "eventide_checkpoints_early_total";
pub const CHECKPOINT_EPOCH: &str = "eventide_checkpoint_epoch";
pub const MERGED_WINDOWS: &str = "eventide_merged_windows_total";
pub const MERGE_WAITING: &str = "eventide_merge_waiting_seconds";
pub const DEDUP_IDS: &str = "eventide_dedup_ids";
pub const DEDUP_BYTES: &str = "eventide_dedup_memory_bytes";
pub const UNACKED: &str = "eventide_entries_unacked";
pub const LAG: &str = "eventide_consumer_lag";
pub const PENDING: &str = "eventide_consumer_pending";
pub const STREAM_LENGTH: &str = "eventide_stream_length";
pub const TRIMMED_UNREAD: &str = "eventide_entries_trimmed_unread";
pub const DLQ_DEPTH: &str = "eventide_dlq_depth";
pub const PROBE_AGE: &str = "eventide_redis_probe_age_seconds";
pub const PIPELINE_INPUT: &str = "eventide_pipeline_input_events_total";
pub const PIPELINE_COUNTED: &str = "eventide_pipeline_counted_events_total";
pub const PIPELINE_LATE: &str = "eventide_pipeline_late_rows_total";
pub const PIPELINE_WINDOWS: &str = "eventide_pipeline_windows_emitted_total";
pub const PIPELINE_ROWS: &str = "eventide_pipeline_rows_emitted_total";
pub const WATERMARK_LAG: &str = "eventide_pipeline_watermark_lag_seconds";
pub const OPEN_WINDOWS: &str = "eventide_pipeline_open_windows";
pub const STATE_BYTES: &str = "eventide_pipeline_state_bytes";
pub const WINDOW_QUEUE: &str = "eventide_pipeline_window_queue_items";
pub const EMIT_LATENCY: &str = "eventide_pipeline_window_end_to_emit_seconds";
pub const UP: &str = "eventide_up";
pub const PIPELINE_FAILED: &str = "eventide_pipeline_failed";
pub const ARCHIVE_OPEN_FILES: &str = "eventide_archive_open_files";
pub const ARCHIVE_MEMORY: &str = "eventide_archive_memory_bytes";
pub const ARCHIVE_EARLY: &str = "eventide_archive_files_finished_early_total";
pub const READ_COUNT: &str = "eventide_read_entries_limit";
pub const READ_BYTES: &str = "eventide_read_bytes_total";
pub const DEDUP_HORIZON: &str = "eventide_dedup_horizon_seconds";
pub const DEDUP_EVICTED: &str = "eventide_dedup_evicted_total";
pub const ROLE: &str = "eventide_role";
pub const SHARDS: &str = "eventide_shards";
pub const SHARD_HELD: &str = "eventide_shard_held";
pub const BUILD_INFO: &str = "eventide_build_info";
pub const RESIDENT: &str = "process_resident_memory_bytes";
pub const VIRTUAL: &str = "process_virtual_memory_bytes";
pub const CPU: &str = "process_cpu_seconds_total";
pub const OPEN_FDS: &str = "process_open_fds";
pub const MAX_FDS: &str = "process_max_fds";
pub const START_TIME: &str = "process_start_time_seconds";
pub const HTTP_OPEN: &str = "eventide_http_connections_open";
pub const HTTP_ACCEPTED: &str = "eventide_http_connections_accepted_total";
pub const HTTP_REFUSED: &str = "eventide_http_connections_refused_total";
pub const HTTP_EVICTED: &str = "eventide_http_connections_evicted_total";

/// An exposition being written (the API adds its own families with it).
pub struct Out(String);

impl Out {
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    pub fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &PromHistogram) {
        let mut cum = 0;
        for (i, b) in PROM_BOUNDS_MS.iter().enumerate() {
            cum += h.buckets[i];
            let le = format!("{}", *b as f64 / 1000.0);
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &l, cum);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&format!("{name}_bucket"), &l, h.count);
        self.sample(&format!("{name}_sum"), labels, h.sum_ms as f64 / 1000.0);
        self.sample(&format!("{name}_count"), labels, h.count);
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Renders the snapshot; `now_unix_ms` is the wall clock (for watermark lag).
pub fn render(s: &Snapshot, now: Instant, now_unix_ms: i64) -> String {
    render_with(s, now, now_unix_ms, |_| {})
}

/// [`render`], then `more` adds families of its own (the HTTP server's).
pub fn render_with(s: &Snapshot, now: Instant, now_unix_ms: i64, more: impl FnOnce(&mut Out)) -> String {
    let mut o = Out(String::with_capacity(16 * 1024));
    let g = s.group.as_str();
    o.one(UP, "gauge", "1 while the eventide process serves metrics.", 1);
    o.family(BUILD_INFO, "gauge", "Always 1; the labels say which build runs.");
    o.sample(BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))], 1);
    o.family(
        ROLE,
        "gauge",
        "1 for this instance's current role in its group (standby, recovering, reading, stopping).",
    );
    for r in super::Role::ALL {
        o.sample(ROLE, &[("group", g), ("role", r.as_str())], u8::from(s.role == r));
    }
    o.family(SHARDS, "gauge", "Shards per stream of the group (its fixed shard count).");
    o.sample(SHARDS, &[("group", g)], s.shards.max(1));
    o.family(SHARD_HELD, "gauge", "1 for each shard whose lease this worker holds (it reads the shard).");
    for k in &s.shards_held {
        o.sample(SHARD_HELD, &[("group", g), ("shard", &k.to_string())], 1);
    }
    if let Some(p) = super::process::read() {
        o.one(RESIDENT, "gauge", "Resident memory size in bytes.", p.resident_bytes);
        o.one(VIRTUAL, "gauge", "Virtual memory size in bytes.", p.virtual_bytes);
        o.one(CPU, "counter", "User and system CPU time spent, in seconds.", p.cpu_seconds);
        o.one(OPEN_FDS, "gauge", "Open file descriptors.", p.open_fds);
        if let Some(m) = p.max_fds {
            o.one(MAX_FDS, "gauge", "Maximum number of open file descriptors.", m);
        }
        if let Some(t) = p.start_time_seconds {
            o.one(START_TIME, "gauge", "Start time of the process since the unix epoch, in seconds.", t);
        }
    }

    let per_stream = |o: &mut Out, name: &str, help: &str, f: &dyn Fn(&super::StreamCounters) -> u64| {
        o.family(name, "counter", help);
        for (stream, c) in s.streams() {
            o.sample(name, &[("stream", stream)], f(c));
        }
    };
    per_stream(&mut o, READ, "Stream entries read (new, re-read after a restart, claimed).", &|c| c.read);
    per_stream(&mut o, ACCEPTED, "Events accepted (first occurrence of their event_id) and archived.", &|c| c.accepted);
    per_stream(&mut o, DUPLICATES, "Events dropped as duplicates of an earlier event_id.", &|c| c.duplicates);
    o.family(INVALID, "counter", "Entries rejected to the dead-letter stream, by reason.");
    for (stream, c) in s.streams() {
        for r in Reason::ALL {
            o.sample(INVALID, &[("stream", stream), ("reason", r.as_str())], c.invalid[r.index()]);
        }
    }
    o.one(ACKED, "counter", "Entries acknowledged (XACK) after their results were durable.", s.stats.acked);
    o.one(CLAIMED, "counter", "Entries claimed from idle consumers (XAUTOCLAIM).", s.stats.claimed);
    o.one(
        DELETED_PENDING,
        "counter",
        "Pending entries found deleted or trimmed (acked, nothing to process).",
        s.stats.deleted_pending,
    );
    o.one(
        BEYOND_HORIZON,
        "counter",
        "Accepted events older than the dedup horizon (not checkable).",
        s.stats.beyond_horizon,
    );
    o.one(DISCONNECTS, "counter", "Times the reader lost its Redis connection.", s.stats.disconnects);
    for (name, help, archive, tables) in [
        (
            FILES,
            "Parquet files committed, by kind (archive; pipeline and late-event tables).",
            s.stats.files_committed,
            s.stats.table_files_committed,
        ),
        (ROWS, "Rows in committed Parquet files, by kind.", s.stats.rows_committed, s.stats.table_rows_committed),
        (BYTES, "Bytes of committed Parquet files, by kind.", s.stats.bytes_committed, s.stats.table_bytes_committed),
    ] {
        o.family(name, "counter", help);
        o.sample(name, &[("kind", "archive")], archive);
        o.sample(name, &[("kind", "tables")], tables);
    }
    o.family(DURABLE_LATENCY, "histogram", "Entry publish time (stream id) to durable (committed, handed to XACK).");
    o.histogram(DURABLE_LATENCY, &[], &s.stats.durable_latency);
    o.family(
        PROCESS_LATENCY,
        "histogram",
        "Entry publish time (stream id) to processed (decoded, deduplicated, windowed).",
    );
    o.histogram(PROCESS_LATENCY, &[], &s.stats.process_latency);
    o.family(
        COMMIT_DURATION,
        "histogram",
        "Duration of a checkpoint (staging files, dedup and window state, manifest, publishing).",
    );
    o.histogram(COMMIT_DURATION, &[], &s.stats.commit_duration);
    o.one(CHECKPOINTS, "counter", "Checkpoints committed by this process.", s.stats.checkpoints);
    o.one(
        CHECKPOINTS_INLINE,
        "counter",
        "Checkpoints written on the processor's loop (table commits, the stop); the others overlap with reading.",
        s.stats.checkpoints_inline,
    );
    o.one(
        CHECKPOINT_EPOCH,
        "gauge",
        "Epoch of the last committed checkpoint (survives restarts).",
        s.stats.checkpoint_epoch,
    );
    if s.stats.merged_windows > 0 || s.stats.merge_waiting_end_us.is_some() {
        o.family(MERGED_WINDOWS, "counter", "Windows the merger evaluated from every shard's partial states.");
        o.sample(MERGED_WINDOWS, &[("group", g)], s.stats.merged_windows);
        let waiting = s
            .stats
            .merge_waiting_end_us
            .map_or(0.0, |end| (chrono::Utc::now().timestamp_micros().saturating_sub(end)).max(0) as f64 / 1e6);
        o.family(
            MERGE_WAITING,
            "gauge",
            "Age (wall clock - window end) of the oldest window a shard closed that waits for another shard (0: none).",
        );
        o.sample(MERGE_WAITING, &[("group", g)], waiting);
    }
    if let Some(ms) = s.last_commit_unix_ms {
        o.one(LAST_COMMIT, "gauge", "Unix time of the last commit.", ms as f64 / 1000.0);
    }
    o.one(DEDUP_IDS, "gauge", "Event ids remembered by dedup.", s.dedup_ids);
    o.one(DEDUP_BYTES, "gauge", "Memory of the dedup table.", s.dedup_bytes);
    o.one(UNACKED, "gauge", "Entries read and not yet acknowledged (waiting for a commit).", s.unacked);
    let b = &s.bounds;
    o.one(
        ARCHIVE_OPEN_FILES,
        "gauge",
        "Archive files open (partitions: date x event type), at most max_open_files.",
        b.archive_open_files,
    );
    o.one(
        ARCHIVE_MEMORY,
        "gauge",
        "Estimated memory of open archive files, bounded by max_buffered_bytes.",
        b.archive_memory_bytes,
    );
    o.family(ARCHIVE_EARLY, "counter", "Archive files finished before their size or age, by the bound that made them.");
    o.sample(ARCHIVE_EARLY, &[("reason", "max_open_files")], b.archive_early_open_files);
    o.sample(ARCHIVE_EARLY, &[("reason", "max_buffered_bytes")], b.archive_early_memory);
    o.family(
        CHECKPOINTS_EARLY,
        "counter",
        "Checkpoints committed before checkpoint_interval, by the bound that made them.",
    );
    o.sample(CHECKPOINTS_EARLY, &[("reason", "max_pending_entries")], b.checkpoints_early_pending);
    o.sample(CHECKPOINTS_EARLY, &[("reason", "max_buffered_bytes")], b.checkpoints_early_unsaved);
    o.one(
        READ_COUNT,
        "gauge",
        "COUNT of the last read, adapted to entry sizes to stay near read_max_bytes.",
        s.read_count,
    );
    o.one(READ_BYTES, "counter", "Bytes of stream entries read (field names and values).", b.read_bytes);
    o.one(
        DEDUP_HORIZON,
        "gauge",
        "Dedup horizon in force (shorter than dedup_horizon while dedup_max_bytes holds it).",
        b.dedup_horizon_secs,
    );
    o.one(
        DEDUP_EVICTED,
        "counter",
        "Ids forgotten before their horizon to stay within dedup_max_bytes.",
        b.dedup_evicted,
    );

    // From the Redis probe.
    let probed = s.probe.at.is_some() && s.probe.error.is_none();
    if let Some(at) = s.probe.at {
        o.one(
            PROBE_AGE,
            "gauge",
            "Age of the last XINFO probe of Redis.",
            now.saturating_duration_since(at).as_secs_f64(),
        );
    }
    if probed {
        o.family(LAG, "gauge", "Entries in the stream not yet delivered to the group (XINFO GROUPS lag).");
        for p in s.probe.streams.iter().filter(|p| p.lag.is_some()) {
            o.sample(LAG, &[("stream", &p.stream), ("group", g)], p.lag.unwrap_or(0));
        }
        o.family(PENDING, "gauge", "Entries delivered to the group and not acknowledged (XINFO GROUPS pending).");
        for p in &s.probe.streams {
            o.sample(PENDING, &[("stream", &p.stream), ("group", g)], p.pending);
        }
        o.family(STREAM_LENGTH, "gauge", "Entries in the stream (XLEN).");
        for p in &s.probe.streams {
            o.sample(STREAM_LENGTH, &[("stream", &p.stream)], p.length);
        }
        o.family(
            TRIMMED_UNREAD,
            "gauge",
            "Entries trimmed from the stream before the group read them: lost to this group.",
        );
        for p in &s.probe.streams {
            o.sample(TRIMMED_UNREAD, &[("stream", &p.stream), ("group", g)], p.trimmed_unread);
        }
        o.family(DLQ_DEPTH, "gauge", "Entries in the dead-letter stream.");
        for p in &s.probe.streams {
            o.sample(DLQ_DEPTH, &[("stream", &p.stream), ("dlq", &p.dlq_stream)], p.dlq_length);
        }
    }

    // Pipelines.
    let per_pipeline = |o: &mut Out, name: &str, kind: &str, help: &str, f: &dyn Fn(&super::PipelineMetrics) -> u64| {
        o.family(name, kind, help);
        for p in &s.pipelines {
            o.sample(name, &[("pipeline", &p.name)], f(p));
        }
    };
    per_pipeline(&mut o, PIPELINE_INPUT, "counter", "Events selected by the pipeline (streams, event types).", &|p| {
        p.stats.input
    });
    per_pipeline(&mut o, PIPELINE_COUNTED, "counter", "Events that passed WHERE and counted in a window.", &|p| {
        p.stats.counted
    });
    per_pipeline(&mut o, PIPELINE_LATE, "counter", "Late rows (event, missed window) written to late_events.", &|p| {
        p.stats.late
    });
    per_pipeline(&mut o, PIPELINE_WINDOWS, "counter", "Windows closed and emitted.", &|p| p.stats.windows);
    per_pipeline(&mut o, PIPELINE_ROWS, "counter", "Rows emitted to the pipeline's table.", &|p| p.stats.rows);
    per_pipeline(&mut o, PIPELINE_FAILED, "gauge", "1 once the pipeline failed at run time (see the log).", &|p| {
        u64::from(p.failed.is_some())
    });
    per_pipeline(&mut o, OPEN_WINDOWS, "gauge", "Windows (or sessions) open.", &|p| p.open_windows as u64);
    per_pipeline(&mut o, STATE_BYTES, "gauge", "Memory of the pipeline's window state.", &|p| p.state_bytes as u64);
    per_pipeline(
        &mut o,
        WINDOW_QUEUE,
        "gauge",
        "Items (micro-batches, checks, checkpoint parts) queued for the window worker or running; at most 4.",
        &|p| p.queued_items as u64,
    );
    o.family(WATERMARK_LAG, "gauge", "Wall clock minus the pipeline's watermark.");
    for p in &s.pipelines {
        if let Some(wm) = p.watermark_us.filter(|&w| w > i64::MIN / 2 && w < i64::MAX / 2) {
            let lag = (now_unix_ms * 1000 - wm) as f64 / 1e6;
            o.sample(WATERMARK_LAG, &[("pipeline", &p.name)], lag);
        }
    }
    o.family(EMIT_LATENCY, "histogram", "Window end (event time) to the window's rows being emitted (wall clock).");
    for p in &s.pipelines {
        o.histogram(EMIT_LATENCY, &[("pipeline", &p.name)], &p.stats.emit_latency);
    }
    more(&mut o);
    o.0
}
