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

mod process;
mod recovery;
mod term;

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub use crate::config::RunOptions;
use crate::error::{Error, Result};
use crate::metrics::{Registry, Role, Stats};
use crate::window::live::LiveSlot;

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

/// Runs the worker until `shutdown` completes, the streams are idle for `exit_when_idle`,
/// or an error stops it. On a clean stop everything read is committed and acked.
/// [`crate::run`] serves the ops API beside it.
pub async fn run(opts: RunOptions, published: Published, shutdown: impl Future<Output = ()>) -> Result<RunSummary> {
    let started = Instant::now();
    let Published { registry, live } = published;
    registry.update(|s| {
        s.group = opts.source.group.clone();
        s.consumer = opts.source.consumer.clone();
        s.started = Some(started);
        s.role = Role::Standby;
    });
    // The URL and TLS files are checked before anything waits on them.
    crate::source::connect::client(&opts.source.redis)?;
    // Fused: a shutdown that completed during a term is not polled again.
    let shutdown = futures::FutureExt::fuse(shutdown);
    tokio::pin!(shutdown);
    loop {
        registry.update(|s| s.role = Role::Standby);
        match term::lead(&opts, &registry, &live, started, &mut shutdown).await {
            Err(Error::Fenced(why)) if !futures::future::FusedFuture::is_terminated(&shutdown) => {
                live.set(None);
                tracing::warn!(reason = %why, "Fenced: this instance stopped committing; back to standby.");
            }
            other => return other,
        }
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
