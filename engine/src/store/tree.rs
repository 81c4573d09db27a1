//! The BLAKE3 tree kept beside each record, so that a storage challenge or a range read
//! touches a few sectors instead of the whole chunk.
//!
//! A chunk id is the BLAKE3 hash of the sealed chunk: the root of a binary tree over 1 KiB
//! leaves. Above its groups of leaves (4 KiB in record layout 2, 16 KiB in layout 1: the
//! record's [`Layout`](crate::store::record::Layout) says), the store keeps every parent
//! node of that tree after the payload in the record ("the outboard"): for each parent, in
//! pre-order (root first, then the left subtree's parents, then the right's), its two
//! children's chaining values, 64 bytes. A chunk of `g` groups has `g - 1` such parents: 64
//! bytes per group, 1.56% of the payload with 4 KiB groups. Then:
//! - a challenge for one leaf reads that leaf's group and the outboard (or only the group,
//!   when the shard keeps the chunk's outboard in memory), hashes the group, and takes
//!   each sibling above it from the outboard: one lookup per level, no other hashing; the
//!   root it implies is compared with the id before the proof leaves. In layout 2 the
//!   group is one whole sector: a challenge is one 4 KiB read;
//! - a range read checks each group it covers the same way.
//!
//! The trade-off against the alternatives: recomputing the tree per challenge reads and
//! hashes the whole chunk (8 MiB for one 1 KiB leaf); a full bao outboard at 1 KiB leaves
//! costs 6.25% of the disk; keeping only the groups' own values (half the outboard) costs
//! one merge per other group per challenge (512 for an 8 MiB chunk of 16 KiB groups), which
//! measured 2.6 times slower challenges on 8 MiB chunks than 64 KiB ones. Groups of 16 KiB
//! (layout 1) kept the outboard at 0.39%, but a group then spans five sectors and a
//! challenge reads 20 KiB, which this disk serves at half its 4 KiB rate.
//!
//! Without the `store` feature only the outboard's construction (for the record format) is
//! used; proving is the store's.
//!
//! Chunks of one group or less have no outboard: the id alone verifies them.
#![cfg_attr(not(feature = "store"), allow(dead_code))]

use blake3::hazmat::{left_subtree_len, merge_subtrees_non_root, merge_subtrees_root};
use blake3::hazmat::{ChainingValue, HasherExt, Mode};

/// Group size of record layout 1: 16 BLAKE3 chunks of 1 KiB.
pub const GROUP_V1: u64 = 16 * 1024;
/// Group size of record layout 2: 4 BLAKE3 chunks, one sector.
pub const GROUP_V2: u64 = 4 * 1024;
const LEAF: u64 = 1024;
/// Bytes of one parent in the outboard: its left and right children's chaining values.
pub const PAIR_BYTES: usize = 64;

/// Outboard bytes kept for a payload of `payload_bytes` with groups of `group` bytes.
pub fn outboard_bytes(group: u64, payload_bytes: u32) -> u32 {
    if u64::from(payload_bytes) <= group {
        0
    } else {
        let parents = u64::from(payload_bytes).div_ceil(group) - 1;
        u32::try_from(parents * PAIR_BYTES as u64).expect("payloads are at most 64 MiB")
    }
}

/// Hashes `data` and writes its outboard for groups of `group` bytes into `outboard`
/// (exactly [`outboard_bytes`]`(group, data.len())` bytes). Returns the root: the chunk id
/// of `data`.
pub fn hash_with_outboard(group: u64, data: &[u8], outboard: &mut [u8]) -> blake3::Hash {
    let len = data.len() as u64;
    if len <= group {
        debug_assert!(outboard.is_empty());
        return blake3::hash(data);
    }
    fn build(
        group: u64,
        data: &[u8],
        s: u64,
        e: u64,
        next: &mut usize,
        out: &mut [u8],
    ) -> ChainingValue {
        if e - s <= group {
            let (from, to) = (to_usize(s), to_usize(e));
            return group_cv(s, &data[from..to]);
        }
        let at = *next * PAIR_BYTES;
        *next += 1;
        let m = s + left_subtree_len(e - s);
        let l = build(group, data, s, m, next, out);
        let r = build(group, data, m, e, next, out);
        out[at..at + 32].copy_from_slice(&l);
        out[at + 32..at + 64].copy_from_slice(&r);
        merge_subtrees_non_root(&l, &r, Mode::Hash)
    }
    let mut next = 0;
    build(group, data, 0, len, &mut next, outboard);
    debug_assert_eq!(next * PAIR_BYTES, outboard.len());
    let (l, r) = pair(outboard, 0);
    merge_subtrees_root(&l, &r, Mode::Hash)
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).expect("chunk offsets fit usize")
}

fn group_cv(offset: u64, bytes: &[u8]) -> ChainingValue {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(offset);
    h.update(bytes);
    h.finalize_non_root()
}

fn pair(outboard: &[u8], p: usize) -> (ChainingValue, ChainingValue) {
    let at = p * PAIR_BYTES;
    let half = |o: usize| -> ChainingValue {
        outboard[at + o..at + o + 32]
            .try_into()
            .expect("sliced to 32 bytes")
    };
    (half(0), half(32))
}

/// A chunk's tree as far as it was read: its group size, its length, its outboard (empty
/// for one group) and, optionally, the bytes of one group.
pub(crate) struct Tree<'a> {
    group_bytes: u64,
    len: u64,
    outboard: &'a [u8],
    group: Option<(u64, &'a [u8])>,
}

impl<'a> Tree<'a> {
    /// `group_bytes` is the record layout's group size; `group` is `(index, bytes)` of one
    /// group read from the payload.
    pub(crate) fn new(
        group_bytes: u64,
        len: u64,
        outboard: &'a [u8],
        group: Option<(u64, &'a [u8])>,
    ) -> Self {
        Tree {
            group_bytes,
            len,
            outboard,
            group,
        }
    }

    /// The chaining value of bytes `s..e` inside the group that was read.
    fn inner_cv(&self, s: u64, e: u64) -> ChainingValue {
        let (g, bytes) = self.group.expect("the group was read");
        let base = g * self.group_bytes;
        debug_assert!(s >= base && e <= base + self.group_bytes);
        group_cv(s, &bytes[to_usize(s - base)..to_usize(e - base)])
    }

    /// Checks the whole outboard: every stored parent against its stored children, the
    /// top against the id's tree. Returns the root the outboard implies (for one group,
    /// the hash of the group that was read).
    pub(crate) fn root(&self) -> blake3::Hash {
        if self.len <= self.group_bytes {
            let (_, bytes) = self
                .group
                .expect("a one-group chunk is checked from its bytes");
            return blake3::hash(bytes);
        }
        // Recomputes each stored parent's value from its children's stored pair; a
        // mismatch anywhere yields a root that is not the id.
        fn check(group: u64, ob: &[u8], s: u64, e: u64, p: usize, ok: &mut bool) -> ChainingValue {
            let (l, r) = pair(ob, p);
            let m = s + left_subtree_len(e - s);
            if m - s > group {
                let left = check(group, ob, s, m, p + 1, ok);
                *ok &= left == l;
            }
            if e - m > group {
                let right = check(group, ob, m, e, p + to_usize((m - s) / group), ok);
                *ok &= right == r;
            }
            merge_subtrees_non_root(&l, &r, Mode::Hash)
        }
        let mut ok = true;
        let m = left_subtree_len(self.len);
        let (l, r) = pair(self.outboard, 0);
        if m > self.group_bytes {
            let left = check(self.group_bytes, self.outboard, 0, m, 1, &mut ok);
            ok &= left == l;
        }
        if self.len - m > self.group_bytes {
            let right = check(
                self.group_bytes,
                self.outboard,
                m,
                self.len,
                to_usize(m / self.group_bytes),
                &mut ok,
            );
            ok &= right == r;
        }
        if !ok {
            // Any value that cannot be the id: the caller compares and reports.
            return blake3::hash(b"market.space: inconsistent outboard");
        }
        merge_subtrees_root(&l, &r, Mode::Hash)
    }

    /// The bao proof of leaf `leaf` (the format of `proto::proof`): the sibling pairs on
    /// the path from the root, root first, then the leaf's bytes. Needs the leaf's group.
    /// Returns the proof and the root it implies; the caller compares the root to the id.
    pub(crate) fn prove(&self, leaf: u64) -> (Vec<u8>, blake3::Hash) {
        let (g, bytes) = self.group.expect("the leaf's group was read");
        debug_assert_eq!(leaf * LEAF / self.group_bytes, g);
        let at = leaf * LEAF;
        let mut pairs: Vec<[u8; 64]> = Vec::new();
        let root = if self.len <= LEAF {
            blake3::hash(bytes)
        } else {
            let (l, r) = self.children(0, self.len, 0, at, &mut pairs);
            merge_subtrees_root(&l, &r, Mode::Hash)
        };
        let start = to_usize(at - g * self.group_bytes);
        let end = to_usize((at + LEAF).min(self.len) - g * self.group_bytes);
        let mut out = Vec::with_capacity(pairs.len() * 64 + (end - start));
        for pair in pairs.iter().rev() {
            out.extend_from_slice(pair);
        }
        out.extend_from_slice(&bytes[start..end]);
        (out, root)
    }

    /// The two children of the node over `s..e` (pre-order parent `p` when above the
    /// groups), descending towards byte `at`; pushes the pairs bottom-up. Siblings above
    /// the groups come from the outboard, everything on the path is recomputed.
    fn children(
        &self,
        s: u64,
        e: u64,
        p: usize,
        at: u64,
        pairs: &mut Vec<[u8; 64]>,
    ) -> (ChainingValue, ChainingValue) {
        let m = s + left_subtree_len(e - s);
        let above = e - s > self.group_bytes;
        let stored = above.then(|| pair(self.outboard, p));
        let path = |s: u64, e: u64, p: usize, pairs: &mut Vec<[u8; 64]>| {
            if e - s <= LEAF {
                self.inner_cv(s, e)
            } else {
                let (l, r) = self.children(s, e, p, at, pairs);
                merge_subtrees_non_root(&l, &r, Mode::Hash)
            }
        };
        let sibling = |s: u64, e: u64, half: Option<ChainingValue>| {
            half.unwrap_or_else(|| self.inner_cv(s, e))
        };
        let (l, r) = if at < m {
            (path(s, m, p + 1, pairs), sibling(m, e, stored.map(|x| x.1)))
        } else {
            let right = p + to_usize((m - s) / self.group_bytes);
            (sibling(s, m, stored.map(|x| x.0)), path(m, e, right, pairs))
        };
        let mut pair = [0u8; 64];
        pair[..32].copy_from_slice(&l);
        pair[32..].copy_from_slice(&r);
        pairs.push(pair);
        (l, r)
    }

    /// The root group `g`'s bytes imply with the outboard's siblings on its path; equal to
    /// the id exactly when the group and those siblings are what was stored.
    pub(crate) fn group_root(&self, g: u64, bytes: &[u8]) -> blake3::Hash {
        if self.len <= self.group_bytes {
            return blake3::hash(bytes);
        }
        let mut cv = group_cv(g * self.group_bytes, bytes);
        let at = g * self.group_bytes;
        // Siblings from the root down, then folded from the group up.
        let mut path: Vec<(bool, ChainingValue)> = Vec::new();
        let (mut s, mut e, mut p) = (0u64, self.len, 0usize);
        while e - s > self.group_bytes {
            let m = s + left_subtree_len(e - s);
            let (l, r) = pair(self.outboard, p);
            if at < m {
                path.push((true, r));
                (e, p) = (m, p + 1);
            } else {
                path.push((false, l));
                p += to_usize((m - s) / self.group_bytes);
                s = m;
            }
        }
        let top = path.remove(0);
        for (left, sib) in path.iter().rev() {
            cv = if *left {
                merge_subtrees_non_root(&cv, sib, Mode::Hash)
            } else {
                merge_subtrees_non_root(sib, &cv, Mode::Hash)
            };
        }
        if top.0 {
            merge_subtrees_root(&cv, &top.1, Mode::Hash)
        } else {
            merge_subtrees_root(&top.1, &cv, Mode::Hash)
        }
    }
}

/// The group of `group` bytes holding byte `offset` of a payload, and the byte range of
/// that group.
pub fn group_of(group: u64, offset: u64, payload_bytes: u64) -> (u64, std::ops::Range<u64>) {
    let g = offset / group;
    (g, g * group..((g + 1) * group).min(payload_bytes))
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
        for group in [GROUP_V1, GROUP_V2] {
            proofs_at(group);
        }
    }

    fn proofs_at(group: u64) {
        for len in [
            1usize,
            1000,
            1024,
            1025,
            4 * 1024,
            4 * 1024 + 1,
            16 * 1024,
            16 * 1024 + 1,
            40_000,
            64 * 1024 + 16,
            300_017,
        ] {
            let d = data(len);
            let mut ob = vec![0u8; outboard_bytes(group, u32::try_from(len).unwrap()) as usize];
            let root = hash_with_outboard(group, &d, &mut ob);
            assert_eq!(root, blake3::hash(&d), "len {len}");
            let leaves = proof::leaf_count(len as u64);
            for leaf in [0, 1, leaves / 2, leaves.saturating_sub(2), leaves - 1] {
                if leaf >= leaves {
                    continue;
                }
                let (g, range) = group_of(group, leaf * LEAF, len as u64);
                let bytes =
                    &d[usize::try_from(range.start).unwrap()..usize::try_from(range.end).unwrap()];
                let tree = Tree::new(group, len as u64, &ob, Some((g, bytes)));
                assert_eq!(tree.group_root(g, bytes), root);
                if !ob.is_empty() {
                    assert_eq!(Tree::new(group, len as u64, &ob, None).root(), root);
                }
                let (p, r) = tree.prove(leaf);
                assert_eq!(r, root, "len {len} leaf {leaf}");
                assert_eq!(p, proof::prove(&d, leaf).unwrap(), "len {len} leaf {leaf}");
                proof::verify(&ChunkId(*root.as_bytes()), len as u64, leaf, &p).unwrap();
            }
        }
    }

    #[test]
    fn damaged_groups_and_outboards_are_caught() {
        // 7 groups of 16 KiB (6 parents), 25 of 4 KiB (24 parents).
        for (group, parents) in [(GROUP_V1, 6), (GROUP_V2, 24)] {
            damage_at(group, parents);
        }
    }

    fn damage_at(group: u64, parents: usize) {
        let len = 100_000;
        let mut d = data(len);
        let mut ob = vec![0u8; outboard_bytes(group, 100_000) as usize];
        assert_eq!(ob.len(), parents * 64);
        let root = hash_with_outboard(group, &d, &mut ob);
        d[20_000] ^= 1;
        let (g, range) = group_of(group, 20_000, len as u64);
        let bytes = &d[usize::try_from(range.start).unwrap()..usize::try_from(range.end).unwrap()];
        let tree = Tree::new(group, len as u64, &ob, Some((g, bytes)));
        assert_ne!(tree.group_root(g, bytes), root);
        assert_ne!(tree.prove(19).1, root);
        assert_eq!(Tree::new(group, len as u64, &ob, None).root(), root);
        // Every byte of the outboard matters to the full check.
        for at in (0..ob.len()).step_by(7) {
            let mut bad_ob = ob.clone();
            bad_ob[at] ^= 1;
            assert_ne!(
                Tree::new(group, len as u64, &bad_ob, None).root(),
                root,
                "byte {at}"
            );
        }
    }
}
