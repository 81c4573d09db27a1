//! Records in segment files: a 64-byte header, the payload (a sealed chunk), its outboard,
//! zero padding to the next 4 KiB sector. Every record starts on a sector boundary, so
//! O_DIRECT reads and writes never straddle two records' sectors. The header's version names
//! the [`Layout`]: where the payload starts and the outboard's group size. Layout in
//! `docs/formats.md` section 7.

use proto::{ChunkId, CHUNK_BYTES_MAX, SECTOR_BYTES, TAG_BYTES};
use thiserror::Error;

use crate::codec::crc32c;
use crate::store::tree::{self, Tree};

pub const RECORD_MAGIC: [u8; 4] = *b"MSRC";
pub const HEADER_BYTES: usize = 64;
/// Largest payload: a sealed chunk of the largest size.
pub const PAYLOAD_BYTES_MAX: u32 = CHUNK_BYTES_MAX + TAG_BYTES;

const _: () = assert!(HEADER_BYTES <= SECTOR_BYTES as usize);

/// How a record lays out its payload and outboard: the header's version byte. A store
/// writes [`Layout::V2`] and reads both; compaction copies a record as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Version 1: the payload right after the header (byte 64), the outboard over 16 KiB
    /// groups. A group then spans five sectors, and a storage challenge reads 20 KiB.
    V1,
    /// Version 2: zeros after the header to the sector's end, the payload from byte 4096,
    /// the outboard over 4 KiB groups: every group is one sector of its own, and a storage
    /// challenge reads exactly one sector.
    #[default]
    V2,
}

impl Layout {
    pub const fn version(self) -> u8 {
        match self {
            Layout::V1 => 1,
            Layout::V2 => 2,
        }
    }

    pub const fn of_version(version: u8) -> Option<Layout> {
        match version {
            1 => Some(Layout::V1),
            2 => Some(Layout::V2),
            _ => None,
        }
    }

    /// Bytes of payload per group of the outboard (the leaves a challenge reads and hashes).
    pub const fn group_bytes(self) -> u64 {
        match self {
            Layout::V1 => tree::GROUP_V1,
            Layout::V2 => tree::GROUP_V2,
        }
    }

    /// Where the payload starts, from the record's first byte.
    pub const fn payload_offset(self) -> u64 {
        match self {
            Layout::V1 => HEADER_BYTES as u64,
            Layout::V2 => SECTOR_BYTES as u64,
        }
    }

    /// Outboard bytes after a payload of `payload_bytes`.
    pub fn outboard_bytes(self, payload_bytes: u32) -> u32 {
        tree::outboard_bytes(self.group_bytes(), payload_bytes)
    }

    /// Bytes a record with `payload_bytes` occupies in its segment: header (and, in
    /// version 2, zeros to the sector), payload, outboard ([`tree`]) and padding to the
    /// next sector. A tombstone (no payload) is one sector in either layout.
    pub fn span(self, payload_bytes: u32) -> u64 {
        (self.payload_offset()
            + u64::from(payload_bytes)
            + u64::from(self.outboard_bytes(payload_bytes)))
        .next_multiple_of(u64::from(SECTOR_BYTES))
    }
}

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
    /// The record's layout (its version byte).
    pub layout: Layout,
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
    #[error("record header (version {0}) has non-zero reserved bytes")]
    Reserved(u8),
    #[error("record kind {0} is unknown")]
    Kind(u8),
    #[error("record payload length {0} is invalid for its kind")]
    Length(u32),
    #[error("record belongs to segment {found}, this is segment {expected} (stale data)")]
    WrongSegment { expected: u32, found: u32 },
    #[error("record is cut short: {needed} bytes from its start needed, {available} present")]
    Truncated { needed: u64, available: u64 },
    #[error("record payload fails its CRC32C (stored {stored:#010x}, computed {computed:#010x})")]
    PayloadChecksum { stored: u32, computed: u32 },
    #[error("record outboard does not hash to the chunk id")]
    Outboard,
}

impl RecordHeader {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[0..4].copy_from_slice(&RECORD_MAGIC);
        h[4] = self.layout.version();
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
        let Some(layout) = Layout::of_version(bytes[4]) else {
            return Err(RecordError::Version(bytes[4]));
        };
        if bytes[6] != 0 || bytes[7] != 0 {
            // Covered by the checksum, so a writer of another format (or a bug) put them
            // there: not a torn write.
            return Err(RecordError::Reserved(bytes[4]));
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
            layout,
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
        let group = header.layout.group_bytes();
        let root = Tree::new(group, payload.len() as u64, outboard, None).root();
        if root.as_bytes() != &header.id.0 {
            return Err(RecordError::Outboard);
        }
    }
    Ok(())
}

/// Appends a whole record (header, payload, outboard, zero padding, in its header's layout)
/// to `out`. The store writes records in place in DMA buffers; this is the same layout for
/// tests and tools.
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
    let layout = header.layout;
    let start = out.len();
    out.extend_from_slice(&header.encode());
    out.resize(
        start + usize::try_from(layout.payload_offset()).expect("small"),
        0,
    );
    out.extend_from_slice(payload);
    let at = out.len();
    out.resize(at + layout.outboard_bytes(header.payload_bytes) as usize, 0);
    if header.kind == RecordKind::Chunk {
        tree::hash_with_outboard(layout.group_bytes(), payload, &mut out[at..]);
    }
    let span = usize::try_from(layout.span(header.payload_bytes)).expect("a record fits in memory");
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
        let layout = header.layout;
        let payload_start = offset + layout.payload_offset();
        let payload_end = payload_start + u64::from(header.payload_bytes);
        let outboard_end = payload_end + u64::from(layout.outboard_bytes(header.payload_bytes));
        if outboard_end > len {
            let error = RecordError::Truncated {
                needed: outboard_end - offset,
                available: len - offset,
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
        offset += layout.span(header.payload_bytes);
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
            layout: Layout::V1,
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
        assert_eq!(resealed(&|h| h[4] = 0), Err(RecordError::Version(0)));
        assert_eq!(resealed(&|h| h[4] = 3), Err(RecordError::Version(3)));
        assert_eq!(resealed(&|h| h[7] = 1), Err(RecordError::Reserved(1)));
        let v2 = RecordHeader {
            layout: Layout::V2,
            ..good
        };
        assert_eq!(RecordHeader::decode(&v2.encode(), 7), Ok(v2));
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
        assert_eq!(Layout::V1.span(0), 4096);
        assert_eq!(Layout::V2.span(0), 4096);
    }

    #[test]
    fn layout_2_puts_each_payload_group_on_a_sector_of_its_own() {
        let sizes = [100usize, 4096, 4097, 10_000, 20_000];
        // Header sector, payload, outboard (64 bytes per 4 KiB group past the first).
        let spans = [8192u64, 8192, 12288, 16384, 24576];
        let mut seg = Vec::new();
        let mut offsets = Vec::new();
        for (i, &n) in (0u8..).zip(&sizes) {
            let p: Vec<u8> = (0..n).map(|b| u8::try_from(b % 251).unwrap() ^ i).collect();
            offsets.push(seg.len() as u64);
            let h = RecordHeader {
                layout: Layout::V2,
                id: ChunkId(*blake3::hash(&p).as_bytes()),
                ..header(i, &p)
            };
            encode_record(&h, &p, &mut seg);
            let at = usize::try_from(offsets[usize::from(i)]).unwrap();
            assert_eq!(
                &seg[at + 4096..at + 4096 + n],
                &p[..],
                "payload {n} on its sector"
            );
            assert!(seg[at + 64..at + 4096].iter().all(|&b| b == 0));
            assert_eq!(
                Layout::V2.span(u32::try_from(n).unwrap()),
                spans[usize::from(i)]
            );
        }
        // A layout-1 record between them.
        offsets.push(seg.len() as u64);
        encode_record(&header(9, &[9u8; 5000]), &[9u8; 5000], &mut seg);
        let (found, end) = scan(&seg, 7, 0, true);
        assert_eq!(
            end,
            ScanEnd::Clean {
                offset: seg.len() as u64
            }
        );
        assert_eq!(found.iter().map(|l| l.offset).collect::<Vec<_>>(), offsets);
        let layouts: Vec<Layout> = found.iter().map(|l| l.header.layout).collect();
        assert_eq!(
            layouts,
            [[Layout::V2; 5].as_slice(), &[Layout::V1]].concat()
        );
        // Cut inside a layout-2 header's sector, inside its payload, inside its outboard:
        // the scan stops at that record, never past the bytes.
        let last_v2 = usize::try_from(offsets[4]).unwrap();
        for cut in [
            last_v2 + 100,
            last_v2 + 4096 + 10,
            last_v2 + 4096 + 20_000 + 100,
        ] {
            let (found, end) = scan(&seg[..cut], 7, 0, true);
            assert_eq!(found.len(), 4, "cut at {cut}");
            assert!(
                matches!(end, ScanEnd::Torn { offset, error: RecordError::Truncated { .. } } if offset == offsets[4]),
                "cut at {cut}: {end:?}"
            );
        }
        // A flipped outboard byte is caught by the payload check.
        let mut bad = seg.clone();
        bad[last_v2 + 4096 + 20_000 + 5] ^= 1;
        assert!(matches!(
            scan(&bad, 7, 0, true).1,
            ScanEnd::Torn {
                error: RecordError::Outboard,
                ..
            }
        ));
    }

    proptest::proptest! {
        #[test]
        fn scanning_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..9000), start in 0u64..3) {
            let _ = scan(&bytes, 7, (start * 4096).min(bytes.len() as u64 / 4096 * 4096), true);
        }
    }
}
