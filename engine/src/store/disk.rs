//! Every byte the store reads or writes goes through [`Disk`] and [`DiskFile`]: glommio's
//! O_DIRECT files in production ([`DmaDisk`]), an in-memory twin that tears writes, flips
//! bits, fills up and fails fsync on command in tests ([`MemDisk`]).
//!
//! The traits are async and single-threaded: a shard owns its disks and runs on one
//! glommio executor, so the futures never cross threads and need not be `Send`.
#![allow(async_fn_in_trait)]

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::ops::Deref;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use glommio::io::{DmaBuffer, DmaFile, OpenOptions, ReadResult};
use proto::SECTOR_BYTES;

/// A buffer the store fills and hands to [`DiskFile::write_at`].
pub trait WriteBuf {
    fn bytes_mut(&mut self) -> &mut [u8];
}

impl WriteBuf for DmaBuffer {
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.as_bytes_mut()
    }
}

impl WriteBuf for Vec<u8> {
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

/// One volume's directory: segment files and the index checkpoint.
pub trait Disk: 'static {
    type File: DiskFile;
    /// Creates a new, empty file; fails if it exists.
    async fn create(&self, name: &str) -> io::Result<Self::File>;
    /// Opens an existing file for reading and writing.
    async fn open(&self, name: &str) -> io::Result<Self::File>;
    /// Names of the files in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    async fn remove(&self, name: &str) -> io::Result<()>;
    /// Replaces `name` with `bytes` atomically and durably (temp file, fsync, rename,
    /// directory fsync): after a crash the old or the new contents are there, whole.
    async fn write_atomic(&self, name: &str, bytes: Vec<u8>) -> io::Result<()>;
    /// The whole file, or `None` if it does not exist.
    async fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>>;
    /// Runs once on the shard's executor before anything else.
    async fn prepare(&self) -> io::Result<()> {
        Ok(())
    }
    /// Segments whose opening had to wait for writes a killed process left in flight
    /// ([`DmaDisk`]'s fence); 0 where no other process can have written.
    fn fence_waits(&self) -> u64 {
        0
    }
    /// Lets another process open the directory (the shard is done with it).
    fn close(&self) {}
}

/// A segment file. Offsets and lengths are multiples of [`SECTOR_BYTES`].
pub trait DiskFile: 'static {
    type Buf: WriteBuf;
    type Read: Deref<Target = [u8]>;
    /// A zeroed-or-not buffer of `len` bytes suitable for [`DiskFile::write_at`].
    fn alloc(&self, len: usize) -> Self::Buf;
    /// Writes the whole buffer at `pos`, or fails.
    async fn write_at(&self, buf: Self::Buf, pos: u64) -> io::Result<()>;
    /// Reads up to `len` bytes at `pos`; fewer only at the end of the file.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Self::Read>;
    /// Makes every completed write durable (fdatasync).
    async fn sync(&self) -> io::Result<()>;
    async fn size(&self) -> io::Result<u64>;
    async fn truncate(&self, len: u64) -> io::Result<()>;
    /// Reserves the disk's blocks for the first `len` bytes and makes the file at least
    /// that long (fallocate); what was not written reads as zeros. Writes into reserved
    /// blocks need no block allocation and no size change, which a filesystem otherwise
    /// serializes per file.
    async fn allocate(&self, len: u64) -> io::Result<()>;
    /// Closes the file now (a file only dropped is closed at the runtime's next I/O cycle,
    /// which a stopping shard never reaches).
    async fn close(self) -> io::Result<()>;
}

/// Rounds `v` up to a whole sector.
pub fn align_up(v: u64) -> u64 {
    v.next_multiple_of(u64::from(SECTOR_BYTES))
}

/// Rounds `v` down to a whole sector.
pub fn align_down(v: u64) -> u64 {
    v - v % u64::from(SECTOR_BYTES)
}

/// Name of the file whose lock says a process has the volume open.
pub const LOCK_FILE: &str = "LOCK";

/// A directory on a real disk, through glommio (io_uring, O_DIRECT).
///
/// Two locks keep another process's writes out of a store this one has open, both `flock`s,
/// which the kernel releases when the open file they belong to is released:
/// - `LOCK`, held for as long as the disk exists: a second live process opening the same
///   volume is refused at once instead of corrupting it.
/// - every segment file this process opens or creates, held by that open file. A process
///   killed with O_DIRECT writes submitted through io_uring does not take them back: each
///   request holds a reference to the file until the device completes it, possibly after
///   the process is gone and reaped. The file, and so its lock, is released only then.
///   Opening a segment waits for that lock, so the recovery scan reads a segment only once
///   no write of a dead process can still land in it (and cut a torn tail that a late write
///   would then extend, or miss a late tombstone the next restart would find).
#[derive(Debug)]
pub struct DmaDisk {
    dir: PathBuf,
    /// The directory lock, until [`Disk::close`].
    lock: RefCell<Option<std::fs::File>>,
    fence_waits: Cell<u64>,
}

/// How long opening a segment waits for another open file's lock on it before it gives up
/// naming the segment. The writes of a killed process complete in milliseconds; a lock
/// held longer is not one (a second store on the directory that bypassed `LOCK`).
const FENCE_WAIT_MAX: Duration = Duration::from_secs(60);
const FENCE_POLL: Duration = Duration::from_millis(1);

/// Takes `flock(LOCK_EX | LOCK_NB)` on `fd`; `Ok(false)` when another open file holds it.
fn try_lock(fd: RawFd) -> io::Result<bool> {
    use nix::fcntl::{flock, FlockArg};
    match flock(fd, FlockArg::LockExclusiveNonblock) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(io::Error::from(e)),
    }
}

impl DmaDisk {
    /// Creates the directory if needed and locks it; fails if another process has it open.
    pub fn new(dir: &Path) -> io::Result<DmaDisk> {
        std::fs::create_dir_all(dir)?;
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))?;
        if !try_lock(lock.as_raw_fd())? {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "{} is in use by another process (it holds the lock on {LOCK_FILE}): \
                     stop it before opening the store here",
                    dir.display()
                ),
            ));
        }
        Ok(DmaDisk {
            dir: dir.to_path_buf(),
            lock: RefCell::new(Some(lock)),
            fence_waits: Cell::new(0),
        })
    }

    async fn sync_dir(&self) -> io::Result<()> {
        let dir = glommio::io::Directory::open(&self.dir).await?;
        dir.sync().await?;
        dir.close().await?;
        Ok(())
    }

    /// Locks a segment this process just opened (see [`DmaDisk`]). While the directory
    /// lock is ours, only writes a dead process left in flight hold it: the wait is
    /// bounded by the device completing them, and checked every millisecond (a blocking
    /// `flock` on another thread could not be abandoned safely: it would hold the file
    /// descriptor's number past a timeout).
    async fn fence(&self, name: &str, f: &DmaFile) -> io::Result<()> {
        let fd = f.as_raw_fd();
        if try_lock(fd)? {
            return Ok(());
        }
        self.fence_waits.set(self.fence_waits.get() + 1);
        eprintln!(
            "engine: {}: waiting for writes a stopped process left in flight on {name}",
            self.dir.display()
        );
        let start = Instant::now();
        loop {
            glommio::timer::sleep(FENCE_POLL).await;
            if try_lock(fd)? {
                return Ok(());
            }
            if start.elapsed() > FENCE_WAIT_MAX {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "{}/{name} is still locked by another open file after {} s: \
                         another process is writing to this store",
                        self.dir.display(),
                        FENCE_WAIT_MAX.as_secs()
                    ),
                ));
            }
        }
    }
}

fn io_err(e: glommio::GlommioError<()>) -> io::Error {
    io::Error::from(e)
}

/// A glommio file; closed when dropped.
#[derive(Debug)]
pub struct DmaSegment(DmaFile);

impl Disk for DmaDisk {
    type File = DmaSegment;

    async fn create(&self, name: &str) -> io::Result<DmaSegment> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .dma_open(self.dir.join(name))
            .await
            .map_err(io_err)?;
        // A new file: nobody else has it, the lock is taken at once.
        self.fence(name, &f).await?;
        self.sync_dir().await?;
        Ok(DmaSegment(f))
    }

    async fn open(&self, name: &str) -> io::Result<DmaSegment> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(self.dir.join(name))
            .await
            .map_err(io_err)?;
        self.fence(name, &f).await?;
        Ok(DmaSegment(f))
    }

    fn fence_waits(&self) -> u64 {
        self.fence_waits.get()
    }

    fn close(&self) {
        self.lock.borrow_mut().take();
    }

    /// glommio decides once per device whether reads may use the polled ring, by reading
    /// the first file it opens; an empty file answers "yes" without asking the device (a
    /// zero-length read succeeds), and every later read on a device without polled queues
    /// then fails with EOPNOTSUPP. So the first file a shard opens is one with data.
    async fn prepare(&self) -> io::Result<()> {
        let probe = self.dir.join("iopoll-probe");
        if std::fs::metadata(&probe).map_or(true, |m| m.len() < 4096) {
            std::fs::write(&probe, [0u8; 4096])?;
        }
        let f = DmaFile::open(&probe).await.map_err(io_err)?;
        f.close().await.map_err(io_err)
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        let path = self.dir.join(name);
        glommio::executor()
            .spawn_blocking(move || std::fs::remove_file(path))
            .await?;
        self.sync_dir().await
    }

    async fn write_atomic(&self, name: &str, bytes: Vec<u8>) -> io::Result<()> {
        let (dir, name) = (self.dir.clone(), name.to_string());
        glommio::executor()
            .spawn_blocking(move || write_atomic_std(&dir, &name, &bytes))
            .await
    }

    async fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        let path = self.dir.join(name);
        glommio::executor()
            .spawn_blocking(move || match std::fs::read(path) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            })
            .await
    }
}

fn write_atomic_std(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

impl DiskFile for DmaSegment {
    type Buf = DmaBuffer;
    type Read = ReadResult;

    fn alloc(&self, len: usize) -> DmaBuffer {
        self.0.alloc_dma_buffer(len)
    }

    async fn write_at(&self, buf: DmaBuffer, pos: u64) -> io::Result<()> {
        let len = buf.len();
        let n = self.0.write_at(buf, pos).await.map_err(io_err)?;
        if n != len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {n} of {len} bytes at {pos}"),
            ));
        }
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<ReadResult> {
        self.0.read_at_aligned(pos, len).await.map_err(io_err)
    }

    async fn sync(&self) -> io::Result<()> {
        self.0.fdatasync().await.map_err(io_err)
    }

    async fn size(&self) -> io::Result<u64> {
        self.0.file_size().await.map_err(io_err)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.0.truncate(len).await.map_err(io_err)
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        self.0.pre_allocate(len, false).await.map_err(io_err)
    }

    async fn close(self) -> io::Result<()> {
        self.0.close().await.map_err(io_err)
    }
}

/// The in-memory twin. Writes land in what reads see at once and become durable at the
/// next successful sync of their file; [`MemDisk::crash`] returns the disk as a power cut
/// would leave it: durable bytes, plus each unsynced write kept whole, torn (a random
/// subset of its sectors) or lost. Faults are armed by the test. As on POSIX, a removed
/// file stays readable through handles opened before; creating, removing and renaming are
/// durable at once (the real disk fsyncs the directory after each). Every file operation
/// yields to the executor first, so the store's tasks interleave as they do on a real disk.
#[derive(Clone, Debug, Default)]
pub struct MemDisk {
    inner: Arc<Mutex<MemState>>,
}

#[derive(Debug, Default)]
struct MemState {
    names: BTreeMap<String, u64>,
    inodes: BTreeMap<u64, MemFileState>,
    next_inode: u64,
    /// Syncs that succeed before every later one fails.
    syncs_left: Option<u64>,
    /// Writes that succeed before every later one fails with EIO.
    writes_left: Option<u64>,
    /// Total bytes the disk holds; writes past it fail with ENOSPC.
    capacity: Option<u64>,
    syncs: u64,
    /// Reads served.
    reads: u64,
    /// While its [`SyncHold`] lives, every sync waits.
    sync_gate: Option<flume::Receiver<()>>,
}

/// Holds every sync of a [`MemDisk`] until dropped ([`MemDisk::hold_syncs`]).
#[derive(Debug)]
pub struct SyncHold {
    _open: flume::Sender<()>,
}

#[derive(Debug, Default, Clone)]
struct MemFileState {
    live: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<(u64, usize)>,
    /// Length reserved by `allocate`: the file is at least this long, and what lies past
    /// `live` reads as zeros (kept lazily, so a test's 256 MiB segment costs nothing). It
    /// survives a crash, as fallocate's length does once synced.
    allocated: usize,
}

impl MemFileState {
    /// A file holding `bytes`, all of them durable.
    fn synced(bytes: Vec<u8>) -> MemFileState {
        MemFileState {
            live: bytes.clone(),
            durable: bytes,
            unsynced: Vec::new(),
            allocated: 0,
        }
    }

    fn len(&self) -> usize {
        self.live.len().max(self.allocated)
    }
}

impl MemState {
    fn used(&self) -> u64 {
        self.names
            .values()
            .filter_map(|i| self.inodes.get(i))
            .map(|f| f.len() as u64)
            .sum()
    }

    fn insert(&mut self, name: &str, f: MemFileState) -> u64 {
        self.next_inode += 1;
        let ino = self.next_inode;
        self.inodes.insert(ino, f);
        self.names.insert(name.to_string(), ino);
        ino
    }

    fn named(&self, name: &str) -> Option<&MemFileState> {
        self.names.get(name).and_then(|i| self.inodes.get(i))
    }
}

/// Tiny deterministic generator for the twin's choices (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

impl MemDisk {
    pub fn new() -> MemDisk {
        MemDisk::default()
    }

    fn state(&self) -> MutexGuard<'_, MemState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every sync after the next `n` fails (and leaves its writes unsynced).
    pub fn fail_syncs_after(&self, n: u64) {
        self.state().syncs_left = Some(n);
    }

    /// Every write after the next `n` fails with an I/O error.
    pub fn fail_writes_after(&self, n: u64) {
        self.state().writes_left = Some(n);
    }

    /// The disk holds `bytes` in all; writes beyond fail with ENOSPC.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.state().capacity = bytes;
    }

    /// Every sync from now on waits until the returned hold is dropped: writes go on,
    /// nothing becomes durable, so nothing waiting for durability finishes.
    pub fn hold_syncs(&self) -> SyncHold {
        let (tx, rx) = flume::bounded(1);
        self.state().sync_gate = Some(rx);
        SyncHold { _open: tx }
    }

    /// Clears every armed fault.
    pub fn heal(&self) {
        let mut s = self.state();
        s.syncs_left = None;
        s.writes_left = None;
        s.capacity = None;
    }

    /// Reads served so far.
    pub fn reads(&self) -> u64 {
        self.state().reads
    }

    pub fn syncs(&self) -> u64 {
        self.state().syncs
    }

    pub fn file_names(&self) -> Vec<String> {
        self.state().names.keys().cloned().collect()
    }

    /// Removes a file outright (a test taking the checkpoint away, say).
    pub fn remove_file(&self, name: &str) -> bool {
        self.state().names.remove(name).is_some()
    }

    pub fn file_len(&self, name: &str) -> Option<u64> {
        self.state().named(name).map(|f| f.len() as u64)
    }

    /// A file's bytes as reads see them.
    pub fn file_bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.state().named(name).map(|f| {
            let mut bytes = f.live.clone();
            bytes.resize(f.len(), 0);
            bytes
        })
    }

    /// Puts `bytes` under `name`, durable at once, in place of any file of that name (a
    /// test writing a checkpoint of an older version, say).
    pub fn replace_file(&self, name: &str, bytes: Vec<u8>) {
        self.state().insert(name, MemFileState::synced(bytes));
    }

    /// Flips one bit of a file, in what reads see and in what survives a crash.
    pub fn flip_bit(&self, name: &str, byte: u64, bit: u8) {
        let mut s = self.state();
        let ino = *s.names.get(name).expect("flip_bit: no such file");
        let f = s.inodes.get_mut(&ino).expect("named inode");
        let at = usize::try_from(byte).expect("small");
        f.live[at] ^= 1 << bit;
        if let Some(b) = f.durable.get_mut(at) {
            *b ^= 1 << bit;
        }
    }

    /// The disk after a power cut, with `rng` choosing each unsynced write's fate.
    pub fn crash(&self, rng: &mut Rng) -> MemDisk {
        let s = self.state();
        let mut out = MemState::default();
        for (name, ino) in &s.names {
            let f = &s.inodes[ino];
            let mut bytes = f.durable.clone();
            for &(pos, len) in &f.unsynced {
                let pos = usize::try_from(pos).expect("small");
                let sector = SECTOR_BYTES as usize;
                let fate = rng.below(3);
                for at in (pos..pos + len).step_by(sector) {
                    let keep = match fate {
                        0 => true,
                        1 => rng.below(2) == 0,
                        _ => false,
                    };
                    let end = (at + sector).min(pos + len).min(f.live.len());
                    if !keep || at >= end {
                        continue;
                    }
                    if bytes.len() < end {
                        bytes.resize(end, 0);
                    }
                    bytes[at..end].copy_from_slice(&f.live[at..end]);
                }
            }
            out.insert(
                name,
                MemFileState {
                    allocated: f.allocated,
                    ..MemFileState::synced(bytes)
                },
            );
        }
        MemDisk {
            inner: Arc::new(Mutex::new(out)),
        }
    }
}

/// A file of a [`MemDisk`]: a handle on its inode.
#[derive(Debug)]
pub struct MemFile {
    disk: MemDisk,
    ino: u64,
}

impl MemFile {
    async fn with<T>(&self, f: impl FnOnce(&mut MemState, u64) -> io::Result<T>) -> io::Result<T> {
        futures_lite::future::yield_now().await;
        let mut s = self.disk.state();
        f(&mut s, self.ino)
    }
}

fn inode(s: &mut MemState, ino: u64) -> &mut MemFileState {
    s.inodes
        .get_mut(&ino)
        .expect("inodes outlive their handles")
}

impl Disk for MemDisk {
    type File = MemFile;

    async fn create(&self, name: &str) -> io::Result<MemFile> {
        futures_lite::future::yield_now().await;
        let mut s = self.state();
        if s.names.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                name.to_string(),
            ));
        }
        let ino = s.insert(name, MemFileState::default());
        Ok(MemFile {
            disk: self.clone(),
            ino,
        })
    }

    async fn open(&self, name: &str) -> io::Result<MemFile> {
        let ino = self.state().names.get(name).copied();
        let ino = ino.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))?;
        Ok(MemFile {
            disk: self.clone(),
            ino,
        })
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.file_names())
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        futures_lite::future::yield_now().await;
        self.state()
            .names
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))
    }

    async fn write_atomic(&self, name: &str, bytes: Vec<u8>) -> io::Result<()> {
        futures_lite::future::yield_now().await;
        let mut s = self.state();
        if let Some(cap) = s.capacity {
            let old = s.named(name).map_or(0, |f| f.live.len() as u64);
            if s.used() - old + bytes.len() as u64 > cap {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
        }
        s.insert(name, MemFileState::synced(bytes));
        Ok(())
    }

    async fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(self.state().named(name).map(|f| f.live.clone()))
    }
}

impl DiskFile for MemFile {
    type Buf = Vec<u8>;
    type Read = Vec<u8>;

    fn alloc(&self, len: usize) -> Vec<u8> {
        vec![0; len]
    }

    async fn write_at(&self, buf: Vec<u8>, pos: u64) -> io::Result<()> {
        self.with(|s, ino| {
            if let Some(left) = s.writes_left.as_mut() {
                if *left == 0 {
                    return Err(io::Error::other("injected write failure"));
                }
                *left -= 1;
            }
            let end = usize::try_from(pos).expect("small") + buf.len();
            let grow = (end as u64).saturating_sub(inode(s, ino).len() as u64);
            if let Some(cap) = s.capacity {
                if s.used() + grow > cap {
                    return Err(io::Error::from_raw_os_error(28)); // ENOSPC
                }
            }
            let f = inode(s, ino);
            if f.live.len() < end {
                f.live.resize(end, 0);
            }
            f.live[end - buf.len()..end].copy_from_slice(&buf);
            f.unsynced.push((pos, buf.len()));
            Ok(())
        })
        .await
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        self.with(|s, ino| {
            s.reads += 1;
            let f = inode(s, ino);
            let start = usize::try_from(pos).expect("small").min(f.len());
            let end = (start + len).min(f.len());
            let mut out = f.live[start.min(f.live.len())..end.min(f.live.len())].to_vec();
            out.resize(end - start, 0);
            Ok(out)
        })
        .await
    }

    async fn sync(&self) -> io::Result<()> {
        let gate = self.disk.state().sync_gate.clone();
        if let Some(gate) = gate {
            // Nothing is ever sent: this returns when the hold is dropped.
            let _ = gate.recv_async().await;
        }
        self.with(|s, ino| {
            s.syncs += 1;
            if let Some(left) = s.syncs_left.as_mut() {
                if *left == 0 {
                    return Err(io::Error::other("injected fsync failure"));
                }
                *left -= 1;
            }
            let f = inode(s, ino);
            f.durable.resize(f.live.len(), 0);
            for (pos, len) in std::mem::take(&mut f.unsynced) {
                let at = usize::try_from(pos).expect("small");
                let end = (at + len).min(f.live.len());
                if at < end {
                    f.durable[at..end].copy_from_slice(&f.live[at..end]);
                }
            }
            Ok(())
        })
        .await
    }

    async fn size(&self) -> io::Result<u64> {
        self.with(|s, ino| Ok(inode(s, ino).len() as u64)).await
    }

    /// The new size reaches what survives a crash only at the next sync, as a real
    /// file's does: a crash before it keeps the old length.
    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.with(|s, ino| {
            let f = inode(s, ino);
            let len = usize::try_from(len).expect("small");
            f.live.resize(len, 0);
            f.allocated = f.allocated.min(len);
            f.unsynced
                .retain(|&(p, _)| usize::try_from(p).is_ok_and(|p| p < len));
            Ok(())
        })
        .await
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        self.with(|s, ino| {
            let grow = len.saturating_sub(inode(s, ino).len() as u64);
            if let Some(cap) = s.capacity {
                if s.used() + grow > cap {
                    return Err(io::Error::from_raw_os_error(28)); // ENOSPC
                }
            }
            let f = inode(s, ino);
            f.allocated = f.allocated.max(usize::try_from(len).expect("small"));
            Ok(())
        })
        .await
    }

    async fn close(self) -> io::Result<()> {
        Ok(())
    }
}
