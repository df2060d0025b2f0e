//! Names made safe for object paths (a leaf: imports nothing of the crate).

/// A name safe to use in a file name: ASCII letters, digits, `-` and `_`; others become `_`.
pub fn sanitize_name(name: &str) -> String {
    let s: String = name
        .chars()
        .take(64)
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    if s.is_empty() { "w".into() } else { s }
}

/// One shard of a group's streams: shard `index` of `count`. A logical stream `s` is the
/// `count` stream keys `s:{0}` … `s:{count-1}` (the hash tag places each on one Redis Cluster
/// slot, its dead-letter stream beside it); with one shard it is the key `s` itself, as
/// before shards existed. Shard `k` of a group reads key `k` of every configured stream and
/// has its own lease, checkpoint line and file writer name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId {
    pub index: u32,
    pub count: u32,
}

impl Default for ShardId {
    fn default() -> Self {
        ShardId { index: 0, count: 1 }
    }
}

impl ShardId {
    /// Every shard of `count`.
    pub fn all(count: u32) -> impl Iterator<Item = ShardId> {
        (0..count.max(1)).map(move |index| ShardId { index, count: count.max(1) })
    }

    /// The shard an event belongs to: producers may use any deterministic function of the
    /// `event_id` (every copy of an event must land on one shard); this is the one
    /// `eventide gen` uses: XXH3-64 of the id, modulo the shard count.
    pub fn of_event(event_id: &str, count: u32) -> u32 {
        (xxhash_rust::xxh3::xxh3_64(event_id.as_bytes()) % u64::from(count.max(1))) as u32
    }

    /// This shard's key of the logical stream `stream`.
    pub fn stream_key(&self, stream: &str) -> String {
        if self.count <= 1 { stream.to_string() } else { format!("{stream}:{{{}}}", self.index) }
    }

    /// The name of this shard's lease (and fencing counter) in `group`.
    pub fn lease_name(&self, group: &str) -> String {
        if self.count <= 1 { group.to_string() } else { format!("{group}:{}", self.index) }
    }

    /// This shard's checkpoint line under `_eventide/checkpoints/` (and `staging/`).
    pub fn line(&self, group: &str) -> String {
        let g = sanitize_name(group);
        if self.count <= 1 { g } else { format!("{g}/shard={}", self.index) }
    }

    /// The writer name in this shard's file names (unique per consumer and shard).
    pub fn writer(&self, consumer: &str) -> String {
        let c = sanitize_name(consumer);
        if self.count <= 1 { c } else { format!("{c}-s{}", self.index) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_keeps_the_names_of_before_and_more_shards_tag_their_keys() {
        let one = ShardId::default();
        assert_eq!(
            (one.stream_key("orders"), one.lease_name("g"), one.line("g")),
            ("orders".into(), "g".into(), "g".into())
        );
        let s = ShardId { index: 3, count: 8 };
        assert_eq!(s.stream_key("orders"), "orders:{3}");
        assert_eq!(s.lease_name("analytics"), "analytics:3");
        assert_eq!(s.line("analytics"), "analytics/shard=3");
        assert_eq!(s.writer("worker-1"), "worker-1-s3");
        assert_eq!(ShardId::all(3).map(|s| s.index).collect::<Vec<_>>(), [0, 1, 2]);
        let k = ShardId::of_event("evt-1", 8);
        assert!(k < 8 && k == ShardId::of_event("evt-1", 8));
    }
}
