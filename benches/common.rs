//! Shared bench input: realistic generated entries, as the pipeline receives them.

use eventide::entry::{EntryId, RawEntry};
use eventide::generator::{GenOptions, Generator};

#[allow(dead_code)] // not every bench decodes entries
pub fn entries(n: u64, dapr: bool) -> Vec<RawEntry> {
    Generator::new(GenOptions { entries: n, dapr, seed: 11, ..Default::default() })
        .enumerate()
        .map(|(i, e)| e.to_raw(EntryId { ms: 1_700_000_000_000 + i as u64, seq: 0 }))
        .collect()
}

/// The binary's allocator, so benches measure what production runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
