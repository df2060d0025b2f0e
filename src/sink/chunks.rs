//! An in-memory file made of fixed-size chunks: a Parquet writer appends to it without ever
//! reallocating and copying the file as it grows, and the chunks become the `PUT` payload.

use std::io::Write;

use bytes::Bytes;
use object_store::PutPayload;

/// Chunk size: large enough for few chunks per file, small enough for the allocator to
/// recycle them between files.
const CHUNK: usize = 1 << 20;

#[derive(Default)]
pub(super) struct Chunks {
    done: Vec<Bytes>,
    current: Vec<u8>,
}

impl Chunks {
    /// Bytes written so far.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.done.iter().map(Bytes::len).sum::<usize>() + self.current.len()
    }

    /// The bytes from `offset` on (whole chunks shared, the current one copied).
    pub fn tail(&self, offset: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut at = 0;
        for b in &self.done {
            let end = at + b.len();
            if end > offset {
                out.push(b.slice(offset.saturating_sub(at)..));
            }
            at = end;
        }
        if at + self.current.len() > offset {
            out.push(Bytes::copy_from_slice(&self.current[offset.saturating_sub(at)..]));
        }
        out
    }

    pub fn into_payload(mut self) -> PutPayload {
        if !self.current.is_empty() {
            self.done.push(Bytes::from(self.current));
        }
        self.done.into_iter().collect()
    }
}

impl Write for Chunks {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let total = buf.len();
        while !buf.is_empty() {
            if self.current.capacity() == 0 {
                self.current.reserve_exact(CHUNK);
            }
            let n = buf.len().min(self.current.capacity() - self.current.len());
            self.current.extend_from_slice(&buf[..n]);
            buf = &buf[n..];
            if self.current.len() == self.current.capacity() {
                self.done.push(Bytes::from(std::mem::take(&mut self.current)));
            }
        }
        Ok(total)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_every_byte_in_order() {
        let mut c = Chunks::default();
        let data: Vec<u8> = (0..(3 * CHUNK + 17)).map(|i| (i % 251) as u8).collect();
        for piece in data.chunks(100_003) {
            c.write_all(piece).unwrap();
        }
        let payload = c.into_payload();
        assert_eq!(payload.content_length(), data.len());
        let joined: Vec<u8> = payload.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(joined, data);
    }

    #[test]
    fn a_tail_is_every_byte_from_its_offset() {
        let mut c = Chunks::default();
        let data: Vec<u8> = (0..(2 * CHUNK + 5)).map(|i| (i % 253) as u8).collect();
        c.write_all(&data).unwrap();
        assert_eq!(c.len(), data.len());
        for offset in [0, 1, CHUNK - 1, CHUNK, CHUNK + 7, 2 * CHUNK, data.len() - 1, data.len()] {
            let tail: Vec<u8> = c.tail(offset).iter().flat_map(|b| b.iter().copied()).collect();
            assert_eq!(tail, data[offset..], "offset {offset}");
        }
    }
}
