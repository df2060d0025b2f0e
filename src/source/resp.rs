//! Stream-read replies parsed straight from the socket's bytes: RESP2 → [`RawEntry`]s with
//! every field name and value a slice of the one buffer the reply arrived in (no per-field
//! allocation, no intermediate value tree, nothing copied).
//!
//! Used by [`wire`](super::wire), the reader's own connection. [`frame_len`] tells whether a
//! whole reply is in the buffer (it walks headers and skips bulk payloads by their length);
//! [`xread`] parses a whole `XREAD`/`XREADGROUP` reply. Replies the redis crate already
//! turned into `Value`s go through [`reply`](super::reply) and end as the same types.

use bytes::Bytes;

use super::reply::StreamEntries;
use crate::entry::{EntryId, RawEntry};

/// Why a reply could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    /// Bytes that are not RESP2 (a protocol error, or not a Redis server).
    #[error("malformed reply at byte {at}: {what}")]
    Malformed { at: usize, what: &'static str },
    /// RESP, but not the shape the command's reply has.
    #[error("unexpected {command} reply: {what}")]
    Shape { command: &'static str, what: &'static str },
    /// An error reply (`-CODE message`).
    #[error("{0}")]
    Server(String),
}

impl RespError {
    /// The error reply's code (`NOGROUP`, `NOAUTH`, `WRONGPASS`…), if this is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            RespError::Server(text) => text.split(' ').next(),
            _ => None,
        }
    }
}

/// Longest header line accepted (`*`/`$`/`:` and a 64-bit number, or a status/error line).
const MAX_LINE: usize = 64 * 1024;

/// A header line: its type byte, its text, and where the next value starts.
type Line<'a> = (u8, &'a [u8], usize);

/// The header at `pos`; `None` when the line is not all in `buf` yet.
fn line(buf: &[u8], pos: usize) -> Result<Option<Line<'_>>, RespError> {
    let Some(&kind) = buf.get(pos) else { return Ok(None) };
    let rest = &buf[pos + 1..];
    let Some(cr) = memchr::memchr(b'\r', rest) else {
        return if rest.len() > MAX_LINE { Err(malformed(pos, "header line too long")) } else { Ok(None) };
    };
    match rest.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((kind, &rest[..cr], pos + 1 + cr + 2))),
        Some(_) => Err(malformed(pos, "line not ended by CRLF")),
    }
}

fn malformed(at: usize, what: &'static str) -> RespError {
    RespError::Malformed { at, what }
}

fn number(text: &[u8], at: usize) -> Result<i64, RespError> {
    std::str::from_utf8(text).ok().and_then(|s| s.parse().ok()).ok_or(malformed(at, "not a number"))
}

/// A length (`*n`, `$n`): -1 (nil) or 0..=`i32::MAX`.
fn length(text: &[u8], at: usize) -> Result<Option<usize>, RespError> {
    match number(text, at)? {
        -1 => Ok(None),
        n if (0..=i32::MAX as i64).contains(&n) => Ok(Some(n as usize)),
        _ => Err(malformed(at, "length out of range")),
    }
}

/// The length in bytes of the whole value at the start of `buf`, or `None` when it has not
/// all arrived.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, RespError> {
    Scan::default().whole(buf)
}

/// Walks a reply's values as its bytes arrive, resuming where the last call stopped (a
/// large reply that comes in many reads is walked once, not once per read).
#[derive(Debug, Default)]
pub struct Scan {
    /// Where the next value not yet walked starts.
    pos: usize,
    /// Values still to walk, once started.
    values: Option<u64>,
}

impl Scan {
    /// The reply's length once `buf` (the same buffer, grown since the last call) holds it
    /// all; the scan then starts over for the next reply.
    pub fn whole(&mut self, buf: &[u8]) -> Result<Option<usize>, RespError> {
        let values = self.values.get_or_insert(1);
        while *values > 0 {
            let Some((kind, text, next)) = line(buf, self.pos)? else { return Ok(None) };
            self.pos = match kind {
                b'+' | b'-' | b':' => next,
                b'*' => {
                    *values += length(text, self.pos)?.unwrap_or(0) as u64;
                    next
                }
                b'$' => match length(text, self.pos)? {
                    None => next,
                    Some(n) => {
                        let end = next + n + 2;
                        if buf.len() < end {
                            return Ok(None);
                        }
                        if &buf[end - 2..end] != b"\r\n" {
                            return Err(malformed(end - 2, "bulk string not ended by CRLF"));
                        }
                        end
                    }
                },
                _ => return Err(malformed(self.pos, "unknown type byte (RESP2 expected)")),
            };
            *values -= 1;
        }
        let len = self.pos;
        *self = Scan::default();
        Ok(Some(len))
    }
}

/// Reads one whole reply (checked by [`frame_len`]) value by value.
struct Cursor {
    buf: Bytes,
    pos: usize,
}

const C: &str = "XREAD";

fn shape(what: &'static str) -> RespError {
    RespError::Shape { command: C, what }
}

impl Cursor {
    fn header(&mut self) -> Result<(u8, &[u8]), RespError> {
        let (kind, text, next) = line(&self.buf, self.pos)?.ok_or(malformed(self.pos, "reply cut short"))?;
        self.pos = next;
        Ok((kind, text))
    }

    /// An array's length (`None`: nil array or nil bulk string).
    fn array(&mut self, what: &'static str) -> Result<Option<usize>, RespError> {
        let at = self.pos;
        match self.header()? {
            (b'*', n) => length(n, at),
            (b'$', n) if length(n, at)?.is_none() => Ok(None),
            _ => Err(shape(what)),
        }
    }

    /// A bulk or simple string as a slice of the reply (`None`: nil).
    fn string(&mut self, what: &'static str) -> Result<Option<Bytes>, RespError> {
        let at = self.pos;
        let (kind, text) = self.header()?;
        let (simple, n) = match kind {
            b'+' => (true, text.len()),
            b'$' => match length(text, at)? {
                None => return Ok(None),
                Some(n) => (false, n),
            },
            _ => return Err(shape(what)),
        };
        let from = if simple { at + 1 } else { self.pos };
        if self.buf.len() < from + n + if simple { 0 } else { 2 } {
            return Err(malformed(from, "reply cut short"));
        }
        if !simple {
            self.pos = from + n + 2;
        }
        Ok(Some(self.buf.slice(from..from + n)))
    }

    /// Skips the next value whatever it is.
    fn skip(&mut self) -> Result<(), RespError> {
        let n = frame_len(&self.buf[self.pos..])?.ok_or(malformed(self.pos, "reply cut short"))?;
        self.pos += n;
        Ok(())
    }

    fn entries(&mut self) -> Result<Vec<RawEntry>, RespError> {
        let Some(n) = self.array("entry list is not an array")? else { return Ok(Vec::new()) };
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let parts = self.array("entry is not an array")?.filter(|&n| n > 0).ok_or(shape("entry without an id"))?;
            let id = self.string("entry id")?.ok_or(shape("entry id"))?;
            let id = EntryId::parse(&id).ok_or(shape("entry id"))?;
            let mut fields = Vec::new();
            if parts >= 2 {
                // nil: deleted or trimmed while pending (no fields)
                if let Some(flat) = self.array("entry fields are not an array")? {
                    fields.reserve(flat / 2);
                    for _ in 0..flat / 2 {
                        let k = self.string("field name")?.unwrap_or_default();
                        let v = self.string("field value")?.unwrap_or_default();
                        fields.push((k, v));
                    }
                    if flat % 2 == 1 {
                        self.skip()?;
                    }
                }
            }
            for _ in 2..parts {
                self.skip()?;
            }
            out.push(RawEntry { id, fields });
        }
        Ok(out)
    }
}

/// Parses one whole `XREAD`/`XREADGROUP` reply (as [`frame_len`] measured it) into
/// `(stream key, entries)` pairs; nil (a `BLOCK` that timed out) → empty; an error reply →
/// [`RespError::Server`].
pub fn xread(frame: Bytes) -> Result<Vec<StreamEntries>, RespError> {
    let mut c = Cursor { buf: frame, pos: 0 };
    if c.buf.first() == Some(&b'-') {
        let (_, text) = c.header()?;
        return Err(RespError::Server(String::from_utf8_lossy(text).into_owned()));
    }
    let Some(n) = c.array("not an array")? else { return Ok(Vec::new()) };
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let parts = c.array("stream is not an array")?.ok_or(shape("nil stream"))?;
        if parts < 2 {
            return Err(shape("stream without entries"));
        }
        let key = c.string("stream key")?.ok_or(shape("stream key"))?;
        let entries = c.entries()?;
        for _ in 2..parts {
            c.skip()?;
        }
        out.push((key, entries));
    }
    Ok(out)
}

/// The error of a reply whose value is not needed (`OK`, a number…): `Some` for an error reply.
pub fn error_of(frame: &[u8]) -> Option<RespError> {
    let (kind, text, _) = line(frame, 0).ok()??;
    (kind == b'-').then(|| RespError::Server(String::from_utf8_lossy(text).into_owned()))
}

#[cfg(test)]
#[path = "resp_tests.rs"]
mod tests;
