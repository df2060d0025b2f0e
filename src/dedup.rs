//! Dedup: the third stage (source → decode → **dedup** → sink). Exact by `event_id`, first
//! occurrence wins, over an event-time horizon.
//!
//! Each remembered id is 96 bits of its XXH3-128 hash (a false "duplicate" needs a collision:
//! ~6e-12 for 10^9 ids remembered at once) plus the event second, 16 bytes in an
//! open-addressing table (17 with its control byte: 19–39 B per id with the load factor). An id is
//! forgotten once the dedup watermark (the highest event time seen) passes
//! `event_time + horizon`; sweeps run each time the watermark advances by a fraction of the
//! horizon, so memory is bounded by the event rate times the horizon, never by history.
//!
//! An event older than `watermark - horizon` can no longer be checked: it is accepted and
//! counted as [`Verdict::BeyondHorizon`] so operators see it.
//!
//! **A memory cap** ([`Dedup::with_max_bytes`]): a flood of unique ids within the horizon
//! would otherwise grow the table without bound. At the cap the oldest quarter of the ids
//! is forgotten and the horizon shrinks to what remains (logged, and exported as the
//! effective horizon and the ids forgotten early); events older than that are accepted
//! unchecked (`BeyondHorizon`), as beyond the configured horizon. The horizon grows back as
//! event time moves on. Snapshots are written in parts ([`Dedup::to_parts`]) so that no
//! single object outgrows what a store takes in one put.

use hashbrown::HashTable;
use xxhash_rust::xxh3::xxh3_128;

/// One remembered id: 96 hash bits and the event second (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// Hash bits 0..64; also the table's hash.
    lo: u64,
    /// Hash bits 64..96.
    hi: u32,
    /// Event time, whole seconds since the epoch (clamped to `u32`: 1970..2106).
    secs: u32,
}

fn to_u32_secs(secs: i64) -> u32 {
    secs.clamp(0, u32::MAX as i64) as u32
}

/// Outcome of [`Dedup::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First occurrence: keep the event.
    New,
    /// Seen before within the horizon: drop it.
    Duplicate,
    /// Older than the horizon: kept, since it can no longer be checked.
    BeyondHorizon,
}

/// The dedup state.
#[derive(Debug, Clone)]
pub struct Dedup {
    table: HashTable<Slot>,
    horizon_secs: i64,
    /// Highest event time seen (seconds).
    watermark: i64,
    /// Watermark at the last sweep.
    swept_at: i64,
    /// Ids remembered since the last [`Dedup::take_delta`] (16 B each).
    delta: Vec<Slot>,
    /// Most ids remembered at once (from the memory cap).
    max_ids: usize,
    /// Ids of events before this second were forgotten early (the cap): not checkable.
    floor: i64,
    /// Ids forgotten early to honour the cap.
    pub evicted: u64,
}

/// Worst-case table bytes per id: 17 B per slot at a load factor of 7/8 right after the
/// table doubled (half empty).
const WORST_BYTES_PER_ID: usize = 40;

impl Dedup {
    /// A dedup remembering ids for `horizon_secs` of event time (at least one second).
    pub fn new(horizon_secs: u64) -> Self {
        Dedup {
            table: HashTable::new(),
            horizon_secs: horizon_secs.max(1) as i64,
            watermark: i64::MIN,
            swept_at: i64::MIN,
            delta: Vec::new(),
            max_ids: usize::MAX,
            floor: i64::MIN,
            evicted: 0,
        }
    }

    /// The configured horizon (seconds).
    pub fn horizon_secs(&self) -> u64 {
        self.horizon_secs as u64
    }

    /// Caps the table at about `bytes` (see the module docs).
    pub fn with_max_bytes(mut self, bytes: usize) -> Self {
        self.max_ids = (bytes / WORST_BYTES_PER_ID).max(1024);
        self
    }

    /// The horizon in force: the configured one, or less while the memory cap holds it.
    pub fn effective_horizon_secs(&self) -> i64 {
        match self.watermark {
            i64::MIN => self.horizon_secs,
            w => self.horizon_secs.min(w.saturating_sub(self.floor)),
        }
    }

    /// Makes room for `additional` more ids without growing.
    pub fn reserve(&mut self, additional: usize) {
        self.table.reserve(additional, |s| s.lo);
    }

    /// Remembered ids.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Highest event time seen, seconds since the epoch (`None` before any event).
    pub fn watermark_secs(&self) -> Option<i64> {
        (self.watermark != i64::MIN).then_some(self.watermark)
    }

    /// Bytes held by the table (slots and control bytes).
    pub fn memory_bytes(&self) -> usize {
        self.table.allocation_size()
    }

    /// Checks `event_id` at `event_time_us` and remembers it when new. The watermark follows
    /// event time but never passes `now_us` (ingest time): an event stamped in the future must
    /// not make dedup forget recent ids.
    pub fn check(&mut self, event_id: &str, event_time_us: i64, now_us: i64) -> Verdict {
        self.check_hashed(id_hash(event_id), event_time_us, now_us)
    }

    /// [`Dedup::check`] with the id's hash computed elsewhere ([`id_hash`], e.g. on a decoding
    /// thread).
    pub fn check_hashed(&mut self, h: u128, event_time_us: i64, now_us: i64) -> Verdict {
        let secs = event_time_us.div_euclid(1_000_000);
        let mark = secs.min(now_us.div_euclid(1_000_000));
        if mark > self.watermark {
            self.advance(mark);
        }
        let (hi, lo) = ((h >> 64) as u32, h as u64);
        if self.table.find(lo, |s| s.lo == lo && s.hi == hi).is_some() {
            return Verdict::Duplicate;
        }
        if secs < self.watermark - self.horizon_secs || secs < self.floor {
            return Verdict::BeyondHorizon;
        }
        let slot = Slot { lo, hi, secs: to_u32_secs(secs) };
        self.table.insert_unique(lo, slot, |s| s.lo);
        self.delta.push(slot);
        if self.table.len() > self.max_ids {
            self.forget_oldest();
        }
        Verdict::New
    }

    /// At the cap: forgets the oldest quarter of the ids and raises the floor to match.
    fn forget_oldest(&mut self) {
        let mut secs: Vec<u32> = self.table.iter().map(|s| s.secs).collect();
        let quarter = secs.len() / 4;
        let cut = *secs.select_nth_unstable(quarter).1;
        // Everything before `cut` goes; when that is too little (many ids share a second),
        // that second too, so the next cap is far off.
        let below = secs.iter().filter(|&&s| s < cut).count();
        let cut = if below < quarter / 2 { cut.saturating_add(1) } else { cut };
        drop(secs);
        let before = self.table.len();
        self.table.retain(|s| s.secs >= cut);
        self.evicted += (before - self.table.len()) as u64;
        self.floor = self.floor.max(i64::from(cut));
        tracing::warn!(
            remembered = self.table.len(),
            forgotten = before - self.table.len(),
            horizon_secs = self.horizon_secs,
            effective_horizon_secs = self.effective_horizon_secs(),
            "Dedup reached its memory cap (dedup_max_bytes): forgot the oldest ids; the dedup horizon is \
             shorter until event time moves on (older events are accepted unchecked, counted as beyond the horizon)."
        );
    }

    fn advance(&mut self, secs: i64) {
        self.watermark = secs;
        if self.swept_at == i64::MIN {
            self.swept_at = secs;
            return;
        }
        let step = (self.horizon_secs / 8).max(1);
        if secs - self.swept_at >= step {
            self.swept_at = secs;
            let cutoff = to_u32_secs(secs - self.horizon_secs);
            self.table.retain(|s| s.secs >= cutoff);
            if self.table.capacity() > 4 * self.table.len().max(1024) {
                self.table.shrink_to_fit(|s| s.lo);
            }
        }
    }

    /// Serialises the whole state (for a restart): a header, then 16 bytes per id.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(MAGIC, self.horizon_secs, self.watermark, self.table.len(), self.table.iter())
    }

    /// The whole state in parts of at most `max_part_bytes`: a snapshot ([`Dedup::from_bytes`])
    /// of the first ids, then deltas ([`Dedup::apply_delta`]) with the rest.
    pub fn to_parts(&self, max_part_bytes: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
        let per_part = (max_part_bytes.saturating_sub(32) / 16).max(1);
        let slots: Vec<&Slot> = self.table.iter().collect();
        let mut chunks = slots.chunks(per_part);
        let (h, w) = (self.horizon_secs, self.watermark);
        let first = chunks.next().unwrap_or_default();
        let snapshot = encode(MAGIC, h, w, first.len(), first.iter().copied());
        let rest = chunks.map(|c| encode(DELTA_MAGIC, h, w, c.len(), c.iter().copied())).collect();
        (snapshot, rest)
    }

    /// Restores a state saved by [`Dedup::to_bytes`]; the current horizon setting wins.
    pub fn from_bytes(bytes: &[u8], horizon_secs: u64) -> Result<Dedup, &'static str> {
        let (watermark, slots) = decode(bytes, MAGIC)?;
        let mut d = Dedup::new(horizon_secs);
        d.watermark = watermark;
        d.swept_at = watermark;
        d.table.reserve(slots.len(), |s| s.lo);
        d.merge(slots, watermark);
        d.delta.clear();
        Ok(d)
    }

    /// The ids remembered since the last call (or the last [`Dedup::clear_delta`]), serialised;
    /// `None` when there are none. Saved after each commit, so a restart loses no durable id
    /// without writing the whole table every time.
    pub fn take_delta(&mut self) -> Option<Vec<u8>> {
        if self.delta.is_empty() {
            return None;
        }
        let out = encode(DELTA_MAGIC, self.horizon_secs, self.watermark, self.delta.len(), self.delta.iter());
        self.delta.clear();
        Some(out)
    }

    /// Forgets the pending delta (a full snapshot covers it).
    pub fn clear_delta(&mut self) {
        self.delta.clear();
    }

    /// Adds the ids of a delta saved by [`Dedup::take_delta`].
    pub fn apply_delta(&mut self, bytes: &[u8]) -> Result<(), &'static str> {
        let (watermark, slots) = decode(bytes, DELTA_MAGIC)?;
        let watermark = watermark.max(self.watermark);
        self.watermark = watermark;
        self.merge(slots, watermark);
        self.delta.clear();
        Ok(())
    }

    fn merge(&mut self, slots: Vec<Slot>, watermark: i64) {
        let cutoff = to_u32_secs(watermark.saturating_sub(self.horizon_secs));
        for slot in slots.into_iter().filter(|s| s.secs >= cutoff) {
            if self.table.find(slot.lo, |s| s.lo == slot.lo && s.hi == slot.hi).is_none() {
                self.table.insert_unique(slot.lo, slot, |s| s.lo);
            }
        }
    }
}

fn encode<'a>(
    magic: &[u8; 8],
    horizon: i64,
    watermark: i64,
    n: usize,
    slots: impl Iterator<Item = &'a Slot>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + n * 16);
    out.extend_from_slice(magic);
    out.extend_from_slice(&horizon.to_le_bytes());
    out.extend_from_slice(&watermark.to_le_bytes());
    out.extend_from_slice(&(n as u64).to_le_bytes());
    for s in slots {
        out.extend_from_slice(&s.lo.to_le_bytes());
        out.extend_from_slice(&s.hi.to_le_bytes());
        out.extend_from_slice(&s.secs.to_le_bytes());
    }
    out
}

fn decode(bytes: &[u8], magic: &[u8; 8]) -> Result<(i64, Vec<Slot>), &'static str> {
    let rest = bytes.strip_prefix(magic).ok_or("not a dedup snapshot (bad magic)")?;
    if rest.len() < 24 {
        return Err("truncated dedup snapshot");
    }
    let word = |i: usize| i64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7].map(|j| rest[i * 8 + j]));
    let watermark = word(1);
    let n = usize::try_from(word(2)).map_err(|_| "bad count in dedup snapshot")?;
    let body = &rest[24..];
    if body.len() != n.saturating_mul(16) {
        return Err("dedup snapshot length does not match its count");
    }
    let le8 = |b: &[u8]| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let le4 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let slots =
        body.chunks_exact(16).map(|c| Slot { lo: le8(&c[0..8]), hi: le4(&c[8..12]), secs: le4(&c[12..16]) }).collect();
    Ok((watermark, slots))
}

const MAGIC: &[u8; 8] = b"EVTDDUP2";
const DELTA_MAGIC: &[u8; 8] = b"EVTDDLT1";

/// The 128-bit hash dedup keeps of an event id.
pub fn id_hash(event_id: &str) -> u128 {
    xxh3_128(event_id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn first_occurrence_wins() {
        let mut d = Dedup::new(60);
        assert_eq!(d.check("a", 100 * S, i64::MAX), Verdict::New);
        assert_eq!(d.check("b", 101 * S, i64::MAX), Verdict::New);
        assert_eq!(d.check("a", 102 * S, i64::MAX), Verdict::Duplicate);
        assert_eq!(d.check("a", 90 * S, i64::MAX), Verdict::Duplicate, "out of order duplicate");
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn forgets_after_horizon_and_flags_too_old() {
        let mut d = Dedup::new(60);
        d.check("old", 0, i64::MAX);
        for i in 0..200 {
            d.check(&format!("x{i}"), i * S, i64::MAX);
        }
        assert_eq!(d.check("old", 0, i64::MAX), Verdict::BeyondHorizon, "too old to be checked");
        assert!(d.len() <= 61 + 60 / 8 + 2, "bounded: {}", d.len());
        assert_eq!(d.check("x199", 201 * S, i64::MAX), Verdict::Duplicate);
    }

    #[test]
    fn a_future_timestamp_does_not_shorten_the_horizon() {
        let mut d = Dedup::new(3600);
        let now = 100_000 * S;
        d.check("recent", now - 60 * S, now);
        d.check("from-the-future", now + 3590 * S, now); // accepted: within max_future
        assert_eq!(d.watermark_secs(), Some(100_000));
        for i in 0..10 {
            d.check(&format!("x{i}"), now - i * S, now); // sweeps run
        }
        assert_eq!(d.check("recent", now - 60 * S, now), Verdict::Duplicate);
    }

    #[test]
    fn snapshot_round_trip() {
        let mut d = Dedup::new(3600);
        for i in 0..1000 {
            d.check(&format!("id-{i}"), i * S, i64::MAX);
        }
        let bytes = d.to_bytes();
        let mut r = Dedup::from_bytes(&bytes, 3600).unwrap();
        assert_eq!(r.len(), 1000);
        assert_eq!(r.check("id-5", 999 * S, i64::MAX), Verdict::Duplicate);
        assert_eq!(r.check("id-new", 999 * S, i64::MAX), Verdict::New);
        assert!(Dedup::from_bytes(&bytes[..bytes.len() - 1], 3600).is_err());
        assert!(Dedup::from_bytes(b"garbage", 3600).is_err());
    }

    #[test]
    fn the_memory_cap_forgets_the_oldest_and_shortens_the_horizon() {
        let mut d = Dedup::new(3600).with_max_bytes(1024 * WORST_BYTES_PER_ID);
        for i in 0..5000 {
            assert_eq!(d.check(&format!("id-{i}"), i * S, i64::MAX), Verdict::New);
            assert!(d.len() <= 1024, "capped at {}", d.len());
        }
        assert!(d.evicted >= 5000 - 1024, "{}", d.evicted);
        assert!(d.effective_horizon_secs() < 1024, "{}", d.effective_horizon_secs());
        // The newest are still checked; the forgotten ones are beyond the shrunk horizon.
        assert_eq!(d.check("id-4999", 4999 * S, i64::MAX), Verdict::Duplicate);
        assert_eq!(d.check("id-3000", 3000 * S, i64::MAX), Verdict::BeyondHorizon, "within 1h, below the floor");
        // As event time moves on past the floor + horizon, the configured horizon is back.
        d.check("late", 9_000 * S, i64::MAX);
        assert_eq!(d.effective_horizon_secs(), 3600);
    }

    #[test]
    fn snapshots_in_parts_restore_everything() {
        let mut d = Dedup::new(3600);
        for i in 0..1000 {
            d.check(&format!("id-{i}"), i * S, i64::MAX);
        }
        let (first, rest) = d.to_parts(32 + 16 * 300);
        assert_eq!(rest.len(), 3, "1000 ids in parts of 300");
        assert!(std::iter::once(&first).chain(&rest).all(|p| p.len() <= 32 + 16 * 300));
        let mut r = Dedup::from_bytes(&first, 3600).unwrap();
        for p in &rest {
            r.apply_delta(p).unwrap();
        }
        assert_eq!(r.len(), 1000);
        for i in [0, 299, 300, 999] {
            assert_eq!(r.check(&format!("id-{i}"), 999 * S, i64::MAX), Verdict::Duplicate);
        }
    }

    #[test]
    fn snapshot_plus_deltas_restore_everything() {
        let mut d = Dedup::new(3600);
        d.check("a", 10 * S, i64::MAX);
        let snapshot = d.to_bytes();
        d.clear_delta();
        d.check("b", 11 * S, i64::MAX);
        let delta1 = d.take_delta().unwrap();
        assert!(d.take_delta().is_none());
        d.check("c", 12 * S, i64::MAX);
        d.check("a", 12 * S, i64::MAX);
        let delta2 = d.take_delta().unwrap();
        let mut r = Dedup::from_bytes(&snapshot, 3600).unwrap();
        r.apply_delta(&delta2).unwrap();
        r.apply_delta(&delta1).unwrap();
        r.apply_delta(&delta1).unwrap(); // idempotent
        assert_eq!(r.len(), 3);
        for id in ["a", "b", "c"] {
            assert_eq!(r.check(id, 12 * S, i64::MAX), Verdict::Duplicate, "{id}");
        }
        assert_eq!(r.watermark_secs(), Some(12));
        assert!(r.apply_delta(&snapshot).is_err(), "a snapshot is not a delta");
    }
}
