//! One pipeline's event-time clock: the watermark.
//!
//! Each stream the pipeline reads advances on its own (its highest event time so far). The
//! watermark is the lowest of them less the bounded out-of-orderness, as Flink does per
//! source split: a stream read ahead of another (separate read batches, a backlog on one
//! of them) does not make the other's events late. A stream without events for the
//! pipeline for `idle_timeout` (processing time; live runs only) stops holding the
//! watermark back until its next event. The run's streams are declared up front: one that
//! has not delivered yet holds the watermark (until it goes quiet), so the first events of a
//! stream read after another are not late. A stream that was not declared starts to count
//! with its first event.
//!
//! The watermark never goes back: windows it closed stay closed. It is also raised from
//! outside: by the idle advance when every stream is quiet, and to the end of time at the
//! end of a bounded input. With one stream (every replay) it is simply
//! `max event time − out-of-orderness`.
//!
//! **Bounded by the clock (live runs).** With [`Watermark::bound_by_clock`], an event counts
//! for the watermark as if stamped at most a clock-skew allowance ahead of processing time
//! (the wall clock, [`Watermark::set_clock`]): the watermark stays at most
//! `now + skew − out-of-orderness`, never more than `skew` ahead of the clock, which is where
//! a live stream with honest clocks would put it. One event stamped far ahead (or a producer
//! whose clock runs fast) cannot close windows early and make the real events after it
//! late; it waits in its open window until the clock gets there. Replays are not bounded
//! (their input is history; its end closes every window).

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Source {
    name: Box<str>,
    max: i64,
    last_arrival: Instant,
    idle: bool,
}

#[derive(Debug, Clone)]
pub struct Watermark {
    out_of_orderness: i64,
    sources: Vec<Source>,
    /// The watermark (monotonic), `i64::MIN` before the first event.
    current: i64,
    /// Index of the last source seen (rows of a batch mostly share their stream).
    last: usize,
    /// Live runs: (clock-skew allowance, the wall clock now), both µs.
    ceiling: Option<(i64, i64)>,
    /// A raise that the ceiling held back (the idle advance), applied as the clock moves.
    raised: i64,
}

impl Watermark {
    pub fn new(out_of_orderness_us: i64) -> Self {
        Watermark {
            out_of_orderness: out_of_orderness_us,
            sources: Vec::new(),
            current: i64::MIN,
            last: 0,
            ceiling: None,
            raised: i64::MIN,
        }
    }

    /// From now on the watermark stays at most `skew_us` ahead of the clock given to
    /// [`Watermark::set_clock`] (`now_us`: the wall clock now).
    pub fn bound_by_clock(&mut self, skew_us: i64, now_us: i64) {
        self.ceiling = Some((skew_us.max(0), now_us));
    }

    /// The wall clock moved on (bounded watermarks follow it); the watermark after it.
    pub fn set_clock(&mut self, now_us: i64) -> i64 {
        if let Some((_, now)) = &mut self.ceiling
            && now_us > *now
        {
            *now = now_us;
            self.recompute();
        }
        self.current
    }

    /// `wm`, held below the clock's ceiling (if bounded), never below the current watermark.
    fn bounded(&self, wm: i64) -> i64 {
        let wm = match self.ceiling {
            Some((skew, now)) => wm.min(now.saturating_add(skew).saturating_sub(self.out_of_orderness)),
            None => wm,
        };
        self.current.max(wm)
    }

    /// The watermark, `None` before the first event.
    pub fn get(&self) -> Option<i64> {
        (self.current != i64::MIN).then_some(self.current)
    }

    /// The highest event time seen on any stream (`i64::MIN` before the first event).
    pub fn max_time(&self) -> i64 {
        self.sources.iter().map(|s| s.max).max().unwrap_or(i64::MIN)
    }

    /// A stream the pipeline reads, before its first event (no-op when known).
    pub fn declare(&mut self, stream: &str, now: Instant) {
        if !self.sources.iter().any(|s| *s.name == *stream) {
            self.sources.push(Source { name: stream.into(), max: i64::MIN, last_arrival: now, idle: false });
        }
    }

    /// An event of `stream` at `t` arrived at `now`: the watermark after it.
    pub fn observe(&mut self, stream: &str, t: i64, now: Instant) -> i64 {
        let i = match self.sources.get(self.last) {
            Some(s) if *s.name == *stream => self.last,
            _ => match self.sources.iter().position(|s| *s.name == *stream) {
                Some(i) => i,
                None => {
                    self.sources.push(Source { name: stream.into(), max: i64::MIN, last_arrival: now, idle: false });
                    self.sources.len() - 1
                }
            },
        };
        self.last = i;
        let s = &mut self.sources[i];
        s.last_arrival = now;
        let changed = t > s.max || s.idle;
        s.max = s.max.max(t);
        s.idle = false;
        if changed {
            self.recompute();
        }
        self.current
    }

    fn recompute(&mut self) {
        let low = self.sources.iter().filter(|s| !s.idle).map(|s| s.max).min();
        let target = low.map_or(i64::MIN, |l| l.saturating_sub(self.out_of_orderness)).max(self.raised);
        self.current = self.bounded(target);
    }

    /// Streams quiet for `timeout` at `now` stop holding the watermark back. Returns whether
    /// every stream is quiet (the caller may then advance by processing time).
    pub fn mark_idle(&mut self, now: Instant, timeout: Duration) -> bool {
        let mut changed = false;
        for s in &mut self.sources {
            if !s.idle && now.saturating_duration_since(s.last_arrival) >= timeout {
                s.idle = true;
                changed = true;
            }
        }
        if changed {
            self.recompute();
        }
        !self.sources.is_empty() && self.sources.iter().all(|s| s.idle)
    }

    /// Raises the watermark to at least `wm` (held below the clock's ceiling, if bounded,
    /// until the clock gets there).
    pub fn raise(&mut self, wm: i64) {
        self.raised = self.raised.max(wm);
        self.current = self.bounded(wm);
    }

    /// End of a bounded input: the end of time, whatever the clock.
    pub fn finish(&mut self) {
        self.raised = i64::MAX;
        self.current = i64::MAX;
    }

    /// Per stream: its highest event time (for checkpoints).
    pub fn save(&self) -> Vec<(String, i64)> {
        self.sources.iter().map(|s| (s.name.to_string(), s.max)).collect()
    }

    /// Restores [`Watermark::save`] and the watermark; the streams count as just seen.
    pub fn restore(&mut self, streams: &[(String, i64)], current: i64, now: Instant) {
        self.sources = streams
            .iter()
            .map(|(name, max)| Source { name: name.as_str().into(), max: *max, last_arrival: now, idle: false })
            .collect();
        self.current = current;
        self.raised = current;
        self.last = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_stream_holds_the_watermark_and_it_never_goes_back() {
        let now = Instant::now();
        let mut w = Watermark::new(5);
        assert_eq!(w.get(), None);
        assert_eq!(w.observe("a", 100, now), 95);
        // `b` starts behind: the watermark stays (never back), then follows the lowest stream.
        assert_eq!(w.observe("b", 50, now), 95);
        assert_eq!(w.observe("a", 200, now), 95);
        assert_eq!(w.observe("b", 150, now), 145);
        assert_eq!(w.observe("b", 300, now), 195);
        assert_eq!(w.max_time(), 300);
    }

    #[test]
    fn a_quiet_stream_stops_holding_it_back_until_its_next_event() {
        let t0 = Instant::now();
        let mut w = Watermark::new(0);
        w.observe("a", 10, t0);
        w.observe("b", 100, t0 + Duration::from_secs(20));
        assert_eq!(w.get(), Some(10));
        assert!(!w.mark_idle(t0 + Duration::from_secs(31), Duration::from_secs(30)));
        assert_eq!(w.get(), Some(100), "`a` is idle");
        assert_eq!(w.observe("a", 20, t0 + Duration::from_secs(32)), 100, "back, behind: late, not a regression");
        assert_eq!(w.observe("b", 150, t0 + Duration::from_secs(33)), 100, "`a` holds it again");
        assert!(w.mark_idle(t0 + Duration::from_secs(99), Duration::from_secs(30)));
    }

    #[test]
    fn a_declared_stream_holds_the_watermark_until_its_first_event() {
        let t0 = Instant::now();
        let mut w = Watermark::new(5);
        w.declare("a", t0);
        w.declare("b", t0);
        assert_eq!(w.observe("a", 100, t0), i64::MIN);
        assert_eq!(w.get(), None);
        assert_eq!(w.observe("b", 50, t0), 45);
        // Quiet for the idle timeout, a stream that never delivered stops holding it back.
        let mut q = Watermark::new(5);
        q.declare("a", t0);
        q.declare("never", t0);
        q.observe("a", 100, t0 + Duration::from_secs(29));
        assert!(!q.mark_idle(t0 + Duration::from_secs(30), Duration::from_secs(30)));
        assert_eq!(q.get(), Some(95));
    }

    #[test]
    fn bounded_by_the_clock_one_event_from_the_future_closes_nothing_early() {
        let now = Instant::now();
        let (min, clock) = (60_000_000, 1_000_000_000_000);
        let mut w = Watermark::new(5_000_000);
        w.bound_by_clock(10_000_000, clock);
        assert_eq!(w.observe("a", clock - min, now), clock - min - 5_000_000);
        // 50 minutes ahead: counts as if stamped at clock + skew.
        assert_eq!(w.observe("a", clock + 50 * min, now), clock + 5_000_000);
        // The real events after it are not behind a runaway watermark.
        assert_eq!(w.observe("a", clock + 1_000_000, now), clock + 5_000_000);
        // As the clock moves, the watermark follows it, up to what the events allow.
        assert_eq!(w.set_clock(clock + min), clock + min + 5_000_000);
        assert_eq!(w.set_clock(clock + 100 * min), clock + 50 * min - 5_000_000);
        // An idle raise is held back the same way.
        let mut i = Watermark::new(0);
        i.bound_by_clock(0, clock);
        i.raise(clock + min);
        assert_eq!(i.get(), Some(clock));
        assert_eq!(i.set_clock(clock + 2 * min), clock + min);
        i.finish();
        assert_eq!(i.get(), Some(i64::MAX));
    }

    #[test]
    fn save_and_restore() {
        let now = Instant::now();
        let mut w = Watermark::new(1);
        w.observe("a", 10, now);
        w.observe("b", 20, now);
        w.raise(15);
        let mut r = Watermark::new(1);
        r.restore(&w.save(), w.get().unwrap_or(i64::MIN), now);
        assert_eq!(r.get(), Some(15));
        assert_eq!(r.observe("a", 30, now), 19);
    }
}
