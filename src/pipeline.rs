//! The pipeline: wires the stages and owns the invariants.
//!
//! ```text
//!  reader task ──bounded channel──▶ processor: decode → dedup → archive ──▶ lake
//!  (XREADGROUP)                         │ rejects → DLQ (XADD)     │ commit
//!                                        └──────── XACK ◀──────────┘ (only durable batches)
//! ```
//! The processor runs in the caller's task; it stops on the shutdown future, on
//! `exit_when_idle`, or on an error (then without acking what is not durable).

mod process;
mod recovery;

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::api::ApiContext;
use crate::api::windows::{LiveRequest, WindowsSource};
use crate::decode::DecodeOptions;
use crate::error::Result;
use crate::metrics::{Registry, Stats};
use crate::sink::archive::ArchiveOptions;
use crate::source::SourceOptions;
use crate::source::commands::Commands;
use crate::source::lease::Lease;
use crate::source::probe::{self, ProbeTarget};
use crate::source::reader::{self, ReaderMsg};
use process::Processor;

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
    pub dedup_horizon: Duration,
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
/// or an error stops it. On a clean stop everything read is committed and acked.
pub async fn run(opts: PipelineOptions, shutdown: impl Future<Output = ()>) -> Result<RunSummary> {
    let started = Instant::now();
    let registry = Registry::default();
    registry.update(|s| {
        s.group = opts.source.group.clone();
        s.consumer = opts.source.consumer.clone();
        s.started = Some(started);
    });
    tokio::pin!(shutdown);
    // One active instance per group: wait (standby) until this one holds the lease.
    let mut lease_cmds = Commands::new(&opts.source.redis_url, opts.source.retry_timeout)?;
    let (group, consumer) = (&opts.source.group, &opts.source.consumer);
    let lease = tokio::select! {
        l = Lease::acquire(&mut lease_cmds, group, consumer, opts.lease_ttl) => l?,
        _ = &mut shutdown => {
            tracing::info!("Shutdown requested while on standby.");
            return Ok(RunSummary { stats: Stats::default(), durable_latency: Default::default(), dedup_ids: 0, elapsed: started.elapsed() });
        }
    };
    tracing::info!(token = lease.token, "Holding the group's lease: this instance reads.");
    let (lost_tx, mut lost_rx) = watch::channel::<Option<String>>(None);
    let mut p = Processor::start(&opts, lost_rx.clone()).await?;
    registry.update(|s| s.lake_ok = true);
    let (tx, mut rx) = mpsc::channel(4);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (live_tx, mut live_rx) = mpsc::channel::<LiveRequest>(8);
    let api = match &opts.api {
        Some(a) => {
            let (listener, addr) = crate::api::bind(a).await?;
            tracing::info!(%addr, "Serving /metrics, /healthz, /readyz, /api/status and /api/pipelines.");
            let mut stop = stop_rx.clone();
            let done = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let windows = (!p.pipelines.is_empty()).then(|| WindowsSource {
                lake: p.lake().clone(),
                tables: p.pipelines.output_schemas(),
                live: live_tx.clone(),
            });
            let ctx = ApiContext { opts: a.clone(), registry: registry.clone(), windows };
            Some(tokio::spawn(crate::api::serve(listener, ctx, done)))
        }
        None => None,
    };
    drop(live_tx);
    let target = ProbeTarget {
        redis_url: opts.source.redis_url.clone(),
        group: opts.source.group.clone(),
        streams: opts.source.streams.iter().cloned().zip(p.dlq_keys().iter().cloned()).collect(),
    };
    let probe = tokio::spawn(probe::run(target, registry.clone(), opts.probe_interval, stop_rx.clone()));
    let lake_probe = tokio::spawn(probe_lake(p.lake().clone(), registry.clone(), opts.probe_interval, stop_rx.clone()));
    let keeper = tokio::spawn(lease.clone().keep(lease_cmds, lost_tx, stop_rx.clone()));
    let reader = tokio::spawn(reader::run(opts.source.clone(), p.read_after(), tx, stop_rx));

    let result = async {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_data = Instant::now();
        let mut drained = false;
        let mut last_claim: Option<Instant> = None;
        let mut last_progress = Instant::now();
        let mut bounded_input_done = false;
        loop {
            tokio::select! {
                biased;
                _ = lost_rx.changed() => {
                    let why = lost_rx.borrow().clone().unwrap_or_default();
                    return Err(crate::error::Error::Fenced(why));
                }
                _ = &mut shutdown => {
                    tracing::info!("Shutdown requested; committing.");
                    break;
                }
                msg = rx.recv() => match msg {
                    Some(ReaderMsg::Batch(batch)) => {
                        last_data = Instant::now();
                        drained = false;
                        p.process(batch).await?;
                    }
                    Some(ReaderMsg::Idle) => drained = true,
                    Some(ReaderMsg::Disconnected(e)) => {
                        drained = false;
                        p.stats.disconnects += 1;
                        tracing::warn!(error = %e, "Reader lost Redis; reconnecting.");
                    }
                    None => break,
                },
                Some(req) = live_rx.recv() => {
                    let _ = req.reply.send(p.pipelines.live_rows(&req.pipeline));
                }
                _ = tick.tick() => {
                    p.pipelines.on_tick(Instant::now())?;
                    p.publish(&registry);
                    if p.checkpoint_due(opts.checkpoint_interval, opts.roll_age) {
                        p.commit_all(false).await?;
                    }
                    if !opts.source.noack && last_claim.is_none_or(|t| t.elapsed() >= opts.claim_interval) {
                        last_claim = Some(Instant::now());
                        p.claim().await?;
                    }
                    if last_progress.elapsed() >= opts.progress_interval {
                        last_progress = Instant::now();
                        p.log_progress(started.elapsed());
                    }
                    if opts.exit_when_idle.is_some_and(|d| drained && last_data.elapsed() >= d) {
                        tracing::info!("Streams drained and idle; closing every window, committing and exiting.");
                        bounded_input_done = true;
                        break;
                    }
                }
            }
        }
        // Stop reading; process what the reader still passes on (its read in flight).
        let _ = stop_tx.send(true);
        while let Some(msg) = rx.recv().await {
            if let ReaderMsg::Batch(batch) = msg {
                p.process(batch).await?;
            }
        }
        if bounded_input_done {
            p.pipelines.flush()?;
        }
        Ok::<(), crate::error::Error>(())
    }
    .await;

    drop(rx);
    let shutdown_timeout = opts.shutdown_timeout;
    let finished = async {
        result?;
        let last = async {
            p.commit_all(true).await?;
            p.finish_acks().await
        };
        tokio::time::timeout(shutdown_timeout, last).await.map_err(|_| {
            crate::error::Error::Internal(format!(
                "the final checkpoint did not finish within {shutdown_timeout:?}; nothing after the last \
                 committed checkpoint was acked (a restart resumes from it)"
            ))
        })??;
        tracing::info!(
            epoch = p.stats.checkpoint_epoch,
            archived_rows = p.stats.rows_committed,
            table_rows = p.stats.table_rows_committed,
            acked = p.stats.acked,
            open_windows = p.pipelines.queries().iter().map(|q| q.open_windows()).sum::<usize>(),
            "Stopped cleanly: everything read is in a committed checkpoint (open windows included) and acked."
        );
        Ok::<(), crate::error::Error>(())
    }
    .await;
    p.publish(&registry);
    let _ = stop_tx.send(true);
    let _ = reader.await;
    let _ = probe.await;
    let _ = lake_probe.await;
    if let Some(a) = api {
        let _ = a.await;
    }
    let _ = keeper.await;
    finished?;
    // Hand over at once (a standby need not wait for the lease to expire).
    if let Err(e) = lease.release(&mut Commands::new(&opts.source.redis_url, opts.source.retry_timeout)?).await {
        tracing::warn!(error = %e, "Could not release the group's lease; a standby takes over when it expires.");
    }
    let summary = RunSummary {
        stats: p.stats.clone(),
        durable_latency: p.durable_exact.clone(),
        dedup_ids: p.dedup_len(),
        elapsed: started.elapsed(),
    };
    p.log_progress(summary.elapsed);
    Ok(summary)
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
