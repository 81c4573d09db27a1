//! The outboards a shard keeps in memory, so that a storage challenge of a chunk whose
//! outboard is here reads only the leaf's group from the disk: one device read instead of
//! two (the group, and the outboard after the payload).
//!
//! An outboard is 64 bytes per group of a chunk's payload: in record layout 2, groups of
//! 4 KiB (1.56%), so every outboard of a terabyte of chunks takes about 16 GB; in layout
//! 1, 16 KiB (0.39%, about 4 GB per terabyte). The shard keeps as many as its budget
//! (`EngineConfig::outboard_cache_bytes`) allows, least recently used out first. Entries
//! never go stale: a chunk's outboard is a function of its bytes and its record's layout,
//! and its id names those bytes, so the same id and layout always have the same outboard (a chunk deleted and stored again,
//! or moved by compaction, keeps it); and every proof still checks the root it implies
//! against the id, so a damaged entry gives an error, never a wrong proof.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use proto::ChunkId;

use crate::store::record::Layout;

/// An outboard is a function of the chunk's bytes and its record's layout (the group size).
pub(super) type Key = (ChunkId, Layout);

/// What one kept outboard costs beyond its bytes: its map and order entries and the `Rc`'s
/// header, counted against the budget with the bytes.
const ENTRY_OVERHEAD: u64 = 160;

/// Outboards by chunk id, within a byte budget, least recently used out first.
pub(super) struct Outboards {
    budget: u64,
    used: u64,
    tick: u64,
    entries: HashMap<Key, (Rc<[u8]>, u64)>,
    /// Entries by last use, oldest first.
    order: BTreeMap<u64, Key>,
}

impl Outboards {
    pub(super) fn new(budget: u64) -> Outboards {
        Outboards {
            budget,
            used: 0,
            tick: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    /// The chunk's outboard, if kept; it becomes the most recently used.
    pub(super) fn get(&mut self, id: &Key) -> Option<Rc<[u8]>> {
        self.tick += 1;
        let (bytes, used) = self.entries.get_mut(id)?;
        self.order.remove(used);
        *used = self.tick;
        self.order.insert(self.tick, *id);
        Some(Rc::clone(bytes))
    }

    /// Keeps a chunk's outboard, dropping the least recently used ones to make room; one
    /// larger than the whole budget is not kept.
    pub(super) fn insert(&mut self, id: Key, bytes: Rc<[u8]>) {
        let len = bytes.len() as u64 + ENTRY_OVERHEAD;
        if len > self.budget || self.entries.contains_key(&id) {
            return;
        }
        while self.used + len > self.budget {
            let Some((_, old)) = self.order.pop_first() else {
                break;
            };
            if let Some((b, _)) = self.entries.remove(&old) {
                self.used -= b.len() as u64 + ENTRY_OVERHEAD;
            }
        }
        self.tick += 1;
        self.used += len;
        self.order.insert(self.tick, id);
        self.entries.insert(id, (bytes, self.tick));
    }

    /// Whether an outboard of `len` bytes for this chunk would be kept: it is not kept
    /// yet, and it fits the budget (its use not counted).
    pub(super) fn wants(&self, id: &Key, len: usize) -> bool {
        len as u64 + ENTRY_OVERHEAD <= self.budget && !self.entries.contains_key(id)
    }

    /// Bytes kept.
    #[cfg(test)]
    fn used(&self) -> u64 {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> Key {
        (ChunkId([b; 32]), Layout::V2)
    }

    fn bytes(n: usize) -> Rc<[u8]> {
        vec![7u8; n].into()
    }

    #[test]
    fn the_least_recently_used_go_first_and_the_budget_holds() {
        // Each entry counts its bytes and ENTRY_OVERHEAD.
        let e = |n: u64| n + ENTRY_OVERHEAD;
        let mut c = Outboards::new(3 * e(100));
        c.insert(id(1), bytes(100));
        c.insert(id(2), bytes(100));
        c.insert(id(3), bytes(100));
        assert_eq!(c.used(), 3 * e(100));
        // 1 is used again: 2 is now the oldest and goes for 4.
        assert!(c.get(&id(1)).is_some());
        c.insert(id(4), bytes(100));
        assert!(c.get(&id(2)).is_none());
        assert!(c.get(&id(1)).is_some() && c.get(&id(3)).is_some() && c.get(&id(4)).is_some());
        assert_eq!(c.used(), 3 * e(100));
        // A large one makes room for itself; one over the budget is never kept.
        let large = usize::try_from(3 * e(100) - ENTRY_OVERHEAD - 10).unwrap();
        c.insert(id(5), bytes(large));
        assert_eq!(c.used(), e(large as u64));
        assert!(c.get(&id(5)).is_some());
        assert!(!c.wants(&id(6), large + 11));
        c.insert(id(6), bytes(large + 11));
        assert!(c.get(&id(6)).is_none());
        assert_eq!(c.used(), e(large as u64));
        // The same id twice is kept once.
        assert!(!c.wants(&id(5), large));
        c.insert(id(5), bytes(large));
        assert_eq!(c.used(), e(large as u64));
        // The same chunk in the other layout is another outboard.
        assert!(c.wants(&(id(5).0, Layout::V1), 10));
        let mut none = Outboards::new(0);
        none.insert(id(1), bytes(1));
        assert!(none.get(&id(1)).is_none());
    }
}
