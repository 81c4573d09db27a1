//! The BLAKE3 tree kept beside each record, so that a storage challenge or a range read
//! touches a few sectors instead of the whole chunk.
//!
//! A chunk id is the BLAKE3 hash of the sealed chunk: the root of a binary tree over 1 KiB
//! leaves. The store keeps the chaining value of every 16 KiB group of leaves (32 bytes per
//! 16 KiB: 0.2% of the payload) after the payload in the record ("the outboard"). Then:
//! - a challenge for one leaf reads that leaf's group and the outboard, hashes 16 KiB and
//!   merges the other groups' values up to the root: the answer is checked against the id
//!   before it leaves the store;
//! - a range read verifies only the groups it covers against the outboard, and the outboard
//!   against the id.
//!
//! The trade-off against the alternatives: recomputing the tree per challenge reads and
//! hashes the whole chunk (8 MiB for one 1 KiB leaf); a full bao outboard at 1 KiB leaves
//! costs 6.25% of the disk. Groups of 16 KiB cost 0.2% and one 16 KiB read and hash per
//! challenge, plus one 64-byte merge per other group (512 for an 8 MiB chunk, ~50 µs).
//!
//! Chunks of one group or less (16 KiB) have no outboard: the id alone verifies them.

use blake3::hazmat::{left_subtree_len, merge_subtrees_non_root, merge_subtrees_root};
use blake3::hazmat::{ChainingValue, HasherExt, Mode};

/// Leaves per group: 16 BLAKE3 chunks of 1 KiB.
pub const GROUP_BYTES: usize = 16 * 1024;
const GROUP: u64 = GROUP_BYTES as u64;
const LEAF: u64 = 1024;
/// Bytes of one group's chaining value in the outboard.
pub const CV_BYTES: usize = 32;

/// Outboard bytes kept for a payload of `payload_bytes`.
pub fn outboard_bytes(payload_bytes: u32) -> u32 {
    if u64::from(payload_bytes) <= GROUP {
        0
    } else {
        let groups = u64::from(payload_bytes).div_ceil(GROUP);
        u32::try_from(groups * CV_BYTES as u64).expect("payloads are at most 64 MiB")
    }
}

/// Hashes `data` and writes its outboard into `outboard` (exactly
/// [`outboard_bytes`]`(data.len())` bytes). Returns the root: the chunk id of `data`.
pub fn hash_with_outboard(data: &[u8], outboard: &mut [u8]) -> blake3::Hash {
    let len = data.len() as u64;
    if len <= GROUP {
        debug_assert!(outboard.is_empty());
        return blake3::hash(data);
    }
    for ((g, group), cv) in (0u64..)
        .zip(data.chunks(GROUP_BYTES))
        .zip(outboard.chunks_exact_mut(CV_BYTES))
    {
        cv.copy_from_slice(&group_cv(g * GROUP, group));
    }
    Tree::new(len, outboard, None).root()
}

fn group_cv(offset: u64, bytes: &[u8]) -> ChainingValue {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(offset);
    h.update(bytes);
    h.finalize_non_root()
}

/// A chunk's tree as far as it was read: its length, its outboard (empty for one group)
/// and, optionally, the bytes of one group.
pub(crate) struct Tree<'a> {
    len: u64,
    outboard: &'a [u8],
    group: Option<(u64, &'a [u8])>,
}

impl<'a> Tree<'a> {
    /// `group` is `(index, bytes)` of one group read from the payload.
    pub(crate) fn new(len: u64, outboard: &'a [u8], group: Option<(u64, &'a [u8])>) -> Self {
        Tree {
            len,
            outboard,
            group,
        }
    }

    /// The chaining value of the subtree over bytes `s..e`: hashed from the group's bytes
    /// when inside the group that was read, merged from the outboard otherwise.
    fn cv(&self, s: u64, e: u64) -> ChainingValue {
        if let Some((g, bytes)) = self.group {
            let base = g * GROUP;
            if s >= base && e <= base + GROUP {
                let from = usize::try_from(s - base).expect("within a group");
                let to = usize::try_from(e - base).expect("within a group");
                return group_cv(s, &bytes[from..to]);
            }
        }
        if e - s <= GROUP {
            debug_assert_eq!(
                s % GROUP,
                0,
                "a subtree outside the read group is whole groups"
            );
            let at = usize::try_from(s / GROUP).expect("few groups") * CV_BYTES;
            return self.outboard[at..at + CV_BYTES]
                .try_into()
                .expect("sliced to CV_BYTES");
        }
        let m = s + left_subtree_len(e - s);
        merge_subtrees_non_root(&self.cv(s, m), &self.cv(m, e), Mode::Hash)
    }

    /// The root as the outboard (and the group, if read) say.
    pub(crate) fn root(&self) -> blake3::Hash {
        if self.len <= LEAF {
            let (_, bytes) = self
                .group
                .expect("a one-leaf chunk is proved from its bytes");
            return blake3::hash(bytes);
        }
        let m = left_subtree_len(self.len);
        merge_subtrees_root(&self.cv(0, m), &self.cv(m, self.len), Mode::Hash)
    }

    /// The bao proof of leaf `leaf` (the format of `proto::proof`): the sibling pairs on
    /// the path from the root, root first, then the leaf's bytes. Needs the leaf's group.
    /// Returns the proof and the root it implies; the caller compares the root to the id.
    pub(crate) fn prove(&self, leaf: u64) -> (Vec<u8>, blake3::Hash) {
        let (g, bytes) = self.group.expect("the leaf's group was read");
        debug_assert_eq!(leaf * LEAF / GROUP, g);
        let mut pairs: Vec<[u8; 64]> = Vec::new();
        let at = leaf * LEAF;
        let root = if self.len <= LEAF {
            blake3::hash(bytes)
        } else {
            let (l, r) = self.children(0, self.len, at, &mut pairs);
            merge_subtrees_root(&l, &r, Mode::Hash)
        };
        let start = usize::try_from(at - g * GROUP).expect("within a group");
        let end = usize::try_from((at + LEAF).min(self.len) - g * GROUP).expect("within a group");
        let mut out = Vec::with_capacity(pairs.len() * 64 + (end - start));
        for pair in pairs.iter().rev() {
            out.extend_from_slice(pair);
        }
        out.extend_from_slice(&bytes[start..end]);
        (out, root)
    }

    /// The two children of the node over `s..e`, descending towards byte `at`; pushes the
    /// pairs bottom-up.
    fn children(
        &self,
        s: u64,
        e: u64,
        at: u64,
        pairs: &mut Vec<[u8; 64]>,
    ) -> (ChainingValue, ChainingValue) {
        let m = s + left_subtree_len(e - s);
        let path = |s: u64, e: u64, pairs: &mut Vec<[u8; 64]>| {
            if e - s <= LEAF {
                self.cv(s, e)
            } else {
                let (l, r) = self.children(s, e, at, pairs);
                merge_subtrees_non_root(&l, &r, Mode::Hash)
            }
        };
        let (l, r) = if at < m {
            (path(s, m, pairs), self.cv(m, e))
        } else {
            (self.cv(s, m), path(m, e, pairs))
        };
        let mut pair = [0u8; 64];
        pair[..32].copy_from_slice(&l);
        pair[32..].copy_from_slice(&r);
        pairs.push(pair);
        (l, r)
    }

    /// Checks group `g`'s bytes against the outboard.
    pub(crate) fn group_matches(&self, g: u64, bytes: &[u8]) -> bool {
        if self.outboard.is_empty() {
            return true; // one group: the caller checks the root instead
        }
        let at = usize::try_from(g).expect("few groups") * CV_BYTES;
        self.outboard.get(at..at + CV_BYTES) == Some(&group_cv(g * GROUP, bytes)[..])
    }
}

/// The group holding byte `offset` of a payload, and the byte range of that group.
pub fn group_of(offset: u64, payload_bytes: u64) -> (u64, std::ops::Range<u64>) {
    let g = offset / GROUP;
    (g, g * GROUP..((g + 1) * GROUP).min(payload_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::proof;
    use proto::ChunkId;

    fn data(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from((i * 31 + i / 1000) % 251).unwrap())
            .collect()
    }

    #[test]
    fn proofs_from_groups_equal_proofs_from_the_whole_chunk() {
        for len in [
            1usize,
            1000,
            1024,
            1025,
            16 * 1024,
            16 * 1024 + 1,
            40_000,
            64 * 1024 + 16,
            300_017,
        ] {
            let d = data(len);
            let mut ob = vec![0u8; outboard_bytes(u32::try_from(len).unwrap()) as usize];
            let root = hash_with_outboard(&d, &mut ob);
            assert_eq!(root, blake3::hash(&d), "len {len}");
            let leaves = proof::leaf_count(len as u64);
            for leaf in [0, 1, leaves / 2, leaves.saturating_sub(2), leaves - 1] {
                if leaf >= leaves {
                    continue;
                }
                let (g, range) = group_of(leaf * LEAF, len as u64);
                let bytes =
                    &d[usize::try_from(range.start).unwrap()..usize::try_from(range.end).unwrap()];
                let tree = Tree::new(len as u64, &ob, Some((g, bytes)));
                assert!(tree.group_matches(g, bytes));
                let (p, r) = tree.prove(leaf);
                assert_eq!(r, root, "len {len} leaf {leaf}");
                assert_eq!(p, proof::prove(&d, leaf).unwrap(), "len {len} leaf {leaf}");
                proof::verify(&ChunkId(*root.as_bytes()), len as u64, leaf, &p).unwrap();
            }
        }
    }

    #[test]
    fn damaged_groups_and_outboards_are_caught() {
        let len = 100_000;
        let mut d = data(len);
        let mut ob = vec![0u8; outboard_bytes(100_000) as usize];
        let root = hash_with_outboard(&d, &mut ob);
        d[20_000] ^= 1; // group 1
        let (g, range) = group_of(20_000, len as u64);
        let bytes = &d[usize::try_from(range.start).unwrap()..usize::try_from(range.end).unwrap()];
        let tree = Tree::new(len as u64, &ob, Some((g, bytes)));
        assert!(!tree.group_matches(g, bytes));
        assert_ne!(tree.prove(20).1, root);
        let mut bad_ob = ob.clone();
        bad_ob[5 * 32] ^= 1; // another group's value
        assert_ne!(Tree::new(len as u64, &bad_ob, None).root(), root);
        assert_eq!(Tree::new(len as u64, &ob, None).root(), root);
    }
}
