//! The host chunk store: thread-per-core shards on glommio.
//!
//! [`Engine`] owns one thread per shard, each running a glommio executor (pinned to a core
//! when asked). A chunk lives on the shard its id picks (`id[0..8] mod shards`) and, within
//! it, on the volume `id[8..16] mod volumes`; a shard owns one directory per data directory
//! (a "volume": `<dir>/shard-<n>/`) and nothing is shared between shards: callers talk to
//! a shard over a channel, so the data path takes no lock. The channel is bounded and a
//! shard takes a request from it only when it has room for it (requests and put bytes in
//! flight, `EngineConfig`), so a flood of requests waits in its callers.
//!
//! A volume is a series of append-only segment files of records (`record`), the last
//! one active. `put` verifies the chunk's CRC32C and BLAKE3 id while building its record in
//! a DMA buffer, reserves the next offset in the active segment and writes the record with
//! one O_DIRECT write; many writes are in flight at once. One committer task per volume
//! collects completed writes, advances each segment's contiguous written end, fdatasyncs
//! and then acknowledges every record below it (group commit): a chunk is acknowledged only
//! when it and every record before it in its segment are durable, so the recovery scan, which
//! stops at the first gap, always finds it. Any write or sync error breaks the segment: what
//! was not acknowledged in it fails, and writing moves on to a new segment.
//!
//! The index (id → volume, segment, offset, length, expiry) lives in memory and is
//! checkpointed (`checkpoint`); a restart reads the checkpoint and scans only the tails
//! past it, cutting torn tails. Compaction copies the live records of a segment that fell
//! below a live fraction into the active segment, checkpoints, and only then deletes the
//! old file, so a crash at any point loses nothing and resurrects nothing (tombstones name
//! the exact record they delete and are kept while its segment exists; one id's puts,
//! deletes and copies never overlap).
//!
//! Files: `handle` (the public side: `Engine`, its configuration, errors and figures),
//! `serve` (a shard's thread and its admission of requests), `write` (records, group
//! commit, puts and deletes), `read` (reads, verification, proofs), `recover`
//! (checkpoints and recovery at open), `compact`; this file holds what they share: the
//! shard, its volumes and segments, and an entry's location.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use glommio::{LocalExecutorBuilder, Placement};
use proto::{ChunkId, SECTOR_BYTES};
use thiserror::Error;

use crate::codec::crc32c;
use crate::store::checkpoint::{Checkpoint, Entry, SegmentCover};
use crate::store::disk::{align_down, align_up, Disk, DiskFile, DmaDisk, WriteBuf};
use crate::store::index::Index;
use crate::store::record::{
    scan, verify_record, Layout, Located, RecordError, RecordHeader, RecordKind, ScanEnd,
    HEADER_BYTES, PAYLOAD_BYTES_MAX,
};
use crate::store::tree::{group_of, hash_with_outboard, Tree};

const CHECKPOINT_FILE: &str = "index.msix";
const WINDOW_BYTES: usize = 32 << 20;
/// Largest segment: record offsets are kept in sectors in a u32.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 40;

mod compact;
mod handle;
mod outboards;
mod read;
mod recover;
mod serve;
mod write;

pub use handle::{Answer, Engine, EngineConfig, Load, Pending, PutOutcome, StoreError, StoreStats};
use handle::{Reply, Request, ShardLoad};
use serve::run_shard;

fn io_error(what: &str) -> impl Fn(io::Error) -> StoreError + '_ {
    move |e| {
        if e.raw_os_error() == Some(28) {
            StoreError::Full { needed: 0, free: 0 }
        } else {
            StoreError::Io(format!("{what}: {e}"))
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn seg_name(seq: u32) -> String {
    format!("seg-{seq:010}.msd")
}

fn seg_seq(name: &str) -> Option<u32> {
    name.strip_prefix("seg-")?
        .strip_suffix(".msd")?
        .parse()
        .ok()
}

/// Where a chunk is: 20 bytes, 52 with its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    vol: u8,
    /// The record's layout (its header's version).
    layout: Layout,
    seq: u32,
    /// Offset of the record in sectors.
    sector: u32,
    payload: u32,
    /// Unix seconds, saturated at 2106; 0 for never.
    expiry: u32,
}

impl Loc {
    fn offset(&self) -> u64 {
        u64::from(self.sector) * u64::from(SECTOR_BYTES)
    }

    fn span(&self) -> u64 {
        self.layout.span(self.payload)
    }

    /// Where the payload starts in the segment.
    fn payload_at(&self) -> u64 {
        self.offset() + self.layout.payload_offset()
    }

    fn expired(&self, now: u64) -> bool {
        self.expiry != 0 && u64::from(self.expiry) <= now
    }
}

/// A tombstone's target, in its header's 8-byte expiry field: the segment sequence in the
/// high 32 bits, the record's sector in the low 32.
fn tomb_target(loc: &Loc) -> u64 {
    (u64::from(loc.seq) << 32) | u64::from(loc.sector)
}

/// The later of two expiries, 0 being never: what a chunk stored twice keeps.
fn later_expiry(a: u32, b: u32) -> u32 {
    if a == 0 || b == 0 {
        0
    } else {
        a.max(b)
    }
}

fn expiry32(secs: u64) -> u32 {
    u32::try_from(secs).unwrap_or(u32::MAX)
}

struct Seg<F> {
    file: Rc<F>,
    /// Next free offset (sealed: the end of what was written).
    reserved: u64,
    /// Every record below this has been written.
    written: u64,
    /// Every record below this is durable and acknowledged.
    synced: u64,
    done: BTreeMap<u64, Done>,
    /// A write or sync failed here: nothing more is acknowledged in this segment.
    broken: bool,
    sealed: bool,
    live: u64,
    /// Records reserved here whose outcome (applied or failed) is not settled yet; a
    /// segment is compacted only when this is 0.
    pending: u64,
}

impl<F> Seg<F> {
    fn new(file: F, end: u64, sealed: bool) -> Seg<F> {
        Seg {
            file: Rc::new(file),
            reserved: end,
            written: end,
            synced: end,
            done: BTreeMap::new(),
            broken: false,
            sealed,
            live: 0,
            pending: 0,
        }
    }
}

enum Then {
    Put,
    /// A delete of the record at `target`.
    Tomb {
        target: Loc,
    },
    /// A live record moved by compaction from `from`.
    Copy {
        from: Loc,
    },
    /// A tombstone carried over by compaction: no change to the index.
    Keep,
}

struct Done {
    seq: u32,
    start: u64,
    end: u64,
    result: io::Result<()>,
    id: ChunkId,
    loc: Loc,
    then: Then,
    reply: Reply<()>,
}

struct VolState<F> {
    segs: BTreeMap<u32, Seg<F>>,
    active: u32,
    next_seq: u32,
    used: u64,
    capacity: u64,
    since_checkpoint: u64,
}

struct Volume<D: Disk> {
    disk: D,
    st: RefCell<VolState<D::File>>,
    rotating: glommio::sync::Semaphore,
    checkpointing: glommio::sync::Semaphore,
    commits: flume::Sender<Done>,
}

#[derive(Default)]
struct Counters {
    puts: u64,
    gets: u64,
    proofs: u64,
    syncs: u64,
    corrupt_reads: u64,
    truncated_bytes: u64,
    checkpoint_entries: u64,
    compacted_segments: u64,
    held_back: u64,
    in_flight_peak: u64,
    put_bytes_peak: u64,
}

struct Shard<D: Disk> {
    cfg: EngineConfig,
    vols: Vec<Volume<D>>,
    index: RefCell<Index<ChunkId, Loc>>,
    counters: RefCell<Counters>,
    /// Ids a put, delete or compaction copy is working on: the others wait (`lock_id`).
    busy: RefCell<HashMap<ChunkId, flume::Receiver<()>>>,
    /// One compaction at a time.
    compacting: glommio::sync::Semaphore,
    /// (volume, segment) that compaction found damaged: not tried again until a restart
    /// (each try would carry its tombstones forward once more).
    damaged: RefCell<HashSet<(usize, u32)>>,
    /// Outboards kept in memory: a challenge of such a chunk reads only its group.
    outboards: RefCell<outboards::Outboards>,
}

/// Holds an id against concurrent puts, deletes and compaction copies; released on drop.
struct IdGuard<'a> {
    busy: &'a RefCell<HashMap<ChunkId, flume::Receiver<()>>>,
    id: ChunkId,
    _release: flume::Sender<()>,
}

impl Drop for IdGuard<'_> {
    fn drop(&mut self) {
        self.busy.borrow_mut().remove(&self.id);
    }
}

/// Runs a task on this shard's executor, detached.
fn spawn(f: impl std::future::Future<Output = ()> + 'static) {
    glommio::spawn_local(f).detach();
}

impl<D: Disk> Shard<D> {
    fn vol_no(v: usize) -> u8 {
        u8::try_from(v).expect("at most 255 volumes")
    }

    fn file(&self, loc: &Loc) -> Option<Rc<D::File>> {
        let st = self.vols[usize::from(loc.vol)].st.borrow();
        st.segs.get(&loc.seq).map(|s| s.file.clone())
    }

    fn lookup(&self, id: &ChunkId) -> Result<Loc, StoreError> {
        match self.index.borrow().get(id) {
            Some(loc) if !loc.expired(now_secs()) => Ok(loc),
            _ => Err(StoreError::NotFound(*id)),
        }
    }

    fn add_live(&self, loc: &Loc, add: bool) {
        let mut st = self.vols[usize::from(loc.vol)].st.borrow_mut();
        if let Some(seg) = st.segs.get_mut(&loc.seq) {
            if add {
                seg.live += loc.span();
            } else {
                seg.live = seg.live.saturating_sub(loc.span());
            }
        }
    }

    /// Sets the index entry for `id`, keeping the later expiry; returns the old entry.
    fn index_insert(&self, id: ChunkId, mut loc: Loc) {
        let old = self.index.borrow().get(&id);
        if let Some(old) = old {
            loc.expiry = later_expiry(old.expiry, loc.expiry);
            self.add_live(&old, false);
        }
        self.add_live(&loc, true);
        self.index.borrow_mut().insert(id, loc);
    }

    fn index_remove(&self, id: &ChunkId) -> Option<Loc> {
        let old = self.index.borrow_mut().remove(id);
        if let Some(old) = &old {
            self.add_live(old, false);
        }
        old
    }

    fn corrupt(&self, id: ChunkId, what: impl Into<String>) -> StoreError {
        self.counters.borrow_mut().corrupt_reads += 1;
        StoreError::Corrupt {
            id,
            what: what.into(),
        }
    }

    // ---- writing ----

    /// The volume an id lives on, always the same one: recovery replays volumes one after
    /// another, which is only right if no id has records on two of them.
    fn volume_of(&self, id: &ChunkId) -> usize {
        let key = u64::from_le_bytes(id.0[8..16].try_into().expect("8 bytes"));
        usize::try_from(key % self.vols.len() as u64).expect("few volumes")
    }

    /// Waits until no other operation holds `id`, then holds it.
    async fn lock_id(&self, id: ChunkId) -> IdGuard<'_> {
        loop {
            let held = self.busy.borrow().get(&id).cloned();
            match held {
                // Resolves when the holder's guard drops its sender.
                Some(rx) => {
                    let _ = rx.recv_async().await;
                }
                None => break,
            }
        }
        let (tx, rx) = flume::bounded(1);
        self.busy.borrow_mut().insert(id, rx);
        IdGuard {
            busy: &self.busy,
            id,
            _release: tx,
        }
    }

    fn any_file(&self, v: usize) -> Rc<D::File> {
        let st = self.vols[v].st.borrow();
        st.segs
            .get(&st.active)
            .or_else(|| st.segs.values().next_back())
            .expect("a volume always has an active segment")
            .file
            .clone()
    }

    fn stats(&self) -> StoreStats {
        let c = self.counters.borrow();
        let index = self.index.borrow();
        let mut s = StoreStats {
            chunks: index.len() as u64,
            puts: c.puts,
            gets: c.gets,
            proofs: c.proofs,
            syncs: c.syncs,
            corrupt_reads: c.corrupt_reads,
            truncated_bytes: c.truncated_bytes,
            checkpoint_entries: c.checkpoint_entries,
            compacted_segments: c.compacted_segments,
            index_bytes: index.heap_bytes(),
            held_back: c.held_back,
            in_flight_peak: c.in_flight_peak,
            put_bytes_peak: c.put_bytes_peak,
            ..StoreStats::default()
        };
        for vol in &self.vols {
            let st = vol.st.borrow();
            s.used_bytes += st.used;
            s.capacity_bytes = s.capacity_bytes.saturating_add(st.capacity);
            s.segments += st.segs.len() as u64;
            s.live_bytes += st.segs.values().map(|g| g.live).sum::<u64>();
            s.fence_waits += vol.disk.fence_waits();
        }
        s
    }

    /// Closes every segment file and unlocks the volumes, so the store can be opened again
    /// (by this process or another) once the shard's thread is gone. The commit loops
    /// keep the shard itself alive (they hold it and it holds their queues), so its files
    /// are let go here rather than when it drops.
    async fn close(&self) {
        for vol in &self.vols {
            let segs = std::mem::take(&mut vol.st.borrow_mut().segs);
            for seg in segs.into_values() {
                // A file another task still holds is closed when that task lets it go.
                if let Ok(file) = Rc::try_unwrap(seg.file) {
                    if let Err(e) = file.close().await {
                        eprintln!("engine: closing a segment: {e}");
                    }
                }
            }
            vol.disk.close();
        }
    }

    // ---- checkpoints, recovery, compaction ----
}

fn split_target(field: u64) -> (u32, u32) {
    (
        u32::try_from(field >> 32).expect("shifted"),
        u32::try_from(field & u64::from(u32::MAX)).expect("masked"),
    )
}
