//! Erasure shares of a sealed chunk: the format of one share (docs/formats.md section 24).
//!
//! With an erasure scheme K/N, each sealed chunk (ciphertext and tag, exactly as a manifest
//! lists it) is cut into K data shards and extended with N - K recovery shards, so that any
//! K of the N shares rebuild it; share `i` of every chunk goes to the file's `i`-th host.
//! A share carries a header that says which chunk it belongs to and where, so a share read
//! back from any host is self-describing, and its id (BLAKE3 of the whole share, header
//! included) is what the host stores, proves and is paid for, like any chunk.
//!
//! The coding itself (which needs a Reed-Solomon library) is `engine::erasure`; this module
//! is the format and its checks, pure.

use std::fmt;
use std::str::FromStr;

use crate::decode::Reader;
use crate::{ChunkId, DecodeError, CHUNK_BYTES_MAX, TAG_BYTES};

pub const SHARE_MAGIC: &[u8; 4] = b"MSES";
pub const SHARE_VERSION: u8 = 1;
/// Bytes of a share's header, before its shard.
pub const SHARE_HEADER_BYTES: usize = HEADER as usize;
const HEADER: u32 = 48;
/// Most shares (N) one chunk is spread over.
pub const SHARES_MAX: u8 = 32;
/// Shards are whole multiples of this many bytes (the chunk is zero-padded up to K of them).
pub const SHARD_ALIGN: u32 = 64;

/// An erasure scheme: `k` data shares, `n` shares in all; any `k` rebuild the chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scheme {
    k: u8,
    n: u8,
}

impl Scheme {
    /// `2 <= k < n <= SHARES_MAX`: at least one recovery share (K = N would be a split
    /// with no redundancy), at most [`SHARES_MAX`] hosts, and at least two data shares (K = 1
    /// is a full copy on each host: `--copies`; its share would also outgrow the largest
    /// chunk a host takes).
    pub fn new(k: u8, n: u8) -> Result<Scheme, String> {
        if k < 2 || k >= n || n > SHARES_MAX {
            return Err(format!(
                "an erasure scheme K/N needs 2 <= K < N <= {SHARES_MAX}, not {k}/{n} (for full copies use --copies)"
            ));
        }
        Ok(Scheme { k, n })
    }

    /// Data shares: any this many rebuild the chunk.
    pub fn k(self) -> u8 {
        self.k
    }

    /// Shares in all, one per host.
    pub fn n(self) -> u8 {
        self.n
    }

    /// Shard bytes of a chunk of `sealed_bytes`: its K-th part, rounded up to
    /// [`SHARD_ALIGN`].
    pub fn shard_bytes(self, sealed_bytes: u32) -> u32 {
        sealed_bytes
            .div_ceil(u32::from(self.k))
            .next_multiple_of(SHARD_ALIGN)
    }

    /// Bytes of each of a chunk's shares, header included.
    pub fn share_bytes(self, sealed_bytes: u32) -> u32 {
        HEADER + self.shard_bytes(sealed_bytes)
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

impl FromStr for Scheme {
    type Err = String;

    /// `K/N`, e.g. `4/6`.
    fn from_str(s: &str) -> Result<Scheme, String> {
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("an erasure scheme is K/N (e.g. 4/6), not {s:?}"))?;
        let num = |t: &str| {
            t.parse::<u8>()
                .map_err(|_| format!("an erasure scheme is K/N with whole numbers, not {s:?}"))
        };
        Scheme::new(num(k)?, num(n)?)
    }
}

/// The header of one share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareHeader {
    pub scheme: Scheme,
    /// Which share: below K a data shard (bytes `index * shard .. (index + 1) * shard` of
    /// the zero-padded chunk), from K on a recovery shard.
    pub index: u8,
    /// Length of the sealed chunk the share belongs to.
    pub sealed_bytes: u32,
    /// That chunk's id (BLAKE3 of the sealed chunk).
    pub chunk: ChunkId,
}

impl ShareHeader {
    pub fn encode(&self) -> [u8; SHARE_HEADER_BYTES] {
        let mut out = [0u8; SHARE_HEADER_BYTES];
        out[0..4].copy_from_slice(SHARE_MAGIC);
        out[4] = SHARE_VERSION;
        out[5] = self.scheme.k;
        out[6] = self.scheme.n;
        out[7] = self.index;
        out[8..12].copy_from_slice(&self.sealed_bytes.to_le_bytes());
        // 12..16 reserved
        out[16..48].copy_from_slice(&self.chunk.0);
        out
    }

    /// Splits a whole share into its header and its shard, checking every field and that
    /// the shard has exactly the length the header implies.
    pub fn split(share: &[u8]) -> Result<(ShareHeader, &[u8]), DecodeError> {
        let mut r = Reader::new("erasure share", share);
        let header = Self::read(&mut r)?;
        let shard = r.take(
            "shard",
            header.scheme.shard_bytes(header.sealed_bytes) as usize,
        )?;
        r.finish()?;
        Ok((header, shard))
    }

    /// The header alone, from a share's first [`SHARE_HEADER_BYTES`] (what a reader asks
    /// for to learn a file's scheme without fetching a whole share), every field checked.
    pub fn head(bytes: &[u8]) -> Result<ShareHeader, DecodeError> {
        let mut r = Reader::new("erasure share header", bytes);
        let header = Self::read(&mut r)?;
        r.finish()?;
        Ok(header)
    }

    fn read(r: &mut Reader<'_>) -> Result<ShareHeader, DecodeError> {
        r.magic(SHARE_MAGIC)?;
        r.version(SHARE_VERSION)?;
        let k = r.u8("k")?;
        let n = r.u8("n")?;
        let scheme = Scheme::new(k, n).map_err(|e| r.invalid("n", e))?;
        let index = r.u8("index")?;
        if index >= n {
            return Err(r.invalid("index", format!("{index}, but the scheme has {n} shares")));
        }
        let sealed_bytes = r.u32("sealed_bytes")?;
        if sealed_bytes <= TAG_BYTES || sealed_bytes > CHUNK_BYTES_MAX + TAG_BYTES {
            return Err(r.invalid(
                "sealed_bytes",
                format!(
                    "{sealed_bytes}: a sealed chunk has {} to {} bytes",
                    TAG_BYTES + 1,
                    CHUNK_BYTES_MAX + TAG_BYTES
                ),
            ));
        }
        r.reserved("reserved", 4)?;
        let chunk = ChunkId(r.array("chunk")?);
        Ok(ShareHeader {
            scheme,
            index,
            sealed_bytes,
            chunk,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn share(h: &ShareHeader) -> Vec<u8> {
        let mut s = h.encode().to_vec();
        s.resize(
            SHARE_HEADER_BYTES + h.scheme.shard_bytes(h.sealed_bytes) as usize,
            7,
        );
        s
    }

    #[test]
    fn schemes_parse_and_bad_ones_are_refused_with_the_rule() {
        let s: Scheme = "4/6".parse().unwrap();
        assert_eq!((s.k(), s.n()), (4, 6));
        assert_eq!(s.to_string(), "4/6");
        for bad in [
            "4", "6/4", "4/4", "0/3", "1/2", "4/33", "a/6", "4/6/8", " 4/6", "-1/3",
        ] {
            let e = bad.parse::<Scheme>().unwrap_err();
            assert!(e.contains("K/N"), "{bad}: {e}");
        }
        assert!(Scheme::new(31, 32).is_ok());
    }

    #[test]
    fn shards_are_the_kth_part_rounded_to_64_bytes() {
        let s = Scheme::new(4, 6).unwrap();
        assert_eq!(s.shard_bytes(17), 64);
        assert_eq!(s.shard_bytes(256), 64);
        assert_eq!(s.shard_bytes(257), 128);
        assert_eq!(s.shard_bytes(1 << 20 | 16), 262_208);
        assert_eq!(s.share_bytes(256), 48 + 64);
        assert_eq!(Scheme::new(2, 3).unwrap().shard_bytes(4112), 2112);
        // The largest share stays within the largest chunk a host takes.
        let top = CHUNK_BYTES_MAX + TAG_BYTES;
        assert!(Scheme::new(2, 32).unwrap().share_bytes(top) <= top);
    }

    #[test]
    fn a_share_round_trips_and_every_bad_field_is_named() {
        let h = ShareHeader {
            scheme: Scheme::new(2, 3).unwrap(),
            index: 2,
            sealed_bytes: 4112,
            chunk: ChunkId([9; 32]),
        };
        let s = share(&h);
        let (back, shard) = ShareHeader::split(&s).unwrap();
        assert_eq!(back, h);
        assert_eq!(shard.len(), 2112);

        let bad = |at: usize, v: u8| {
            let mut b = s.clone();
            b[at] = v;
            ShareHeader::split(&b).unwrap_err().to_string()
        };
        assert!(bad(0, b'X').contains("magic"));
        assert!(bad(4, 2).contains("version 2"));
        assert!(bad(5, 1).contains("2 <= K < N"));
        assert!(bad(5, 3).contains("2 <= K < N"));
        assert!(bad(6, 33).contains("2 <= K < N"));
        assert!(bad(7, 3).contains("index"));
        assert!(bad(12, 1).contains("reserved"));
        let mut b = s.clone();
        b[8..12].copy_from_slice(&16u32.to_le_bytes());
        assert!(ShareHeader::split(&b)
            .unwrap_err()
            .to_string()
            .contains("sealed_bytes"));
        b[8..12].copy_from_slice(&(CHUNK_BYTES_MAX + TAG_BYTES + 1).to_le_bytes());
        assert!(ShareHeader::split(&b)
            .unwrap_err()
            .to_string()
            .contains("sealed_bytes"));
        let e = ShareHeader::split(&s[..s.len() - 1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated at shard"), "{e}");
        let mut long = s.clone();
        long.push(0);
        assert!(ShareHeader::split(&long)
            .unwrap_err()
            .to_string()
            .contains("unexpected bytes"));
        for n in 0..SHARE_HEADER_BYTES {
            assert!(ShareHeader::split(&s[..n]).is_err());
            assert!(ShareHeader::head(&s[..n]).is_err());
        }
        // The header alone: the first 48 bytes, no more.
        assert_eq!(ShareHeader::head(&s[..SHARE_HEADER_BYTES]).unwrap(), h);
        assert!(ShareHeader::head(&s[..SHARE_HEADER_BYTES + 1])
            .unwrap_err()
            .to_string()
            .contains("unexpected bytes"));
    }
}
