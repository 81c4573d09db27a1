//! The chunk buffers the sealing pipeline lends its threads: aligned to a sector, so a
//! file's bytes can be read into them with O_DIRECT (no page-cache copy), and initialized
//! once, when allocated, so that reading into the spare room needs neither zeroing nor
//! `unsafe`.
//!
//! Invariant: every byte of `bytes` is initialized and `len <= bytes.len()`; the buffer's
//! capacity is `bytes.len()`, a multiple of [`ALIGN`].

use std::io::{self, Read};
use std::ops::{Deref, DerefMut};

use aligned_vec::{AVec, ConstAlign};

/// The alignment of a buffer's start and of its capacity: a sector, what O_DIRECT needs
/// (design.md section 4: 4 KiB sectors).
pub const ALIGN: usize = 4096;

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
