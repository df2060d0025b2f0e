//! [`Config::check`]: every semantic problem of a configuration, each with its key and what
//! to do (the CLI adds the file and line).

use std::time::Duration;

use super::{Config, Problem, TableFormat};

impl Config {
    /// Every semantic problem, each with its key and what to do.
    pub fn check(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut bad = |key: &'static str, message: String| p.push(Problem { key, message });
        for url in self.redis_url.split(',').filter(|u| self.redis_cluster || !u.is_empty()) {
            if let Err(e) = ::redis::Client::open(url.trim()) {
                bad("redis_url", format!("{e}; expected redis://host:port or rediss://host:port"));
            }
        }
        if self.redis_cluster && self.shards == 1 && self.streams.len() > 1 {
            bad(
                "streams",
                "in a Redis Cluster one read covers keys of one slot: with several streams, use shards > 1 \
                 (the keys of shard k share the tag {k}), or one stream per group"
                    .into(),
            );
        }
        for (key, file) in [
            ("redis_password_file", &self.redis_password_file),
            ("redis_ca_file", &self.redis_ca_file),
            ("redis_client_cert", &self.redis_client_cert),
            ("redis_client_key", &self.redis_client_key),
            ("http_token_file", &self.http_token_file),
        ] {
            if let Some(f) = file
                && let Err(e) = std::fs::metadata(f)
            {
                bad(key, format!("cannot read {f}: {e}"));
            }
        }
        let tls = self.redis_ca_file.is_some() || self.redis_client_cert.is_some() || self.redis_client_key.is_some();
        if tls && !self.redis_url.starts_with("rediss://") {
            bad("redis_url", "TLS files are set: use a rediss:// URL".into());
        }
        if self.redis_client_cert.is_some() != self.redis_client_key.is_some() {
            bad("redis_client_cert", "set redis_client_cert and redis_client_key together (mutual TLS)".into());
        }
        if self.http_token.is_some() && self.http_token_file.is_some() {
            bad("http_token_file", "set http_token or http_token_file, not both".into());
        }
        if self.streams.is_empty() {
            bad("streams", "no stream to read; list at least one stream key".into());
        }
        for s in &self.streams {
            if s.trim().is_empty() {
                bad("streams", "a stream key is empty".into());
            }
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = self.streams.iter().find(|s| !seen.insert(*s)) {
            bad("streams", format!("stream {dup:?} is listed twice"));
        }
        if !(1..=4096).contains(&self.shards) {
            bad("shards", format!("{} is outside 1..=4096", self.shards));
        }
        match (self.workers, self.worker_index) {
            (Some(n), Some(i)) if n == 0 || i >= n => {
                bad("worker_index", format!("{i} is not below workers ({n}): index from 0 to workers - 1"))
            }
            (Some(_), None) | (None, Some(_)) => {
                bad("workers", "set workers and worker_index together (or neither, for rendezvous hashing)".into())
            }
            _ => {}
        }
        if self.group.trim().is_empty() {
            bad("group", "the consumer group name is empty".into());
        }
        if self.consumer.trim().is_empty() {
            bad("consumer", "the consumer name is empty; use a name stable per instance".into());
        }
        if self.read_mode().is_err() {
            bad(
                "read_mode",
                format!(
                    "{:?}: use \"auto\" (noack unless the group has pending entries), \"group\" (pending \
                     list, XACK; a group shared with other consumers) or \"noack\" (XREAD from checkpoints)",
                    self.read_mode
                ),
            );
        }
        if let Err(e) = self.table_format.parse::<TableFormat>() {
            bad("table_format", e);
        }
        if self.start_id != "0" && self.start_id != "$" && self.start_id.parse::<crate::entry::EntryId>().is_err() {
            bad("start_id", format!("{:?} is not `0`, `$` or a stream id like 1767268800000-0", self.start_id));
        }
        if self.field.is_empty() {
            bad("field", "the entry field name is empty (Dapr uses `data`)".into());
        }
        if self.read_max_bytes.0 < 64 * 1024 {
            bad("read_max_bytes", "use at least 64KiB".into());
        }
        if !(1_000..=1_000_000_000).contains(&self.max_pending_entries) {
            bad("max_pending_entries", format!("{} is outside 1000..=1000000000", self.max_pending_entries));
        }
        if !(1..=100_000).contains(&self.batch_size) {
            bad("batch_size", format!("{} is outside 1..=100000", self.batch_size));
        }
        if self.block.0 < Duration::from_millis(1) || self.block.0 > Duration::from_secs(60) {
            bad("block", "use a block time between 1ms and 60s".into());
        }
        if self.claim_min_idle.0 < self.roll_age.0 * 2 {
            bad(
                "claim_min_idle",
                format!(
                    "{} is less than 2 × roll_age ({}): entries still waiting for their file would be claimed back",
                    self.claim_min_idle, self.roll_age
                ),
            );
        }
        if self.dedup_max_bytes.0 < 1 << 20 {
            bad("dedup_max_bytes", "use at least 1MiB".into());
        }
        if self.dedup_horizon.0 < Duration::from_secs(1) {
            bad("dedup_horizon", "use at least 1s".into());
        }
        if self.roll_bytes.0 < 1024 {
            bad("roll_bytes", "use at least 1KiB (e.g. \"128MiB\")".into());
        }
        if self.max_buffered_bytes.0 < self.roll_bytes.0 {
            bad("max_buffered_bytes", "must be at least roll_bytes".into());
        }
        if !(1..=1_000_000).contains(&self.max_open_files) {
            bad("max_open_files", format!("{} is outside 1..=1000000", self.max_open_files));
        }
        if self.roll_age.0 < Duration::from_millis(10) {
            bad("roll_age", "use at least 10ms".into());
        }
        if !(1..=22).contains(&self.zstd_level) {
            bad("zstd_level", format!("{} is outside 1..=22", self.zstd_level));
        }
        if !self.http_addr.is_empty() && self.http_addr.parse::<std::net::SocketAddr>().is_err() {
            bad(
                "http_addr",
                format!("{:?} is not an address like 127.0.0.1:9750 (empty turns the server off)", self.http_addr),
            );
        }
        if self.lease_ttl.0 < Duration::from_millis(300) {
            bad("lease_ttl", "use at least 300ms (it is renewed every third of it)".into());
        }
        if self.probe_interval.0 < Duration::from_millis(100) {
            bad("probe_interval", "use at least 100ms".into());
        }
        if let Some(e) = self.otlp_endpoint.as_ref().filter(|e| !e.trim().is_empty())
            && let Err(err) = crate::telemetry::traces_url(e.trim())
        {
            bad("otlp_endpoint", err.to_string().trim_start_matches("otlp_endpoint: ").to_string());
        }
        if !(0.0..=1.0).contains(&self.otlp_sample_ratio) {
            bad(
                "otlp_sample_ratio",
                format!("{} is outside 0..=1 (the fraction of batches traced)", self.otlp_sample_ratio),
            );
        }
        if self.otlp_links_per_batch > 128 {
            bad(
                "otlp_links_per_batch",
                format!("{} is above 128 (OpenTelemetry's limit of links per span)", self.otlp_links_per_batch),
            );
        }
        if self.lake.trim().is_empty() {
            bad("lake", "the lake location is empty; use a path or a URL".into());
        }
        p
    }
}
