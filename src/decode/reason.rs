//! Why an entry was rejected: stable, machine-readable codes written to the dead-letter stream.

use std::fmt;

/// A rejection class. The code ([`Reason::as_str`]) is part of the DLQ contract: stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    EntryTooLarge,
    MissingField,
    InvalidUtf8,
    InvalidJson,
    NotAnObject,
    InvalidField,
    InvalidEnvelope,
    MissingEventId,
    InvalidEventId,
    MissingEventType,
    InvalidEventType,
    MissingTimestamp,
    InvalidTimestamp,
    TimestampInFuture,
}

impl Reason {
    pub const ALL: [Reason; 14] = [
        Reason::EntryTooLarge,
        Reason::MissingField,
        Reason::InvalidUtf8,
        Reason::InvalidJson,
        Reason::NotAnObject,
        Reason::InvalidField,
        Reason::InvalidEnvelope,
        Reason::MissingEventId,
        Reason::InvalidEventId,
        Reason::MissingEventType,
        Reason::InvalidEventType,
        Reason::MissingTimestamp,
        Reason::InvalidTimestamp,
        Reason::TimestampInFuture,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::EntryTooLarge => "entry_too_large",
            Reason::MissingField => "missing_field",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::NotAnObject => "not_an_object",
            Reason::InvalidField => "invalid_field",
            Reason::InvalidEnvelope => "invalid_envelope",
            Reason::MissingEventId => "missing_event_id",
            Reason::InvalidEventId => "invalid_event_id",
            Reason::MissingEventType => "missing_event_type",
            Reason::InvalidEventType => "invalid_event_type",
            Reason::MissingTimestamp => "missing_timestamp",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::TimestampInFuture => "timestamp_in_future",
        }
    }

    /// Position in [`Reason::ALL`] (for per-reason counters).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected entry's reason and a human-readable detail (allocated only on this cold path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Rejection { reason, detail: detail.into() }
    }
}
