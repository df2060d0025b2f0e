//! The encodings of checkpoint blobs: Arrow IPC streams (zstd) and named blobs packed in one.

use crate::error::{Error, Result};

/// Marks a zstd-compressed Arrow IPC stream.
const IPC_ZSTD: &[u8; 4] = b"EVZ1";

/// Batches of one schema as a checkpoint blob: an Arrow IPC stream, zstd (level 1) compressed
/// (event rows shrink ~5×; the blob is written at every checkpoint an open file spans).
pub fn to_ipc(batches: &[arrow::array::RecordBatch]) -> Result<Vec<u8>> {
    let Some(first) = batches.first() else { return Ok(Vec::new()) };
    let mut buf = Vec::new();
    let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut buf, &first.schema())?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    drop(w);
    let mut out = IPC_ZSTD.to_vec();
    out.extend(zstd::bulk::compress(&buf, 1)?);
    Ok(out)
}

/// Back from [`to_ipc`].
pub fn from_ipc(bytes: &[u8]) -> Result<Vec<arrow::array::RecordBatch>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let raw = match bytes.strip_prefix(IPC_ZSTD) {
        Some(z) => zstd::stream::decode_all(z)?,
        None => bytes.to_vec(),
    };
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(raw), None)?;
    Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
}

/// Named blobs in one: per entry, the name's length (u32 LE), the name, the blob's length
/// (u64 LE), the blob.
pub fn pack(parts: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, bytes) in parts {
        out.extend((name.len() as u32).to_le_bytes());
        out.extend(name.as_bytes());
        out.extend((bytes.len() as u64).to_le_bytes());
        out.extend(bytes);
    }
    out
}

/// Back from [`pack`].
pub fn unpack(mut b: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let bad = || Error::State { path: "packed blob".into(), reason: "truncated".into() };
    let mut out = Vec::new();
    while !b.is_empty() {
        let take = |b: &mut &[u8], n: usize| -> Result<Vec<u8>> {
            if b.len() < n {
                return Err(bad());
            }
            let (h, t) = b.split_at(n);
            *b = t;
            Ok(h.to_vec())
        };
        let n = u32::from_le_bytes(take(&mut b, 4)?.try_into().map_err(|_| bad())?) as usize;
        let name = String::from_utf8(take(&mut b, n)?).map_err(|_| bad())?;
        let len = u64::from_le_bytes(take(&mut b, 8)?.try_into().map_err(|_| bad())?) as usize;
        out.push((name, take(&mut b, len)?));
    }
    Ok(out)
}
