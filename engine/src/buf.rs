//! The chunk buffers the sealing pipeline lends its threads: aligned to a sector, so a
//! file's bytes can be read into them with O_DIRECT (no page-cache copy), and initialized
//! once, when allocated, so that reading into the spare room needs neither zeroing nor
//! `unsafe`.
//!
//! A pipeline's buffers outlive it: given back ([`ChunkBuf::recycle`]), up to
//! [`SPARE_BYTES_MAX`] of them wait for the next pipeline of the same capacity
//! ([`ChunkBuf::take`]). A fresh buffer costs the kernel's zeroing of its pages on their
//! first touch and ours: for a gateway sealing one 64 MiB part after another, as much CPU
//! as sealing the part.
//!
//! Invariant: every byte of `bytes` is initialized and `len <= bytes.len()`; the buffer's
//! capacity is `bytes.len()`, a multiple of [`ALIGN`].

use std::io::{self, Read};
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use aligned_vec::{AVec, ConstAlign};

/// The alignment of a buffer's start and of its capacity: a sector, what O_DIRECT needs
/// (design.md section 4: 4 KiB sectors).
pub const ALIGN: usize = 4096;

/// The most bytes of buffers kept for reuse, in the whole process.
pub const SPARE_BYTES_MAX: usize = 256 << 20;

/// Buffers given back, for the next [`ChunkBuf::take`] of their capacity.
static SPARE: Mutex<Vec<ChunkBuf>> = Mutex::new(Vec::new());

/// Frees the oldest of `spare` (the first) until they hold at most `max` bytes: a
/// capacity no pipeline asked for lately is likely to stay unasked (a small file's buffers
/// are its size).
fn trim(spare: &mut Vec<ChunkBuf>, max: usize) {
    let mut held: usize = spare.iter().map(ChunkBuf::capacity).sum();
    let mut first = 0;
    while held > max && first < spare.len() {
        held -= spare[first].capacity();
        first += 1;
    }
    spare.drain(..first);
}

/// How many spare buffers of `capacity` bytes wait to be taken.
#[cfg(test)]
pub(crate) fn spare_count(capacity: usize) -> usize {
    let spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
    spare.iter().filter(|b| b.capacity() == capacity).count()
}

/// Rounds `n` up to a multiple of [`ALIGN`].
pub fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// A byte buffer whose start is aligned to [`ALIGN`], with Vec's growing operations.
#[derive(Debug)]
pub struct ChunkBuf {
    bytes: AVec<u8, ConstAlign<ALIGN>>,
    len: usize,
}

impl ChunkBuf {
    /// An empty buffer with room for at least `capacity` bytes (rounded up to [`ALIGN`]).
    pub fn with_capacity(capacity: usize) -> ChunkBuf {
        let mut bytes = AVec::new(ALIGN);
        bytes.resize(align_up(capacity), 0);
        ChunkBuf { bytes, len: 0 }
    }

    /// An empty buffer of `capacity` bytes (rounded up to [`ALIGN`]): one given back
    /// earlier if one of that capacity is spare, else a new one.
    pub fn take(capacity: usize) -> ChunkBuf {
        let capacity = align_up(capacity);
        let reused = {
            let mut spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
            let at = spare.iter().position(|b| b.capacity() == capacity);
            // `remove`, not `swap_remove`: the others keep their order, oldest first.
            at.map(|i| spare.remove(i))
        };
        match reused {
            Some(mut b) => {
                b.clear();
                b
            }
            None => ChunkBuf::with_capacity(capacity),
        }
    }

    /// Gives the buffer back for a later [`ChunkBuf::take`], freeing the oldest spare ones
    /// beyond [`SPARE_BYTES_MAX`] (or this one, if it alone is larger). Its bytes stay as
    /// they are until reused.
    pub fn recycle(self) {
        let mut spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
        spare.push(self);
        trim(&mut spare, SPARE_BYTES_MAX);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.bytes.len()
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Makes room for `additional` more bytes than the buffer holds (in whole sectors).
    pub fn reserve(&mut self, additional: usize) {
        let want = self.len.saturating_add(additional);
        if want > self.bytes.len() {
            self.bytes.resize(align_up(want), 0);
        }
    }

    /// The room after the bytes held, starting at `len()`: where a read puts more.
    pub fn spare_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.len..]
    }

    /// Counts `n` bytes written into [`ChunkBuf::spare_mut`] as held.
    ///
    /// # Panics
    /// If `n` is more than the spare room.
    pub fn advance(&mut self, n: usize) {
        assert!(
            n <= self.bytes.len() - self.len,
            "advanced {n} bytes past a buffer's spare room of {}",
            self.bytes.len() - self.len
        );
        self.len += n;
    }

    pub fn extend_from_slice(&mut self, more: &[u8]) {
        self.reserve(more.len());
        self.bytes[self.len..self.len + more.len()].copy_from_slice(more);
        self.len += more.len();
    }

    /// Appends what `reader` yields, up to `max` bytes or its end, retrying interrupted
    /// reads; returns the bytes appended.
    pub fn read_from(&mut self, reader: &mut impl Read, max: usize) -> io::Result<usize> {
        self.reserve(max);
        let mut got = 0;
        while got < max {
            let end = self.len + (max - got);
            match reader.read(&mut self.bytes[self.len..end]) {
                Ok(0) => break,
                Ok(n) => {
                    self.len += n;
                    got += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }
}

impl Deref for ChunkBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl DerefMut for ChunkBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[..self.len]
    }
}

/// What the chunk codec needs of a buffer it seals or opens in place: a `Vec<u8>` or a
/// [`ChunkBuf`].
pub trait InPlace: Deref<Target = [u8]> + DerefMut {
    fn extend_from_slice(&mut self, more: &[u8]);
    fn truncate(&mut self, len: usize);
}

impl InPlace for Vec<u8> {
    fn extend_from_slice(&mut self, more: &[u8]) {
        Vec::extend_from_slice(self, more);
    }
    fn truncate(&mut self, len: usize) {
        Vec::truncate(self, len);
    }
}

impl InPlace for ChunkBuf {
    fn extend_from_slice(&mut self, more: &[u8]) {
        ChunkBuf::extend_from_slice(self, more);
    }
    fn truncate(&mut self, len: usize) {
        ChunkBuf::truncate(self, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_taken_again_empty_and_the_spare_ones_are_bounded() {
        // A capacity no other test uses, so the tests running beside this one take none.
        let capacity = 37 * ALIGN;
        let mut a = ChunkBuf::take(capacity - 5);
        assert_eq!(a.capacity(), capacity);
        a.extend_from_slice(b"held");
        let at = a.as_ptr();
        a.recycle();
        let b = ChunkBuf::take(capacity);
        assert_eq!((b.as_ptr(), b.len(), b.capacity()), (at, 0, capacity));
        // Another of the same capacity while that one is out is a new buffer.
        let c = ChunkBuf::take(capacity);
        assert_ne!(c.as_ptr(), at);
    }

    #[test]
    fn the_oldest_spare_buffers_go_first() {
        let sizes = |v: &Vec<ChunkBuf>| v.iter().map(|b| b.capacity() / ALIGN).collect::<Vec<_>>();
        let mut spare: Vec<ChunkBuf> = [1, 2, 3].map(|n| ChunkBuf::with_capacity(n * ALIGN)).into();
        trim(&mut spare, 6 * ALIGN);
        assert_eq!(sizes(&spare), [1, 2, 3]);
        spare.push(ChunkBuf::with_capacity(2 * ALIGN));
        trim(&mut spare, 6 * ALIGN);
        assert_eq!(sizes(&spare), [3, 2]);
        // One larger than the bound alone is not kept either.
        spare.push(ChunkBuf::with_capacity(7 * ALIGN));
        trim(&mut spare, 6 * ALIGN);
        assert!(spare.is_empty());
    }

    #[test]
    fn is_aligned_and_grows_like_a_vec() {
        let mut b = ChunkBuf::with_capacity(5000);
        assert_eq!(b.capacity(), 8192);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        assert!(b.is_empty());
        b.extend_from_slice(&[7; 6000]);
        b.extend_from_slice(&[8; 3000]);
        assert_eq!(b.len(), 9000);
        assert_eq!(b.capacity(), 12288);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        assert!(b[..6000].iter().all(|&x| x == 7) && b[6000..].iter().all(|&x| x == 8));
        b.truncate(10);
        assert_eq!(&b[..], &[7; 10]);
        b.truncate(20);
        assert_eq!(b.len(), 10, "truncating longer is no change");
        b.clear();
        assert!(b.is_empty());
        // Bytes once written stay initialized: the spare room is readable, not zeroed again.
        assert_eq!(b.spare_mut()[..3], [7, 7, 7]);
        b.spare_mut()[..4].copy_from_slice(b"abcd");
        b.advance(4);
        assert_eq!(&b[..], b"abcd");
    }

    #[test]
    #[should_panic(expected = "past a buffer's spare room")]
    fn advancing_past_the_room_panics() {
        let mut b = ChunkBuf::with_capacity(ALIGN);
        b.advance(ALIGN + 1);
    }

    #[test]
    fn reads_up_to_a_limit_or_the_end() {
        let src = (0..10_000u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect::<Vec<_>>();
        let mut b = ChunkBuf::with_capacity(4096);
        assert_eq!(b.read_from(&mut &src[..], 5000).unwrap(), 5000);
        assert_eq!(b.read_from(&mut &src[5000..], 9000).unwrap(), 5000);
        assert_eq!(&b[..], &src[..]);
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk gone"))
            }
        }
        assert_eq!(
            b.read_from(&mut Failing, 1).unwrap_err().to_string(),
            "disk gone"
        );
    }
}
