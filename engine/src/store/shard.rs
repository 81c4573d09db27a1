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
    record_span, scan, verify_record, Located, RecordError, RecordHeader, RecordKind, ScanEnd,
    HEADER_BYTES, PAYLOAD_BYTES_MAX,
};
use crate::store::tree::{group_of, hash_with_outboard, outboard_bytes, Tree, GROUP_BYTES};

const CHECKPOINT_FILE: &str = "index.msix";
const WINDOW_BYTES: usize = 32 << 20;
/// Largest segment: record offsets are kept in sectors in a u32.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 40;

/// Where and how the store runs. [`EngineConfig::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Data directories; each shard keeps its files in `<dir>/shard-<n>/` of every one.
    pub dirs: Vec<PathBuf>,
    /// Shards: one thread and executor each.
    pub shards: usize,
    /// Pin shard `n` to core `n mod cores`.
    pub pin: bool,
    /// A segment is sealed and a new one started past this size.
    pub segment_bytes: u64,
    /// Sealed segments whose live fraction falls below this are compacted.
    pub compact_below: f64,
    /// A volume's index is checkpointed after this many bytes of new records.
    pub checkpoint_every_bytes: u64,
    /// Bytes each data directory may hold in all (split evenly between shards); `None`
    /// for as much as the disk takes (a full disk is then reported when a write fails).
    pub capacity_bytes: Option<u64>,
    /// How often each shard sweeps expired chunks and compacts in the background;
    /// `None` for only when asked ([`Engine::compact`]).
    pub maintenance_every: Option<Duration>,
    /// Requests each shard's queue holds. A caller whose request finds it full waits for
    /// room ([`Engine::put`] blocks, [`Engine::put_async`] awaits), so a flood of requests
    /// waits in its callers instead of in the store.
    pub queue_depth: usize,
    /// Requests each shard works on at once; it takes the next from its queue only when
    /// one of them is done.
    pub in_flight_max: usize,
    /// Bytes of put payloads each shard holds at once (a larger put takes all of them).
    /// With the two above this bounds the store's memory for requests: per shard, at
    /// most `queue_depth + in_flight_max + 1` requests, and of the puts among them at most
    /// `put_bytes_in_flight` plus `queue_depth + 1` chunks' bytes.
    pub put_bytes_in_flight: u64,
}

impl EngineConfig {
    pub fn new(dirs: Vec<PathBuf>, shards: usize) -> EngineConfig {
        EngineConfig {
            dirs,
            shards,
            pin: false,
            segment_bytes: 256 << 20,
            compact_below: 0.5,
            checkpoint_every_bytes: 1 << 30,
            capacity_bytes: None,
            maintenance_every: Some(Duration::from_secs(30)),
            queue_depth: 16,
            in_flight_max: 256,
            put_bytes_in_flight: 256 << 20,
        }
    }
}

/// Why a store operation failed. Every variant says what the caller can do.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    #[error("chunk {0} is not stored here")]
    NotFound(ChunkId),
    #[error("chunk {id} is corrupt on disk ({what}); it is not served")]
    Corrupt { id: ChunkId, what: String },
    #[error("chunk {id}: CRC32C is {computed:#010x}, the caller said {expected:#010x}")]
    CrcMismatch {
        id: ChunkId,
        expected: u32,
        computed: u32,
    },
    #[error("chunk bytes hash to {computed}, not to the id {id} they were sent as")]
    IdMismatch { id: ChunkId, computed: ChunkId },
    #[error("a chunk must be 1 to {PAYLOAD_BYTES_MAX} bytes, this one is {0}")]
    Size(usize),
    #[error("no space: {needed} bytes needed, {free} free of the configured capacity")]
    Full { needed: u64, free: u64 },
    #[error("range {start}..{end} is outside chunk {id} of {len} bytes")]
    Range {
        id: ChunkId,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error("leaf {leaf} is outside chunk {id} of {len} bytes")]
    Leaf { id: ChunkId, leaf: u64, len: u64 },
    #[error("disk error ({0}); nothing was acknowledged that is not durable")]
    Io(String),
    #[error("the store is shut down")]
    ShutDown,
    #[error("{0}")]
    InUse(String),
}

fn io_error(what: &str) -> impl Fn(io::Error) -> StoreError + '_ {
    move |e| {
        if e.raw_os_error() == Some(28) {
            StoreError::Full { needed: 0, free: 0 }
        } else {
            StoreError::Io(format!("{what}: {e}"))
        }
    }
}

/// One answer of [`Engine::prove_many`]: the proof (or why not) and the time its shard took
/// to read and build it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub proof: Result<Vec<u8>, StoreError>,
    pub micros: u128,
}

/// What `put` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// Written and durable.
    Stored,
    /// Already stored with at least this expiry; nothing written.
    Existing,
}

/// Counters and sizes, summed over shards and volumes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub chunks: u64,
    /// Bytes of records the index points to.
    pub live_bytes: u64,
    /// Bytes of segment files.
    pub used_bytes: u64,
    /// Configured capacity (sum), `u64::MAX` when unset.
    pub capacity_bytes: u64,
    pub segments: u64,
    pub puts: u64,
    pub gets: u64,
    pub proofs: u64,
    pub syncs: u64,
    /// Records that failed their checks when read; none was served.
    pub corrupt_reads: u64,
    /// Bytes cut from torn tails at the last restart.
    pub truncated_bytes: u64,
    pub compacted_segments: u64,
    /// Segments whose opening waited for writes a killed process left in flight (the
    /// fence of `disk::DmaDisk`).
    pub fence_waits: u64,
    /// Heap bytes of the in-memory index (its hash table).
    pub index_bytes: u64,
    /// Requests a shard took from its queue only after waiting for one in flight to
    /// finish ([`EngineConfig::in_flight_max`], [`EngineConfig::put_bytes_in_flight`]):
    /// how often callers were held back.
    pub held_back: u64,
    /// The most requests one shard has had in flight at once (the largest over shards).
    pub in_flight_peak: u64,
    /// The most put payload bytes one shard has held in flight at once (the largest over
    /// shards).
    pub put_bytes_peak: u64,
}

/// A request in flight; [`Pending::wait`] blocks for the answer, [`Pending::recv`] awaits
/// it from any async runtime.
#[derive(Debug)]
#[must_use = "a request's outcome is only known by waiting for it"]
pub struct Pending<T>(flume::Receiver<Result<T, StoreError>>);

impl<T> Pending<T> {
    pub fn wait(self) -> Result<T, StoreError> {
        self.0.recv().unwrap_or(Err(StoreError::ShutDown))
    }

    pub async fn recv(self) -> Result<T, StoreError> {
        self.0
            .recv_async()
            .await
            .unwrap_or(Err(StoreError::ShutDown))
    }
}

type Reply<T> = flume::Sender<Result<T, StoreError>>;

enum Request {
    Put {
        id: ChunkId,
        crc: u32,
        data: Vec<u8>,
        expiry: u64,
        reply: Reply<PutOutcome>,
    },
    Get {
        id: ChunkId,
        range: Option<Range<u64>>,
        reply: Reply<Vec<u8>>,
    },
    Prove {
        id: ChunkId,
        leaf: u64,
        reply: Reply<Vec<u8>>,
    },
    ProveMany {
        challenges: Vec<(usize, ChunkId, u64)>,
        reply: Reply<Vec<(usize, Answer)>>,
    },
    Delete {
        id: ChunkId,
        reply: Reply<bool>,
    },
    Stat {
        id: ChunkId,
        reply: Reply<Option<u32>>,
    },
    Compact(Reply<u64>),
    Checkpoint(Reply<()>),
    Stats(Reply<StoreStats>),
    Shutdown(Reply<()>),
}

impl Request {
    fn put(
        id: ChunkId,
        crc: u32,
        data: Vec<u8>,
        expiry: u64,
    ) -> impl FnOnce(Reply<PutOutcome>) -> Request {
        move |reply| Request::Put {
            id,
            crc,
            data,
            expiry,
            reply,
        }
    }

    fn get(id: ChunkId, range: Option<Range<u64>>) -> impl FnOnce(Reply<Vec<u8>>) -> Request {
        move |reply| Request::Get { id, range, reply }
    }
}

/// The running store: a handle to its shards. Dropping it shuts them down cleanly
/// (final checkpoints), as [`Engine::shutdown`] does.
#[derive(Debug)]
pub struct Engine {
    shards: Vec<flume::Sender<Request>>,
    loads: Vec<Arc<ShardLoad>>,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
}

impl Engine {
    /// Opens (or creates) the store on real disks and recovers every shard.
    pub fn open(cfg: &EngineConfig) -> Result<Engine, StoreError> {
        let mut disks = Vec::new();
        for s in 0..cfg.shards {
            let mut vols = Vec::new();
            for dir in &cfg.dirs {
                let d = DmaDisk::new(&dir.join(format!("shard-{s}"))).map_err(|e| {
                    if e.kind() == io::ErrorKind::WouldBlock {
                        StoreError::InUse(e.to_string())
                    } else {
                        io_error("opening the shard directory")(e)
                    }
                })?;
                vols.push(d);
            }
            disks.push(vols);
        }
        Engine::open_on(cfg, disks)
    }

    /// Opens the store on the given disks: `disks[shard][volume]`.
    pub fn open_on<D: Disk + Send>(
        cfg: &EngineConfig,
        disks: Vec<Vec<D>>,
    ) -> Result<Engine, StoreError> {
        assert!(
            cfg.shards >= 1 && disks.len() == cfg.shards,
            "one list of disks per shard"
        );
        assert!(
            disks.iter().all(|v| !v.is_empty() && v.len() <= 255),
            "1 to 255 volumes per shard"
        );
        assert!(
            (64 << 10..=SEGMENT_BYTES_MAX).contains(&cfg.segment_bytes),
            "segment_bytes must be 64 KiB to 1 TiB"
        );
        assert!(
            cfg.queue_depth >= 1 && cfg.in_flight_max >= 1 && cfg.put_bytes_in_flight >= 1,
            "queues and in-flight limits of at least 1"
        );
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let io_memory = io_memory_per_shard(cfg.shards);
        let mut shards = Vec::new();
        let mut loads = Vec::new();
        let mut threads = Vec::new();
        let mut ready = Vec::new();
        for (n, vols) in disks.into_iter().enumerate() {
            let (tx, rx) = flume::bounded(cfg.queue_depth);
            let (ready_tx, ready_rx) = flume::bounded(1);
            let placement = if cfg.pin {
                Placement::Fixed(n % cores)
            } else {
                Placement::Unbound
            };
            let cfg = cfg.clone();
            let n32 = u32::try_from(n).expect("few shards");
            let shard_load = Arc::new(ShardLoad::default());
            loads.push(Arc::clone(&shard_load));
            let handle =
                LocalExecutorBuilder::new(placement)
                    .name(&format!("shard-{n}"))
                    .io_memory(io_memory)
                    .spawn(move || async move {
                        run_shard(n32, cfg, vols, rx, ready_tx, shard_load).await
                    })
                    .map_err(|e| StoreError::Io(format!("starting shard {n}: {e}")))?;
            shards.push(tx);
            threads.push(handle);
            ready.push(ready_rx);
        }
        let mut failed = None;
        for r in ready {
            if let Err(e) = r.recv().unwrap_or(Err(StoreError::ShutDown)) {
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            // A shard that gave up may not have dropped its queue yet: a request sent to it
            // now (a shutdown) could wait forever. Closing every queue stops the shards that
            // did open (their loops end), then they are joined.
            drop(shards);
            for t in threads {
                let _ = t.join();
            }
            return Err(e);
        }
        Ok(Engine {
            shards,
            loads,
            threads,
        })
    }

    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// What the shards are working on and have queued now, read without asking them (it
    /// answers while they are too busy to).
    pub fn load(&self) -> Load {
        let mut l = Load::default();
        for (queue, s) in self.shards.iter().zip(&self.loads) {
            l.queued += queue.len() as u64;
            l.in_flight += s.in_flight.load(Ordering::Relaxed);
            l.put_bytes += s.put_bytes.load(Ordering::Relaxed);
            l.full_shards += u64::from(s.full.load(Ordering::Relaxed));
        }
        l
    }

    fn shard_index(&self, id: &ChunkId) -> usize {
        let key = u64::from_le_bytes(id.0[..8].try_into().expect("8 bytes"));
        usize::try_from(key % self.shards.len() as u64).expect("fits")
    }

    fn shard_of(&self, id: &ChunkId) -> &flume::Sender<Request> {
        &self.shards[self.shard_index(id)]
    }

    /// Sends a request to its shard, blocking while the shard's queue is full (a shard
    /// that has stopped drops it: the answer is then `ShutDown`).
    fn ask<T>(to: &flume::Sender<Request>, make: impl FnOnce(Reply<T>) -> Request) -> Pending<T> {
        let (tx, rx) = flume::bounded(1);
        let _ = to.send(make(tx));
        Pending(rx)
    }

    /// [`Engine::ask`] for async callers: awaits room in the queue instead of blocking.
    async fn ask_async<T>(
        to: &flume::Sender<Request>,
        make: impl FnOnce(Reply<T>) -> Request,
    ) -> Pending<T> {
        let (tx, rx) = flume::bounded(1);
        let _ = to.send_async(make(tx)).await;
        Pending(rx)
    }

    /// Stores a sealed chunk. `crc` is the CRC32C the sender declared (the manifest's and
    /// the deal's); the store checks it and the id. `expiry` is Unix seconds, 0 for never.
    ///
    /// This and the other requests block while the shard's queue is full
    /// ([`EngineConfig::queue_depth`]); async code uses the `_async` twins, which await
    /// room instead (a twin dropped before it returns has not made its request).
    pub fn put(&self, id: ChunkId, crc: u32, data: Vec<u8>, expiry: u64) -> Pending<PutOutcome> {
        Self::ask(self.shard_of(&id), Request::put(id, crc, data, expiry))
    }

    pub async fn put_async(
        &self,
        id: ChunkId,
        crc: u32,
        data: Vec<u8>,
        expiry: u64,
    ) -> Pending<PutOutcome> {
        Self::ask_async(self.shard_of(&id), Request::put(id, crc, data, expiry)).await
    }

    /// The whole chunk, verified.
    pub fn get(&self, id: ChunkId) -> Pending<Vec<u8>> {
        Self::ask(self.shard_of(&id), Request::get(id, None))
    }

    pub async fn get_async(&self, id: ChunkId) -> Pending<Vec<u8>> {
        Self::ask_async(self.shard_of(&id), Request::get(id, None)).await
    }

    /// Bytes `range` of the chunk, verified against the chunk's tree.
    pub fn get_range(&self, id: ChunkId, range: Range<u64>) -> Pending<Vec<u8>> {
        Self::ask(self.shard_of(&id), Request::get(id, Some(range)))
    }

    pub async fn get_range_async(&self, id: ChunkId, range: Range<u64>) -> Pending<Vec<u8>> {
        Self::ask_async(self.shard_of(&id), Request::get(id, Some(range))).await
    }

    /// The length of chunk `id` if it is stored and not expired, from the index alone (no
    /// disk read): what a resumed upload asks before re-sending.
    pub fn stat(&self, id: ChunkId) -> Pending<Option<u32>> {
        Self::ask(self.shard_of(&id), |reply| Request::Stat { id, reply })
    }

    pub async fn stat_async(&self, id: ChunkId) -> Pending<Option<u32>> {
        Self::ask_async(self.shard_of(&id), |reply| Request::Stat { id, reply }).await
    }

    /// The storage proof of leaf `leaf` (`proto::proof` format), checked against the id.
    pub fn prove(&self, id: ChunkId, leaf: u64) -> Pending<Vec<u8>> {
        Self::ask(self.shard_of(&id), |reply| Request::Prove {
            id,
            leaf,
            reply,
        })
    }

    pub async fn prove_async(&self, id: ChunkId, leaf: u64) -> Pending<Vec<u8>> {
        Self::ask_async(self.shard_of(&id), |reply| Request::Prove {
            id,
            leaf,
            reply,
        })
        .await
    }

    /// Answers many challenges at once (the chain issues a period's challenges together):
    /// one message per shard, every proof read and built concurrently on its shard. The
    /// answers come back in the order asked.
    pub fn prove_many(&self, challenges: &[(ChunkId, u64)]) -> Result<Vec<Answer>, StoreError> {
        let mut per: Vec<Vec<(usize, ChunkId, u64)>> = vec![Vec::new(); self.shards.len()];
        for (k, (id, leaf)) in challenges.iter().enumerate() {
            per[self.shard_index(id)].push((k, *id, *leaf));
        }
        let pending: Vec<_> = per
            .into_iter()
            .enumerate()
            .filter(|(_, c)| !c.is_empty())
            .map(|(n, challenges)| {
                Self::ask(&self.shards[n], |reply| Request::ProveMany {
                    challenges,
                    reply,
                })
            })
            .collect();
        let mut answers: Vec<Option<Answer>> = vec![None; challenges.len()];
        for p in pending {
            for (k, a) in p.wait()? {
                answers[k] = Some(a);
            }
        }
        answers
            .into_iter()
            .map(|a| a.ok_or(StoreError::ShutDown))
            .collect()
    }

    /// Deletes a chunk durably; `false` if it was not stored.
    pub fn delete(&self, id: ChunkId) -> Pending<bool> {
        Self::ask(self.shard_of(&id), |reply| Request::Delete { id, reply })
    }

    pub async fn delete_async(&self, id: ChunkId) -> Pending<bool> {
        Self::ask_async(self.shard_of(&id), |reply| Request::Delete { id, reply }).await
    }

    fn all<T>(&self, make: impl Fn(Reply<T>) -> Request) -> Result<Vec<T>, StoreError> {
        let pending: Vec<Pending<T>> = self.shards.iter().map(|s| Self::ask(s, &make)).collect();
        pending.into_iter().map(Pending::wait).collect()
    }

    /// Drops expired chunks and compacts every segment below the live fraction, now.
    /// Returns the number of segments compacted.
    pub fn compact(&self) -> Result<u64, StoreError> {
        Ok(self.all(Request::Compact)?.into_iter().sum())
    }

    /// Writes every volume's index checkpoint now.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.all(Request::Checkpoint).map(|_| ())
    }

    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut total = StoreStats::default();
        for s in self.all(Request::Stats)? {
            total.chunks += s.chunks;
            total.live_bytes += s.live_bytes;
            total.used_bytes += s.used_bytes;
            total.capacity_bytes = total.capacity_bytes.saturating_add(s.capacity_bytes);
            total.segments += s.segments;
            total.puts += s.puts;
            total.gets += s.gets;
            total.proofs += s.proofs;
            total.syncs += s.syncs;
            total.corrupt_reads += s.corrupt_reads;
            total.truncated_bytes += s.truncated_bytes;
            total.compacted_segments += s.compacted_segments;
            total.fence_waits += s.fence_waits;
            total.index_bytes += s.index_bytes;
            total.held_back += s.held_back;
            total.in_flight_peak = total.in_flight_peak.max(s.in_flight_peak);
            total.put_bytes_peak = total.put_bytes_peak.max(s.put_bytes_peak);
        }
        Ok(total)
    }

    /// Checkpoints every volume and stops the shards.
    pub fn shutdown(mut self) -> Result<(), StoreError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), StoreError> {
        let result = if self.shards.is_empty() {
            Ok(())
        } else {
            self.all(Request::Shutdown).map(|_| ())
        };
        self.shards.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        result
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// glommio registers its I/O memory, which counts against RLIMIT_MEMLOCK (8 MiB on our
/// machines, where glommio's default of 10 MiB would silently not register at all): give
/// each shard an equal part of half the limit, at least glommio's minimum of 64 KiB.
fn io_memory_per_shard(shards: usize) -> usize {
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max locked memory"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        })
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(8 << 20);
    (limit / 2 / shards.max(1)).clamp(64 << 10, 8 << 20)
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
        record_span(self.payload)
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

async fn run_shard<D: Disk>(
    n: u32,
    cfg: EngineConfig,
    disks: Vec<D>,
    rx: flume::Receiver<Request>,
    ready: flume::Sender<Result<(), StoreError>>,
    load: Arc<ShardLoad>,
) {
    let capacity = cfg
        .capacity_bytes
        .map_or(u64::MAX, |c| c / cfg.shards as u64);
    let mut receivers = Vec::new();
    let vols = disks
        .into_iter()
        .map(|disk| {
            let (tx, rx) = flume::unbounded();
            receivers.push(rx);
            Volume {
                disk,
                st: RefCell::new(VolState {
                    segs: BTreeMap::new(),
                    active: 0,
                    next_seq: 1,
                    used: 0,
                    capacity,
                    since_checkpoint: 0,
                }),
                rotating: glommio::sync::Semaphore::new(1),
                checkpointing: glommio::sync::Semaphore::new(1),
                commits: tx,
            }
        })
        .collect();
    let shard = Rc::new(Shard {
        cfg,
        vols,
        index: RefCell::new(Index::new()),
        counters: RefCell::new(Counters::default()),
        busy: RefCell::new(HashMap::new()),
        compacting: glommio::sync::Semaphore::new(1),
        damaged: RefCell::new(HashSet::new()),
    });
    for (v, rx) in receivers.into_iter().enumerate() {
        glommio::spawn_local(shard.clone().commit_loop(v, rx)).detach();
    }
    for vol in &shard.vols {
        if let Err(e) = vol.disk.prepare().await {
            shard.close().await;
            let _ = ready.send(Err(StoreError::Io(format!(
                "shard {n}: preparing the disk: {e}"
            ))));
            return;
        }
    }
    if let Err(e) = shard.recover().await {
        shard.close().await;
        let _ = ready.send(Err(StoreError::Io(format!("shard {n}: {e}"))));
        return;
    }
    let _ = ready.send(Ok(()));
    // Compaction, asked for or periodic, runs in a queue with a tenth of the foreground's
    // share of the core, so puts and gets go first.
    let tq = glommio::executor().create_task_queue(
        glommio::Shares::Static(100),
        glommio::Latency::NotImportant,
        "maintenance",
    );
    if let Some(every) = shard.cfg.maintenance_every {
        let s = shard.clone();
        let task = glommio::spawn_local_into(
            async move {
                loop {
                    glommio::timer::sleep(every).await;
                    if let Err(e) = s.compact().await {
                        eprintln!("engine: background compaction: {e}");
                    }
                }
            },
            tq,
        );
        if let Ok(t) = task {
            t.detach();
        }
    }
    // Back-pressure: a request that works on the disk takes a place in flight (and a put
    // its payload's bytes) before it starts, and the loop takes nothing more from the
    // queue until it has them; the queue fills and callers wait in their `Pending`s.
    let room = Room {
        requests: Rc::new(glommio::sync::Semaphore::new(
            shard.cfg.in_flight_max as u64,
        )),
        put_bytes: Rc::new(glommio::sync::Semaphore::new(shard.cfg.put_bytes_in_flight)),
        load,
    };
    while let Ok(req) = rx.recv_async().await {
        let s = shard.clone();
        let in_flight = match &req {
            Request::Stat { .. }
            | Request::Stats(_)
            | Request::Compact(_)
            | Request::Shutdown(_) => None,
            Request::Put { data, .. } => Some(shard.admit(&room, data.len() as u64).await),
            _ => Some(shard.admit(&room, 0).await),
        };
        match req {
            Request::Put {
                id,
                crc,
                data,
                expiry,
                reply,
            } => spawn(async move {
                let _in_flight = in_flight;
                let _ = reply.send(s.put(id, crc, data, expiry).await);
            }),
            Request::Stat { id, reply } => {
                let _ = reply.send(Ok(s.lookup(&id).ok().map(|loc| loc.payload)));
            }
            Request::Get { id, range, reply } => spawn(async move {
                let _in_flight = in_flight;
                let _ = reply.send(s.get(id, range).await);
            }),
            Request::Prove { id, leaf, reply } => spawn(async move {
                let _in_flight = in_flight;
                let _ = reply.send(s.prove(id, leaf).await);
            }),
            Request::ProveMany { challenges, reply } => spawn(async move {
                let _in_flight = in_flight;
                let tasks: Vec<_> = challenges
                    .into_iter()
                    .map(|(k, id, leaf)| {
                        let s = s.clone();
                        glommio::spawn_local(async move {
                            let t = std::time::Instant::now();
                            let proof = s.prove(id, leaf).await;
                            (
                                k,
                                Answer {
                                    proof,
                                    micros: t.elapsed().as_micros(),
                                },
                            )
                        })
                    })
                    .collect();
                let mut out = Vec::with_capacity(tasks.len());
                for t in tasks {
                    out.push(t.await);
                }
                let _ = reply.send(Ok(out));
            }),
            Request::Delete { id, reply } => spawn(async move {
                let _in_flight = in_flight;
                let _ = reply.send(s.delete(id).await);
            }),
            Request::Compact(reply) => {
                let task = glommio::spawn_local_into(
                    async move {
                        let _ = reply.send(s.compact().await);
                    },
                    tq,
                );
                if let Ok(t) = task {
                    t.detach();
                }
            }
            Request::Checkpoint(reply) => spawn(async move {
                let _in_flight = in_flight;
                let _ = reply.send(s.checkpoint_all().await);
            }),
            Request::Stats(reply) => {
                let _ = reply.send(Ok(s.stats()));
            }
            Request::Shutdown(reply) => {
                // A compaction under way finishes first (it holds segment files open), and
                // none starts before the files are closed.
                let _no_compaction = s.compacting.acquire_permit(1).await;
                let result = s.checkpoint_all().await;
                s.close().await;
                let _ = reply.send(result);
                return;
            }
        }
    }
    // The queue closed without a shutdown (an open that failed on another shard): the
    // files and the volume locks are let go all the same.
    let _compaction_done = shard.compacting.acquire_permit(1).await;
    shard.close().await;
}

fn spawn(f: impl std::future::Future<Output = ()> + 'static) {
    glommio::spawn_local(f).detach();
}

/// What a shard lets run at once: requests, and bytes of put payloads
/// ([`EngineConfig::in_flight_max`], [`EngineConfig::put_bytes_in_flight`]), and what it
/// runs now.
struct Room {
    requests: Rc<glommio::sync::Semaphore>,
    put_bytes: Rc<glommio::sync::Semaphore>,
    load: Arc<ShardLoad>,
}

/// A request's place in flight, given back when it is done.
struct InFlight {
    _request: Option<glommio::sync::StaticPermit>,
    _bytes: Option<glommio::sync::StaticPermit>,
    load: Arc<ShardLoad>,
    bytes: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.load.put_bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// What one shard is working on now, kept by the shard and read by [`Engine::load`] from
/// any thread without asking the shard.
#[derive(Debug, Default)]
struct ShardLoad {
    in_flight: AtomicU64,
    put_bytes: AtomicU64,
    /// Waiting for a request in flight to finish before taking the next.
    full: AtomicBool,
}

/// What the store is working on now, over all shards ([`Engine::load`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Requests waiting in the shards' queues.
    pub queued: u64,
    /// Requests being worked on.
    pub in_flight: u64,
    /// Put payload bytes being worked on.
    pub put_bytes: u64,
    /// Shards waiting for room before they take their next request: while one is, its
    /// queue fills and callers wait.
    pub full_shards: u64,
}

impl<D: Disk> Shard<D> {
    /// Takes a place in flight for a request with `bytes` of put payload (a put larger
    /// than the whole allowance takes all of it), waiting while there is none.
    async fn admit(&self, room: &Room, bytes: u64) -> InFlight {
        let bytes = bytes.min(self.cfg.put_bytes_in_flight);
        let mut request = room.requests.try_acquire_static_permit(1).ok();
        let mut bytes_permit = (bytes > 0)
            .then(|| room.put_bytes.try_acquire_static_permit(bytes).ok())
            .flatten();
        let wait = request.is_none() || (bytes > 0 && bytes_permit.is_none());
        if wait {
            room.load.full.store(true, Ordering::Relaxed);
            if request.is_none() {
                request = room.requests.acquire_static_permit(1).await.ok();
            }
            if bytes > 0 && bytes_permit.is_none() {
                bytes_permit = room.put_bytes.acquire_static_permit(bytes).await.ok();
            }
            room.load.full.store(false, Ordering::Relaxed);
        }
        let in_flight = room.load.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        let put_bytes = room.load.put_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let mut c = self.counters.borrow_mut();
        c.held_back += u64::from(wait);
        c.in_flight_peak = c.in_flight_peak.max(in_flight);
        c.put_bytes_peak = c.put_bytes_peak.max(put_bytes);
        InFlight {
            _request: request,
            _bytes: bytes_permit,
            load: Arc::clone(&room.load),
            bytes,
        }
    }
}

/// Bytes read from whole sectors: the buffer, and where the asked bytes lie in it.
struct Span<R> {
    buf: R,
    at: usize,
    len: usize,
}

impl<R: std::ops::Deref<Target = [u8]>> std::ops::Deref for Span<R> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[self.at..self.at + self.len]
    }
}

/// Reads a segment's records window by window from a record boundary.
struct Walk {
    seq: u32,
    pos: u64,
    size: u64,
    window: usize,
    end: Option<ScanEnd>,
}

impl Walk {
    fn new(seq: u32, start: u64, size: u64) -> Walk {
        Walk {
            seq,
            pos: start,
            size,
            window: WINDOW_BYTES,
            end: None,
        }
    }

    /// The next window's bytes (starting at the returned offset) and the records in it.
    async fn next<F: DiskFile>(
        &mut self,
        file: &F,
    ) -> io::Result<Option<(u64, F::Read, Vec<Located>)>> {
        if self.end.is_some() {
            return Ok(None);
        }
        if self.pos >= self.size {
            self.end = Some(ScanEnd::Clean { offset: self.pos });
            return Ok(None);
        }
        let len = (self.window as u64).min(align_up(self.size - self.pos));
        let bytes = file
            .read_at(self.pos, usize::try_from(len).expect("window"))
            .await?;
        let base = self.pos;
        if bytes.is_empty() {
            // Shorter than it was said to be: the end is here.
            self.end = Some(ScanEnd::Clean { offset: base });
            return Ok(None);
        }
        let (found, end) = scan(&bytes, self.seq, 0, true);
        let eof = base + bytes.len() as u64 >= self.size;
        match end {
            ScanEnd::Clean { offset } if offset >= bytes.len() as u64 && !eof => {
                self.pos = base + offset;
            }
            ScanEnd::Torn {
                offset,
                error: RecordError::Truncated { .. },
            } if !eof => {
                if found.is_empty() {
                    self.window = self.window.saturating_mul(2).min(256 << 20);
                }
                self.pos = base + offset;
            }
            ScanEnd::Clean { offset } => {
                self.end = Some(ScanEnd::Clean {
                    offset: base + offset,
                })
            }
            ScanEnd::Torn { offset, error } => {
                self.end = Some(ScanEnd::Torn {
                    offset: base + offset,
                    error,
                });
            }
        }
        Ok(Some((base, bytes, found)))
    }
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

    /// Reserves `span` bytes in volume `v`'s active segment. `over` lets compaction copies
    /// go past the configured capacity (they free more than they take).
    async fn reserve(
        &self,
        v: usize,
        span: u64,
        over: bool,
    ) -> Result<(u32, u64, Rc<D::File>), StoreError> {
        let vol = &self.vols[v];
        let limit = self.cfg.segment_bytes;
        let fits = |s: &Seg<D::File>| !s.sealed && (s.reserved == 0 || s.reserved + span <= limit);
        loop {
            {
                let mut st = vol.st.borrow_mut();
                let free = st.capacity.saturating_sub(st.used);
                if span > free && !over {
                    return Err(StoreError::Full { needed: span, free });
                }
                let active = st.active;
                if let Some(seg) = st.segs.get_mut(&active).filter(|s| fits(s)) {
                    let at = seg.reserved;
                    seg.reserved += span;
                    seg.pending += 1;
                    let file = seg.file.clone();
                    st.used += span;
                    return Ok((active, at, file));
                }
            }
            let _permit = vol
                .rotating
                .acquire_permit(1)
                .await
                .map_err(|e| StoreError::Io(format!("rotation: {e}")))?;
            let needed = {
                let st = vol.st.borrow();
                st.segs.get(&st.active).is_none_or(|s| !fits(s))
            };
            if needed {
                self.rotate(v).await?;
            }
        }
    }

    /// Seals the active segment and starts a new one.
    async fn rotate(&self, v: usize) -> Result<(), StoreError> {
        let vol = &self.vols[v];
        let seq = {
            let mut st = vol.st.borrow_mut();
            let active = st.active;
            if let Some(a) = st.segs.get_mut(&active) {
                a.sealed = true;
            }
            st.next_seq += 1;
            st.next_seq - 1
        };
        let file = vol
            .disk
            .create(&seg_name(seq))
            .await
            .map_err(io_error("creating a segment"))?;
        let mut st = vol.st.borrow_mut();
        st.segs.insert(seq, Seg::new(file, 0, false));
        st.active = seq;
        Ok(())
    }

    /// Writes a record whose buffer is filled but for its header, and waits until it is
    /// durable and applied to the index.
    async fn append(
        &self,
        v: usize,
        mut header: RecordHeader,
        mut buf: <D::File as DiskFile>::Buf,
        then: Then,
    ) -> Result<Loc, StoreError> {
        let span = record_span(header.payload_bytes);
        // Deletes and compaction free space, so a full volume still takes them.
        let over = !matches!(then, Then::Put);
        let (seq, at, file) = self.reserve(v, span, over).await?;
        header.segment_seq = seq;
        buf.bytes_mut()[..HEADER_BYTES].copy_from_slice(&header.encode());
        let loc = Loc {
            vol: Self::vol_no(v),
            seq,
            sector: u32::try_from(at / u64::from(SECTOR_BYTES))
                .expect("segments are at most SEGMENT_BYTES_MAX"),
            payload: header.payload_bytes,
            expiry: if header.kind == RecordKind::Chunk {
                expiry32(header.expiry_unix_secs)
            } else {
                0
            },
        };
        let result = file.write_at(buf, at).await;
        let (tx, rx) = flume::bounded(1);
        let done = Done {
            seq,
            start: at,
            end: at + span,
            result,
            id: header.id,
            loc,
            then,
            reply: tx,
        };
        if self.vols[v].commits.send(done).is_err() {
            return Err(StoreError::ShutDown);
        }
        rx.recv_async()
            .await
            .unwrap_or(Err(StoreError::ShutDown))
            .map(|()| loc)
    }

    /// The group committer of volume `v`: see the module documentation.
    async fn commit_loop(self: Rc<Self>, v: usize, rx: flume::Receiver<Done>) {
        let vol = &self.vols[v];
        while let Ok(first) = rx.recv_async().await {
            let mut failed: Vec<(Done, StoreError)> = Vec::new();
            let mut ready: BTreeMap<u32, Vec<Done>> = BTreeMap::new();
            {
                let mut st = vol.st.borrow_mut();
                for d in std::iter::once(first).chain(rx.try_iter()) {
                    let Some(seg) = st.segs.get_mut(&d.seq) else {
                        failed.push((d, StoreError::Io("segment vanished".into())));
                        continue;
                    };
                    if let Err(e) = &d.result {
                        let err = if e.raw_os_error() == Some(28) {
                            StoreError::Full {
                                needed: d.end - d.start,
                                free: 0,
                            }
                        } else {
                            StoreError::Io(format!("writing a record: {e}"))
                        };
                        seg.broken = true;
                        seg.sealed = true;
                        failed.push((d, err));
                        continue;
                    }
                    if seg.broken {
                        failed.push((
                            d,
                            StoreError::Io("an earlier write in its segment failed".into()),
                        ));
                        continue;
                    }
                    seg.done.insert(d.start, d);
                }
                for (&seq, seg) in st.segs.iter_mut() {
                    if seg.broken {
                        while let Some((_, d)) = seg.done.pop_first() {
                            failed.push((
                                d,
                                StoreError::Io("an earlier write in its segment failed".into()),
                            ));
                        }
                        continue;
                    }
                    while let Some(d) = seg.done.remove(&seg.written) {
                        seg.written = d.end;
                        ready.entry(seq).or_default().push(d);
                    }
                }
            }
            for (d, e) in failed {
                self.settle(&d);
                let _ = d.reply.send(Err(e));
            }
            for (seq, batch) in ready {
                let file = vol.st.borrow().segs.get(&seq).map(|s| s.file.clone());
                let synced = match file {
                    Some(f) => f.sync().await.map_err(io_error("fdatasync")),
                    None => Err(StoreError::Io("segment vanished".into())),
                };
                self.counters.borrow_mut().syncs += 1;
                match synced {
                    Ok(()) => {
                        let end = batch.last().map_or(0, |d| d.end);
                        if let Some(seg) = vol.st.borrow_mut().segs.get_mut(&seq) {
                            seg.synced = seg.synced.max(end);
                        }
                        let bytes: u64 = batch.iter().map(|d| d.end - d.start).sum();
                        for d in batch {
                            self.apply(d);
                        }
                        let due = {
                            let mut st = vol.st.borrow_mut();
                            st.since_checkpoint += bytes;
                            st.since_checkpoint >= self.cfg.checkpoint_every_bytes
                        };
                        if due && vol.checkpointing.available() > 0 {
                            let s = self.clone();
                            spawn(async move {
                                if let Err(e) = s.checkpoint(v).await {
                                    eprintln!("engine: checkpoint: {e}");
                                }
                            });
                        }
                    }
                    Err(e) => {
                        if let Some(seg) = vol.st.borrow_mut().segs.get_mut(&seq) {
                            seg.broken = true;
                            seg.sealed = true;
                        }
                        for d in batch {
                            self.settle(&d);
                            let _ = d.reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        }
    }

    /// A reserved record's outcome is known: it no longer holds its segment back from
    /// compaction.
    fn settle(&self, d: &Done) {
        let mut st = self.vols[usize::from(d.loc.vol)].st.borrow_mut();
        if let Some(seg) = st.segs.get_mut(&d.seq) {
            seg.pending = seg.pending.saturating_sub(1);
        }
    }

    /// A durable record takes effect.
    fn apply(self: &Rc<Self>, d: Done) {
        self.settle(&d);
        match d.then {
            Then::Put => {
                self.index_insert(d.id, d.loc);
                self.counters.borrow_mut().puts += 1;
            }
            Then::Tomb { target } => {
                // Only the record it names: a put that raced the delete stands, as it
                // will after a restart replays the log.
                let current = self.index.borrow().get(&d.id);
                if current.is_some_and(|c| {
                    c.vol == target.vol && c.seq == target.seq && c.sector == target.sector
                }) {
                    self.index_remove(&d.id);
                }
            }
            Then::Keep => {}
            Then::Copy { from } => {
                let current = self.index.borrow().get(&d.id);
                // Deletes wait for copies of their id (`lock_id`), so a missing entry
                // was swept as expired, and the copy carries the same expiry.
                if current == Some(from) {
                    self.index_insert(d.id, d.loc);
                }
            }
        }
        let _ = d.reply.send(Ok(()));
    }

    async fn put(
        &self,
        id: ChunkId,
        crc: u32,
        data: Vec<u8>,
        expiry: u64,
    ) -> Result<PutOutcome, StoreError> {
        let n = u32::try_from(data.len())
            .ok()
            .filter(|n| (1..=PAYLOAD_BYTES_MAX).contains(n))
            .ok_or(StoreError::Size(data.len()))?;
        // One operation per id at a time: two puts of one chunk write it once, and a put
        // never interleaves with a delete or a compaction copy of it.
        let _held = self.lock_id(id).await;
        if let Some(loc) = self.index.borrow().get(&id) {
            let now = now_secs();
            let longer = loc.expiry == 0 || (expiry != 0 && loc.expiry >= expiry32(expiry));
            if !loc.expired(now) && longer {
                // "Existing" vouches for the caller's bytes too: they are checked as a new
                // chunk's would be, so an answer never stands for bytes nobody verified.
                let (computed, computed_id) = crate::codec::checksums(&data);
                if computed != crc {
                    return Err(StoreError::CrcMismatch {
                        id,
                        expected: crc,
                        computed,
                    });
                }
                if computed_id != id {
                    return Err(StoreError::IdMismatch {
                        id,
                        computed: computed_id,
                    });
                }
                return Ok(PutOutcome::Existing);
            }
        }
        let v = self.volume_of(&id);
        let span = usize::try_from(record_span(n)).expect("records fit in memory");
        let ob = outboard_bytes(n) as usize;
        let len = data.len();
        let mut buf = self.any_file(v).alloc(span);
        let b = buf.bytes_mut();
        let (payload, rest) = b[HEADER_BYTES..].split_at_mut(len);
        payload.copy_from_slice(&data);
        drop(data);
        let computed = crc32c(payload);
        if computed != crc {
            return Err(StoreError::CrcMismatch {
                id,
                expected: crc,
                computed,
            });
        }
        let root = hash_with_outboard(payload, &mut rest[..ob]);
        if root.as_bytes() != &id.0 {
            return Err(StoreError::IdMismatch {
                id,
                computed: ChunkId(*root.as_bytes()),
            });
        }
        rest[ob..].fill(0);
        let header = RecordHeader {
            kind: RecordKind::Chunk,
            id,
            payload_bytes: n,
            payload_crc32c: crc,
            expiry_unix_secs: expiry,
            segment_seq: 0,
        };
        self.append(v, header, buf, Then::Put).await?;
        Ok(PutOutcome::Stored)
    }

    async fn write_tombstone(&self, id: ChunkId, target: Loc) -> Result<(), StoreError> {
        let v = usize::from(target.vol);
        let span = usize::try_from(record_span(0)).expect("one sector");
        let mut buf = self.any_file(v).alloc(span);
        buf.bytes_mut().fill(0);
        let header = RecordHeader {
            kind: RecordKind::Tombstone,
            id,
            payload_bytes: 0,
            payload_crc32c: crc32c(&[]),
            expiry_unix_secs: tomb_target(&target),
            segment_seq: 0,
        };
        self.append(v, header, buf, Then::Tomb { target })
            .await
            .map(|_| ())
    }

    async fn delete(&self, id: ChunkId) -> Result<bool, StoreError> {
        let _held = self.lock_id(id).await;
        let Some(loc) = self.index.borrow().get(&id) else {
            return Ok(false);
        };
        self.write_tombstone(id, loc).await?;
        Ok(true)
    }

    // ---- reading ----

    /// Bytes `at..at + len` of a segment, read as the whole sectors that hold them.
    async fn read(
        &self,
        id: &ChunkId,
        file: &D::File,
        at: u64,
        len: u64,
    ) -> Result<Span<<D::File as DiskFile>::Read>, StoreError> {
        let start = align_down(at);
        let n = usize::try_from(align_up(at + len) - start).expect("reads fit in memory");
        let buf = file
            .read_at(start, n)
            .await
            .map_err(io_error("reading a record"))?;
        if (buf.len() as u64) < at + len - start {
            return Err(self.corrupt(*id, "the segment ends inside the record"));
        }
        Ok(Span {
            buf,
            at: usize::try_from(at - start).expect("within a sector"),
            len: usize::try_from(len).expect("reads fit in memory"),
        })
    }

    /// Payload bytes `range` of the record at `loc`, and its outboard: two reads at once.
    async fn read_with_outboard(
        &self,
        id: &ChunkId,
        loc: &Loc,
        file: &D::File,
        range: Range<u64>,
    ) -> Result<
        (
            Span<<D::File as DiskFile>::Read>,
            Span<<D::File as DiskFile>::Read>,
        ),
        StoreError,
    > {
        let base = loc.offset() + HEADER_BYTES as u64;
        let (data, outboard) = futures_lite::future::zip(
            self.read(id, file, base + range.start, range.end - range.start),
            self.read(
                id,
                file,
                base + u64::from(loc.payload),
                u64::from(outboard_bytes(loc.payload)),
            ),
        )
        .await;
        Ok((data?, outboard?))
    }

    /// Reads and checks a whole small-or-full record: header, payload CRC, outboard.
    async fn read_whole(
        &self,
        id: &ChunkId,
        loc: &Loc,
        file: &D::File,
    ) -> Result<Span<<D::File as DiskFile>::Read>, StoreError> {
        let len = HEADER_BYTES as u64 + u64::from(loc.payload);
        let bytes = self.read(id, file, loc.offset(), len).await?;
        let head: &[u8; HEADER_BYTES] = bytes[..HEADER_BYTES].try_into().expect("64 bytes");
        let header =
            RecordHeader::decode(head, loc.seq).map_err(|e| self.corrupt(*id, e.to_string()))?;
        if header.id != *id
            || header.kind != RecordKind::Chunk
            || header.payload_bytes != loc.payload
        {
            return Err(self.corrupt(*id, "the record at its place is another chunk's"));
        }
        let payload = &bytes[HEADER_BYTES..HEADER_BYTES + loc.payload as usize];
        verify_record(&header, payload, &[]).map_err(|e| self.corrupt(*id, e.to_string()))?;
        Ok(bytes)
    }

    async fn get(&self, id: ChunkId, range: Option<Range<u64>>) -> Result<Vec<u8>, StoreError> {
        let loc = self.lookup(&id)?;
        let file = self.file(&loc).ok_or(StoreError::NotFound(id))?;
        self.counters.borrow_mut().gets += 1;
        let len = u64::from(loc.payload);
        let Some(range) = range else {
            let bytes = self.read_whole(&id, &loc, &file).await?;
            return Ok(bytes[HEADER_BYTES..HEADER_BYTES + loc.payload as usize].to_vec());
        };
        if range.start > range.end || range.end > len {
            return Err(StoreError::Range {
                id,
                start: range.start,
                end: range.end,
                len,
            });
        }
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let ob = u64::from(outboard_bytes(loc.payload));
        if ob == 0 {
            let bytes = self.read_whole(&id, &loc, &file).await?;
            if blake3::hash(&bytes[HEADER_BYTES..HEADER_BYTES + loc.payload as usize]).as_bytes()
                != &id.0
            {
                return Err(self.corrupt(id, "payload does not hash to the id"));
            }
            let (s, e) = (
                usize::try_from(range.start).expect("small"),
                usize::try_from(range.end).expect("small"),
            );
            return Ok(bytes[HEADER_BYTES + s..HEADER_BYTES + e].to_vec());
        }
        // Read the groups the range covers and the outboard; check each group, with the
        // outboard's siblings on its path, against the id.
        let (g0, first) = group_of(range.start, len);
        let (_, last) = group_of(range.end - 1, len);
        let (data, outboard) = self
            .read_with_outboard(&id, &loc, &file, first.start..last.end)
            .await?;
        let tree = Tree::new(len, &outboard, None);
        for (g, group) in (g0..).zip(data.chunks(GROUP_BYTES)) {
            if tree.group_root(g, group).as_bytes() != &id.0 {
                return Err(self.corrupt(
                    id,
                    format!("group {g} and the outboard do not hash to the id"),
                ));
            }
        }
        let s = usize::try_from(range.start - first.start).expect("small");
        let e = usize::try_from(range.end - first.start).expect("small");
        Ok(data[s..e].to_vec())
    }

    async fn prove(&self, id: ChunkId, leaf: u64) -> Result<Vec<u8>, StoreError> {
        let loc = self.lookup(&id)?;
        let file = self.file(&loc).ok_or(StoreError::NotFound(id))?;
        let len = u64::from(loc.payload);
        if leaf >= proto::proof::leaf_count(len) {
            return Err(StoreError::Leaf { id, leaf, len });
        }
        self.counters.borrow_mut().proofs += 1;
        let (g, group) = group_of(leaf * proto::proof::LEAF_BYTES, len);
        let (proof, root) = if outboard_bytes(loc.payload) == 0 {
            let bytes = self.read_whole(&id, &loc, &file).await?;
            let payload = &bytes[HEADER_BYTES..HEADER_BYTES + loc.payload as usize];
            Tree::new(len, &[], Some((0, payload))).prove(leaf)
        } else {
            let (bytes, outboard) = self.read_with_outboard(&id, &loc, &file, group).await?;
            Tree::new(len, &outboard, Some((g, &bytes))).prove(leaf)
        };
        if root.as_bytes() != &id.0 {
            return Err(self.corrupt(id, "the proof does not hash to the id"));
        }
        Ok(proof)
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

    async fn checkpoint_all(&self) -> Result<(), StoreError> {
        for v in 0..self.vols.len() {
            self.checkpoint(v).await?;
        }
        Ok(())
    }

    async fn checkpoint(&self, v: usize) -> Result<(), StoreError> {
        let vol = &self.vols[v];
        let _permit = vol
            .checkpointing
            .acquire_permit(1)
            .await
            .map_err(|e| StoreError::Io(format!("checkpoint: {e}")))?;
        let vno = Self::vol_no(v);
        let (segments, since) = {
            let st = vol.st.borrow();
            let covers = st
                .segs
                .iter()
                .map(|(&seq, s)| SegmentCover {
                    seq,
                    covered_end: s.synced,
                })
                .collect::<Vec<_>>();
            (covers, st.since_checkpoint)
        };
        let entries: Vec<Entry> = self
            .index
            .borrow()
            .iter()
            .filter(|(_, l)| l.vol == vno)
            .map(|(id, l)| Entry {
                id,
                seq: l.seq,
                payload_bytes: l.payload,
                offset: l.offset(),
                expiry_unix_secs: u64::from(l.expiry),
            })
            .collect();
        let bytes = glommio::executor()
            .spawn_blocking(move || {
                let mut entries = entries;
                entries.sort_unstable_by_key(|e| e.id.0);
                let cp = Checkpoint {
                    shard: 0,
                    segments,
                    entries,
                };
                // Checked here so that a bug is an error, not a panic on this thread.
                cp.validate().map(|()| cp.encode())
            })
            .await
            .map_err(|e| StoreError::Io(format!("index checkpoint not written: {e}")))?;
        vol.disk
            .write_atomic(CHECKPOINT_FILE, bytes)
            .await
            .map_err(io_error("writing the index checkpoint"))?;
        let mut st = vol.st.borrow_mut();
        st.since_checkpoint = st.since_checkpoint.saturating_sub(since);
        Ok(())
    }

    async fn recover(&self) -> Result<(), StoreError> {
        for v in 0..self.vols.len() {
            self.recover_volume(v).await?;
        }
        // Live bytes per segment from the merged index.
        let locs: Vec<Loc> = self.index.borrow().iter().map(|(_, l)| l).collect();
        for loc in locs {
            self.add_live(&loc, true);
        }
        for v in 0..self.vols.len() {
            self.rotate(v).await?;
        }
        Ok(())
    }

    async fn recover_volume(&self, v: usize) -> Result<(), StoreError> {
        let vol = &self.vols[v];
        let vno = Self::vol_no(v);
        let names = vol.disk.list().map_err(io_error("listing the volume"))?;
        let mut seqs: Vec<u32> = names.iter().filter_map(|n| seg_seq(n)).collect();
        seqs.sort_unstable();
        for n in names.iter().filter(|n| n.ends_with(".tmp")) {
            let _ = vol.disk.remove(n).await;
        }
        let checkpoint = match vol.disk.read(CHECKPOINT_FILE).await {
            Ok(Some(bytes)) => match Checkpoint::decode(&bytes) {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!(
                        "engine: ignoring the index checkpoint ({e}); scanning every segment"
                    );
                    None
                }
            },
            Ok(None) => None,
            Err(e) => return Err(io_error("reading the index checkpoint")(e)),
        };
        let now = now_secs();
        let mut covers: HashMap<u32, u64> = HashMap::new();
        if let Some(cp) = &checkpoint {
            covers = cp.segments.iter().map(|s| (s.seq, s.covered_end)).collect();
            let newest = cp.segments.last().map_or(0, |s| s.seq);
            // Segments older than the checkpoint's newest that it does not list were
            // compacted away before it was written: their file only lingered.
            for &seq in seqs
                .iter()
                .filter(|&&s| s <= newest && !covers.contains_key(&s))
            {
                vol.disk
                    .remove(&seg_name(seq))
                    .await
                    .map_err(io_error("removing a compacted segment"))?;
            }
            seqs.retain(|s| *s > newest || covers.contains_key(s));
            let present: HashSet<u32> = seqs.iter().copied().collect();
            let mut loaded = Vec::with_capacity(cp.entries.len());
            for e in &cp.entries {
                if !present.contains(&e.seq) {
                    return Err(StoreError::Io(format!(
                        "the index checkpoint places chunk {} in segment {}, which is missing",
                        e.id, e.seq
                    )));
                }
                let loc = Loc {
                    vol: vno,
                    seq: e.seq,
                    sector: u32::try_from(e.offset / u64::from(SECTOR_BYTES)).unwrap_or(u32::MAX),
                    payload: e.payload_bytes,
                    expiry: expiry32(e.expiry_unix_secs),
                };
                if !loc.expired(now) {
                    loaded.push((e.id, loc));
                }
            }
            // Sorted by id and unique: the checkpoint's own invariants, checked on decode.
            self.index.borrow_mut().load_sorted(loaded);
            // New segments must sort after every one the checkpoint knew, or the next
            // restart would take them for compacted leftovers.
            vol.st.borrow_mut().next_seq = newest.saturating_add(1);
        }
        let mut scanned = 0u64;
        let last = seqs.last().copied();
        for &seq in &seqs {
            let opened = vol
                .disk
                .open(&seg_name(seq))
                .await
                .map_err(io_error("opening a segment"))?;
            // In the volume's map from the start (sealed, empty until scanned), so an open
            // that fails below still closes this file with the others (`Shard::close`).
            let file = {
                let mut st = vol.st.borrow_mut();
                let seg = Seg::new(opened, 0, true);
                let file = Rc::clone(&seg.file);
                st.segs.insert(seq, seg);
                file
            };
            let mut size = file.size().await.map_err(io_error("sizing a segment"))?;
            if size % u64::from(SECTOR_BYTES) != 0 {
                // Only damage from outside makes a segment end inside a sector; a whole
                // record cut in its padding is still whole: pad the file back out.
                file.truncate(align_up(size))
                    .await
                    .map_err(io_error("padding a segment"))?;
                size = align_up(size);
            }
            let start = covers.get(&seq).copied().unwrap_or(0);
            let mut walk = Walk::new(seq, start, size);
            while let Some((base, _bytes, found)) = walk
                .next(&*file)
                .await
                .map_err(io_error("scanning a segment"))?
            {
                for l in found {
                    self.replay(vno, seq, base + l.offset, &l.header, now);
                }
            }
            let end = walk.end.take().unwrap_or(ScanEnd::Clean { offset: size });
            if let ScanEnd::Torn {
                offset,
                error: RecordError::Version(found),
            } = &end
            {
                // A whole header (its checksum passed) of another format version: data
                // this engine cannot read, not a torn write. Cutting it would destroy it.
                return Err(StoreError::Io(format!(
                    "segment {seq} holds a record of format version {found} at byte {offset}; \
                     this engine reads version {}: refusing to open the store",
                    crate::store::record::RECORD_VERSION
                )));
            }
            scanned += end.offset().saturating_sub(start);
            let mut kept = size;
            // Without a checkpoint every segment is scanned from 0, and a bad record deep
            // in an old segment may be rot in acknowledged data: report it, cut nothing.
            let torn_tail = checkpoint.is_some() || Some(seq) == last;
            if let (false, ScanEnd::Torn { offset, error }) = (torn_tail, &end) {
                eprintln!(
                    "engine: segment {seq} is damaged at byte {offset} ({error}); records after it are unreachable"
                );
                self.counters.borrow_mut().corrupt_reads += 1;
            } else if end.offset() < size {
                // Past what the checkpoint covers, a tail that is not whole records is
                // writes that were never acknowledged (every acknowledged record has every
                // record before it in its segment durable): torn by the crash. Cut it.
                file.truncate(end.offset())
                    .await
                    .map_err(io_error("truncating a torn tail"))?;
                file.sync()
                    .await
                    .map_err(io_error("syncing a truncated segment"))?;
                self.counters.borrow_mut().truncated_bytes += size - end.offset();
                kept = end.offset();
            }
            let readable = kept.min(end.offset());
            if covers.get(&seq).is_some_and(|&c| c > readable) {
                // The checkpoint covers more than the segment holds: damage from outside
                // the store cut it. Chunks placed past the end cannot be served.
                let lost: Vec<ChunkId> = self
                    .index
                    .borrow()
                    .iter()
                    .filter(|(_, l)| {
                        l.vol == vno && l.seq == seq && l.offset() + l.span() > readable
                    })
                    .map(|(id, _)| id)
                    .collect();
                for id in lost {
                    eprintln!(
                        "engine: chunk {id} lies past the end of segment {seq}; dropped from the index"
                    );
                    self.index.borrow_mut().remove(&id);
                    self.counters.borrow_mut().corrupt_reads += 1;
                }
            }
            let mut st = vol.st.borrow_mut();
            let seg = st.segs.get_mut(&seq).expect("inserted when opened");
            (seg.reserved, seg.written, seg.synced) = (kept, kept, readable);
            st.used += kept;
            st.next_seq = st.next_seq.max(seq.saturating_add(1));
        }
        vol.st.borrow_mut().since_checkpoint = scanned;
        Ok(())
    }

    /// One record found by the recovery scan takes effect.
    fn replay(&self, vno: u8, seq: u32, at: u64, h: &RecordHeader, now: u64) {
        let sector = u32::try_from(at / u64::from(SECTOR_BYTES)).unwrap_or(u32::MAX);
        let mut index = self.index.borrow_mut();
        match h.kind {
            RecordKind::Chunk => {
                let loc = Loc {
                    vol: vno,
                    seq,
                    sector,
                    payload: h.payload_bytes,
                    expiry: expiry32(h.expiry_unix_secs),
                };
                if !loc.expired(now) {
                    let keep = index.get(&h.id).map_or(loc, |old| Loc {
                        expiry: later_expiry(old.expiry, loc.expiry),
                        ..loc
                    });
                    index.insert(h.id, keep);
                }
            }
            RecordKind::Tombstone => {
                let (tseq, tsector) = split_target(h.expiry_unix_secs);
                let hit = index
                    .get(&h.id)
                    .is_some_and(|l| l.vol == vno && l.seq == tseq && l.sector == tsector);
                if hit {
                    index.remove(&h.id);
                }
            }
        }
    }

    /// Sweeps expired chunks, then compacts, one at a time, every sealed segment whose live
    /// fraction is below the threshold. Returns how many segments were compacted.
    async fn compact(&self) -> Result<u64, StoreError> {
        let _one = self
            .compacting
            .acquire_permit(1)
            .await
            .map_err(|e| StoreError::Io(format!("compaction: {e}")))?;
        let now = now_secs();
        let expired: Vec<ChunkId> = self
            .index
            .borrow()
            .iter()
            .filter(|(_, l)| l.expired(now))
            .map(|(id, _)| id)
            .collect();
        for id in expired {
            self.index_remove(&id);
        }
        let mut total = 0;
        for v in 0..self.vols.len() {
            let victims: Vec<u32> = {
                let st = self.vols[v].st.borrow();
                st.segs
                    .iter()
                    .filter(|(&seq, s)| {
                        seq != st.active
                            && s.sealed
                            && s.pending == 0
                            && !self.damaged.borrow().contains(&(v, seq))
                            && (s.live as f64) < self.cfg.compact_below * (s.reserved.max(1) as f64)
                    })
                    .map(|(&seq, _)| seq)
                    .collect()
            };
            for seq in victims {
                // Copy, make the copies the checkpoint's, and only then delete the file:
                // one segment at a time, so a full volume needs room for one segment's
                // live records, not all of them.
                if let Err(e) = self.copy_live(v, seq).await {
                    eprintln!("engine: segment {seq} not compacted: {e}");
                    self.damaged.borrow_mut().insert((v, seq));
                    continue;
                }
                self.checkpoint(v).await?;
                let seg = self.vols[v].st.borrow_mut().segs.remove(&seq);
                if let Some(seg) = seg {
                    {
                        let mut st = self.vols[v].st.borrow_mut();
                        st.used = st.used.saturating_sub(seg.reserved);
                    }
                    drop(seg);
                    self.vols[v]
                        .disk
                        .remove(&seg_name(seq))
                        .await
                        .map_err(io_error("removing a compacted segment"))?;
                    total += 1;
                }
            }
        }
        self.counters.borrow_mut().compacted_segments += total;
        Ok(total)
    }

    /// Copies segment `seq`'s live records (and the tombstones whose target still exists)
    /// into the active segment, through the normal write path.
    async fn copy_live(&self, v: usize, seq: u32) -> Result<(), StoreError> {
        let vno = Self::vol_no(v);
        let (file, size) = {
            let st = self.vols[v].st.borrow();
            let s = st
                .segs
                .get(&seq)
                .ok_or_else(|| StoreError::Io(format!("segment {seq} is gone")))?;
            (s.file.clone(), s.synced)
        };
        let mut walk = Walk::new(seq, 0, size);
        while let Some((base, bytes, found)) = walk
            .next(&*file)
            .await
            .map_err(io_error("reading a segment to compact"))?
        {
            for l in found {
                let h = l.header;
                let sector =
                    u32::try_from((base + l.offset) / u64::from(SECTOR_BYTES)).unwrap_or(u32::MAX);
                let span = usize::try_from(record_span(h.payload_bytes)).expect("fits");
                let from_at = usize::try_from(l.offset).expect("window");
                let copy = |file: &D::File| {
                    let mut buf = file.alloc(span);
                    buf.bytes_mut()
                        .copy_from_slice(&bytes[from_at..from_at + span]);
                    buf
                };
                match h.kind {
                    RecordKind::Chunk => {
                        // Held against a delete of the same id until the copy is applied.
                        let _held = self.lock_id(h.id).await;
                        let current = self.index.borrow().get(&h.id);
                        match current {
                            Some(cur)
                                if cur.vol == vno && cur.seq == seq && cur.sector == sector =>
                            {
                                self.append(v, h, copy(&file), Then::Copy { from: cur })
                                    .await?;
                            }
                            _ => continue,
                        }
                    }
                    RecordKind::Tombstone => {
                        let (target, _) = split_target(h.expiry_unix_secs);
                        if target == seq || !self.vols[v].st.borrow().segs.contains_key(&target) {
                            continue;
                        }
                        self.append(v, h, copy(&file), Then::Keep).await?;
                    }
                }
            }
        }
        if let Some(ScanEnd::Torn { offset, error }) = walk.end {
            return Err(StoreError::Io(format!(
                "segment {seq} is damaged at byte {offset} ({error}); not compacted"
            )));
        }
        Ok(())
    }
}

fn split_target(field: u64) -> (u32, u32) {
    (
        u32::try_from(field >> 32).expect("shifted"),
        u32::try_from(field & u64::from(u32::MAX)).expect("masked"),
    )
}
