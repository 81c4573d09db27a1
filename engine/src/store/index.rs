//! A shard's in-memory chunk index: where each chunk's record is.
//!
//! A hash map of 52-byte entries costs 60 to 120 bytes per chunk (its buckets are at most
//! 7/8 full and grow by doubling: 111 measured at a million). This index keeps the bulk in
//! a vector sorted by id, exactly 52 bytes an entry, and recent changes in a small hash map
//! that is merged into the vector once it holds a sixteenth as many; lookups search the
//! map, then the vector. About 56 bytes per chunk at rest; a merge is one linear pass.

use std::collections::HashMap;
use std::hash::Hash;

#[derive(Debug)]
pub(crate) struct Index<K, V> {
    /// Sorted by key, no duplicates.
    base: Vec<(K, V)>,
    /// Changes since the last merge: `None` removes a key that `base` holds.
    delta: HashMap<K, Option<V>>,
    len: usize,
}

/// Changes kept aside before a merge, at least.
const DELTA_MIN: usize = 4096;

impl<K: Ord + Hash + Copy, V: Copy> Index<K, V> {
    pub(crate) fn new() -> Self {
        Index {
            base: Vec::new(),
            delta: HashMap::new(),
            len: 0,
        }
    }

    fn in_base(&self, key: &K) -> Option<V> {
        self.base
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|i| self.base[i].1)
    }

    pub(crate) fn get(&self, key: &K) -> Option<V> {
        match self.delta.get(key) {
            Some(v) => *v,
            None => self.in_base(key),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Sets `key`; returns what it held.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let old = self.get(&key);
        self.delta.insert(key, Some(value));
        if old.is_none() {
            self.len += 1;
        }
        self.maybe_merge();
        old
    }

    /// Adds entries sorted by key without duplicates (a checkpoint's): into the vector
    /// directly when the index is empty, one by one otherwise.
    pub(crate) fn load_sorted(&mut self, entries: Vec<(K, V)>) {
        debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
        if self.len == 0 && self.delta.is_empty() {
            self.len = entries.len();
            self.base = entries;
        } else {
            for (k, v) in entries {
                self.insert(k, v);
            }
        }
    }

    /// Removes `key`; returns what it held.
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let old = self.get(key);
        if old.is_some() {
            self.len -= 1;
            if self.in_base(key).is_some() {
                self.delta.insert(*key, None);
            } else {
                self.delta.remove(key);
            }
            self.maybe_merge();
        }
        old
    }

    fn maybe_merge(&mut self) {
        if self.delta.len() > DELTA_MIN.max(self.base.len() / 16) {
            self.merge();
        }
    }

    /// Folds the changes into the sorted vector.
    fn merge(&mut self) {
        let mut changes: Vec<(K, Option<V>)> = self.delta.drain().collect();
        changes.sort_unstable_by_key(|c| c.0);
        let base = std::mem::take(&mut self.base);
        let mut out = Vec::with_capacity(self.len);
        let mut changes = changes.into_iter().peekable();
        for (k, v) in base {
            while let Some((ck, cv)) = changes.next_if(|(ck, _)| *ck < k) {
                if let Some(cv) = cv {
                    out.push((ck, cv));
                }
            }
            match changes.next_if(|(ck, _)| *ck == k) {
                Some((_, Some(cv))) => out.push((k, cv)),
                Some((_, None)) => {}
                None => out.push((k, v)),
            }
        }
        out.extend(changes.filter_map(|(k, v)| v.map(|v| (k, v))));
        debug_assert_eq!(out.len(), self.len);
        self.base = out;
    }

    /// Every entry, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (K, V)> + '_ {
        let kept = self
            .base
            .iter()
            .filter(|(k, _)| !self.delta.contains_key(k))
            .copied();
        let changed = self.delta.iter().filter_map(|(k, v)| v.map(|v| (*k, v)));
        kept.chain(changed)
    }

    /// Heap bytes: the vector's capacity, and the map's buckets (a control byte each
    /// beside the entry, a power of two at most 7/8 full).
    pub(crate) fn heap_bytes(&self) -> u64 {
        let entry = std::mem::size_of::<(K, V)>();
        let cap = self.delta.capacity();
        let buckets = match cap {
            0 => 0,
            c if c < 8 => (c + 1).next_power_of_two(),
            c => (c * 8 / 7).next_power_of_two(),
        };
        let slot = std::mem::size_of::<(K, Option<V>)>() + 1;
        (self.base.capacity() * entry + buckets * slot) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn behaves_like_a_map_through_merges() {
        let mut index: Index<u64, u32> = Index::new();
        let mut model: BTreeMap<u64, u32> = BTreeMap::new();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for step in 0..200_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = x % 30_000;
            if x.is_multiple_of(3) {
                assert_eq!(index.remove(&key), model.remove(&key), "step {step}");
            } else {
                assert_eq!(
                    index.insert(key, step),
                    model.insert(key, step),
                    "step {step}"
                );
            }
            assert_eq!(index.len(), model.len());
            if step % 9973 == 0 {
                let mut all: Vec<(u64, u32)> = index.iter().collect();
                all.sort_unstable();
                assert_eq!(all, model.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>());
            }
        }
        for key in 0..30_000 {
            assert_eq!(index.get(&key), model.get(&key).copied());
        }
        // Loading a sorted list into an empty index, and into a non-empty one.
        let list: Vec<(u64, u32)> = model.iter().map(|(k, v)| (*k, *v)).collect();
        let mut fresh: Index<u64, u32> = Index::new();
        fresh.load_sorted(list.clone());
        assert_eq!(fresh.len(), model.len());
        let extra: Vec<(u64, u32)> = (30_000..30_010).map(|k| (k, 1)).collect();
        fresh.load_sorted(extra);
        assert_eq!(fresh.len(), model.len() + 10);
        assert_eq!(fresh.get(&30_005), Some(1));
        for (k, v) in &list {
            assert_eq!(fresh.get(k), Some(*v));
        }
    }
}
