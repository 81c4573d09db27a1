//! The store's handle: its configuration, errors and figures, and `Engine`, which starts
//! the shards and sends them requests.

use super::*;

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
    /// Bytes of chunk outboards each shard keeps in memory (least recently used out
    /// first): a storage challenge of a chunk whose outboard is kept reads only the leaf's
    /// group, one device read instead of two. In record layout 2 an outboard is 1.56% of
    /// its chunk (64 bytes per 4 KiB group): every outboard of 1 TB of chunks takes about
    /// 16 GB; the default, 64 MiB, holds those of about 4 GiB of chunks per shard. 0 keeps
    /// none.
    pub outboard_cache_bytes: u64,
    /// The layout new records are written in ([`Layout::V2`] unless a benchmark compares
    /// against the old one); records already stored are read in their own.
    pub record_layout: Layout,
    /// Reserve each new segment's blocks when it is created (fallocate), so appends need
    /// no block allocation; off only to measure what it saves.
    pub preallocate: bool,
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
            outboard_cache_bytes: 64 << 20,
            record_layout: Layout::default(),
            preallocate: true,
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
    /// Index entries the last restart took from index checkpoints (the rest came from
    /// scanning segments).
    pub checkpoint_entries: u64,
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

pub(super) type Reply<T> = flume::Sender<Result<T, StoreError>>;

pub(super) enum Request {
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
            total.checkpoint_entries += s.checkpoint_entries;
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

/// What one shard is working on now, kept by the shard and read by [`Engine::load`] from
/// any thread without asking the shard.
#[derive(Debug, Default)]
pub(super) struct ShardLoad {
    pub(super) in_flight: AtomicU64,
    pub(super) put_bytes: AtomicU64,
    /// Waiting for a request in flight to finish before taking the next.
    pub(super) full: AtomicBool,
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
