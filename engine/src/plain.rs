//! Plaintext read by position, so that several reader threads read a seal's chunks at
//! once instead of one feeder: a file, or bytes in memory.
//!
//! A file's chunk comes from the page cache when its first page is there (a one-byte
//! `preadv2` with `RWF_NOWAIT` asks, without waiting for the disk: a file just written is
//! copied from memory) and otherwise straight from the disk into the reader thread's
//! aligned buffer with O_DIRECT, in parallel parts: no copy through the page cache, which costs a
//! core at 3 GB/s (docs/BENCHMARKS.md, "sealing from a cold file"), and no cache filled
//! with a file read once. A filesystem that refuses O_DIRECT (tmpfs) is read through the
//! page cache as before.

use std::fs::File;
use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};
use rustix::io::{Errno, ReadWriteFlags};

use crate::buf::{align_up, ChunkBuf, ALIGN};

/// The largest direct read asked of the disk at once: a chunk is read in pieces of this
/// size. On this project's VMs a request of 4 MiB or more reads at half the rate of 1 or
/// 2 MiB ones (fio, docs/BENCHMARKS.md "Sealing from a cold file with O_DIRECT").
pub const DIRECT_PIECE: usize = 1 << 20;

/// Parts of one chunk read at once with O_DIRECT, each on its own (scoped) thread: with
/// twice as many readers as workers, up to 16 reads of [`DIRECT_PIECE`] in flight on 2
/// cores (a direct read has no readahead; the reads in flight are what keeps the disk busy).
pub const DIRECT_PARALLEL: usize = 4;

/// A plaintext that can be read at any offset, from several threads at once.
pub trait ReadAt: Send + Sync + 'static {
    /// Appends to `buf` (empty, with room for `len` rounded up to a sector) the bytes at
    /// `offset .. offset + len`: fewer only where the source ends. `offset` is a multiple of
    /// a sector.
    fn read_at(&self, offset: u64, len: usize, buf: &mut ChunkBuf) -> io::Result<()>;

    /// The source's size now: a file that changes while it is sealed is refused.
    fn size(&self) -> io::Result<u64>;
}

impl ReadAt for Arc<[u8]> {
    fn read_at(&self, offset: u64, len: usize, buf: &mut ChunkBuf) -> io::Result<()> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let end = start.saturating_add(len).min(self.len());
        buf.extend_from_slice(&self[start..end]);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

/// Where a [`PlainFile`]'s bytes came from, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Read through the page cache because the chunk's first page was there.
    pub cached: u64,
    /// Read from the disk into the buffer with O_DIRECT.
    pub direct: u64,
    /// Read through the page cache from the disk (no O_DIRECT on this filesystem).
    pub buffered: u64,
}

/// A regular file to seal (see the module's documentation).
#[derive(Debug)]
pub struct PlainFile {
    file: File,
    /// The same file opened with O_DIRECT, where the filesystem takes it.
    direct: Option<File>,
    /// Set when an O_DIRECT read was refused (a device whose sector is larger than
    /// [`ALIGN`]): later reads go through the page cache.
    direct_refused: AtomicBool,
    cached: AtomicU64,
    direct_bytes: AtomicU64,
    buffered: AtomicU64,
}

impl PlainFile {
    /// Reads `file` by position; opens it a second time with O_DIRECT (through
    /// `/proc/self/fd`, so the very file, even if it was renamed) where the filesystem
    /// allows it.
    pub fn new(file: File) -> PlainFile {
        let direct = Self::open_direct(&file);
        if direct.is_some() {
            // Its page cache is only probed (and read where a chunk's first page is there):
            // no readahead, which a probe that misses would otherwise start.
            let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Random);
        }
        PlainFile {
            direct,
            ..PlainFile::buffered(file)
        }
    }

    /// Without O_DIRECT: every byte through the page cache, as a plain read would.
    pub fn buffered(file: File) -> PlainFile {
        PlainFile {
            file,
            direct: None,
            direct_refused: AtomicBool::new(false),
            cached: AtomicU64::new(0),
            direct_bytes: AtomicU64::new(0),
            buffered: AtomicU64::new(0),
        }
    }

    fn open_direct(file: &File) -> Option<File> {
        let path = format!("/proc/self/fd/{}", file.as_raw_fd());
        let fd = rustix::fs::open(
            path.as_str(),
            OFlags::RDONLY | OFlags::DIRECT | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let direct = File::from(fd);
        // The same inode, or not at all (a /proc that names something else).
        let (a, b) = (file.metadata().ok()?, direct.metadata().ok()?);
        (a.dev() == b.dev() && a.ino() == b.ino()).then_some(direct)
    }

    /// Whether reads that miss the page cache go straight to the buffer.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some() && !self.direct_refused.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> ReadStats {
        ReadStats {
            cached: self.cached.load(Ordering::Relaxed),
            direct: self.direct_bytes.load(Ordering::Relaxed),
            buffered: self.buffered.load(Ordering::Relaxed),
        }
    }

    /// Bytes at `at` that are in the page cache now, without waiting for the disk; 0 when
    /// none are (or at the end of the file). A miss still starts a read into the cache:
    /// the buffered descriptor is advised random access, so it is the one page asked
    /// (`into` is one byte), not a readahead window that would compete with the direct
    /// reads for the disk.
    fn cached_at(&self, at: u64, into: &mut [u8]) -> usize {
        loop {
            match rustix::io::preadv2(
                &self.file,
                &mut [IoSliceMut::new(into)],
                at,
                ReadWriteFlags::NOWAIT,
            ) {
                Ok(n) => return n,
                Err(Errno::INTR) => {}
                // EAGAIN: not cached; anything else (a kernel without RWF_NOWAIT): the
                // reads below say what is wrong, if anything is.
                Err(_) => return 0,
            }
        }
    }

    /// Reads at `at` (a multiple of a sector) into `into` (a whole number of sectors, at an
    /// aligned address) from the disk: with O_DIRECT where it is taken, in up to
    /// [`DIRECT_PARALLEL`] parts at once (a direct read has no readahead: what keeps the
    /// disk busy is the reads in flight). Returns the bytes read, short only at the end.
    fn disk_at(&self, at: u64, into: &mut [u8]) -> io::Result<usize> {
        if let Some(direct) = self.direct.as_ref().filter(|_| self.is_direct()) {
            let pieces = into.len().div_ceil(DIRECT_PIECE);
            let part = pieces.div_ceil(DIRECT_PARALLEL).max(1) * DIRECT_PIECE;
            let results: Vec<io::Result<Option<usize>>> = if pieces <= 1 {
                vec![self.direct_part(direct, at, into)]
            } else {
                std::thread::scope(|s| {
                    let reads: Vec<_> = (0u64..)
                        .zip(into.chunks_mut(part))
                        .map(|(i, piece)| {
                            s.spawn(move || self.direct_part(direct, at + i * part as u64, piece))
                        })
                        .collect();
                    reads
                        .into_iter()
                        .map(|r| r.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                        .collect()
                })
            };
            // The bytes up to the first part that came short (the file's end); a part
            // refused sends the whole range through the page cache below.
            let mut got = Some(0);
            for (i, r) in results.into_iter().enumerate() {
                let Some(n) = r? else {
                    got = None;
                    break;
                };
                got = got.map(|g| g + n);
                if n < part.min(into.len() - i * part) {
                    break;
                }
            }
            if let Some(got) = got {
                self.direct_bytes.fetch_add(got as u64, Ordering::Relaxed);
                return Ok(got);
            }
        }
        let got = self.buffered_at(at, into)?;
        self.buffered.fetch_add(got as u64, Ordering::Relaxed);
        Ok(got)
    }

    /// Reads at `at` through the page cache: the bytes read, short only at the end.
    fn buffered_at(&self, at: u64, into: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        while got < into.len() {
            match self.file.read_at(&mut into[got..], at + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    /// One part of [`PlainFile::disk_at`], in reads of at most [`DIRECT_PIECE`]: the bytes
    /// read, short only at the end; `None` when the kernel refused a direct read (EINVAL:
    /// a device or filesystem that needs more than [`ALIGN`] of alignment, which the last
    /// chunk's tail may be the first to show), and the file is then read through the page
    /// cache from there on.
    fn direct_part(&self, direct: &File, at: u64, into: &mut [u8]) -> io::Result<Option<usize>> {
        let mut got = 0;
        while got < into.len() {
            let end = (got + DIRECT_PIECE).min(into.len());
            match direct.read_at(&mut into[got..end], at + got as u64) {
                Ok(0) => break,
                Ok(n) => {
                    got += n;
                    if !n.is_multiple_of(ALIGN) {
                        // Only the file's end stops a direct read inside a sector.
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(Errno::INVAL.raw_os_error()) => {
                    self.direct_refused.store(true, Ordering::Relaxed);
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Some(got))
    }
}

impl ReadAt for PlainFile {
    fn read_at(&self, offset: u64, len: usize, buf: &mut ChunkBuf) -> io::Result<()> {
        assert!(
            buf.is_empty() && offset.is_multiple_of(ALIGN as u64),
            "a chunk is read whole, from a sector's start, into an empty buffer"
        );
        let end = align_up(len);
        buf.reserve(end);
        let spare = buf.spare_mut();
        let direct = self.is_direct();
        let got = if len == 0 {
            0
        } else if direct && self.cached_at(offset, &mut spare[..1]) == 0 {
            // Not in the page cache: from the disk, straight into the buffer, to the end of
            // the chunk's last sector (more only if the file grew; the caller checks).
            self.disk_at(offset, &mut spare[..end])?.min(len)
        } else {
            // In the page cache (a file just written), or no O_DIRECT here.
            let n = self.buffered_at(offset, &mut spare[..len])?;
            let counter = if direct { &self.cached } else { &self.buffered };
            counter.fetch_add(n as u64, Ordering::Relaxed);
            n
        };
        buf.advance(got);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pattern(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect()
    }

    fn read_all(f: &PlainFile, size: usize, chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = ChunkBuf::with_capacity(chunk);
        for at in (0..size).step_by(chunk) {
            buf.clear();
            f.read_at(at as u64, chunk, &mut buf).unwrap();
            assert_eq!(buf.len(), chunk.min(size - at), "chunk at {at}");
            out.extend_from_slice(&buf);
        }
        out
    }

    /// Every way a chunk can be read gives the file's bytes: cold (from the disk), hot
    /// (from the page cache), half of each, and a last chunk that ends inside a sector.
    /// Run where the test's temporary directory is (O_DIRECT on a disk, buffered on tmpfs).
    #[test]
    fn reads_the_files_bytes_from_the_cache_the_disk_or_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain");
        let size = 5 * 65536 + 1000;
        let bytes = pattern(size, 7);
        let mut w = File::create(&path).unwrap();
        w.write_all(&bytes).unwrap();
        w.sync_all().unwrap();
        drop(w);

        // Hot: just written, in the page cache.
        let f = PlainFile::new(File::open(&path).unwrap());
        assert_eq!(read_all(&f, size, 65536), bytes);
        // A chunk asked past the end is short, and one at the end is empty.
        let mut buf = ChunkBuf::with_capacity(65536);
        f.read_at(5 * 65536, 65536, &mut buf).unwrap();
        assert_eq!(&buf[..], &bytes[5 * 65536..]);
        buf.clear();
        f.read_at(6 * 65536, 65536, &mut buf).unwrap();
        assert!(buf.is_empty());
        assert_eq!(f.size().unwrap(), size as u64);

        // Cold where the filesystem lets us drop its pages; then half hot, half cold.
        let drop_cache = |f: &File| {
            rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        };
        // tmpfs keeps its pages whatever we advise (and may take O_DIRECT): there every read
        // is a cached one, so only the bytes are checked.
        let droppable = rustix::fs::fstatfs(File::open(&path).unwrap())
            .map(|fs| fs.f_type != 0x0102_1994)
            .unwrap_or(true);
        let f = PlainFile::new(File::open(&path).unwrap());
        drop_cache(&f.file);
        assert_eq!(read_all(&f, size, 65536), bytes);
        let cold = f.stats();
        // The kernel may keep a page it was advised to drop (one in another core's LRU
        // batch, say): most bytes, not all, must come from the disk.
        if f.is_direct() && droppable {
            assert!(cold.direct >= size as u64 / 2, "{cold:?}");
            assert_eq!(
                (cold.direct + cold.cached, cold.buffered),
                (size as u64, 0),
                "{cold:?}"
            );
        } else if !f.is_direct() {
            assert_eq!((cold.direct, cold.cached), (0, 0), "{cold:?}");
        }
        drop_cache(&f.file);
        let mut hot = vec![0; 100_000];
        f.file.read_exact_at(&mut hot, 30_000).unwrap();
        assert_eq!(read_all(&f, size, 65536), bytes);
        if f.is_direct() && droppable {
            // The chunk whose first page the hot read brought in (the one at 64 KiB) comes
            // through the cache, the others from the disk.
            let warm = f.stats();
            assert!(warm.cached - cold.cached >= 65536, "{warm:?}");
            assert!(warm.direct > cold.direct, "{warm:?}");
            assert_eq!(warm.direct + warm.cached, 2 * size as u64, "{warm:?}");
        }

        // A chunk of several pieces, read in parallel parts, the last one ending inside a
        // sector: cold, then with its middle cached.
        let big = dir.path().join("big");
        let big_size = 3 * DIRECT_PIECE + 5000;
        let big_bytes = pattern(big_size, 11);
        std::fs::write(&big, &big_bytes).unwrap();
        File::open(&big).unwrap().sync_all().unwrap();
        let f = PlainFile::new(File::open(&big).unwrap());
        drop_cache(&f.file);
        assert_eq!(read_all(&f, big_size, 4 * DIRECT_PIECE), big_bytes);
        if f.is_direct() && droppable {
            let big_stats = f.stats();
            assert!(big_stats.direct >= big_size as u64 / 2, "{big_stats:?}");
            assert_eq!(
                big_stats.direct + big_stats.cached,
                big_size as u64,
                "{big_stats:?}"
            );
        }
        drop_cache(&f.file);
        f.file
            .read_exact_at(&mut hot, DIRECT_PIECE as u64 + 7)
            .unwrap();
        assert_eq!(read_all(&f, big_size, 4 * DIRECT_PIECE), big_bytes);
        assert_eq!(read_all(&f, big_size, 2 * DIRECT_PIECE), big_bytes);

        // Without O_DIRECT: the same bytes, all through the page cache.
        let f = PlainFile::buffered(File::open(&path).unwrap());
        drop_cache(&f.file);
        assert_eq!(read_all(&f, size, 65536), bytes);
        assert_eq!(f.stats().direct, 0);
    }

    #[test]
    fn memory_reads_like_a_file() {
        let bytes: Arc<[u8]> = pattern(10_000, 3).into();
        let mut buf = ChunkBuf::with_capacity(8192);
        bytes.read_at(8192, 8192, &mut buf).unwrap();
        assert_eq!(&buf[..], &bytes[8192..]);
        buf.clear();
        bytes.read_at(16384, 8192, &mut buf).unwrap();
        assert!(buf.is_empty());
        assert_eq!(bytes.size().unwrap(), 10_000);
    }
}
