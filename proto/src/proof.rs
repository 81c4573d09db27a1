//! Storage proofs: a verified slice of one 1 KiB leaf of a sealed chunk, checked against the
//! chunk's id alone (design.md section 5). The chunk id is the BLAKE3 hash of the sealed
//! chunk, which is the root of BLAKE3's own Merkle tree over 1 KiB leaves; a proof is the
//! bao encoding (`bao-tree`, block size 1 KiB) of that one leaf: the sibling hashes on the
//! path from the root, then the leaf's bytes. A host that dropped the chunk cannot answer a
//! leaf it was not told in advance.
//!
//! Size: 64 bytes per tree level plus the leaf: 17 levels and 2,112 bytes for the largest
//! sealed chunk (64 MiB + 16 bytes).
//!
//! What a proof does not show: that the host holds the rest of the chunk (one leaf a period
//! catches a host keeping a fraction f of the data with probability 1 - f), or that it holds
//! its own copy (replicas share chunk ids). Both are limits of the scheme in design.md
//! section 5, not of this code.

use std::io::Cursor;

use bao_tree::io::outboard::PreOrderOutboard;
use bao_tree::io::sync::{encode_ranges_validated, CreateOutboard, DecodeResponseIter};
use bao_tree::io::BaoContentItem;
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};
use thiserror::Error;

use crate::ids::ChunkId;

/// BLAKE3's leaf: 1 KiB.
pub const LEAF_BYTES: u64 = 1024;
/// Largest proof a decoder reads: 64 levels of sibling pairs and a leaf.
pub const PROOF_BYTES_MAX: usize = 64 * 64 + 1024;
const _: () = assert!(LEAF_BYTES == 1024);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProofError {
    #[error("leaf {leaf} is outside a chunk of {bytes} bytes")]
    LeafOutOfRange { leaf: u64, bytes: u64 },
    #[error("the proof does not verify against the chunk id: {0}")]
    Mismatch(String),
    #[error("the proof has {0} bytes after the leaf")]
    TrailingBytes(usize),
    #[error("the proof is {0} bytes, more than any proof")]
    TooLarge(usize),
}

/// Leaves of a chunk of `bytes` bytes (a partial last leaf counts).
pub fn leaf_count(bytes: u64) -> u64 {
    bytes.div_ceil(LEAF_BYTES).max(1)
}

fn ranges(leaf: u64) -> ChunkRanges {
    ChunkRanges::from(ChunkNum(leaf)..ChunkNum(leaf + 1))
}

/// The proof that `data` holds leaf `leaf`. Computes the tree on the fly (one BLAKE3 pass
/// over the chunk); a host that keeps an outboard beside the record can skip that pass.
pub fn prove(data: &[u8], leaf: u64) -> Result<Vec<u8>, ProofError> {
    let bytes = data.len() as u64;
    if leaf >= leaf_count(bytes) {
        return Err(ProofError::LeafOutOfRange { leaf, bytes });
    }
    let outboard = PreOrderOutboard::<Vec<u8>>::create(Cursor::new(data), BlockSize::ZERO)
        .map_err(|e| ProofError::Mismatch(format!("building the tree: {e}")))?;
    let mut out = Vec::new();
    encode_ranges_validated(data, &outboard, &ranges(leaf), &mut out)
        .map_err(|e| ProofError::Mismatch(format!("encoding: {e}")))?;
    Ok(out)
}

/// Checks that `proof` proves leaf `leaf` of the chunk `id` of `bytes` bytes, and returns
/// the leaf's bytes.
pub fn verify(id: &ChunkId, bytes: u64, leaf: u64, proof: &[u8]) -> Result<Vec<u8>, ProofError> {
    if proof.len() > PROOF_BYTES_MAX {
        return Err(ProofError::TooLarge(proof.len()));
    }
    if leaf >= leaf_count(bytes) {
        return Err(ProofError::LeafOutOfRange { leaf, bytes });
    }
    let tree = BaoTree::new(bytes, BlockSize::ZERO);
    let wanted = ranges(leaf);
    let mut reader = Cursor::new(proof);
    let mut data = None;
    for item in DecodeResponseIter::new(blake3::Hash::from_bytes(id.0), tree, &mut reader, &wanted)
    {
        match item.map_err(|e| ProofError::Mismatch(e.to_string()))? {
            BaoContentItem::Parent(_) => {}
            BaoContentItem::Leaf(l) if l.offset == leaf * LEAF_BYTES => {
                data = Some(l.data.to_vec())
            }
            BaoContentItem::Leaf(l) => {
                return Err(ProofError::Mismatch(format!(
                    "a leaf at offset {} was not asked for",
                    l.offset
                )))
            }
        }
    }
    let rest = proof.len() - usize::try_from(reader.position()).expect("within the proof");
    if rest != 0 {
        return Err(ProofError::TrailingBytes(rest));
    }
    data.ok_or_else(|| ProofError::Mismatch("the proof holds no leaf".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from((i * 7 + i / 1024) % 256).unwrap())
            .collect()
    }

    #[test]
    fn proofs_verify_for_every_leaf_position() {
        for len in [1usize, 1024, 1025, 5000, 64 * 1024 + 16] {
            let data = chunk(len);
            let id = ChunkId::of(&data);
            let leaves = leaf_count(len as u64);
            for leaf in [0, leaves / 2, leaves - 1] {
                let proof = prove(&data, leaf).unwrap();
                assert!(proof.len() <= PROOF_BYTES_MAX);
                let start = usize::try_from(leaf * LEAF_BYTES).unwrap();
                let end = (start + 1024).min(len);
                assert_eq!(
                    verify(&id, len as u64, leaf, &proof).unwrap(),
                    data[start..end],
                    "len {len} leaf {leaf}"
                );
            }
        }
    }

    #[test]
    fn wrong_proofs_are_refused() {
        let data = chunk(10_000);
        let id = ChunkId::of(&data);
        let proof = prove(&data, 3).unwrap();
        // Another leaf's proof, a wrong chunk id, a wrong size, a flipped byte, extra bytes.
        assert!(verify(&id, 10_000, 4, &proof).is_err());
        assert!(verify(&ChunkId([1; 32]), 10_000, 3, &proof).is_err());
        assert!(verify(&id, 20_000, 3, &proof).is_err());
        for at in [0, proof.len() / 2, proof.len() - 1] {
            let mut bad = proof.clone();
            bad[at] ^= 1;
            assert!(verify(&id, 10_000, 3, &bad).is_err(), "flip at {at}");
        }
        let mut long = proof.clone();
        long.push(0);
        assert_eq!(
            verify(&id, 10_000, 3, &long),
            Err(ProofError::TrailingBytes(1))
        );
        assert!(verify(&id, 10_000, 3, &proof[..proof.len() - 1]).is_err());
        assert_eq!(
            verify(&id, 10_000, 10, &proof),
            Err(ProofError::LeafOutOfRange {
                leaf: 10,
                bytes: 10_000
            })
        );
        // A host that kept only the CRC or the id cannot make one up.
        assert!(verify(&id, 10_000, 3, &[0u8; 1024 + 64 * 4]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn verifier_never_panics(proof in proptest::collection::vec(proptest::num::u8::ANY, 0..3000), bytes in 0u64..100_000, leaf in 0u64..100) {
            let _ = verify(&ChunkId([5; 32]), bytes, leaf, &proof);
        }
    }
}
