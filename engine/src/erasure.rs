//! Erasure coding of sealed chunks: N shares of which any K rebuild the chunk (the share
//! format is `proto::erasure`, docs/formats.md section 24).
//!
//! The code is reed-solomon-simd's (Lin, Han and Chung's FFT-based Reed-Solomon over
//! GF(2^16), as in Leopard-RS): systematic, so shares `0..K` are the chunk itself, cut in K
//! shards, and rebuilding from them is a copy; shares `K..N` are its recovery shards.
//! Coding works on the sealed chunk (ciphertext and tag), never on plaintext, so a host
//! holding a share learns nothing the chunk would not tell it, and a rebuilt chunk goes
//! through the same four checks as any chunk before its plaintext is released.

use proto::erasure::{Scheme, ShareHeader, SHARE_HEADER_BYTES};
use proto::{ChunkId, DecodeError};
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ErasureError {
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// A share of another chunk, scheme or length among the shares of one chunk.
    #[error("share {index} is not a share of the same chunk: {reason}")]
    Mismatch { index: usize, reason: String },
    #[error("{have} distinct shares of chunk {chunk}, {need} needed to rebuild it")]
    TooFew {
        chunk: ChunkId,
        have: usize,
        need: usize,
    },
    #[error("the shares rebuild bytes that do not hash to chunk {chunk}: a share is corrupt")]
    Rebuilt { chunk: ChunkId },
    #[error("a sealed chunk of {0} bytes cannot be coded")]
    Length(usize),
    #[error("reed-solomon: {0}")]
    Coding(#[from] reed_solomon_simd::Error),
}

/// Codes the chunks of one file: keeps the Reed-Solomon working space between chunks.
pub struct Encoder {
    scheme: Scheme,
    rs: Option<ReedSolomonEncoder>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    pub fn new(scheme: Scheme) -> Encoder {
        Encoder { scheme, rs: None }
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The N shares of the sealed chunk `sealed` whose id is `chunk`, share `i` at `[i]`,
    /// each with its header.
    pub fn shares(&mut self, chunk: ChunkId, sealed: &[u8]) -> Result<Vec<Vec<u8>>, ErasureError> {
        debug_assert_eq!(ChunkId::of(sealed), chunk, "the id names these bytes");
        let len = u32::try_from(sealed.len()).map_err(|_| ErasureError::Length(sealed.len()))?;
        if len <= proto::TAG_BYTES || len > proto::CHUNK_BYTES_MAX + proto::TAG_BYTES {
            return Err(ErasureError::Length(sealed.len()));
        }
        let (k, n) = (usize::from(self.scheme.k()), usize::from(self.scheme.n()));
        let shard = self.scheme.shard_bytes(len) as usize;
        let mut shares: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let mut s = Vec::with_capacity(SHARE_HEADER_BYTES + shard);
                s.extend_from_slice(
                    &ShareHeader {
                        scheme: self.scheme,
                        index: u8::try_from(i).expect("n <= SHARES_MAX"),
                        sealed_bytes: len,
                        chunk,
                    }
                    .encode(),
                );
                s
            })
            .collect();
        // The data shards: the chunk cut in K, the last zero-padded.
        for (i, share) in shares.iter_mut().take(k).enumerate() {
            let from = (i * shard).min(sealed.len());
            let to = ((i + 1) * shard).min(sealed.len());
            share.extend_from_slice(&sealed[from..to]);
            share.resize(SHARE_HEADER_BYTES + shard, 0);
        }
        let rs = match &mut self.rs {
            Some(rs) => {
                rs.reset(k, n - k, shard)?;
                rs
            }
            None => self.rs.insert(ReedSolomonEncoder::new(k, n - k, shard)?),
        };
        for share in &shares[..k] {
            rs.add_original_shard(&share[SHARE_HEADER_BYTES..])?;
        }
        let out = rs.encode()?;
        for (share, recovery) in shares[k..].iter_mut().zip(out.recovery_iter()) {
            share.extend_from_slice(recovery);
        }
        Ok(shares)
    }
}

/// Rebuilds a sealed chunk from its shares: any K distinct ones of the same chunk (more are
/// allowed; duplicates count once). Every share's header is checked, and the rebuilt chunk
/// must hash to the id the shares name; the caller still checks it against the manifest.
/// Given more than K, a corrupt share is outvoted: sets of K (data shares first) are tried
/// until one hashes to the id, at most [`SUBSETS_TRIED`].
pub fn rebuild(shares: &[&[u8]]) -> Result<(ChunkId, Vec<u8>), ErasureError> {
    let mut first: Option<ShareHeader> = None;
    let mut by_index: Vec<Option<&[u8]>> = Vec::new();
    for (at, share) in shares.iter().enumerate() {
        let (h, shard) = ShareHeader::split(share)?;
        match first {
            None => {
                by_index = vec![None; usize::from(h.scheme.n())];
                first = Some(h);
            }
            Some(f) => {
                let reason = if f.chunk != h.chunk {
                    Some(format!("chunk {} and chunk {}", f.chunk, h.chunk))
                } else if f.scheme != h.scheme {
                    Some(format!("scheme {} and scheme {}", f.scheme, h.scheme))
                } else if f.sealed_bytes != h.sealed_bytes {
                    Some(format!("{} and {} bytes", f.sealed_bytes, h.sealed_bytes))
                } else {
                    None
                };
                if let Some(reason) = reason {
                    return Err(ErasureError::Mismatch { index: at, reason });
                }
            }
        }
        by_index[usize::from(h.index)].get_or_insert(shard);
    }
    let Some(h) = first else {
        return Err(ErasureError::TooFew {
            chunk: ChunkId([0; 32]),
            have: 0,
            need: 1,
        });
    };
    let (k, n) = (usize::from(h.scheme.k()), usize::from(h.scheme.n()));
    let have = by_index.iter().flatten().count();
    if have < k {
        return Err(ErasureError::TooFew {
            chunk: h.chunk,
            have,
            need: k,
        });
    }
    // K of the shares, data shares first; with more than K given and a corrupt one among
    // them, other sets of K are tried until one hashes to the chunk id.
    let given: Vec<usize> = (0..n).filter(|&i| by_index[i].is_some()).collect();
    for pick in subsets(&given, k).take(SUBSETS_TRIED) {
        let chosen: Vec<Option<&[u8]>> = (0..n)
            .map(|i| by_index[i].filter(|_| pick.contains(&i)))
            .collect();
        let out = from_shares(&chosen, h, k, n)?;
        if ChunkId::of(&out) == h.chunk {
            return Ok((h.chunk, out));
        }
    }
    Err(ErasureError::Rebuilt { chunk: h.chunk })
}

/// Sets of K share indexes [`rebuild`] tries when shares disagree, at most: enough for two
/// corrupt shares among K + 2 up to K = 43 (C(K+2, 2)), or three among K + 3 up to K = 16.
/// A set with every data share is a copy; others cost a decode each (a few milliseconds
/// for an 8 MiB chunk).
pub const SUBSETS_TRIED: usize = 1024;

/// The `k`-element subsets of `items` (sorted), in lexicographic order.
fn subsets(items: &[usize], k: usize) -> impl Iterator<Item = Vec<usize>> + '_ {
    let mut at: Option<Vec<usize>> = (k <= items.len()).then(|| (0..k).collect());
    std::iter::from_fn(move || {
        let cur = at.clone()?;
        let out = cur.iter().map(|&i| items[i]).collect();
        // Next: the rightmost position that can move right, and everything after it.
        let n = items.len();
        let mut next = cur;
        let mut i = k;
        at = loop {
            if i == 0 {
                break None;
            }
            i -= 1;
            if next[i] < n - k + i {
                next[i] += 1;
                for j in i + 1..k {
                    next[j] = next[j - 1] + 1;
                }
                break Some(next);
            }
        };
        Some(out)
    })
}

/// The chunk from exactly K shares (`chosen`: at most K set), cut to its length.
fn from_shares(
    chosen: &[Option<&[u8]>],
    h: ShareHeader,
    k: usize,
    n: usize,
) -> Result<Vec<u8>, ErasureError> {
    let shard = h.scheme.shard_bytes(h.sealed_bytes) as usize;
    let mut out = Vec::with_capacity(k * shard);
    if chosen[..k].iter().all(Option::is_some) {
        for s in chosen[..k].iter().flatten() {
            out.extend_from_slice(s);
        }
    } else {
        DECODER.with_borrow_mut(|kept| {
            let rs = match kept {
                Some(rs) => {
                    rs.reset(k, n - k, shard)?;
                    rs
                }
                None => kept.insert(ReedSolomonDecoder::new(k, n - k, shard)?),
            };
            decode_into(rs, chosen, k, &mut out)
        })?;
    }
    out.truncate(h.sealed_bytes as usize);
    Ok(out)
}

thread_local! {
    /// A decoder's working space (about N shards), kept per thread between chunks.
    static DECODER: std::cell::RefCell<Option<ReedSolomonDecoder>> =
        const { std::cell::RefCell::new(None) };
}

/// Gives the decoder K of the shares (data shares first), then appends the K data shards,
/// restored where missing, to `out`.
fn decode_into(
    rs: &mut ReedSolomonDecoder,
    by_index: &[Option<&[u8]>],
    k: usize,
    out: &mut Vec<u8>,
) -> Result<(), ErasureError> {
    for (i, s) in by_index
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.map(|s| (i, s)))
        .take(k)
    {
        if i < k {
            rs.add_original_shard(i, s)?;
        } else {
            rs.add_recovery_shard(i - k, s)?;
        }
    }
    let restored = rs.decode()?;
    for (i, s) in by_index[..k].iter().enumerate() {
        match s {
            Some(s) => out.extend_from_slice(s),
            None => out.extend_from_slice(
                restored
                    .restored_original(i)
                    .expect("the decoder restores every missing data shard"),
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn chunk(len: usize) -> (ChunkId, Vec<u8>) {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251).to_le_bytes()[0]).collect();
        (ChunkId::of(&bytes), bytes)
    }

    #[test]
    fn any_k_shares_rebuild_the_chunk() {
        for (k, n, len) in [
            (2u8, 3u8, 17usize),
            (4, 6, 1 << 20 | 16),
            (3, 5, 4112),
            (2, 5, 100),
        ] {
            let scheme = Scheme::new(k, n).unwrap();
            let (id, sealed) = chunk(len);
            let shares = Encoder::new(scheme).shares(id, &sealed).unwrap();
            assert_eq!(shares.len(), usize::from(n));
            for s in &shares {
                assert_eq!(
                    s.len(),
                    scheme.share_bytes(u32::try_from(len).unwrap()) as usize
                );
            }
            // Every subset of exactly K shares.
            for mask in 0u32..(1 << n) {
                if mask.count_ones() != u32::from(k) {
                    continue;
                }
                let pick: Vec<&[u8]> = (0..usize::from(n))
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| shares[i].as_slice())
                    .collect();
                let (got_id, got) = rebuild(&pick).unwrap();
                assert_eq!((got_id, &got), (id, &sealed), "{k}/{n} mask {mask:b}");
            }
        }
    }

    #[test]
    fn subsets_come_in_order_and_all_of_them() {
        let all: Vec<Vec<usize>> = subsets(&[1, 3, 4, 7], 2).collect();
        assert_eq!(
            all,
            vec![
                vec![1, 3],
                vec![1, 4],
                vec![1, 7],
                vec![3, 4],
                vec![3, 7],
                vec![4, 7]
            ]
        );
        assert_eq!(subsets(&[1, 2], 3).count(), 0);
        assert_eq!(subsets(&[5], 1).collect::<Vec<_>>(), vec![vec![5]]);
    }

    #[test]
    fn too_few_mixed_or_corrupt_shares_are_refused() {
        let scheme = Scheme::new(3, 5).unwrap();
        let (id, sealed) = chunk(10_000);
        let mut enc = Encoder::new(scheme);
        let shares = enc.shares(id, &sealed).unwrap();
        let refs: Vec<&[u8]> = shares.iter().map(Vec::as_slice).collect();
        // Duplicates count once.
        let e = rebuild(&[refs[0], refs[0], refs[4]]).unwrap_err();
        assert!(
            matches!(
                e,
                ErasureError::TooFew {
                    have: 2,
                    need: 3,
                    ..
                }
            ),
            "{e}"
        );
        assert!(matches!(rebuild(&[]), Err(ErasureError::TooFew { .. })));
        // A share of another chunk.
        let (other_id, other) = chunk(10_001);
        let others = enc.shares(other_id, &other).unwrap();
        let e = rebuild(&[refs[0], refs[1], &others[2]]).unwrap_err();
        assert!(matches!(e, ErasureError::Mismatch { index: 2, .. }), "{e}");
        // A flipped shard byte: caught by the id, whichever share carried it.
        for victim in [0usize, 4] {
            let mut bad = shares[victim].clone();
            bad[SHARE_HEADER_BYTES + 5] ^= 1;
            let pick = if victim == 0 {
                vec![bad.as_slice(), refs[1], refs[2]]
            } else {
                vec![refs[0], refs[1], bad.as_slice()]
            };
            let e = rebuild(&pick).unwrap_err();
            assert!(matches!(e, ErasureError::Rebuilt { .. }), "{e}");
        }
        // With one share more than K, a corrupt one is outvoted.
        let mut bad = shares[1].clone();
        bad[SHARE_HEADER_BYTES + 9] ^= 1;
        let (got_id, got) = rebuild(&[refs[0], &bad, refs[2], refs[3]]).unwrap();
        assert_eq!((got_id, got), (id, sealed.clone()));
        // A malformed header.
        let e = rebuild(&[&shares[0][..40]]).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        // Lengths the format cannot carry.
        assert!(matches!(
            enc.shares(ChunkId::of(&[1; 16]), &[1; 16]),
            Err(ErasureError::Length(16))
        ));
    }
}
