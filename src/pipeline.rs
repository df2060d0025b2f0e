//! The pipeline: wires the stages and owns the invariants.
//!
//! ```text
//!  reader task ──bounded channel──▶ processor: decode → dedup → archive ──▶ lake
//!  (XREADGROUP)                         │ rejects → DLQ (XADD)     │ commit
//!                                        └──────── XACK ◀──────────┘ (only durable batches)
//! ```
//! [`run`] serves the ops API from the start and cycles through the instance's roles in its
//! group: standby (waiting for the lease), then one term as the lease holder (`term`:
//! recovery, reading, checkpoints) until the shutdown future, `exit_when_idle` or an error
//! stops it (then without acking what is not durable). A holder whose lease may have lapsed
//! (see [`crate::source::lease`]) stops committing and goes back to standby.

mod process;
mod recovery;
mod term;

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::api::ApiContext;
use crate::api::windows::WindowsSlot;
use crate::decode::DecodeOptions;
use crate::error::{Error, Result};
use crate::metrics::{Registry, Role, Stats};
use crate::sink::archive::ArchiveOptions;
use crate::source::SourceOptions;

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub source: SourceOptions,
    pub decode: DecodeOptions,
    pub archive: ArchiveOptions,
    pub lake: String,
    /// Object store options (e.g. `aws_endpoint`), on top of the environment.
    pub lake_options: std::collections::BTreeMap<String, String>,
    /// A lake opened elsewhere, used instead of `lake` (tests wrap a store to inject faults).
    pub lake_store: Option<crate::sink::lake::Lake>,
    pub dlq_stream: Option<String>,
    pub dlq: crate::sink::dlq::DlqOptions,
    pub dedup_horizon: Duration,
    /// Memory cap of the dedup table.
    pub dedup_max_bytes: usize,
    /// Window state of one pipeline beyond which it fails (the others go on).
    pub pipeline_max_state_bytes: usize,
    /// How far a pipeline's watermark may run ahead of the wall clock (producer clock skew).
    pub max_clock_skew: Duration,
    pub roll_age: Duration,
    /// How often a checkpoint commits (at most `roll_age`).
    pub checkpoint_interval: Duration,
    /// How often (at most) the dedup snapshot is saved at a commit; always at a clean stop.
    pub state_interval: Duration,
    pub claim_interval: Duration,
    pub exit_when_idle: Option<Duration>,
    /// Bound on the final checkpoint after a shutdown request.
    pub shutdown_timeout: Duration,
    /// The group lease's time to live (see [`crate::source::lease`]).
    pub lease_ttl: Duration,
    pub progress_interval: Duration,
    /// Directory of pipeline files (`*.toml`); `None` or a missing directory: no windowed
    /// aggregations.
    pub pipelines: Option<std::path::PathBuf>,
    /// The ops HTTP server; `None`: off.
    pub api: Option<crate::api::ApiOptions>,
    pub probe_interval: Duration,
}

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

/// Runs the pipeline until `shutdown` completes, the streams are idle for `exit_when_idle`,
/// or an error stops it. On a clean stop everything read is committed and acked. The HTTP
/// server (when configured) answers from the start, on standby too.
pub async fn run(opts: PipelineOptions, shutdown: impl Future<Output = ()>) -> Result<RunSummary> {
    let started = Instant::now();
    let registry = Registry::default();
    registry.update(|s| {
        s.group = opts.source.group.clone();
        s.consumer = opts.source.consumer.clone();
        s.started = Some(started);
        s.role = Role::Standby;
    });
    let (stop_api_tx, stop_api) = watch::channel(false);
    let windows = WindowsSlot::default();
    let api = match &opts.api {
        Some(a) => {
            let (listener, addr) = crate::api::bind(a).await?;
            tracing::info!(%addr, "Serving /metrics, /healthz, /readyz, /api/status and /api/pipelines.");
            let ctx = ApiContext::new(a.clone(), registry.clone(), windows.clone());
            let mut stop = stop_api;
            let done = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            Some(tokio::spawn(crate::api::serve(listener, ctx, done)))
        }
        None => None,
    };
    // Fused: a shutdown that completed during a term is not polled again.
    let shutdown = futures::FutureExt::fuse(shutdown);
    tokio::pin!(shutdown);
    let result = loop {
        registry.update(|s| s.role = Role::Standby);
        match term::lead(&opts, &registry, &windows, started, &mut shutdown).await {
            Err(Error::Fenced(why)) if !futures::future::FusedFuture::is_terminated(&shutdown) => {
                windows.set(None);
                tracing::warn!(reason = %why, "Fenced: this instance stopped committing; back to standby.");
            }
            other => break other,
        }
    };
    let _ = stop_api_tx.send(true);
    if let Some(a) = api {
        let _ = a.await;
    }
    result
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
