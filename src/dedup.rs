//! Dedup: the third stage (source → decode → **dedup** → sink). Exact by `event_id`, first
//! occurrence wins, over an event-time horizon.
//!
//! Each remembered id is a 128-bit XXH3 hash (collisions are negligible: ~1e-20 for 10^9
//! ids) plus the event time in seconds, 24 bytes in an open-addressing table. An id is
//! forgotten once the dedup watermark (the highest event time seen) passes
//! `event_time + horizon`; sweeps run each time the watermark advances by a fraction of the
//! horizon, so memory is bounded by the event rate times the horizon, never by history.
//!
//! An event older than `watermark - horizon` can no longer be checked: it is accepted and
//! counted as [`Verdict::BeyondHorizon`] so operators see it.

use hashbrown::HashTable;
use xxhash_rust::xxh3::xxh3_128;

/// One remembered id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    hi: u64,
    lo: u64,
    /// Event time, whole seconds since the epoch.
    secs: i64,
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
        let (hi, lo) = ((h >> 64) as u64, h as u64);
        if self.table.find(lo, |s| s.hi == hi && s.lo == lo).is_some() {
            return Verdict::Duplicate;
        }
        if secs < self.watermark - self.horizon_secs {
            return Verdict::BeyondHorizon;
        }
        self.table.insert_unique(lo, Slot { hi, lo, secs }, |s| s.lo);
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
            let cutoff = secs - self.horizon_secs;
            self.table.retain(|s| s.secs >= cutoff);
            if self.table.capacity() > 4 * self.table.len().max(1024) {
                self.table.shrink_to_fit(|s| s.lo);
            }
        }
    }

    /// Serialises the state (for a restart): a header, then 24 bytes per id.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.table.len() * 24);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.horizon_secs.to_le_bytes());
        out.extend_from_slice(&self.watermark.to_le_bytes());
        out.extend_from_slice(&(self.table.len() as u64).to_le_bytes());
        for s in self.table.iter() {
            out.extend_from_slice(&s.hi.to_le_bytes());
            out.extend_from_slice(&s.lo.to_le_bytes());
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
        let n = word(2)? as usize;
        if rest.len() != 24 + n * 24 {
            return Err("dedup snapshot length does not match its count");
        }
        let mut d = Dedup::new(horizon_secs);
        d.watermark = watermark;
        d.swept_at = watermark;
        d.table.reserve(n, |s| s.lo);
        let cutoff = watermark.saturating_sub(d.horizon_secs);
        for i in 0..n {
            let (hi, lo, secs) = (word(3 + 3 * i)? as u64, word(4 + 3 * i)? as u64, word(5 + 3 * i)?);
            if secs >= cutoff {
                d.table.insert_unique(lo, Slot { hi, lo, secs }, |s| s.lo);
            }
        }
        Ok(d)
    }
}

const MAGIC: &[u8; 8] = b"EVTDDUP1";

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
