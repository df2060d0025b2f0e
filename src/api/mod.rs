//! The ops HTTP server of `eventide run`: `/metrics` (Prometheus), `/healthz` (the process
//! answers), `/readyz` (Redis probed, lake reachable, processor not stalled) and
//! `/api/status` (the snapshot as JSON, for `eventide status`), the live dashboard at `/`
//! (`dashboard.html`, plain JavaScript polling the JSON APIs), and the aggregates API for
//! dashboards ([`windows`]: `/api/pipelines`, `/api/pipelines/{name}/windows`). Bound to
//! loopback by default; an optional bearer token (compared in constant time) guards every
//! path but `/healthz` and the static page.
//!
//! It runs from process start, on standby too (`/healthz` 200 while alive, `/readyz` says
//! `standby`, `recovering`, `reading` or what is broken), on hyper with bounded connections,
//! head and body sizes and timeouts ([`http`]). It sits beside the pipeline: it only reads
//! the [`Registry`] the processor and the Redis probe publish to, so a slow scrape never
//! slows the data path; live windows are asked of the processor with a bounded wait.

pub mod http;
pub mod windows;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

pub use crate::config::ApiOptions;
use crate::error::Result;
use crate::metrics::{Registry, Snapshot, prometheus};
use crate::window::live::LiveSlot;
use http::{Request, Response, ServerStats};

/// The live dashboard (`/`): one static page, no build step.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Binds `opts.addr` (port 0 picks a free port) and returns the bound address.
pub async fn bind(opts: &ApiOptions) -> Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(opts.addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => crate::error::Error::Config(format!(
            "http_addr {}: the address is in use (another eventide?); pick another with --http-addr \
             (127.0.0.1:0 for any free port) or turn the API off with --http-addr \"\"",
            opts.addr
        )),
        _ => e.into(),
    })?;
    let addr = l.local_addr()?;
    Ok((l, addr))
}

/// What the server reads: the snapshot, and (for the aggregates API) the lake, the
/// pipelines' tables and a line to the processor for windows not yet committed.
#[derive(Clone)]
pub struct ApiContext {
    pub opts: ApiOptions,
    pub registry: Registry,
    /// The live windows of the term holding the lease in this process, if any.
    pub windows: windows::Windows,
    pub server: Arc<ServerStats>,
}

impl ApiContext {
    pub fn new(opts: ApiOptions, registry: Registry, live: LiveSlot) -> Self {
        ApiContext { opts, registry, windows: windows::Windows::new(live), server: Default::default() }
    }
}

/// Serves until `shutdown` completes (then requests in flight finish).
pub async fn serve(listener: TcpListener, ctx: ApiContext, shutdown: impl Future<Output = ()>) {
    let (limits, stats) = (ctx.opts.limits.clone(), ctx.server.clone());
    let ctx = Arc::new(ctx);
    let handler = move |req: Request| {
        let ctx = ctx.clone();
        async move { route(&req, &ctx).await }
    };
    http::serve(listener, limits, stats, handler, shutdown).await;
}

/// Whether `given` is the configured token, in time independent of where they differ.
fn token_matches(given: Option<&str>, token: &str) -> bool {
    given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(token.as_bytes())))
}

/// Answers one request.
pub async fn route(req: &Request, ctx: &ApiContext) -> Response {
    let (opts, registry) = (&ctx.opts, &ctx.registry);
    if req.method != "GET" && req.method != "HEAD" {
        return Response::text(405, "only GET and HEAD\n");
    }
    if req.path == "/healthz" {
        return Response::text(200, "ok\n");
    }
    if req.path == "/" || req.path == "/index.html" {
        // Static; the data it fetches is guarded by the token.
        return Response::new(200, "text/html; charset=utf-8", DASHBOARD);
    }
    if let Some(token) = &opts.token {
        let given = req.header("authorization").and_then(|v| v.strip_prefix("Bearer "));
        if !token_matches(given, token) {
            return Response::text(401, "missing or wrong bearer token\n");
        }
    }
    let snap = registry.get();
    let now = Instant::now();
    match req.path.as_str() {
        "/metrics" => Response::new(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            prometheus::render_with(&snap, now, chrono::Utc::now().timestamp_millis(), |o| {
                server_metrics(o, &ctx.server)
            }),
        ),
        "/readyz" => match snap.readiness(now, opts.stall_after) {
            Ok(role) => Response::text(200, format!("ready: {}\n", role.as_str())),
            Err(why) => Response::text(503, format!("not ready: {}\n", why.join("; "))),
        },
        "/api/status" => Response::new(200, "application/json", status_json(&snap, now).to_string()),
        path if path == "/api/pipelines" || path.starts_with("/api/pipelines/") => match ctx.windows.get() {
            Some(w) => w.handle(req).await,
            None if snap.role == crate::metrics::Role::Reading => Response::text(404, "no pipelines in this process\n"),
            None => Response::text(
                503,
                format!("{}: this instance does not hold the group's lease; ask the reader\n", snap.role.as_str()),
            ),
        },
        _ => Response::text(404, "not found; try /metrics, /healthz, /readyz, /api/status, /api/pipelines\n"),
    }
}

/// The HTTP server's own families.
fn server_metrics(o: &mut prometheus::Out, s: &ServerStats) {
    let get = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
    o.one(prometheus::HTTP_OPEN, "gauge", "Open connections to the ops HTTP server.", get(&s.open));
    o.one(prometheus::HTTP_ACCEPTED, "counter", "Connections accepted by the ops HTTP server.", get(&s.accepted));
    o.one(
        prometheus::HTTP_REFUSED,
        "counter",
        "Connections refused at the connection cap (every connection busy).",
        get(&s.refused),
    );
    o.one(
        prometheus::HTTP_EVICTED,
        "counter",
        "Idle connections closed to make room at the connection cap.",
        get(&s.evicted),
    );
}

/// The snapshot as JSON (`eventide status` reads it).
pub fn status_json(s: &Snapshot, now: Instant) -> serde_json::Value {
    let now_us = chrono::Utc::now().timestamp_micros();
    let uptime = s.started.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
    serde_json::json!({
        "group": s.group,
        "consumer": s.consumer,
        "role": s.role.as_str(),
        "holder": s.holder,
        "uptime_seconds": uptime,
        "read": s.stats.read,
        "accepted": s.stats.accepted,
        "duplicates": s.stats.duplicates,
        "acked": s.stats.acked,
        "unacked": s.unacked,
        "last_commit_age_seconds": s.last_commit_unix_ms.map(|ms| (now_us / 1000 - ms) as f64 / 1000.0),
        // Shard 0's holder of several shards: the merger's progress.
        "merge": (s.stats.merged_windows > 0 || s.stats.merge_waiting_end_us.is_some()).then(|| serde_json::json!({
            "merged_windows": s.stats.merged_windows,
            "waiting_seconds": s.stats.merge_waiting_end_us.map_or(0.0, |end| now_us.saturating_sub(end).max(0) as f64 / 1e6),
        })),
        // Upper bounds of the Prometheus buckets holding the quantiles.
        "durable_latency_ms": {
            "p50": s.stats.durable_latency.quantile_ms(0.5),
            "p99": s.stats.durable_latency.quantile_ms(0.99),
            "count": s.stats.durable_latency.count,
        },
        "streams": s.probe.streams.iter().map(|p| {
            let c = s.streams().find(|(n, _)| *n == p.stream).map(|(_, c)| c.clone()).unwrap_or_default();
            serde_json::json!({
                "stream": p.stream,
                "read": c.read,
                "accepted": c.accepted,
                "duplicates": c.duplicates,
                "invalid": c.invalid.iter().sum::<u64>(),
                "rate_per_second": if uptime > 0.0 { c.read as f64 / uptime } else { 0.0 },
                "length": p.length,
                "lag": p.lag,
                "pending": p.pending,
                "trimmed_unread": p.trimmed_unread,
                "dlq_stream": p.dlq_stream,
                "dlq_depth": p.dlq_length,
            })
        }).collect::<Vec<_>>(),
        "pipelines": s.pipelines.iter().map(|p| serde_json::json!({
            "name": p.name,
            "input": p.stats.input,
            "counted": p.stats.counted,
            "late": p.stats.late,
            "windows": p.stats.windows,
            "watermark_lag_seconds": p.watermark_us.map(|w| (now_us - w) as f64 / 1e6),
            "open_windows": p.open_windows,
            "pending_rows": p.pending_rows,
            "failed": p.failed,
        })).collect::<Vec<_>>(),
        "probe_error": s.probe.error,
    })
}
