//! Records in segment files: a 64-byte header, the payload (a sealed chunk), zero padding to
//! the next 4 KiB sector. Every record starts on a sector boundary, so O_DIRECT reads and
//! writes never straddle two records' sectors. Layout in `docs/formats.md` section 7.

use proto::{ChunkId, CHUNK_BYTES_MAX, SECTOR_BYTES, TAG_BYTES};
use thiserror::Error;

use crate::codec::crc32c;
use crate::store::tree::{outboard_bytes, Tree};

pub const RECORD_MAGIC: [u8; 4] = *b"MSRC";
pub const RECORD_VERSION: u8 = 1;
pub const HEADER_BYTES: usize = 64;
/// Largest payload: a sealed chunk of the largest size.
pub const PAYLOAD_BYTES_MAX: u32 = CHUNK_BYTES_MAX + TAG_BYTES;

const _: () = assert!(HEADER_BYTES <= SECTOR_BYTES as usize);

/// What a record says about its chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// The payload is the sealed chunk.
    Chunk = 1,
    /// The chunk is deleted from here on; no payload.
    Tombstone = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub id: ChunkId,
    pub payload_bytes: u32,
    /// CRC32C of the payload: for a chunk, the same CRC the manifest and the deal carry.
    pub payload_crc32c: u32,
    /// For a chunk: Unix seconds after which it may be dropped, 0 for never. For a
    /// tombstone: the sequence of the segment holding the record it deletes, so compaction
    /// keeps the tombstone exactly as long as that segment exists.
    pub expiry_unix_secs: u64,
    /// The sequence number of the segment the record was written to: a record read from a
    /// segment with another sequence is stale (left from a reused file) and rejected.
    pub segment_seq: u32,
}

/// Why the bytes at an offset are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    #[error("no record here (the bytes are zero: the end of what was written)")]
    Zero,
    #[error("not a record header (magic {0:02x?})")]
    BadMagic([u8; 4]),
    #[error("record header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("record version {0} is not supported")]
    Version(u8),
    #[error("record kind {0} is unknown")]
    Kind(u8),
    #[error("record payload length {0} is invalid for its kind")]
    Length(u32),
    #[error("record belongs to segment {found}, this is segment {expected} (stale data)")]
    WrongSegment { expected: u32, found: u32 },
    #[error("record payload is cut short: {needed} bytes needed, {available} present")]
    Truncated { needed: u64, available: u64 },
    #[error("record payload fails its CRC32C (stored {stored:#010x}, computed {computed:#010x})")]
    PayloadChecksum { stored: u32, computed: u32 },
    #[error("record outboard does not hash to the chunk id")]
    Outboard,
}

/// Bytes a record with `payload_bytes` occupies in its segment: header, payload, outboard
/// ([`tree`](crate::store::tree)) and padding to the next sector.
pub fn record_span(payload_bytes: u32) -> u64 {
    (HEADER_BYTES as u64 + u64::from(payload_bytes) + u64::from(outboard_bytes(payload_bytes)))
        .next_multiple_of(u64::from(SECTOR_BYTES))
}

impl RecordHeader {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[0..4].copy_from_slice(&RECORD_MAGIC);
        h[4] = RECORD_VERSION;
        h[5] = self.kind as u8;
        h[8..40].copy_from_slice(&self.id.0);
        h[40..44].copy_from_slice(&self.payload_bytes.to_le_bytes());
        h[44..48].copy_from_slice(&self.payload_crc32c.to_le_bytes());
        h[48..56].copy_from_slice(&self.expiry_unix_secs.to_le_bytes());
        h[56..60].copy_from_slice(&self.segment_seq.to_le_bytes());
        let sum = crc32c(&h[..60]);
        h[60..64].copy_from_slice(&sum.to_le_bytes());
        h
    }

    /// Decodes a header read from segment `segment_seq`. Every field is checked; the
    /// payload is not (see [`verify_record`]).
    pub fn decode(
        bytes: &[u8; HEADER_BYTES],
        segment_seq: u32,
    ) -> Result<RecordHeader, RecordError> {
        if bytes.iter().all(|&b| b == 0) {
            return Err(RecordError::Zero);
        }
        let field = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != RECORD_MAGIC {
            return Err(RecordError::BadMagic(magic));
        }
        let (stored, computed) = (field(60), crc32c(&bytes[..60]));
        if stored != computed {
            return Err(RecordError::HeaderChecksum { stored, computed });
        }
        if bytes[4] != RECORD_VERSION {
            return Err(RecordError::Version(bytes[4]));
        }
        if bytes[6] != 0 || bytes[7] != 0 {
            // Covered by the checksum, so only a writer bug gets here; still refuse it.
            return Err(RecordError::Version(bytes[4]));
        }
        let payload_bytes = field(40);
        let kind = match bytes[5] {
            1 if (1..=PAYLOAD_BYTES_MAX).contains(&payload_bytes) => RecordKind::Chunk,
            2 if payload_bytes == 0 => RecordKind::Tombstone,
            1 | 2 => return Err(RecordError::Length(payload_bytes)),
            other => return Err(RecordError::Kind(other)),
        };
        let found = field(56);
        if found != segment_seq {
            return Err(RecordError::WrongSegment {
                expected: segment_seq,
                found,
            });
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&bytes[8..40]);
        let mut expiry = [0u8; 8];
        expiry.copy_from_slice(&bytes[48..56]);
        Ok(RecordHeader {
            kind,
            id: ChunkId(id),
            payload_bytes,
            payload_crc32c: field(44),
            expiry_unix_secs: u64::from_le_bytes(expiry),
            segment_seq: found,
        })
    }
}

/// Checks a payload against its header.
/// Checks a payload and its outboard against the header: the CRC32C, and (for a chunk
/// with an outboard) that the outboard hashes to the chunk id, which catches an outboard
/// sector a torn write left behind.
pub fn verify_record(
    header: &RecordHeader,
    payload: &[u8],
    outboard: &[u8],
) -> Result<(), RecordError> {
    if payload.len() as u64 != u64::from(header.payload_bytes) {
        return Err(RecordError::Truncated {
            needed: header.payload_bytes.into(),
            available: payload.len() as u64,
        });
    }
    let computed = crc32c(payload);
    if computed != header.payload_crc32c {
        return Err(RecordError::PayloadChecksum {
            stored: header.payload_crc32c,
            computed,
        });
    }
    if !outboard.is_empty() {
        let root = Tree::new(payload.len() as u64, outboard, None).root();
        if root.as_bytes() != &header.id.0 {
            return Err(RecordError::Outboard);
        }
    }
    Ok(())
}

/// Appends a whole record (header, payload, outboard, zero padding) to `out`. The stores
/// writes records in place in DMA buffers; this is the same layout for tests and tools.
pub fn encode_record(header: &RecordHeader, payload: &[u8], out: &mut Vec<u8>) {
    assert_eq!(
        payload.len() as u64,
        u64::from(header.payload_bytes),
        "payload length differs from its header"
    );
    debug_assert_eq!(
        crc32c(payload),
        header.payload_crc32c,
        "payload CRC differs from its header"
    );
    let start = out.len();
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
    let at = out.len();
    out.resize(at + outboard_bytes(header.payload_bytes) as usize, 0);
    if header.kind == RecordKind::Chunk {
        crate::store::tree::hash_with_outboard(payload, &mut out[at..]);
    }
    let span = usize::try_from(record_span(header.payload_bytes)).expect("a record fits in memory");
    out.resize(start + span, 0);
}

/// A record found by [`scan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    pub offset: u64,
    pub header: RecordHeader,
}

/// Where and why a scan stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// Zeros or the end of the bytes at a record boundary: everything written was whole.
    Clean { offset: u64 },
    /// Something at `offset` is not a whole, valid record: a torn write, or corruption.
    /// The runtime truncates the segment here if `offset` is past what the last checkpoint
    /// or sync covered, and reports corruption otherwise.
    Torn { offset: u64, error: RecordError },
}

impl ScanEnd {
    pub fn offset(&self) -> u64 {
        match self {
            ScanEnd::Clean { offset } | ScanEnd::Torn { offset, .. } => *offset,
        }
    }
}

/// Walks the records of a segment's bytes from `start` (a record boundary), checking each
/// header and, with `check_payloads`, each payload's CRC32C. Stops at the first invalid or
/// incomplete record.
pub fn scan(
    bytes: &[u8],
    segment_seq: u32,
    start: u64,
    check_payloads: bool,
) -> (Vec<Located>, ScanEnd) {
    let mut found = Vec::new();
    let mut offset = start;
    let len = bytes.len() as u64;
    loop {
        debug_assert_eq!(
            offset % u64::from(SECTOR_BYTES),
            0,
            "records start on sectors"
        );
        if offset == len {
            return (found, ScanEnd::Clean { offset });
        }
        let Some(head) = usize::try_from(offset)
            .ok()
            .and_then(|o| bytes.get(o..o + HEADER_BYTES))
        else {
            let error = RecordError::Truncated {
                needed: HEADER_BYTES as u64,
                available: len - offset,
            };
            return (found, ScanEnd::Torn { offset, error });
        };
        let head: &[u8; HEADER_BYTES] = head.try_into().expect("sliced to HEADER_BYTES");
        let header = match RecordHeader::decode(head, segment_seq) {
            Ok(h) => h,
            Err(RecordError::Zero) => return (found, ScanEnd::Clean { offset }),
            Err(error) => return (found, ScanEnd::Torn { offset, error }),
        };
        let payload_start = offset + HEADER_BYTES as u64;
        let payload_end = payload_start + u64::from(header.payload_bytes);
        let outboard_end = payload_end + u64::from(outboard_bytes(header.payload_bytes));
        if outboard_end > len {
            let error = RecordError::Truncated {
                needed: outboard_end - payload_start,
                available: len - payload_start,
            };
            return (found, ScanEnd::Torn { offset, error });
        }
        if check_payloads {
            let payload = &bytes[usize::try_from(payload_start).expect("in bounds")
                ..usize::try_from(payload_end).expect("in bounds")];
            let outboard = &bytes[usize::try_from(payload_end).expect("in bounds")
                ..usize::try_from(outboard_end).expect("in bounds")];
            if let Err(error) = verify_record(&header, payload, outboard) {
                return (found, ScanEnd::Torn { offset, error });
            }
        }
        found.push(Located { offset, header });
        offset += record_span(header.payload_bytes);
        if offset > len {
            // The record is whole but the file ends inside its padding (cut after the
            // payload): the next record still goes at the next boundary.
            return (found, ScanEnd::Clean { offset });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(i: u8, payload: &[u8]) -> RecordHeader {
        RecordHeader {
            kind: RecordKind::Chunk,
            id: ChunkId([i; 32]),
            payload_bytes: u32::try_from(payload.len()).unwrap(),
            payload_crc32c: crc32c(payload),
            expiry_unix_secs: 1_900_000_000,
            segment_seq: 7,
        }
    }

    fn segment(payloads: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, p) in (0u8..).zip(payloads) {
            encode_record(&header(i, p), p, &mut out);
        }
        out
    }

    #[test]
    fn records_are_sector_aligned_and_scan_back() {
        let payloads = vec![
            vec![1u8; 100],
            vec![2u8; 4096 - 64],
            vec![3u8; 4096 - 63],
            vec![4u8; 10_000],
        ];
        let seg = segment(&payloads);
        assert_eq!(seg.len() as u64, 4096 + 4096 + 8192 + 12288);
        let (found, end) = scan(&seg, 7, 0, true);
        assert_eq!(
            end,
            ScanEnd::Clean {
                offset: seg.len() as u64
            }
        );
        let offsets: Vec<u64> = found.iter().map(|l| l.offset).collect();
        assert_eq!(offsets, [0, 4096, 8192, 16384]);
        // Followed by zeros (a preallocated file): still a clean end at the last boundary.
        let mut padded = seg.clone();
        padded.resize(seg.len() + 8192, 0);
        assert_eq!(
            scan(&padded, 7, 0, true).1,
            ScanEnd::Clean {
                offset: seg.len() as u64
            }
        );
        assert_eq!(scan(&seg, 7, 4096, true).0.len(), 3);
    }

    #[test]
    fn torn_and_corrupt_tails_stop_the_scan_where_they_begin() {
        let seg = segment(&[vec![1u8; 5000], vec![2u8; 5000], vec![3u8; 5000]]);
        let third = 2 * 8192;
        type Damage = Box<dyn Fn(&mut Vec<u8>)>;
        type Expect = fn(&RecordError) -> bool;
        let cases: Vec<(&str, Damage, u64, Expect)> = vec![
            (
                "cut in the payload",
                Box::new(move |s| s.truncate(third + 100)),
                third as u64,
                |e| matches!(e, RecordError::Truncated { .. }),
            ),
            (
                "cut in the header",
                Box::new(move |s| s.truncate(third + 10)),
                third as u64,
                |e| matches!(e, RecordError::Truncated { .. }),
            ),
            (
                "payload bit flip",
                Box::new(move |s| s[third + 64 + 7] ^= 1),
                third as u64,
                |e| matches!(e, RecordError::PayloadChecksum { .. }),
            ),
            (
                "header bit flip",
                Box::new(|s| s[8192 + 41] ^= 1),
                8192,
                |e| matches!(e, RecordError::HeaderChecksum { .. }),
            ),
            (
                "garbage",
                Box::new(move |s| s[third..third + 64].fill(0xee)),
                third as u64,
                |e| matches!(e, RecordError::BadMagic(_)),
            ),
        ];
        for (name, damage, at, expect) in cases {
            let mut s = seg.clone();
            damage(&mut s);
            let (found, end) = scan(&s, 7, 0, true);
            match end {
                ScanEnd::Torn { offset, error } => {
                    assert_eq!(offset, at, "{name}");
                    assert!(expect(&error), "{name}: {error}");
                    assert_eq!(found.len() as u64, at / 8192, "{name}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        // A payload flip goes unseen when payloads are not checked (the checkpointed part).
        let mut s = seg.clone();
        s[third + 64 + 7] ^= 1;
        assert_eq!(scan(&s, 7, 0, false).0.len(), 3);
    }

    #[test]
    fn headers_reject_every_malformed_field() {
        let good = header(1, &[5u8; 10]);
        let enc = good.encode();
        assert_eq!(RecordHeader::decode(&enc, 7), Ok(good));
        assert_eq!(
            RecordHeader::decode(&enc, 8),
            Err(RecordError::WrongSegment {
                expected: 8,
                found: 7
            })
        );
        assert_eq!(RecordHeader::decode(&[0; 64], 7), Err(RecordError::Zero));
        let resealed = |f: &dyn Fn(&mut [u8; 64])| {
            let mut h = enc;
            f(&mut h);
            let sum = crc32c(&h[..60]);
            h[60..].copy_from_slice(&sum.to_le_bytes());
            RecordHeader::decode(&h, 7)
        };
        assert_eq!(resealed(&|h| h[4] = 2), Err(RecordError::Version(2)));
        assert_eq!(resealed(&|h| h[5] = 9), Err(RecordError::Kind(9)));
        assert_eq!(
            resealed(&|h| h[40..44].copy_from_slice(&0u32.to_le_bytes())),
            Err(RecordError::Length(0))
        );
        assert_eq!(
            resealed(&|h| h[40..44].copy_from_slice(&(PAYLOAD_BYTES_MAX + 1).to_le_bytes())),
            Err(RecordError::Length(PAYLOAD_BYTES_MAX + 1))
        );
        assert_eq!(resealed(&|h| h[5] = 2), Err(RecordError::Length(10)));
        let tomb = RecordHeader {
            kind: RecordKind::Tombstone,
            payload_bytes: 0,
            payload_crc32c: crc32c(&[]),
            ..good
        };
        assert_eq!(RecordHeader::decode(&tomb.encode(), 7), Ok(tomb));
        assert_eq!(record_span(0), 4096);
    }

    proptest::proptest! {
        #[test]
        fn scanning_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..9000), start in 0u64..3) {
            let _ = scan(&bytes, 7, (start * 4096).min(bytes.len() as u64 / 4096 * 4096), true);
        }
    }
}
