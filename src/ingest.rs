//! Ingest: decode → dedup → fan-out, the path every driver takes for each event, whether it
//! came from Redis (the worker), from a JSON-lines file (`replay`, the golden and property
//! tests) or from a test.
//!
//! [`Ingest`] owns the decoder and the dedup state. An event that decodes and is new goes to
//! every [`Fanout`] the driver gives (the archive and the pipelines live, the pipelines in a
//! replay), in arrival order; a duplicate goes nowhere; an entry that does not decode comes
//! back as a [`Rejection`] for the driver's dead-letter handling. The drivers only count.
//!
//! The parallel replay (`replay::run`) decodes on several threads into column batches and
//! then asks [`Ingest::admit`] for each event in file order: the same dedup rule, applied
//! after the columns are built instead of before (the golden tests check both orders give
//! the same tables).

use crate::decode::{Decoder, Event, Rejection};
use crate::dedup::{Dedup, Verdict};
use crate::entry::{EntryId, RawEntry};
use crate::error::Result;
use crate::sink::archive::Archive;
use crate::window::Pipelines;

/// Where accepted events go.
pub trait Fanout {
    /// One new event, read as entry `id` of `stream` at `ingest_us`.
    fn accept(&mut self, ev: &Event<'_>, stream: &str, id: EntryId, ingest_us: i64) -> Result<()>;
}

impl Fanout for Archive {
    fn accept(&mut self, ev: &Event<'_>, stream: &str, id: EntryId, ingest_us: i64) -> Result<()> {
        self.append(ev, stream, id, ingest_us)
    }
}

impl Fanout for Pipelines {
    fn accept(&mut self, ev: &Event<'_>, stream: &str, id: EntryId, _ingest_us: i64) -> Result<()> {
        self.append(ev, stream, id);
        Ok(())
    }
}

impl<A: Fanout, B: Fanout> Fanout for (&mut A, &mut B) {
    fn accept(&mut self, ev: &Event<'_>, stream: &str, id: EntryId, ingest_us: i64) -> Result<()> {
        self.0.accept(ev, stream, id, ingest_us)?;
        self.1.accept(ev, stream, id, ingest_us)
    }
}

/// What became of one entry.
#[derive(Debug)]
pub enum Admitted {
    /// New: it went to the fan-out. `beyond_horizon`: too old for dedup to check.
    New {
        beyond_horizon: bool,
    },
    Duplicate,
    Rejected(Rejection),
}

/// The decoder and the dedup state of one reader of a set of streams.
pub struct Ingest {
    pub decoder: Decoder,
    pub dedup: Dedup,
}

impl Ingest {
    pub fn new(decoder: Decoder, dedup: Dedup) -> Self {
        Ingest { decoder, dedup }
    }

    /// One stream entry (its configured field holds the event).
    pub fn entry(&mut self, entry: &RawEntry, stream: &str, now_us: i64, out: &mut impl Fanout) -> Result<Admitted> {
        match self.decoder.decode(entry, now_us) {
            Err(r) => Ok(Admitted::Rejected(r)),
            Ok(ev) => fan_out(&mut self.dedup, &ev, stream, entry.id, now_us, out),
        }
    }

    /// One event as JSON text (a line of a file); `id` stands in for the stream entry id.
    pub fn json(
        &mut self,
        text: &str,
        stream: &str,
        id: EntryId,
        now_us: i64,
        out: &mut impl Fanout,
    ) -> Result<Admitted> {
        match self.decoder.decode_json(text, now_us) {
            Err(r) => Ok(Admitted::Rejected(r)),
            Ok(ev) => fan_out(&mut self.dedup, &ev, stream, id, now_us, out),
        }
    }

    /// The dedup decision alone, for an event decoded elsewhere (its id hashed with
    /// [`crate::dedup::id_hash`]): whether it is new.
    pub fn admit(&mut self, id_hash: u128, event_time_us: i64, now_us: i64) -> bool {
        self.dedup.check_hashed(id_hash, event_time_us, now_us) != Verdict::Duplicate
    }
}

fn fan_out(
    dedup: &mut Dedup,
    ev: &Event<'_>,
    stream: &str,
    id: EntryId,
    now_us: i64,
    out: &mut impl Fanout,
) -> Result<Admitted> {
    match dedup.check(&ev.event_id, ev.event_time_us, now_us) {
        Verdict::Duplicate => Ok(Admitted::Duplicate),
        verdict => {
            out.accept(ev, stream, id, now_us)?;
            Ok(Admitted::New { beyond_horizon: verdict == Verdict::BeyondHorizon })
        }
    }
}
