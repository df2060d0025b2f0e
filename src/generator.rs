//! A load generator of realistic e-commerce events (`eventide gen`, tests, benchmarks).
//!
//! Ten event types across order, payment, checkout, cart, catalog, shipping and customer
//! services; optional publisher duplicates (the same event re-sent), out-of-order timestamps
//! (`jitter`), malformed entries covering every rejection class, and Dapr's CloudEvents
//! wrapping. Deterministic for a given seed, so tests know exactly what to expect.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use serde_json::json;

use crate::decode::Reason;
use crate::error::Result;
use crate::names::ShardId;

/// Generator settings.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// Entries to produce in total (events, duplicates and malformed ones).
    pub entries: u64,
    /// Share of entries that re-send an earlier event (same event_id).
    pub duplicates: f64,
    /// Share of malformed entries, cycling through every rejection class.
    pub malformed: f64,
    /// Timestamps are moved back by up to this much (out-of-order arrival).
    pub jitter: Duration,
    /// Wrap events as Dapr does (CloudEvents envelope in `data`, sometimes `metadata`).
    pub dapr: bool,
    pub seed: u64,
    /// Event time of the first event (µs since the epoch).
    pub start_us: i64,
    /// Event-time spacing between consecutive events (µs).
    pub spacing_us: i64,
    /// Each event's time is the clock when it is made (less any jitter), as a live service
    /// stamps its events; `start_us` and `spacing_us` are not used.
    pub live_times: bool,
    /// Size of the oversize malformed class (should exceed the pipeline's max_entry_bytes).
    pub oversize_bytes: usize,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            entries: 10_000,
            duplicates: 0.0,
            malformed: 0.0,
            jitter: Duration::ZERO,
            dapr: false,
            seed: 42,
            start_us: chrono::Utc::now().timestamp_micros() - 600_000_000,
            spacing_us: 1_000,
            live_times: false,
            oversize_bytes: (1 << 20) + 1024,
        }
    }
}

/// What a generated entry is meant to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A new event (first occurrence of its id).
    Event,
    /// A re-send of an earlier event.
    Duplicate,
    /// A malformed entry the pipeline must reject with this reason.
    Malformed(Reason),
}

/// One generated stream entry.
#[derive(Debug, Clone)]
pub struct GenEntry {
    pub fields: Vec<(&'static str, Vec<u8>)>,
    pub kind: Kind,
    /// The business event id (events and duplicates).
    pub event_id: Option<String>,
    pub event_type: Option<&'static str>,
}

impl GenEntry {
    /// The entry as the reader would pass it on, with id `id`.
    pub fn to_raw(&self, id: crate::entry::EntryId) -> crate::entry::RawEntry {
        let fields = self.fields.iter().map(|(k, v)| (bytes::Bytes::from_static(k.as_bytes()), v.clone().into()));
        crate::entry::RawEntry { id, fields: fields.collect() }
    }
}

const TYPES: [(&str, u32); 10] = [
    ("catalog.product.viewed", 30),
    ("cart.item_added", 18),
    ("checkout.started", 10),
    ("order.created", 9),
    ("payment.completed", 8),
    ("payment.failed", 2),
    ("order.cancelled", 1),
    ("shipping.shipment.dispatched", 7),
    ("customer.registered", 3),
    ("customer.profile_updated", 2),
];

/// The deterministic generator (an iterator of entries).
pub struct Generator {
    opts: GenOptions,
    rng: SmallRng,
    produced: u64,
    events: u64,
    recent: VecDeque<(String, &'static str, Vec<u8>)>,
    malformed_next: usize,
}

impl Generator {
    pub fn new(opts: GenOptions) -> Self {
        let rng = SmallRng::seed_from_u64(opts.seed);
        Generator { opts, rng, produced: 0, events: 0, recent: VecDeque::new(), malformed_next: 0 }
    }

    fn uuid(&mut self) -> String {
        let a: u128 = self.rng.random();
        let h = format!("{a:032x}");
        format!("{}-{}-4{}-a{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
    }

    fn time(&mut self, i: u64) -> String {
        let jitter = self.opts.jitter.as_micros() as i64;
        let back = if jitter > 0 { self.rng.random_range(0..=jitter) } else { 0 };
        let at = match self.opts.live_times {
            true => chrono::Utc::now().timestamp_micros(),
            false => self.opts.start_us + i as i64 * self.opts.spacing_us,
        };
        rfc3339(at - back)
    }

    fn new_event(&mut self) -> (String, &'static str, Vec<u8>) {
        let i = self.events;
        self.events += 1;
        let total: u32 = TYPES.iter().map(|t| t.1).sum();
        let mut pick = self.rng.random_range(0..total);
        let event_type = TYPES
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map_or(TYPES[0].0, |t| t.0);
        let id = self.uuid();
        let customer = format!("cust-{:05}", self.rng.random_range(0..20_000u32));
        let order = format!("ord-{:07}", self.rng.random_range(0..5_000_000u32));
        let amount = (self.rng.random_range(500..50_000u32) as f64) / 100.0;
        let sku = format!("sku-{:04}", self.rng.random_range(0..2_000u32));
        let data = match event_type {
            "catalog.product.viewed" => json!({"sku": sku, "customer_id": customer, "price": amount}),
            "cart.item_added" => {
                json!({"cart_id": format!("cart-{}", &customer[5..]), "customer_id": customer, "sku": sku, "quantity": self.rng.random_range(1..4u32), "price": amount})
            }
            "checkout.started" => json!({"checkout_id": self.uuid(), "customer_id": customer, "cart_value": amount}),
            "order.created" => {
                json!({"order_id": order, "customer_id": customer, "amount": amount, "currency": "EUR", "items": self.rng.random_range(1..6u32)})
            }
            "payment.completed" => {
                json!({"payment_id": self.uuid(), "order_id": order, "customer_id": customer, "amount": amount, "method": "card"})
            }
            "payment.failed" => {
                json!({"payment_id": self.uuid(), "order_id": order, "customer_id": customer, "amount": amount, "reason": "insufficient_funds"})
            }
            "order.cancelled" => json!({"order_id": order, "customer_id": customer, "reason": "customer_request"}),
            "shipping.shipment.dispatched" => json!({"shipment_id": self.uuid(), "order_id": order, "carrier": "dhl"}),
            "customer.registered" => json!({"customer_id": customer, "country": "DE"}),
            _ => json!({"customer_id": customer, "fields": ["email"]}),
        };
        let domain = event_type.split('.').next().unwrap_or("app");
        let body = json!({
            "event_id": id,
            "event_type": event_type,
            "timestamp": self.time(i),
            "version": "1.0",
            "data": data,
            "metadata": {"correlation_id": self.uuid(), "source": format!("{domain}-service")},
        });
        (id, event_type, serde_json::to_vec(&body).unwrap_or_default())
    }

    fn wrap(&mut self, event: &[u8], event_type: &str) -> Vec<(&'static str, Vec<u8>)> {
        if !self.opts.dapr {
            return vec![("data", event.to_vec())];
        }
        let domain = event_type.split('.').next().unwrap_or("app");
        let trace = format!("00-{:032x}-{:016x}-01", self.rng.random::<u128>(), self.rng.random::<u64>());
        // Go's json.Marshal sorts keys; `data` is the embedded event JSON.
        let mut ce = Vec::with_capacity(event.len() + 400);
        ce.extend_from_slice(b"{\"data\":");
        ce.extend_from_slice(event);
        let rest = format!(
            ",\"datacontenttype\":\"application/json\",\"id\":\"{}\",\"pubsubname\":\"pubsub\",\"source\":\"{domain}\",\"specversion\":\"1.0\",\"time\":\"{}\",\"topic\":\"events\",\"traceid\":\"{trace}\",\"traceparent\":\"{trace}\",\"tracestate\":\"\",\"type\":\"com.dapr.event.sent\"}}",
            self.uuid(),
            rfc3339(chrono::Utc::now().timestamp_micros()),
        );
        ce.extend_from_slice(rest.as_bytes());
        // HTTP publishes carry `metadata`, gRPC ones don't; the field order is random.
        match self.rng.random_range(0..3u8) {
            0 => vec![("data", ce)],
            1 => vec![("data", ce), ("metadata", b"{}".to_vec())],
            _ => vec![("metadata", b"{}".to_vec()), ("data", ce)],
        }
    }

    fn malformed(&mut self) -> GenEntry {
        const CLASSES: [Reason; 14] = Reason::ALL;
        let reason = CLASSES[self.malformed_next % CLASSES.len()];
        self.malformed_next += 1;
        let ts = rfc3339(self.opts.start_us);
        let id = self.uuid();
        let body: Vec<u8> = match reason {
            Reason::EntryTooLarge => format!(
                r#"{{"event_id":"{id}","event_type":"order.created","timestamp":"{ts}","data":"{}"}}"#,
                "x".repeat(self.opts.oversize_bytes)
            )
            .into_bytes(),
            Reason::MissingField => {
                return GenEntry {
                    fields: vec![("payload", b"{}".to_vec())],
                    kind: Kind::Malformed(reason),
                    event_id: None,
                    event_type: None,
                };
            }
            Reason::InvalidUtf8 => vec![b'{', b'"', 0xc3, 0x28, b'"', b'}'],
            Reason::InvalidJson => format!(r#"{{"event_id":"{id}","event_type":"order.created","#).into_bytes(),
            Reason::NotAnObject => b"[\"order.created\"]".to_vec(),
            Reason::InvalidField => {
                format!(r#"{{"event_id":42,"event_type":"order.created","timestamp":"{ts}"}}"#).into_bytes()
            }
            Reason::InvalidEnvelope => {
                format!(r#"{{"specversion":"1.0","id":"{id}","type":"order.created","data_base64":"%%%"}}"#)
                    .into_bytes()
            }
            Reason::MissingEventId => {
                format!(r#"{{"event_type":"order.created","timestamp":"{ts}","data":{{}}}}"#).into_bytes()
            }
            Reason::InvalidEventId => {
                format!(r#"{{"event_id":"","event_type":"order.created","timestamp":"{ts}"}}"#).into_bytes()
            }
            Reason::MissingEventType => format!(r#"{{"event_id":"{id}","timestamp":"{ts}"}}"#).into_bytes(),
            Reason::InvalidEventType => {
                format!(r#"{{"event_id":"{id}","event_type":"../../OrderCreated","timestamp":"{ts}"}}"#).into_bytes()
            }
            Reason::MissingTimestamp => format!(r#"{{"event_id":"{id}","event_type":"order.created"}}"#).into_bytes(),
            Reason::InvalidTimestamp => {
                format!(r#"{{"event_id":"{id}","event_type":"order.created","timestamp":"last tuesday"}}"#).into_bytes()
            }
            Reason::TimestampInFuture => {
                format!(r#"{{"event_id":"{id}","event_type":"order.created","timestamp":"2999-01-01T00:00:00Z"}}"#)
                    .into_bytes()
            }
        };
        GenEntry { fields: vec![("data", body)], kind: Kind::Malformed(reason), event_id: None, event_type: None }
    }
}

impl Iterator for Generator {
    type Item = GenEntry;

    fn next(&mut self) -> Option<GenEntry> {
        if self.produced >= self.opts.entries {
            return None;
        }
        self.produced += 1;
        let u: f64 = self.rng.random();
        if u < self.opts.malformed {
            return Some(self.malformed());
        }
        if u < self.opts.malformed + self.opts.duplicates && !self.recent.is_empty() {
            let i = self.rng.random_range(0..self.recent.len());
            let (id, t, body) = self.recent[i].clone();
            let fields = self.wrap(&body, t);
            return Some(GenEntry { fields, kind: Kind::Duplicate, event_id: Some(id), event_type: Some(t) });
        }
        let (id, t, body) = self.new_event();
        let fields = self.wrap(&body, t);
        if self.recent.len() >= 1000 {
            self.recent.pop_front();
        }
        self.recent.push_back((id.clone(), t, body));
        Some(GenEntry { fields, kind: Kind::Event, event_id: Some(id), event_type: Some(t) })
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(us: i64) -> String {
    DateTime::from_timestamp_micros(us).unwrap_or_default().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Counts of what was published.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Published {
    pub entries: u64,
    pub events: u64,
    pub duplicates: u64,
    pub malformed: u64,
}

/// `XADD`s `entries` to `stream`, pipelined `chunk` at a time; with `rate` (entries/s) paced.
pub async fn publish(
    conn: &mut MultiplexedConnection,
    stream: &str,
    entries: impl IntoIterator<Item = GenEntry>,
    chunk: usize,
    rate: Option<f64>,
) -> Result<Published> {
    publish_sharded(conn, stream, 1, entries, chunk, rate).await
}

/// [`publish`] over the `shards` keys of the logical stream `stream`: each entry goes to the
/// shard of its `event_id` ([`ShardId::of_event`]; an entry without one, to the shard of its
/// bytes), so every copy of an event lands on one shard. One pipeline per shard (a Redis
/// Cluster takes a pipeline only within one slot), on any connection (a cluster's too).
pub async fn publish_sharded(
    conn: &mut impl ConnectionLike,
    stream: &str,
    shards: u32,
    entries: impl IntoIterator<Item = GenEntry>,
    chunk: usize,
    rate: Option<f64>,
) -> Result<Published> {
    let keys: Vec<String> = ShardId::all(shards).map(|s| s.stream_key(stream)).collect();
    let start = tokio::time::Instant::now();
    let mut last_progress = start;
    let mut out = Published::default();
    let mut pipes: Vec<redis::Pipeline> = keys.iter().map(|_| redis::pipe()).collect();
    let mut n = 0;
    for e in entries {
        let shard = match &e.event_id {
            Some(id) => ShardId::of_event(id, shards),
            None => {
                (xxhash_rust::xxh3::xxh3_64(e.fields.first().map_or(&[][..], |(_, v)| v)) % keys.len() as u64) as u32
            }
        };
        let pipe = &mut pipes[shard as usize];
        let cmd = pipe.cmd("XADD").arg(&keys[shard as usize]).arg("*");
        for (k, v) in &e.fields {
            cmd.arg(*k).arg(v.as_slice());
        }
        pipe.ignore();
        out.entries += 1;
        match e.kind {
            Kind::Event => out.events += 1,
            Kind::Duplicate => out.duplicates += 1,
            Kind::Malformed(_) => out.malformed += 1,
        }
        n += 1;
        if n >= chunk.max(1) {
            flush(conn, &mut pipes).await?;
            n = 0;
            if let Some(r) = rate.filter(|r| *r > 0.0) {
                tokio::time::sleep_until(start + Duration::from_secs_f64(out.entries as f64 / r)).await;
            }
            if last_progress.elapsed() >= Duration::from_secs(10) {
                last_progress = tokio::time::Instant::now();
                let rate = out.entries as f64 / start.elapsed().as_secs_f64();
                tracing::info!(stream, entries = out.entries, rate = rate as u64, "Publishing.");
            }
        }
    }
    flush(conn, &mut pipes).await?;
    Ok(out)
}

/// Sends every non-empty pipeline, in shard order.
async fn flush(conn: &mut impl ConnectionLike, pipes: &mut [redis::Pipeline]) -> Result<()> {
    for pipe in pipes.iter_mut().filter(|p| p.cmd_iter().next().is_some()) {
        pipe.query_async::<()>(conn).await?;
        *pipe = redis::pipe();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{DecodeOptions, Decoder};
    use crate::entry::EntryId;

    #[test]
    fn every_generated_entry_decodes_as_intended() {
        for dapr in [false, true] {
            let opts = GenOptions {
                entries: 3000,
                duplicates: 0.05,
                malformed: 0.05,
                dapr,
                oversize_bytes: 5000,
                ..Default::default()
            };
            let mut d = Decoder::new(DecodeOptions { max_entry_bytes: 4096, ..Default::default() });
            let now = chrono::Utc::now().timestamp_micros();
            let mut reasons = std::collections::BTreeSet::new();
            for e in Generator::new(opts) {
                let raw = e.to_raw(EntryId::default());
                match (&e.kind, d.decode(&raw, now)) {
                    (Kind::Malformed(want), Err(r)) => {
                        assert_eq!(*want, r.reason, "{}", r.detail);
                        reasons.insert(r.reason);
                    }
                    (Kind::Event | Kind::Duplicate, Ok(ev)) => {
                        assert_eq!(Some(ev.event_id.as_ref()), e.event_id.as_deref())
                    }
                    (k, r) => panic!("{k:?} decoded as {r:?}"),
                }
            }
            assert_eq!(reasons.len(), Reason::ALL.len(), "every class generated");
        }
    }

    /// `live_times`: each event carries the clock's time when it was made, not `start_us` on.
    #[test]
    fn live_times_follow_the_clock() {
        let before = chrono::Utc::now().timestamp_micros();
        let opts = GenOptions { entries: 200, live_times: true, start_us: 0, ..Default::default() };
        let mut d = Decoder::new(DecodeOptions::default());
        for e in Generator::new(opts) {
            let raw = e.to_raw(EntryId::default());
            let ev = d.decode(&raw, chrono::Utc::now().timestamp_micros()).unwrap();
            let after = chrono::Utc::now().timestamp_micros();
            // Times are to the millisecond.
            assert!(
                (before - 1000..=after).contains(&ev.event_time_us),
                "{} not in [{before}, {after}]",
                ev.event_time_us
            );
        }
    }
}
