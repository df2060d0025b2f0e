//! The worker: one process's part in its consumer group. Wires the stages and owns the
//! invariants.
//!
//! ```text
//!  reader task ──bounded channel──▶ processor: decode → dedup → archive ──▶ lake
//!  (XREADGROUP)                         │ rejects → DLQ (XADD)     │ commit
//!                                        └──────── XACK ◀──────────┘ (only durable batches)
//! ```
//! [`run`] cycles through the instance's roles in its group: standby (waiting for the lease), then one term as the lease holder (`term`:
//! recovery, reading, checkpoints) until the shutdown future, `exit_when_idle` or an error
//! stops it (then without acking what is not durable). A holder whose lease may have lapsed
//! (see [`crate::source::lease`]) stops committing and goes back to standby.

mod assign;
mod process;
mod recovery;
mod term;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub use crate::config::RunOptions;
use crate::error::{Error, Result};
use crate::metrics::{Registry, Role, Snapshot, Stats};
use crate::names::ShardId;
use crate::source::commands::Commands;
use crate::window::live::LiveSlot;
use assign::Membership;
pub use assign::members_key;

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub stats: Stats,
    /// Publish → durable per entry, at 1 ms resolution.
    pub durable_latency: crate::metrics::LatencyHistogram,
    /// Ids remembered by dedup at the end.
    pub dedup_ids: usize,
    pub elapsed: Duration,
}

/// What a worker publishes for readers beside it (the ops API): its snapshot and, while it
/// holds the lease, its live windows.
#[derive(Clone, Default)]
pub struct Published {
    pub registry: Registry,
    pub live: LiveSlot,
}

/// Runs the worker until `shutdown` completes, its shards are idle for `exit_when_idle`, or
/// an error stops it. It keeps its heartbeat in the group, runs a term (`term`) per shard
/// the assignment gives it (`assign`), hands over a shard the assignment moves elsewhere
/// (final checkpoint, lease released) and publishes the combination of its shards'
/// snapshots. On a clean stop everything read is committed and acked. [`crate::run`]
/// serves the ops API beside it.
pub async fn run(opts: RunOptions, published: Published, shutdown: impl Future<Output = ()>) -> Result<RunSummary> {
    let started = Instant::now();
    let Published { registry, live } = published;
    let mut base = Snapshot {
        group: opts.source.group.clone(),
        consumer: opts.source.consumer.clone(),
        started: Some(started),
        shards: opts.shards,
        ..Default::default()
    };
    registry.update(|s| *s = base.clone());
    // The URL and TLS files are checked before anything waits on them.
    crate::source::connect::Connector::new(&opts.source.redis)?;
    let mut cmds = Commands::new(&opts.source.redis, opts.source.retry_timeout)?;
    let membership = Membership::new(&opts.source.group, &opts.source.consumer, opts.lease_ttl);
    let mut shards = Shards { running: BTreeMap::new(), done: BTreeSet::new(), retired: Stats::default() };
    let mut total = RunSummary {
        stats: Stats::default(),
        durable_latency: Default::default(),
        dedup_ids: 0,
        elapsed: Duration::ZERO,
    };
    let mut beat = tokio::time::interval((opts.lease_ttl / 3).max(Duration::from_millis(100)));
    let mut publish = tokio::time::interval(Duration::from_millis(100));
    let shutdown = futures::FutureExt::fuse(shutdown);
    tokio::pin!(shutdown);
    let result: Result<()> = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = beat.tick() => {
                // Connecting may take longer than a TTL (a cluster's slot discovery after a
                // failover): cut short, it would start over at every beat and never finish.
                let limit = match cmds.is_connected() {
                    true => opts.lease_ttl,
                    false => opts.lease_ttl.max(crate::source::commands::CONNECT_TIMEOUT * 2),
                };
                let members = match tokio::time::timeout(limit, membership.beat(&mut cmds)).await {
                    Ok(Ok(m)) => m,
                    Ok(Err(Error::Config(e))) => break Err(Error::Config(e)),
                    Ok(Err(e)) => { tracing::warn!(error = %e, "Heartbeat failed; keeping the shards this worker runs."); continue }
                    Err(_) => {
                        // A cluster connection to a node that failed over can stay wedged: the
                        // next beat connects anew.
                        cmds.disconnect();
                        tracing::warn!("Heartbeat timed out; keeping the shards this worker runs; reconnecting.");
                        continue
                    }
                };
                base.standby_polled = Some(Instant::now());
                let mine = assign::assign(opts.assignment, opts.shards, &members, &opts.source.consumer);
                let fair = opts.shards.div_ceil(members.len().max(1) as u32) as usize;
                shards.follow(&mine, fair, &opts, &live, started);
            }
            _ = publish.tick() => {
                if let Err(e) = shards.reap(&mut total, opts.exit_when_idle.is_some()).await {
                    break Err(e);
                }
                registry.update(|s| *s = shards.snapshot(&base));
                if opts.exit_when_idle.is_some() && shards.running.is_empty() && !shards.done.is_empty() {
                    break Ok(());
                }
            }
        }
    };
    let stopped = shards.stop_all(&mut total).await;
    registry.update(|s| *s = shards.snapshot(&base));
    if let Err(e) = tokio::time::timeout(opts.lease_ttl, membership.leave(&mut cmds)).await.unwrap_or(Ok(())) {
        tracing::warn!(error = %e, "Could not leave the group's member set; this worker's heartbeat expires instead.");
    }
    result?;
    stopped?;
    total.elapsed = started.elapsed();
    Ok(total)
}

/// A shard term running on its own task.
struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<RunSummary>>,
    registry: Registry,
    /// Stopped because the assignment moved the shard (not finished by itself).
    handed_over: bool,
}

/// The shards this worker runs.
struct Shards {
    running: BTreeMap<u32, Running>,
    /// Finished for good (`exit_when_idle`): not started again.
    done: BTreeSet<u32>,
    /// Totals of the shards this worker ran before (kept so counters never go down).
    retired: Stats,
}

impl Shards {
    /// Starts the shards newly assigned (each waits for its lease). A shard assigned
    /// elsewhere stops waiting for its lease; one this worker holds is handed over only while
    /// it holds more than its `fair` share (so a standby joining a single shard leaves it
    /// where it is, and a worker joining a sharded group gets its share at once).
    fn follow(&mut self, mine: &[ShardId], fair: usize, opts: &RunOptions, live: &LiveSlot, started: Instant) {
        for shard in mine {
            if self.running.contains_key(&shard.index) || self.done.contains(&shard.index) {
                continue;
            }
            let (stop, stopped) = watch::channel(false);
            let registry = Registry::default();
            let task =
                tokio::spawn(run_shard(opts.for_shard(*shard), registry.clone(), live.clone(), started, stopped));
            tracing::info!(shard = shard.index, of = shard.count, "Running shard.");
            self.running.insert(shard.index, Running { stop, task, registry, handed_over: false });
        }
        let holds = |r: &Running| !matches!(r.registry.get().role, Role::Standby);
        let held = self.running.values().filter(|r| holds(r)).count();
        for (k, r) in &mut self.running {
            if r.handed_over || mine.iter().any(|s| s.index == *k) {
                continue;
            }
            let holding = holds(r);
            if holding && held <= fair {
                continue;
            }
            if holding {
                tracing::info!(shard = k, "Shard assigned to another worker; handing it over.");
            }
            r.handed_over = true;
            let _ = r.stop.send(true);
        }
    }

    /// Collects the terms that ended; an error of one stops the worker.
    async fn reap(&mut self, total: &mut RunSummary, exit_when_idle: bool) -> Result<()> {
        let ended: Vec<u32> = self.running.iter().filter(|(_, r)| r.task.is_finished()).map(|(k, _)| *k).collect();
        for k in ended {
            let Some(r) = self.running.remove(&k) else { continue };
            let summary = r.task.await.map_err(|e| Error::Internal(format!("shard {k}: {e}")))??;
            let mut totals = r.registry.get().stats;
            totals.streams.clear();
            self.retired.add(&totals);
            total.add(&summary);
            if exit_when_idle && !r.handed_over {
                self.done.insert(k);
            }
        }
        Ok(())
    }

    /// Stops every term (each commits and acks what it read) and collects them.
    async fn stop_all(&mut self, total: &mut RunSummary) -> Result<()> {
        for r in self.running.values() {
            let _ = r.stop.send(true);
        }
        let mut first_error = Ok(());
        for (k, r) in std::mem::take(&mut self.running) {
            match r.task.await.map_err(|e| Error::Internal(format!("shard {k}: {e}"))).and_then(|r| r) {
                Ok(summary) => total.add(&summary),
                Err(e) if first_error.is_ok() => first_error = Err(e),
                Err(e) => tracing::error!(shard = k, error = %e, "Shard stopped with an error."),
            }
            let mut totals = r.registry.get().stats;
            totals.streams.clear();
            self.retired.add(&totals);
        }
        first_error
    }

    /// The worker's snapshot: its running shards' combined, plus the totals of retired ones.
    fn snapshot(&self, base: &Snapshot) -> Snapshot {
        let shards: Vec<(u32, Snapshot)> = self.running.iter().map(|(k, r)| (*k, r.registry.get())).collect();
        let held = shards.iter().filter(|(_, s)| s.role != Role::Standby).map(|(k, _)| *k).collect();
        let shards: Vec<Snapshot> = shards.into_iter().map(|(_, s)| s).collect();
        let mut s = Snapshot::combine(base, &shards);
        s.stats.add(&self.retired);
        (s.shards, s.shards_held) = (base.shards, held);
        s
    }
}

/// One shard: standby until it holds the shard's lease, a term as its holder, back to
/// standby when fenced; until `stop`.
async fn run_shard(
    opts: RunOptions,
    registry: Registry,
    live: LiveSlot,
    started: Instant,
    mut stop: watch::Receiver<bool>,
) -> Result<RunSummary> {
    registry.update(|s| {
        (s.group, s.consumer, s.started) = (opts.source.group.clone(), opts.source.consumer.clone(), Some(started))
    });
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    // Fused: a stop that completed during a term is not polled again.
    let shutdown = futures::FutureExt::fuse(stopped);
    tokio::pin!(shutdown);
    loop {
        registry.update(|s| s.role = Role::Standby);
        match term::lead(&opts, &registry, &live, started, &mut shutdown).await {
            Err(Error::Fenced(why)) if !futures::future::FusedFuture::is_terminated(&shutdown) => {
                live.set(None);
                tracing::warn!(shard = opts.shard.index, reason = %why, "Fenced: this worker stopped committing the shard; back to standby.");
            }
            Err(Error::Fenced(why)) => {
                // Stopping (or handing the shard over) and fenced on the way out: the lease's
                // next holder redoes what this term did not commit; nothing was acked beyond it.
                live.set(None);
                tracing::warn!(shard = opts.shard.index, reason = %why, "Fenced while stopping the shard: its last checkpoint stands.");
                let stats = crate::metrics::Stats::default();
                let (durable_latency, elapsed) = (Default::default(), started.elapsed());
                return Ok(RunSummary { stats, durable_latency, dedup_ids: 0, elapsed });
            }
            other => return other,
        }
    }
}

impl RunSummary {
    fn add(&mut self, o: &RunSummary) {
        self.stats.add(&o.stats);
        self.durable_latency.add(&o.durable_latency);
        self.dedup_ids += o.dedup_ids;
    }
}

/// Readiness of the lake: a listing of eventide's own prefix every `interval` (cheap on
/// every store); `/readyz` fails while it errors.
async fn probe_lake(
    lake: crate::sink::lake::Lake,
    registry: Registry,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let prefix = object_store::path::Path::from(crate::sink::lake::INTERNAL_PREFIX);
    loop {
        let listed =
            tokio::time::timeout(Duration::from_secs(10), lake.store().list_with_delimiter(Some(&prefix))).await;
        let ok = matches!(listed, Ok(Ok(_)));
        if !ok {
            tracing::warn!("The lake did not answer a listing; /readyz reports not ready.");
        }
        registry.update(|s| s.lake_ok = ok);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}
