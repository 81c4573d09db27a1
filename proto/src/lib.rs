//! Types every Market.space role shares, and their canonical byte encodings.
//!
//! This crate is the boundary of every format that leaves a process: what is written to a
//! disk, sent over a socket or pasted by a user is encoded and decoded here, and documented
//! byte by byte in `docs/formats.md`. It never does I/O, never spawns, never reads a clock:
//! decoders take `&[u8]` and return a value or a [`DecodeError`] that says which field was
//! wrong and why.
//!
//! Integers are little-endian everywhere unless a field says otherwise.

pub mod block;
pub mod decode;
pub mod erasure;
pub mod fileshare;
pub mod ids;
pub mod invoice;
pub mod kdf;
pub mod link;
pub mod manifest;
pub mod market;
pub mod offer;
pub mod proof;
pub mod receipt;
pub mod share;
pub mod sig;
pub mod tx;

pub use decode::DecodeError;
pub use ids::{ChunkId, FileId, FileKey};
pub use kdf::KdfParams;
pub use manifest::{ChunkEntry, EnvelopeHeader, Manifest};
pub use share::ShareKey;

/// Smallest chunk the sealing pipeline accepts: one 4 KiB sector, so chunk boundaries in the
/// source file stay sector aligned for O_DIRECT readers.
pub const CHUNK_BYTES_MIN: u32 = 4 * 1024;
/// Largest chunk: bounds the memory of every pipeline stage (a few chunks per core) and the
/// size of one record in the host's segment files.
pub const CHUNK_BYTES_MAX: u32 = 64 * 1024 * 1024;
/// Default chunk size: large enough that per-chunk costs (a file, a manifest entry, a
/// proof) are negligible, small enough that a two-core sealer holds only ~50 MiB in flight.
pub const CHUNK_BYTES_DEFAULT: u32 = 8 * 1024 * 1024;
/// Chunk sizes are whole sectors.
pub const SECTOR_BYTES: u32 = 4096;
/// Bytes AES-256-GCM appends to every sealed chunk and to the manifest body.
pub const TAG_BYTES: u32 = 16;
/// Most chunks one file may have: keeps a manifest under 41 MiB (40 bytes an entry), which a
/// receiver must hold in memory before it can verify anything. With 8 MiB chunks this is 8 TiB.
pub const CHUNKS_PER_FILE_MAX: u32 = 1 << 20;

const _: () = assert!(CHUNK_BYTES_MIN.is_multiple_of(SECTOR_BYTES));
const _: () = assert!(CHUNK_BYTES_MAX.is_multiple_of(SECTOR_BYTES));
const _: () = assert!(CHUNK_BYTES_DEFAULT.is_multiple_of(SECTOR_BYTES));
const _: () =
    assert!(CHUNK_BYTES_MIN <= CHUNK_BYTES_DEFAULT && CHUNK_BYTES_DEFAULT <= CHUNK_BYTES_MAX);
// A sealed chunk (plaintext plus tag) must fit the u32 length fields of the manifest.
const _: () = assert!(CHUNK_BYTES_MAX.checked_add(TAG_BYTES).is_some());

/// Checks a chunk size against the documented range, for every entry point (CLI, manifest
/// decoder, pipeline) to share one rule.
pub fn check_chunk_bytes(chunk_bytes: u32) -> Result<(), String> {
    if !(CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX).contains(&chunk_bytes) {
        return Err(format!(
            "chunk size {chunk_bytes} bytes is outside the accepted range {} KiB ..= {} MiB",
            CHUNK_BYTES_MIN / 1024,
            CHUNK_BYTES_MAX / (1024 * 1024)
        ));
    }
    if !chunk_bytes.is_multiple_of(SECTOR_BYTES) {
        return Err(format!(
            "chunk size {chunk_bytes} bytes is not a multiple of {SECTOR_BYTES} bytes (one sector)"
        ));
    }
    Ok(())
}
