//! The index checkpoint: a shard's chunk index as of a point in each segment, so a restart
//! reads this file and scans only the segments' tails after it. Layout in
//! `docs/formats.md` section 7.2.

use proto::{ChunkId, SECTOR_BYTES};
use thiserror::Error;

use crate::codec::crc32c;
use crate::store::record::{Layout, PAYLOAD_BYTES_MAX};

pub const CHECKPOINT_MAGIC: [u8; 4] = *b"MSIX";
/// Version 2 adds each entry's record layout; version 1 (every record in layout 1) is
/// still read.
pub const CHECKPOINT_VERSION: u8 = 2;
const FIXED_BYTES: usize = 24;
const SEGMENT_BYTES: usize = 16;
const ENTRY_BYTES_V1: usize = 56;
const ENTRY_BYTES: usize = 64;
const TRAILER_BYTES: usize = 4;
/// Most segments one shard may have: bounds the checkpoint's segment table.
pub const SEGMENTS_MAX: u32 = 1 << 20;

/// How far the checkpoint covers one segment: every record before `covered_end` is in the
/// entries (or was deleted); the tail after it must be scanned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentCover {
    pub seq: u32,
    pub covered_end: u64,
}

/// Where a live chunk is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: ChunkId,
    pub seq: u32,
    pub payload_bytes: u32,
    /// Offset of the record (its header) in the segment.
    pub offset: u64,
    pub expiry_unix_secs: u64,
    /// The layout of the record (its header's version).
    pub layout: Layout,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub shard: u32,
    pub segments: Vec<SegmentCover>,
    /// Sorted by id, no duplicates: one canonical encoding per index.
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CheckpointError {
    #[error("index checkpoint is {len} bytes; its header says {expected}")]
    Length { len: usize, expected: u128 },
    #[error("not an index checkpoint (magic {0:02x?})")]
    BadMagic(Vec<u8>),
    #[error("index checkpoint version {0} is not supported")]
    Version(u8),
    #[error("index checkpoint checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the file is damaged")]
    Checksum { stored: u32, computed: u32 },
    #[error("index checkpoint is invalid: {0}")]
    Invalid(String),
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        assert!(
            self.validate().is_ok(),
            "encoding an invalid checkpoint: {:?}",
            self.validate()
        );
        let mut out = Vec::with_capacity(
            FIXED_BYTES
                + SEGMENT_BYTES * self.segments.len()
                + ENTRY_BYTES * self.entries.len()
                + TRAILER_BYTES,
        );
        out.extend_from_slice(&CHECKPOINT_MAGIC);
        out.extend_from_slice(&[CHECKPOINT_VERSION, 0, 0, 0]);
        out.extend_from_slice(&self.shard.to_le_bytes());
        out.extend_from_slice(
            &u32::try_from(self.segments.len())
                .expect("validated")
                .to_le_bytes(),
        );
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for s in &self.segments {
            out.extend_from_slice(&s.seq.to_le_bytes());
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(&s.covered_end.to_le_bytes());
        }
        for e in &self.entries {
            out.extend_from_slice(&e.id.0);
            out.extend_from_slice(&e.seq.to_le_bytes());
            out.extend_from_slice(&e.payload_bytes.to_le_bytes());
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&e.expiry_unix_secs.to_le_bytes());
            out.extend_from_slice(&[e.layout.version(), 0, 0, 0, 0, 0, 0, 0]);
        }
        let sum = crc32c(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Every relation a checkpoint must satisfy: segments strictly increasing in sequence
    /// with sector-aligned ends; entries sorted by id without duplicates, each inside the
    /// covered part of a listed segment, sector-aligned, with a valid payload length.
    pub fn validate(&self) -> Result<(), String> {
        if self.segments.len() > SEGMENTS_MAX as usize {
            return Err(format!(
                "{} segments, the limit is {SEGMENTS_MAX}",
                self.segments.len()
            ));
        }
        for pair in self.segments.windows(2) {
            if pair[0].seq >= pair[1].seq {
                return Err(format!(
                    "segment {} listed after {}",
                    pair[1].seq, pair[0].seq
                ));
            }
        }
        let sector = u64::from(SECTOR_BYTES);
        if let Some(s) = self.segments.iter().find(|s| s.covered_end % sector != 0) {
            return Err(format!(
                "segment {} is covered to {}, not a sector boundary",
                s.seq, s.covered_end
            ));
        }
        for pair in self.entries.windows(2) {
            if pair[0].id >= pair[1].id {
                return Err(format!(
                    "entries out of order or duplicated at chunk {}",
                    pair[1].id
                ));
            }
        }
        for e in &self.entries {
            let Ok(i) = self.segments.binary_search_by_key(&e.seq, |s| s.seq) else {
                return Err(format!(
                    "chunk {} is in segment {}, which is not listed",
                    e.id, e.seq
                ));
            };
            if !(1..=PAYLOAD_BYTES_MAX).contains(&e.payload_bytes) {
                return Err(format!(
                    "chunk {} has payload length {}",
                    e.id, e.payload_bytes
                ));
            }
            let end = e.offset.checked_add(e.layout.span(e.payload_bytes));
            if e.offset % sector != 0 || end.is_none_or(|end| end > self.segments[i].covered_end) {
                return Err(format!(
                    "chunk {} at offset {} is outside the covered part of segment {}",
                    e.id, e.offset, e.seq
                ));
            }
        }
        Ok(())
    }

    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
        if bytes.len() < FIXED_BYTES + TRAILER_BYTES {
            return Err(CheckpointError::Length {
                len: bytes.len(),
                expected: (FIXED_BYTES + TRAILER_BYTES) as u128,
            });
        }
        if bytes[..4] != CHECKPOINT_MAGIC {
            return Err(CheckpointError::BadMagic(bytes[..4].to_vec()));
        }
        let entry_bytes = match bytes[4] {
            1 => ENTRY_BYTES_V1,
            CHECKPOINT_VERSION => ENTRY_BYTES,
            other => return Err(CheckpointError::Version(other)),
        };
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let segment_count = u32_at(12);
        let entry_count = u64_at(16);
        // Exact length before anything is allocated or read past the header.
        let expected = FIXED_BYTES as u128
            + SEGMENT_BYTES as u128 * u128::from(segment_count)
            + entry_bytes as u128 * u128::from(entry_count)
            + TRAILER_BYTES as u128;
        if bytes.len() as u128 != expected {
            return Err(CheckpointError::Length {
                len: bytes.len(),
                expected,
            });
        }
        let body = bytes.len() - TRAILER_BYTES;
        let (stored, computed) = (u32_at(body), crc32c(&bytes[..body]));
        if stored != computed {
            return Err(CheckpointError::Checksum { stored, computed });
        }
        if bytes[5..8] != [0, 0, 0] {
            return Err(CheckpointError::Invalid(
                "reserved header bytes are not zero".into(),
            ));
        }
        let mut at = FIXED_BYTES;
        let mut segments = Vec::with_capacity(segment_count as usize);
        for _ in 0..segment_count {
            if u32_at(at + 4) != 0 {
                return Err(CheckpointError::Invalid(
                    "reserved segment bytes are not zero".into(),
                ));
            }
            segments.push(SegmentCover {
                seq: u32_at(at),
                covered_end: u64_at(at + 8),
            });
            at += SEGMENT_BYTES;
        }
        let mut entries = Vec::with_capacity(
            usize::try_from(entry_count)
                .map_err(|_| CheckpointError::Invalid("too many entries".into()))?,
        );
        for _ in 0..entry_count {
            let mut id = [0u8; 32];
            id.copy_from_slice(&bytes[at..at + 32]);
            let layout = if entry_bytes == ENTRY_BYTES_V1 {
                Layout::V1
            } else {
                if bytes[at + 57..at + 64] != [0; 7] {
                    return Err(CheckpointError::Invalid(
                        "reserved entry bytes are not zero".into(),
                    ));
                }
                Layout::of_version(bytes[at + 56]).ok_or_else(|| {
                    CheckpointError::Invalid(format!(
                        "chunk {} has record version {}",
                        ChunkId(id),
                        bytes[at + 56]
                    ))
                })?
            };
            entries.push(Entry {
                id: ChunkId(id),
                seq: u32_at(at + 32),
                payload_bytes: u32_at(at + 36),
                offset: u64_at(at + 40),
                expiry_unix_secs: u64_at(at + 48),
                layout,
            });
            at += entry_bytes;
        }
        let cp = Checkpoint {
            shard: u32_at(8),
            segments,
            entries,
        };
        cp.validate().map_err(CheckpointError::Invalid)?;
        Ok(cp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            shard: 3,
            segments: vec![
                SegmentCover {
                    seq: 1,
                    covered_end: 1 << 20,
                },
                SegmentCover {
                    seq: 4,
                    covered_end: 8192,
                },
            ],
            entries: vec![
                Entry {
                    id: ChunkId([1; 32]),
                    seq: 1,
                    payload_bytes: 5000,
                    offset: 0,
                    expiry_unix_secs: 0,
                    layout: Layout::V2,
                },
                Entry {
                    id: ChunkId([2; 32]),
                    seq: 4,
                    payload_bytes: 4000,
                    offset: 4096,
                    expiry_unix_secs: 9,
                    layout: Layout::V1,
                },
                Entry {
                    id: ChunkId([3; 32]),
                    seq: 1,
                    payload_bytes: 100,
                    offset: 8192,
                    expiry_unix_secs: 1,
                    layout: Layout::V2,
                },
            ],
        }
    }

    #[test]
    fn round_trips() {
        let cp = sample();
        assert_eq!(Checkpoint::decode(&cp.encode()), Ok(cp));
        let empty = Checkpoint {
            shard: 0,
            segments: vec![],
            entries: vec![],
        };
        assert_eq!(Checkpoint::decode(&empty.encode()), Ok(empty));
    }

    /// A version-1 checkpoint (written before record layout 2): 56-byte entries, every
    /// record in layout 1.
    #[test]
    fn version_1_checkpoints_are_read_with_layout_1_records() {
        let mut cp = sample();
        for e in &mut cp.entries {
            e.layout = Layout::V1;
        }
        let v2 = cp.encode();
        let mut v1 = v2[..FIXED_BYTES + SEGMENT_BYTES * cp.segments.len()].to_vec();
        v1[4] = 1;
        let entries = &v2[v1.len()..v2.len() - TRAILER_BYTES];
        for e in entries.chunks(ENTRY_BYTES) {
            v1.extend_from_slice(&e[..ENTRY_BYTES_V1]);
        }
        let sum = crc32c(&v1);
        v1.extend_from_slice(&sum.to_le_bytes());
        assert_eq!(Checkpoint::decode(&v1), Ok(cp));
    }

    #[test]
    fn rejects_malformed_checkpoints() {
        let good = sample().encode();
        let reseal = |mut b: Vec<u8>| {
            let n = b.len() - 4;
            let sum = crc32c(&b[..n]);
            b[n..].copy_from_slice(&sum.to_le_bytes());
            b
        };
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "bytes"),
            (
                "magic",
                {
                    let mut b = good.clone();
                    b[0] = b'X';
                    b
                },
                "magic",
            ),
            (
                "version",
                {
                    let mut b = good.clone();
                    b[4] = 3;
                    b
                },
                "version",
            ),
            (
                "record version",
                {
                    let mut b = good.clone();
                    b[24 + 32 + 56] = 3;
                    reseal(b)
                },
                "record version 3",
            ),
            (
                "reserved entry byte",
                {
                    let mut b = good.clone();
                    b[24 + 32 + 63] = 1;
                    reseal(b)
                },
                "reserved entry",
            ),
            (
                "flipped entry",
                {
                    let mut b = good.clone();
                    b[60] ^= 1;
                    b
                },
                "checksum",
            ),
            ("cut", good[..good.len() - 1].to_vec(), "bytes"),
            (
                "huge count",
                {
                    let mut b = good.clone();
                    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
                    b
                },
                "bytes",
            ),
            (
                "unsorted",
                {
                    let mut b = good.clone();
                    let e = 24 + 32;
                    b[e..e + 32].fill(9);
                    reseal(b)
                },
                "out of order",
            ),
            (
                "unknown segment",
                {
                    let mut b = good.clone();
                    let e = 24 + 32 + 32;
                    b[e..e + 4].copy_from_slice(&2u32.to_le_bytes());
                    reseal(b)
                },
                "not listed",
            ),
            (
                "beyond cover",
                {
                    let mut b = good.clone();
                    let e = 24 + 32 + 64 + 40;
                    b[e..e + 8].copy_from_slice(&8192u64.to_le_bytes());
                    reseal(b)
                },
                "outside",
            ),
            (
                "unaligned",
                {
                    let mut b = good.clone();
                    let e = 24 + 32 + 40;
                    b[e] = 1;
                    reseal(b)
                },
                "outside",
            ),
        ];
        for (name, bytes, expect) in cases {
            let err = Checkpoint::decode(&bytes).expect_err(name).to_string();
            assert!(err.contains(expect), "{name}: {err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = Checkpoint::decode(&bytes);
        }
    }
}
