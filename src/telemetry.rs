//! Traces of the event path, exported over OTLP/HTTP (`--otlp-endpoint`; off by default).
//!
//! Where it sits: the ops layer, beside [`crate::metrics`]. The worker asks [`Spans`] for a
//! [`BatchTrace`] per batch and a [`CheckpointTrace`] per checkpoint; nothing here touches the
//! data, and the exporter runs on the OpenTelemetry SDK's own thread with a bounded queue
//! (spans beyond it are dropped, never waited for), so a slow or absent collector cannot slow
//! the pipeline.
//!
//! What a traced batch looks like (one trace per batch, `sample_ratio` of the batches):
//! - `eventide.batch` (kind consumer, from the read to the end of processing), with links to
//!   up to `links_per_batch` of its events' W3C `traceparent`s (only sampled ones: an
//!   unsampled parent has no trace to open), so an order's trace leads on into analytics;
//!   - `read`: the `XREADGROUP` that returned it (a blocking read includes its wait);
//!   - `decode`: decode → dedup → archive and windows;
//!   - `commit`: the checkpoint that made it durable (emitted when it committed), linked to
//!     that checkpoint's own trace.
//! - `eventide.checkpoint` (one trace per checkpoint): `files`, `state`, `manifest`,
//!   `publish` and `ack` children, links to the batches it made durable.
//!
//! The cost is per batch, never per event, when tracing is off (one branch per event) or a
//! batch is not sampled; a sampled batch looks at events only until its links are full.
//! Spans are built after the fact with the times measured, so nothing is held open across an
//! `await`.

/// The tracing target of the stage times (`EVENTIDE_LOG=eventide::stages=trace`): per batch,
/// per live request, per long turn of the term's loop and per lake query of the aggregates
/// API; what `scripts/bench-freshness.py --stages` reads to split a marker's latency.
pub const STAGES: &str = "eventide::stages";

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::error::{Error, Result};

/// Batches' span contexts kept per epoch for its `commit` spans; beyond it, batches of the
/// epoch get no `commit` span (the checkpoint's trace still counts them).
const MAX_TRACED_PER_EPOCH: usize = 4096;
/// Links from a checkpoint's span to the batches it made durable.
const MAX_CHECKPOINT_LINKS: usize = 128;
/// How long the last spans may take to reach the collector at the end of a run.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how much to trace.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpOptions {
    /// The collector's OTLP/HTTP URL: a base (`http://collector:4318`, `/v1/traces` is
    /// appended) or the full traces URL.
    pub endpoint: String,
    /// Fraction of batches traced, 0..=1.
    pub sample_ratio: f64,
    /// Event `traceparent`s linked per traced batch.
    pub links_per_batch: usize,
}

/// The traces URL for an endpoint: a bare base gets `/v1/traces`.
pub fn traces_url(endpoint: &str) -> Result<String> {
    let url = url::Url::parse(endpoint)
        .map_err(|e| Error::Config(format!("otlp_endpoint: {endpoint:?} is not a URL ({e}); use http://host:4318")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::Config(format!("otlp_endpoint: {endpoint:?}: use an http:// or https:// URL (OTLP/HTTP)")));
    }
    Ok(match url.path() {
        "" | "/" => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
        _ => endpoint.to_string(),
    })
}

/// The exporter of a run: flush it with [`Exporter::shutdown`] at the end.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Starts the SDK's batch exporter towards `opts.endpoint`; `instance` names this process
    /// (`service.instance.id`).
    pub async fn start(opts: &OtlpOptions, instance: &str) -> Result<(Exporter, Spans)> {
        let url = traces_url(&opts.endpoint)?;
        let instance = instance.to_string();
        // The SDK's blocking HTTP client must be built (and dropped) outside the async runtime.
        let provider = tokio::task::spawn_blocking(move || {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(url)
                .with_timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| Error::Config(format!("otlp_endpoint: {e}")))?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name("eventide")
                .with_attribute(KeyValue::new("service.instance.id", instance))
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build();
            Ok::<_, Error>(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
        })
        .await
        .map_err(|e| Error::Internal(format!("starting the trace exporter: {e}")))??;
        let tracer = provider.tracer("eventide");
        let spans = Spans {
            inner: Some(Arc::new(Inner {
                tracer,
                ratio: opts.sample_ratio.clamp(0.0, 1.0),
                links: opts.links_per_batch,
            })),
        };
        Ok((Exporter { provider }, spans))
    }

    /// Sends what is queued (for at most a few seconds) and stops the exporter.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let done = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT)).await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "Could not send the last trace spans to the OTLP collector.");
        }
    }
}

struct Inner {
    tracer: SdkTracer,
    ratio: f64,
    links: usize,
}

/// The tracer of the event path; [`Spans::default`] is off and costs nothing.
#[derive(Clone, Default)]
pub struct Spans {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Spans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.inner.is_some() { "Spans(on)" } else { "Spans(off)" })
    }
}

/// When a batch's read started and returned.
#[derive(Debug, Clone, Copy)]
pub struct ReadTime {
    pub started: SystemTime,
    pub returned: SystemTime,
}

impl Spans {
    /// A trace for one batch, its decode starting now, or `None` (tracing off, or this batch
    /// not sampled).
    pub fn batch(&self, read: Option<ReadTime>) -> Option<BatchTrace> {
        let inner = self.inner.as_ref()?;
        if inner.ratio < 1.0 && rand::random::<f64>() >= inner.ratio {
            return None;
        }
        let now = SystemTime::now();
        Some(BatchTrace {
            inner: inner.clone(),
            read,
            decode_started: now,
            decode_done: now,
            links: Vec::with_capacity(inner.links),
        })
    }

    /// A trace for one checkpoint, started now (it records nothing when tracing is off).
    pub fn checkpoint(&self) -> CheckpointTrace {
        let started = if self.inner.is_some() { SystemTime::now() } else { SystemTime::UNIX_EPOCH };
        CheckpointTrace { inner: self.inner.clone(), started, phases: Vec::new() }
    }
}

/// What a batch did, for its span's attributes.
#[derive(Debug, Clone, Default)]
pub struct BatchCounts {
    pub stream: String,
    pub group: String,
    pub shard: u32,
    pub epoch: u64,
    pub entries: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub bytes: u64,
    pub first_id: String,
    pub last_id: String,
}

/// The spans of one batch, being measured.
pub struct BatchTrace {
    inner: Arc<Inner>,
    read: Option<ReadTime>,
    decode_started: SystemTime,
    decode_done: SystemTime,
    links: Vec<Link>,
}

impl BatchTrace {
    /// Whether more event links are wanted (cheap: checked per event).
    #[inline]
    pub fn wants_links(&self) -> bool {
        self.links.len() < self.inner.links
    }

    /// Links an event's `traceparent` when it is valid and sampled (and not linked already).
    pub fn link(&mut self, traceparent: &str) {
        let Some(sc) = parse_traceparent(traceparent) else { return };
        if !sc.is_sampled() || self.links.iter().any(|l| l.span_context == sc) {
            return;
        }
        self.links.push(Link::with_context(sc));
    }

    pub fn decode_done(&mut self) {
        self.decode_done = SystemTime::now();
    }

    /// Emits the batch's spans (ending now); returns its context for the `commit` span.
    pub fn finish(self, c: BatchCounts) -> SpanContext {
        let tracer = &self.inner.tracer;
        let end = SystemTime::now();
        let start = self.read.map_or(self.decode_started, |r| r.started);
        let attrs = vec![
            KeyValue::new("messaging.system", "redis"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.destination.name", c.stream),
            KeyValue::new("messaging.consumer.group.name", c.group),
            KeyValue::new("messaging.batch.message_count", c.entries as i64),
            KeyValue::new("eventide.accepted", c.accepted as i64),
            KeyValue::new("eventide.duplicates", c.duplicates as i64),
            KeyValue::new("eventide.rejected", c.rejected as i64),
            KeyValue::new("eventide.bytes", c.bytes as i64),
            KeyValue::new("eventide.shard", i64::from(c.shard)),
            KeyValue::new("eventide.epoch", c.epoch as i64),
            KeyValue::new("eventide.first_id", c.first_id),
            KeyValue::new("eventide.last_id", c.last_id),
        ];
        let mut root = tracer.build_with_context(
            tracer
                .span_builder("eventide.batch")
                .with_kind(SpanKind::Consumer)
                .with_start_time(start)
                .with_attributes(attrs)
                .with_links(self.links),
            &Context::new(),
        );
        let sc = root.span_context().clone();
        let parent = Context::new().with_remote_span_context(sc.clone());
        if let Some(r) = self.read {
            child(
                tracer,
                &parent,
                "read",
                r.started,
                r.returned,
                vec![KeyValue::new("db.operation.name", "XREADGROUP")],
            );
        }
        child(tracer, &parent, "decode", self.decode_started, self.decode_done, Vec::new());
        root.end_with_timestamp(end);
        sc
    }
}

/// The phases of one checkpoint, being measured.
pub struct CheckpointTrace {
    inner: Option<Arc<Inner>>,
    started: SystemTime,
    phases: Vec<(&'static str, SystemTime, SystemTime)>,
}

impl CheckpointTrace {
    /// A phase that ran from the end of the previous one (or the start) until now.
    pub fn phase(&mut self, name: &'static str) {
        if self.inner.is_none() {
            return;
        }
        let from = self.phases.last().map_or(self.started, |p| p.2);
        self.phases.push((name, from, SystemTime::now()));
    }

    /// Emits the checkpoint's trace and a `commit` span under each batch it made durable.
    pub fn finish(self, epoch: u64, files: usize, rows: u64, bytes: u64, batches: &[SpanContext]) {
        let Some(inner) = &self.inner else { return };
        let tracer = &inner.tracer;
        let end = SystemTime::now();
        let links = batches.iter().take(MAX_CHECKPOINT_LINKS).map(|b| Link::with_context(b.clone())).collect();
        let attrs = vec![
            KeyValue::new("eventide.epoch", epoch as i64),
            KeyValue::new("eventide.files", files as i64),
            KeyValue::new("eventide.rows", rows as i64),
            KeyValue::new("eventide.bytes", bytes as i64),
            KeyValue::new("eventide.traced_batches", batches.len() as i64),
        ];
        let mut root = tracer.build_with_context(
            tracer
                .span_builder("eventide.checkpoint")
                .with_kind(SpanKind::Internal)
                .with_start_time(self.started)
                .with_attributes(attrs)
                .with_links(links),
            &Context::new(),
        );
        let cp = root.span_context().clone();
        let parent = Context::new().with_remote_span_context(cp.clone());
        for (name, from, to) in &self.phases {
            child(tracer, &parent, name, *from, *to, Vec::new());
        }
        root.end_with_timestamp(end);
        for b in batches {
            let mut span = tracer.build_with_context(
                tracer
                    .span_builder("commit")
                    .with_start_time(self.started)
                    .with_attributes([KeyValue::new("eventide.epoch", epoch as i64)])
                    .with_links(vec![Link::with_context(cp.clone())]),
                &Context::new().with_remote_span_context(b.clone()),
            );
            span.end_with_timestamp(end);
        }
    }
}

/// The batches traced in the epoch being built (bounded).
#[derive(Debug, Default)]
pub struct EpochTraces {
    batches: Vec<SpanContext>,
}

impl EpochTraces {
    pub fn add(&mut self, batch: SpanContext) {
        if self.batches.len() < MAX_TRACED_PER_EPOCH {
            self.batches.push(batch);
        }
    }

    /// The epoch's batches, leaving none.
    pub fn take(&mut self) -> Vec<SpanContext> {
        std::mem::take(&mut self.batches)
    }
}

fn child(
    tracer: &SdkTracer,
    parent: &Context,
    name: &'static str,
    start: SystemTime,
    end: SystemTime,
    attrs: Vec<KeyValue>,
) {
    let mut span = tracer.build_with_context(
        tracer.span_builder(Cow::Borrowed(name)).with_start_time(start).with_attributes(attrs),
        parent,
    );
    span.end_with_timestamp(end.max(start));
}

/// A W3C `traceparent` (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, later versions
/// read by the same prefix) as a remote span context; `None` when it is not one.
pub fn parse_traceparent(s: &str) -> Option<SpanContext> {
    let s = s.trim();
    let mut parts = s.splitn(5, '-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(version, 2) || version.eq_ignore_ascii_case("ff") || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    // Version 00 has exactly four fields; later versions may append more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let sc = SpanContext::new(trace_id, span_id, TraceFlags::new(flags & 1), true, TraceState::default());
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_as_w3c_says() {
        let sc = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        let unsampled = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.is_sampled());
        // A later version may carry more fields.
        assert!(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736",
            "not a traceparent",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn an_endpoint_base_gets_the_traces_path() {
        assert_eq!(traces_url("http://127.0.0.1:4318").unwrap(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces_url("http://127.0.0.1:4318/").unwrap(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces_url("https://c:4318/custom/traces").unwrap(), "https://c:4318/custom/traces");
        assert!(traces_url("127.0.0.1:4318").is_err());
        assert!(traces_url("grpc://c:4317").is_err());
    }
}
