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
}

impl Dedup {
    /// A dedup remembering ids for `horizon_secs` of event time (at least one second).
    pub fn new(horizon_secs: u64) -> Self {
        Dedup {
            table: HashTable::new(),
            horizon_secs: horizon_secs.max(1) as i64,
            watermark: i64::MIN,
            swept_at: i64::MIN,
        }
    }

    pub fn horizon_secs(&self) -> u64 {
        self.horizon_secs as u64
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

    /// Checks `event_id` at `event_time_us` and remembers it when new.
    pub fn check(&mut self, event_id: &str, event_time_us: i64) -> Verdict {
        let secs = event_time_us.div_euclid(1_000_000);
        if secs > self.watermark {
            self.advance(secs);
        }
        let h = xxh3_128(event_id.as_bytes());
        let (hi, lo) = ((h >> 64) as u32, h as u64);
        if self.table.find(lo, |s| s.lo == lo && s.hi == hi).is_some() {
            return Verdict::Duplicate;
        }
        if secs < self.watermark - self.horizon_secs {
            return Verdict::BeyondHorizon;
        }
        self.table.insert_unique(lo, Slot { lo, hi, secs: to_u32_secs(secs) }, |s| s.lo);
        Verdict::New
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

    /// Serialises the state (for a restart): a header, then 16 bytes per id.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.table.len() * 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.horizon_secs.to_le_bytes());
        out.extend_from_slice(&self.watermark.to_le_bytes());
        out.extend_from_slice(&(self.table.len() as u64).to_le_bytes());
        for s in self.table.iter() {
            out.extend_from_slice(&s.lo.to_le_bytes());
            out.extend_from_slice(&s.hi.to_le_bytes());
            out.extend_from_slice(&s.secs.to_le_bytes());
        }
        out
    }

    /// Restores a state saved by [`Dedup::to_bytes`]; the current horizon setting wins.
    pub fn from_bytes(bytes: &[u8], horizon_secs: u64) -> Result<Dedup, &'static str> {
        let rest = bytes.strip_prefix(MAGIC).ok_or("not a dedup snapshot (bad magic)")?;
        let word = |i: usize| -> Result<i64, &'static str> {
            let b = rest.get(i * 8..i * 8 + 8).ok_or("truncated dedup snapshot")?;
            Ok(i64::from_le_bytes(b.try_into().map_err(|_| "truncated dedup snapshot")?))
        };
        let watermark = word(1)?;
        let n = usize::try_from(word(2)?).map_err(|_| "bad count in dedup snapshot")?;
        let body = &rest[24..];
        if body.len() != n.saturating_mul(16) {
            return Err("dedup snapshot length does not match its count");
        }
        let mut d = Dedup::new(horizon_secs);
        d.watermark = watermark;
        d.swept_at = watermark;
        d.table.reserve(n, |s| s.lo);
        let cutoff = to_u32_secs(watermark.saturating_sub(d.horizon_secs));
        for c in body.chunks_exact(16) {
            let le8 = |b: &[u8]| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            let le4 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let slot = Slot { lo: le8(&c[0..8]), hi: le4(&c[8..12]), secs: le4(&c[12..16]) };
            if slot.secs >= cutoff {
                d.table.insert_unique(slot.lo, slot, |s| s.lo);
            }
        }
        Ok(d)
    }
}

const MAGIC: &[u8; 8] = b"EVTDDUP2";

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn first_occurrence_wins() {
        let mut d = Dedup::new(60);
        assert_eq!(d.check("a", 100 * S), Verdict::New);
        assert_eq!(d.check("b", 101 * S), Verdict::New);
        assert_eq!(d.check("a", 102 * S), Verdict::Duplicate);
        assert_eq!(d.check("a", 90 * S), Verdict::Duplicate, "out of order duplicate");
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn forgets_after_horizon_and_flags_too_old() {
        let mut d = Dedup::new(60);
        d.check("old", 0);
        for i in 0..200 {
            d.check(&format!("x{i}"), i * S);
        }
        assert_eq!(d.check("old", 0), Verdict::BeyondHorizon, "too old to be checked");
        assert!(d.len() <= 61 + 60 / 8 + 2, "bounded: {}", d.len());
        assert_eq!(d.check("x199", 201 * S), Verdict::Duplicate);
    }

    #[test]
    fn snapshot_round_trip() {
        let mut d = Dedup::new(3600);
        for i in 0..1000 {
            d.check(&format!("id-{i}"), i * S);
        }
        let bytes = d.to_bytes();
        let mut r = Dedup::from_bytes(&bytes, 3600).unwrap();
        assert_eq!(r.len(), 1000);
        assert_eq!(r.check("id-5", 999 * S), Verdict::Duplicate);
        assert_eq!(r.check("id-new", 999 * S), Verdict::New);
        assert!(Dedup::from_bytes(&bytes[..bytes.len() - 1], 3600).is_err());
        assert!(Dedup::from_bytes(b"garbage", 3600).is_err());
    }
}
