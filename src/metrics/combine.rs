//! One worker's figures from its shards': each shard term publishes a [`Snapshot`] of its
//! own, and the worker's (what `/metrics`, `/readyz` and the status API read) is their
//! combination. Counters add up; per-stream rows are concatenated (each shard has its own
//! stream keys); pipelines are combined by name; the oldest report and the oldest probe
//! stand for the worker, so a stalled shard shows.

use std::time::Instant;

use super::{LatencyHistogram, PromHistogram, QueryStats, Role, Snapshot, Stats};

impl PromHistogram {
    pub fn add(&mut self, other: &PromHistogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.sum_ms += other.sum_ms;
    }
}

impl LatencyHistogram {
    pub fn add(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.max_ms = self.max_ms.max(other.max_ms);
    }
}

impl QueryStats {
    pub fn add(&mut self, o: &QueryStats) {
        self.input += o.input;
        self.counted += o.counted;
        self.late += o.late;
        self.windows += o.windows;
        self.rows += o.rows;
        self.emit_latency.add(&o.emit_latency);
    }
}

impl Stats {
    /// Adds `o`'s counters (per-stream rows appended: shards have their own streams).
    pub fn add(&mut self, o: &Stats) {
        let sums = [
            (&mut self.read, o.read),
            (&mut self.accepted, o.accepted),
            (&mut self.duplicates, o.duplicates),
            (&mut self.beyond_horizon, o.beyond_horizon),
            (&mut self.deleted_pending, o.deleted_pending),
            (&mut self.claimed, o.claimed),
            (&mut self.acked, o.acked),
            (&mut self.files_committed, o.files_committed),
            (&mut self.rows_committed, o.rows_committed),
            (&mut self.bytes_committed, o.bytes_committed),
            (&mut self.table_files_committed, o.table_files_committed),
            (&mut self.table_rows_committed, o.table_rows_committed),
            (&mut self.table_bytes_committed, o.table_bytes_committed),
            (&mut self.disconnects, o.disconnects),
            (&mut self.checkpoints, o.checkpoints),
            (&mut self.checkpoints_inline, o.checkpoints_inline),
            (&mut self.merged_windows, o.merged_windows),
        ];
        for (a, b) in sums {
            *a += b;
        }
        for (a, b) in self.invalid.iter_mut().zip(o.invalid) {
            *a += b;
        }
        self.durable_latency.add(&o.durable_latency);
        self.process_latency.add(&o.process_latency);
        self.commit_duration.add(&o.commit_duration);
        self.checkpoint_epoch = self.checkpoint_epoch.max(o.checkpoint_epoch);
        self.merge_waiting_end_us = self.merge_waiting_end_us.into_iter().chain(o.merge_waiting_end_us).min();
        self.streams.extend(o.streams.iter().cloned());
    }
}

/// How far along a role is, for the worker's role: the most advanced of its shards'.
fn rank(r: Role) -> u8 {
    match r {
        Role::Standby => 0,
        Role::Stopping => 1,
        Role::Recovering => 2,
        Role::Reading => 3,
    }
}

fn older(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        _ => None,
    }
}

impl Snapshot {
    /// The worker's snapshot from its shards' (`base` holds the worker's own fields: group,
    /// consumer, start, and the standby state when it runs no shard).
    pub fn combine(base: &Snapshot, shards: &[Snapshot]) -> Snapshot {
        let (first, rest) = match shards.split_first() {
            None => return base.clone(),
            Some(split) => split,
        };
        let mut s = first.clone();
        (s.group, s.consumer, s.started) = (base.group.clone(), base.consumer.clone(), base.started);
        for o in rest {
            s.stats.add(&o.stats);
            s.stream_names.extend(o.stream_names.iter().cloned());
            s.updated = older(s.updated, o.updated);
            s.last_commit_unix_ms = match (s.last_commit_unix_ms, o.last_commit_unix_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                _ => None,
            };
            s.dedup_ids += o.dedup_ids;
            s.dedup_bytes += o.dedup_bytes;
            s.unacked += o.unacked;
            s.open_archive_rows += o.open_archive_rows;
            let (b, ob) = (&mut s.bounds, &o.bounds);
            b.archive_open_files += ob.archive_open_files;
            b.archive_memory_bytes += ob.archive_memory_bytes;
            b.archive_early_open_files += ob.archive_early_open_files;
            b.archive_early_memory += ob.archive_early_memory;
            b.checkpoints_early_pending += ob.checkpoints_early_pending;
            b.checkpoints_early_unsaved += ob.checkpoints_early_unsaved;
            b.read_bytes += ob.read_bytes;
            b.dedup_horizon_secs = b.dedup_horizon_secs.min(ob.dedup_horizon_secs);
            b.dedup_evicted += ob.dedup_evicted;
            s.read_count = s.read_count.max(o.read_count);
            for p in &o.pipelines {
                match s.pipelines.iter_mut().find(|q| q.name == p.name) {
                    None => s.pipelines.push(p.clone()),
                    Some(q) => {
                        q.stats.add(&p.stats);
                        q.watermark_us = q.watermark_us.min(p.watermark_us).or(q.watermark_us.or(p.watermark_us));
                        q.open_windows += p.open_windows;
                        q.state_bytes += p.state_bytes;
                        q.pending_rows += p.pending_rows;
                        q.queued_items += p.queued_items;
                        q.failed = q.failed.take().or(p.failed.clone());
                    }
                }
            }
            s.probe.at = older(s.probe.at, o.probe.at);
            s.probe.error = s.probe.error.take().or(o.probe.error.clone());
            s.probe.streams.extend(o.probe.streams.iter().cloned());
            s.lake_ok &= o.lake_ok;
            if rank(o.role) > rank(s.role) {
                s.role = o.role;
            }
            s.standby_polled = s.standby_polled.max(o.standby_polled);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::PipelineMetrics;

    #[test]
    fn one_shard_is_itself_and_several_add_up() {
        let base = Snapshot { group: "g".into(), consumer: "w1".into(), ..Default::default() };
        let mut a = Snapshot { role: Role::Reading, dedup_ids: 3, lake_ok: true, ..Default::default() };
        a.stats.accepted = 10;
        a.stream_names = vec!["s:{0}".into()];
        a.stats.streams = vec![Default::default()];
        a.pipelines = vec![PipelineMetrics { name: "p".into(), watermark_us: Some(50), ..Default::default() }];
        let one = Snapshot::combine(&base, std::slice::from_ref(&a));
        assert_eq!((one.stats.accepted, one.consumer.as_str(), one.role), (10, "w1", Role::Reading));
        let mut b = a.clone();
        b.role = Role::Standby;
        b.stream_names = vec!["s:{1}".into()];
        b.pipelines[0].watermark_us = Some(20);
        let two = Snapshot::combine(&base, &[a, b]);
        assert_eq!((two.stats.accepted, two.dedup_ids, two.role), (20, 6, Role::Reading));
        assert_eq!(two.streams().count(), 2);
        assert_eq!(two.pipelines[0].watermark_us, Some(20));
        assert_eq!(Snapshot::combine(&base, &[]).group, "g");
    }
}
