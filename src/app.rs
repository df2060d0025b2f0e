//! One `eventide run` process: a worker ([`crate::worker`]) and, when configured, the ops
//! HTTP server ([`crate::api`]) beside it, answering from process start (standby included)
//! until the worker has stopped, and the trace exporter ([`crate::telemetry`]), flushed at
//! the end. The top of the library: the binary and the tests start runs here.

use std::future::Future;

use tokio::sync::watch;

use crate::api::{self, ApiContext};
use crate::config::RunOptions;
use crate::error::Result;
use crate::telemetry;
use crate::worker::{self, Published, RunSummary};

/// Runs a worker until `shutdown` completes (see [`worker::run`]), with the ops server when
/// `opts.api` is set and the trace exporter when `opts.otlp` is.
pub async fn run(mut opts: RunOptions, shutdown: impl Future<Output = ()>) -> Result<RunSummary> {
    let exporter = match &opts.otlp {
        Some(o) => {
            let (exporter, spans) = telemetry::Exporter::start(o, &opts.source.consumer).await?;
            tracing::info!(endpoint = %o.endpoint, sample_ratio = o.sample_ratio, "Exporting traces over OTLP/HTTP.");
            opts.spans = spans;
            Some(exporter)
        }
        None => None,
    };
    let published = Published::default();
    let (stop_api, stopped) = watch::channel(false);
    let server = match &opts.api {
        Some(a) => {
            let (listener, addr) = match api::bind(a).await {
                Ok(bound) => bound,
                Err(e) => {
                    if let Some(x) = exporter {
                        x.shutdown().await;
                    }
                    return Err(e);
                }
            };
            tracing::info!(%addr, "Serving /metrics, /healthz, /readyz, /api/status and /api/pipelines.");
            let ctx = ApiContext::new(a.clone(), published.registry.clone(), published.live.clone());
            let mut stopped = stopped;
            let done = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            Some(tokio::spawn(api::serve(listener, ctx, done)))
        }
        None => None,
    };
    let result = worker::run(opts, published, shutdown).await;
    let _ = stop_api.send(true);
    if let Some(s) = server {
        let _ = s.await;
    }
    if let Some(e) = exporter {
        e.shutdown().await;
    }
    result
}
