//! Traces of the event path (`--otlp-endpoint`), received by a small OTLP/HTTP receiver
//! written here (protobuf bodies decoded with the OpenTelemetry protocol types): every batch
//! gets `read` → `decode` → `commit` spans with exact counts, links to exactly the first
//! sampled `traceparent`s of its accepted events, and its checkpoint's trace; a collector
//! that is down changes nothing in the run.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use eventide::telemetry::OtlpOptions;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{self, RedisServer, read_archive};

/// Every export request received, decoded.
type Received = Arc<Mutex<Vec<ExportTraceServiceRequest>>>;

/// An OTLP/HTTP receiver on a free loopback port: answers every `POST /v1/traces` with an
/// empty protobuf response (keep-alive), and keeps the decoded requests.
async fn receiver() -> (u16, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Received = Arc::default();
    let keep = got.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 8192];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    assert!(head.starts_with("post /v1/traces "), "unexpected request: {head}");
                    assert!(head.contains("content-type: application/x-protobuf"), "{head}");
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .expect("a content-length");
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 65536];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf.drain(..head_end + len).skip(head_end).collect();
                    keep.lock().unwrap().push(ExportTraceServiceRequest::decode(body.as_slice()).unwrap());
                    let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if sock.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, got)
}

fn value(kv: &[KeyValue], key: &str) -> Option<any_value::Value> {
    kv.iter().find(|k| k.key == key).and_then(|k| k.value.clone()).and_then(|AnyValue { value }| value)
}

fn int(span: &Span, key: &str) -> i64 {
    match value(&span.attributes, key) {
        Some(any_value::Value::IntValue(v)) => v,
        v => panic!("{}: {key} = {v:?}", span.name),
    }
}

fn text(span: &Span, key: &str) -> String {
    match value(&span.attributes, key) {
        Some(any_value::Value::StringValue(v)) => v,
        v => panic!("{}: {key} = {v:?}", span.name),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A Dapr CloudEvent carrying `traceparent`.
fn cloud_event(i: usize, event_id: &str, traceparent: &str) -> String {
    let data = serde_json::json!({
        "event_id": event_id,
        "event_type": "order.order.created",
        "timestamp": format!("2026-12-01T10:{:02}:{:02}Z", i / 60 % 60, i % 60),
        "version": "1.0",
        "data": {"order_id": format!("o-{i}"), "amount_cents": 100 + i},
        "metadata": {"correlation_id": format!("c-{i}"), "source": "order-service"},
    });
    serde_json::json!({
        "data": data, "datacontenttype": "application/json", "id": format!("ce-{i}"),
        "pubsubname": "pubsub", "source": "order", "specversion": "1.0", "time": "2026-12-01T10:00:00Z",
        "topic": "orders", "traceid": traceparent, "traceparent": traceparent, "tracestate": "",
        "type": "com.dapr.event.sent",
    })
    .to_string()
}

/// What was published: per entry id, its `traceparent` when the event is accepted and the
/// traceparent sampled (`None`: rejected, a duplicate, or nothing to link).
struct Published {
    ids: Vec<(String, Option<String>)>,
    never: BTreeSet<String>,
}

/// 400 entries: 240 events with sampled traceparents (pairs of events share one, as two
/// events of one order would), 40 with unsampled and 40 with malformed traceparents, 40
/// duplicates and 40 malformed entries.
async fn publish(conn: &mut redis::aio::MultiplexedConnection) -> Published {
    let mut out = Published { ids: Vec::new(), never: BTreeSet::new() };
    for i in 0..400usize {
        let tp_sampled = format!("00-{:032x}-{:016x}-01", 0xabc000 + i / 2, 0x100 + i / 2);
        let (body, linkable) = match i % 10 {
            // Malformed entries: rejected, never linked.
            9 => ("{\"not\": \"an event\"".to_string(), None),
            // Unsampled and invalid traceparents: never linked.
            7 => {
                let tp = format!("00-{:032x}-{:016x}-00", 0xdef000 + i, 0x200 + i);
                out.never.insert(tp.clone());
                (cloud_event(i, &format!("e-{i}"), &tp), None)
            }
            8 => (cloud_event(i, &format!("e-{i}"), "00-zz-not-hex-01"), None),
            // A duplicate of the previous event (same event_id and timestamp).
            5 => (cloud_event(i - 1, &format!("e-{}", i - 1), &tp_sampled), None),
            _ => (cloud_event(i, &format!("e-{i}"), &tp_sampled), Some(tp_sampled)),
        };
        let id: String = redis::cmd("XADD").arg("shop").arg("*").arg("data").arg(body).query_async(conn).await.unwrap();
        out.ids.push((id, linkable));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_traced_read_decode_commit_with_their_events_traceparents() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let published = publish(&mut conn).await;
    let (port, received) = receiver().await;
    let lake = tempfile::tempdir().unwrap();
    let mut opts = support::options(&redis.url(), &["shop"], lake.path().to_str().unwrap(), "c1");
    opts.source.batch_size = 50;
    opts.otlp =
        Some(OtlpOptions { endpoint: format!("http://127.0.0.1:{port}"), sample_ratio: 1.0, links_per_batch: 8 });
    let s = support::run_until_idle(opts).await;
    assert_eq!(read_archive(lake.path()).len() as u64, s.stats.accepted);

    let requests = received.lock().unwrap().clone();
    let mut spans: Vec<Span> = Vec::new();
    for r in &requests {
        for rs in &r.resource_spans {
            let res = rs.resource.as_ref().expect("a resource");
            assert_eq!(value(&res.attributes, "service.name"), Some(any_value::Value::StringValue("eventide".into())));
            assert_eq!(value(&res.attributes, "service.instance.id"), Some(any_value::Value::StringValue("c1".into())));
            spans.extend(rs.scope_spans.iter().flat_map(|ss| ss.spans.iter().cloned()));
        }
    }
    let by_id: HashMap<Vec<u8>, &Span> = spans.iter().map(|s| (s.span_id.clone(), s)).collect();
    let named = |n: &'static str| spans.iter().filter(move |s| s.name == n);
    let children = |parent: &Span, n: &str| -> Vec<&Span> {
        spans.iter().filter(|s| s.parent_span_id == parent.span_id && s.name == n).collect()
    };
    for s in &spans {
        assert!(s.start_time_unix_nano > 0 && s.start_time_unix_nano <= s.end_time_unix_nano, "{}", s.name);
    }

    // Batches: exact counts, read and decode inside, links to exactly the first sampled
    // traceparents of their accepted events.
    let batches: Vec<&Span> = named("eventide.batch").collect();
    assert!(batches.len() >= 8, "400 entries in batches of at most 50: {} batch spans", batches.len());
    let sum = |k: &str| batches.iter().map(|b| int(b, k)).sum::<i64>() as u64;
    assert_eq!(sum("messaging.batch.message_count"), s.stats.read);
    assert_eq!(sum("eventide.accepted"), s.stats.accepted);
    assert_eq!(sum("eventide.duplicates"), s.stats.duplicates);
    assert_eq!(sum("eventide.rejected"), s.stats.invalid_total());
    assert_eq!((s.stats.read, s.stats.invalid_total(), s.stats.duplicates), (400, 40, 40));
    let position = |id: &str| published.ids.iter().position(|(i, _)| i == id).expect("a published id");
    let mut linked = BTreeSet::new();
    for b in &batches {
        assert_eq!(b.kind, opentelemetry_proto::tonic::trace::v1::span::SpanKind::Consumer as i32);
        assert!(b.parent_span_id.is_empty(), "a batch is the root of its trace");
        assert_eq!(text(b, "messaging.destination.name"), "shop");
        assert_eq!(text(b, "messaging.consumer.group.name"), "analytics");
        let (first, last) = (position(&text(b, "eventide.first_id")), position(&text(b, "eventide.last_id")));
        assert_eq!((last - first + 1) as i64, int(b, "messaging.batch.message_count"));
        // The batch's accepted events in order, each traceparent once, at most 8.
        let mut want: Vec<String> = Vec::new();
        for tp in published.ids[first..=last].iter().filter_map(|(_, tp)| tp.clone()) {
            if want.len() < 8 && !want.contains(&tp) {
                want.push(tp);
            }
        }
        let got: Vec<String> =
            b.links.iter().map(|l| format!("00-{}-{}-01", hex(&l.trace_id), hex(&l.span_id))).collect();
        assert_eq!(got, want, "links of the batch {first}..={last}");
        linked.extend(got);
        for name in ["read", "decode"] {
            let c = children(b, name);
            assert_eq!(c.len(), 1, "one {name} span per batch");
            assert_eq!(c[0].trace_id, b.trace_id);
            assert!(c[0].start_time_unix_nano >= b.start_time_unix_nano);
            assert!(c[0].end_time_unix_nano <= b.end_time_unix_nano);
        }
        // The commit: after the batch, linked to the checkpoint that made it durable.
        let commit = children(b, "commit");
        assert_eq!(commit.len(), 1, "one commit span per batch");
        assert_eq!(int(commit[0], "eventide.epoch"), int(b, "eventide.epoch"));
        assert!(commit[0].end_time_unix_nano >= b.end_time_unix_nano);
        let cp = by_id.get(&commit[0].links[0].span_id).expect("the commit links its checkpoint's span");
        assert_eq!(cp.name, "eventide.checkpoint");
        assert_eq!(int(cp, "eventide.epoch"), int(b, "eventide.epoch"));
    }
    assert!(linked.len() >= 8, "links were made: {}", linked.len());
    let links: BTreeSet<String> = spans
        .iter()
        .flat_map(|s| s.links.iter().map(|l| format!("{}-{}", hex(&l.trace_id), hex(&l.span_id))))
        .collect();
    for tp in &published.never {
        assert!(!links.iter().any(|l| tp.contains(l)), "an unsampled traceparent was linked: {tp}");
    }

    // Checkpoints: their phases in order, inside them, and links back to their batches.
    let checkpoints: Vec<&Span> = named("eventide.checkpoint").collect();
    assert!(!checkpoints.is_empty());
    let mut traced = 0;
    for cp in &checkpoints {
        let mut at = cp.start_time_unix_nano;
        for phase in ["files", "state", "manifest", "publish", "ack"] {
            let p = children(cp, phase);
            assert_eq!(p.len(), 1, "one {phase} phase per checkpoint");
            assert!(p[0].start_time_unix_nano >= at && p[0].end_time_unix_nano <= cp.end_time_unix_nano, "{phase}");
            at = p[0].end_time_unix_nano;
        }
        traced += int(cp, "eventide.traced_batches");
        for l in &cp.links {
            assert_eq!(by_id.get(&l.span_id).map(|s| s.name.as_str()), Some("eventide.batch"));
        }
    }
    assert_eq!(traced as usize, batches.len(), "every traced batch is committed by one checkpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_changes_nothing_and_ratio_zero_sends_nothing() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    publish(&mut conn).await;
    // Nobody listens at the first endpoint; the second receives, but nothing is sampled.
    let closed = crate::support::http::free_port();
    let (port, received) = receiver().await;
    let mut archives = Vec::new();
    for (endpoint, ratio) in [(format!("http://127.0.0.1:{closed}"), 1.0), (format!("http://127.0.0.1:{port}/"), 0.0)] {
        let lake = tempfile::tempdir().unwrap();
        let mut opts = support::options(&redis.url(), &["shop"], lake.path().to_str().unwrap(), "c1");
        opts.source.group = format!("g{}", archives.len());
        opts.otlp = Some(OtlpOptions { endpoint, sample_ratio: ratio, links_per_batch: 8 });
        let s = support::run_until_idle(opts).await;
        assert_eq!((s.stats.read, s.stats.invalid_total(), s.stats.duplicates), (400, 40, 40));
        archives.push(read_archive(lake.path()));
    }
    assert_eq!(archives[0], archives[1]);
    assert_eq!(archives[0].len(), 320, "accepted: all but the malformed and the duplicates");
    let spans: usize = received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.iter().filter(|s| s.name == "eventide.batch").count())
        .sum();
    assert_eq!(spans, 0, "ratio 0 traces no batch");
}
