//! The sealing pipeline as a library: a bounded stream of sealed chunks out of any reader,
//! and the reverse, a stream of verified plaintext out of any chunk source.
//!
//! Both run on [`crate::pipeline`]: the reader (or the fetches) on their own threads,
//! encryption and checksums on `workers` threads, results handed back in order. At most
//! [`buffers_for`]`(workers)` chunk buffers exist at once, whatever the file size.

use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::sync::Arc;

use proto::{
    check_chunk_bytes, ChunkEntry, ChunkId, FileId, FileKey, KdfParams, Manifest,
    CHUNKS_PER_FILE_MAX, TAG_BYTES,
};

use crate::buf::ChunkBuf;
use crate::codec::{
    checksums, derive_file_key, derive_master_key, verify_and_open, FileCipher, ManifestBuilder,
};
use crate::error::CodecError;
use crate::pipeline::{self, Ordered, PooledBuf};
use crate::plain::{PlainFile, ReadAt};

/// Buffers a pipeline of `workers` workers uses, at most: enough for one per worker at
/// work, one per worker queued for the consumer, one being filled and one held by the
/// consumer. Readers beyond that wait for a buffer to come back.
pub fn buffers_for(workers: usize) -> usize {
    2 * workers + 2
}

/// The documented bound on chunk memory of a seal or open: buffers times their capacity
/// (a chunk and its tag, rounded up to whole 4 KiB sectors).
pub fn pipeline_bytes(workers: usize, chunk_bytes: u32) -> u64 {
    buffers_for(workers) as u64 * crate::buf::align_up((chunk_bytes + TAG_BYTES) as usize) as u64
}

/// Reader threads of a seal by position: twice the workers, so that while the workers
/// seal, reads wait on the disk (a reader in a read takes no CPU). The pool's buffers
/// still bound them: readers beyond it wait for one.
pub fn readers_for(workers: usize) -> usize {
    2 * workers
}

/// Workers to use when the caller does not say: one per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// One sealed chunk, in order. Its buffer returns to the pipeline when it is dropped.
#[derive(Debug)]
pub struct SealedChunk {
    pub index: u64,
    pub entry: ChunkEntry,
    bytes: PooledBuf,
}

impl SealedChunk {
    /// Sealed bytes: ciphertext then the 16-byte tag.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn plain_bytes(&self) -> u32 {
        self.entry.sealed_bytes - TAG_BYTES
    }
}

/// Sealed chunks of a reader, in order; ends after the last chunk or the first error.
/// Drop each chunk once it is written or sent: at most [`buffers_for`]`(workers)` exist, and
/// the stream waits for one to come back before it reads further.
#[derive(Debug)]
pub struct SealStream {
    chunks: Ordered<(ChunkId, u32), CodecError>,
    cipher: Arc<FileCipher>,
    /// The index of the stream's first chunk in its file (see [`seal_at`]).
    first: u64,
}

impl SealStream {
    /// The cipher the chunks are sealed with, to seal the manifest once they are all out.
    pub fn cipher(&self) -> &FileCipher {
        &self.cipher
    }
}

impl Iterator for SealStream {
    type Item = Result<SealedChunk, CodecError>;
    fn next(&mut self) -> Option<Self::Item> {
        let (index, result) = self.chunks.next()?;
        let index = self.first + index;
        Some(result.map(|((id, crc32c), bytes)| {
            let sealed_bytes =
                u32::try_from(bytes.len()).expect("a chunk is at most CHUNK_BYTES_MAX + TAG_BYTES");
            SealedChunk {
                index,
                entry: ChunkEntry {
                    id,
                    sealed_bytes,
                    crc32c,
                },
                bytes,
            }
        }))
    }
}

/// What a file's key comes from besides the passphrase: the salt and cost of the
/// passphrase's KDF, and the file's id. Stored in the manifest envelope's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileKeys {
    pub kdf: KdfParams,
    pub salt: [u8; 16],
    pub file_id: FileId,
}

impl FileKeys {
    /// A fresh salt and file id, for a new seal.
    pub fn fresh(kdf: KdfParams) -> Result<FileKeys, CodecError> {
        let rng = ring::rand::SystemRandom::new();
        let mut salt = [0u8; 16];
        let mut id = [0u8; 16];
        for buf in [&mut salt, &mut id] {
            ring::rand::SecureRandom::fill(&rng, buf).map_err(|_| {
                CodecError::Invalid("the system random number generator failed".into())
            })?;
        }
        Ok(FileKeys {
            kdf,
            salt,
            file_id: FileId(id),
        })
    }

    /// The file's key from the passphrase (Argon2id, slow by design: derive it once).
    pub fn file_key(&self, passphrase: &[u8]) -> Result<FileKey, CodecError> {
        let master = derive_master_key(passphrase, &self.salt, self.kdf)?;
        Ok(derive_file_key(&master, &self.file_id))
    }
}

/// A file sealed from its key to its manifest envelope: iterate for the sealed chunks, in
/// order (drop each once it is written or sent, as with [`SealStream`]), then
/// [`FileSeal::finish`] checks the file did not change and builds the manifest and its
/// envelope. Every path that seals a file (`sealed_dir::seal_reader`, a deal's plan and
/// its upload) goes through it.
#[derive(Debug)]
pub struct FileSeal {
    stream: SealStream,
    keys: FileKeys,
    builder: ManifestBuilder,
    chunk_bytes: u32,
    /// The plaintext's size when known: a file that grew or shrank is refused.
    expected: Option<u64>,
    /// Sealing chunks `range` only, of a file whose entries were planned before.
    part: Option<(Range<u64>, Vec<ChunkEntry>)>,
    sealed: u64,
    plain: u64,
}

/// What a seal reads: a stream read once, in order, by one feeder thread (a pipe, standard
/// input), or a source read by position, by several reader threads at once (a file: see
/// [`crate::plain`]; bytes in memory).
pub enum Plaintext {
    Stream(Box<dyn Read + Send>),
    At(Arc<dyn ReadAt>),
}

impl Plaintext {
    /// A regular file by position ([`PlainFile`]: O_DIRECT where the pages are not
    /// cached); anything else (a pipe, a device) as a stream.
    pub fn file(file: File) -> io::Result<Plaintext> {
        Ok(if file.metadata()?.is_file() {
            Plaintext::At(Arc::new(PlainFile::new(file)))
        } else {
            Plaintext::Stream(Box::new(file))
        })
    }

    pub fn stream(reader: impl Read + Send + 'static) -> Plaintext {
        Plaintext::Stream(Box::new(reader))
    }
}

impl std::fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Plaintext::Stream(_) => "Plaintext::Stream",
            Plaintext::At(_) => "Plaintext::At",
        })
    }
}

/// A part of a planned file, for [`FileSeal::part`]: one deal's chunks of a file larger
/// than a deal holds.
#[derive(Clone, Debug)]
pub struct PartOf {
    /// The file's size now: it must still be the plan's.
    pub size: u64,
    /// The chunks to seal.
    pub range: Range<u64>,
    /// The whole file's entries, as planned.
    pub planned: Vec<ChunkEntry>,
}

/// What [`FileSeal::finish`] gives: the manifest, its envelope and the envelope's id.
#[derive(Debug)]
pub struct SealedFile {
    pub manifest: Manifest,
    pub envelope: Vec<u8>,
    pub manifest_id: ChunkId,
}

impl FileSeal {
    /// Seals all of `input` with `key` (from `keys`); `expected` is its size when known.
    pub fn whole(
        input: Plaintext,
        key: &FileKey,
        keys: FileKeys,
        chunk_bytes: u32,
        workers: usize,
        expected: Option<u64>,
    ) -> Result<FileSeal, CodecError> {
        if let Some(size) = expected {
            check_chunk_count(size, chunk_bytes)?;
        }
        let cipher = FileCipher::new(key, keys.file_id);
        let stream = match input {
            Plaintext::Stream(reader) => seal_stream(reader, cipher, chunk_bytes, workers)?,
            Plaintext::At(source) => {
                let size = source.size().map_err(|e| CodecError::Read {
                    offset: 0,
                    source: e,
                })?;
                if let Some(expected) = expected.filter(|&e| e != size) {
                    return Err(CodecError::InputChanged {
                        expected,
                        read: size,
                    });
                }
                seal_at(source, size, cipher, chunk_bytes, workers, 0..u64::MAX)?
            }
        };
        Ok(FileSeal::over(stream, keys, chunk_bytes, expected, None))
    }

    /// Seals one part of a file planned before with the same key ([`PartOf`]). Each chunk
    /// is checked against its planned entry by the caller; the manifest is the plan's.
    pub fn part(
        file: Arc<dyn ReadAt>,
        key: &FileKey,
        keys: FileKeys,
        chunk_bytes: u32,
        workers: usize,
        of: PartOf,
    ) -> Result<FileSeal, CodecError> {
        let PartOf {
            size,
            range,
            planned,
        } = of;
        check_chunk_count(size, chunk_bytes)?;
        let cipher = FileCipher::new(key, keys.file_id);
        let stream = seal_at(file, size, cipher, chunk_bytes, workers, range.clone())?;
        Ok(FileSeal::over(
            stream,
            keys,
            chunk_bytes,
            Some(size),
            Some((range, planned)),
        ))
    }

    fn over(
        stream: SealStream,
        keys: FileKeys,
        chunk_bytes: u32,
        expected: Option<u64>,
        part: Option<(Range<u64>, Vec<ChunkEntry>)>,
    ) -> FileSeal {
        FileSeal {
            stream,
            keys,
            builder: ManifestBuilder::new(chunk_bytes),
            chunk_bytes,
            expected,
            part,
            sealed: 0,
            plain: 0,
        }
    }

    /// Plaintext bytes sealed so far.
    pub fn plain_bytes(&self) -> u64 {
        self.plain
    }

    /// The manifest (named `name`, empty for none) and its envelope, once every chunk is
    /// out; refused if the file's size was not what was expected.
    pub fn finish(mut self, name: String) -> Result<SealedFile, CodecError> {
        if let Some((range, planned)) = self.part.take() {
            let want = range.end.saturating_sub(range.start);
            if self.sealed != want {
                return Err(CodecError::InputChanged {
                    expected: self.expected.unwrap_or(0),
                    read: (range.start + self.sealed) * u64::from(self.chunk_bytes),
                });
            }
            for e in planned {
                self.builder.push(e);
            }
        }
        if let Some(expected) = self.expected {
            if self.builder.file_bytes() != expected {
                return Err(CodecError::InputChanged {
                    expected,
                    read: self.builder.file_bytes(),
                });
            }
        }
        let manifest = self.builder.finish(name)?;
        let (envelope, manifest_id) = crate::sealed_dir::build_envelope(
            self.stream.cipher(),
            self.keys.kdf,
            self.keys.salt,
            &manifest,
        );
        Ok(SealedFile {
            manifest,
            envelope,
            manifest_id,
        })
    }
}

impl Iterator for FileSeal {
    type Item = Result<SealedChunk, CodecError>;
    fn next(&mut self) -> Option<Self::Item> {
        let chunk = self.stream.next()?;
        if let Ok(c) = &chunk {
            self.sealed += 1;
            self.plain += u64::from(c.plain_bytes());
            if self.part.is_none() {
                self.builder.push(c.entry);
            }
        }
        Some(chunk)
    }
}

/// Refuses a file of more chunks than a manifest holds, before any is sealed.
pub fn check_chunk_count(size: u64, chunk_bytes: u32) -> Result<(), CodecError> {
    check_chunk_bytes(chunk_bytes).map_err(CodecError::Invalid)?;
    if Manifest::chunk_count_for(size, chunk_bytes) > u64::from(CHUNKS_PER_FILE_MAX) {
        return Err(CodecError::TooManyChunks {
            max_chunks: CHUNKS_PER_FILE_MAX,
            chunk_bytes,
        });
    }
    Ok(())
}

/// Reads `reader` once, in chunks of `chunk_bytes`, and seals them on `workers` threads.
/// An empty reader gives no chunks.
///
/// The cipher is taken by value: one cipher seals one stream, because chunk `i` of any stream
/// sealed with the same key would reuse nonce `i`. Get it from [`FileCipher::fresh`], which
/// draws a new file id, hence a new key. (A resumed upload that re-seals chunks must first
/// prove the plaintext unchanged, or start over with a fresh cipher.)
pub fn seal_stream<R>(
    reader: R,
    cipher: FileCipher,
    chunk_bytes: u32,
    workers: usize,
) -> Result<SealStream, CodecError>
where
    R: Read + Send + 'static,
{
    check_chunk_bytes(chunk_bytes).map_err(CodecError::Invalid)?;
    if workers == 0 {
        return Err(CodecError::Invalid("at least one worker is needed".into()));
    }
    let want = chunk_bytes as usize;
    let mut reader = reader;
    let mut offset = 0u64;
    let mut at_end = false;
    let source = move |index: u64, buf: &mut ChunkBuf| -> Result<bool, CodecError> {
        if at_end {
            return Ok(false);
        }
        let n = buf
            .read_from(&mut reader, want)
            .map_err(|source| CodecError::Read { offset, source })?;
        offset += n as u64;
        if n < want {
            at_end = true;
        }
        if n == 0 {
            return Ok(false);
        }
        if index >= u64::from(CHUNKS_PER_FILE_MAX) {
            return Err(CodecError::TooManyChunks {
                max_chunks: CHUNKS_PER_FILE_MAX,
                chunk_bytes,
            });
        }
        Ok(true)
    };
    let cipher = Arc::new(cipher);
    let work = sealing(&cipher, 0);
    let capacity = want + TAG_BYTES as usize;
    let chunks = pipeline::run(buffers_for(workers), capacity, workers, source, work);
    Ok(SealStream {
        chunks,
        cipher,
        first: 0,
    })
}

/// Seals chunks `chunks` of `source`, a plaintext of `size` bytes (its size when the seal
/// began), read by [`readers_for`]`(workers)` reader threads at once (see
/// [`pipeline::run_at`]). Each chunk is sealed with its index in the file, so the bytes are
/// those [`seal_stream`] gives for the same chunks: a range is for an upload that sends one
/// part of a file (a deal covers at most `DEAL_CHUNKS_MAX` chunks). A source that is shorter than `size` when a chunk is read, or
/// of another size once its last chunk is read, is [`CodecError::InputChanged`].
pub fn seal_at(
    source: Arc<dyn ReadAt>,
    size: u64,
    cipher: FileCipher,
    chunk_bytes: u32,
    workers: usize,
    chunks: Range<u64>,
) -> Result<SealStream, CodecError> {
    check_chunk_count(size, chunk_bytes)?;
    if workers == 0 {
        return Err(CodecError::Invalid("at least one worker is needed".into()));
    }
    let cb = u64::from(chunk_bytes);
    let first = chunks.start;
    let count = chunks.end.min(size.div_ceil(cb)).saturating_sub(first);
    let fill = move |index: u64, buf: &mut ChunkBuf| -> Result<(), CodecError> {
        let offset = (first + index) * cb;
        let want = cb.min(size - offset);
        let read = |source| CodecError::Read { offset, source };
        source
            .read_at(
                offset,
                usize::try_from(want).expect("a chunk fits in memory"),
                buf,
            )
            .map_err(read)?;
        let got = buf.len() as u64;
        if got < want {
            return Err(CodecError::InputChanged {
                expected: size,
                read: offset + got,
            });
        }
        if offset + want == size {
            let now = source.size().map_err(read)?;
            if now != size {
                return Err(CodecError::InputChanged {
                    expected: size,
                    read: now,
                });
            }
        }
        Ok(())
    };
    let cipher = Arc::new(cipher);
    let work = sealing(&cipher, first);
    // No buffer larger than the largest chunk, nor more buffers than chunks: a small file
    // allocates (and zeroes, once) what it needs, not the pool of a large one.
    let capacity =
        usize::try_from(cb.min(size.max(1))).expect("a chunk fits in memory") + TAG_BYTES as usize;
    // One more buffer than chunks: a reader learns that no chunk is left only once it holds
    // a buffer, so a consumer that keeps every chunk still sees the stream end.
    let buffers = buffers_for(workers).min(usize::try_from(count + 1).unwrap_or(usize::MAX));
    let chunks = pipeline::run_at(
        buffers,
        capacity,
        (readers_for(workers), workers),
        count,
        fill,
        work,
    );
    Ok(SealStream {
        chunks,
        cipher,
        first,
    })
}

/// A pipeline's work when sealing a stream whose item 0 is chunk `first` of its file: seals
/// the item in place with its index in the file, and gives its id and CRC32C.
fn sealing(
    cipher: &Arc<FileCipher>,
    first: u64,
) -> impl Fn(u64, &mut ChunkBuf) -> Result<(ChunkId, u32), CodecError> + Send + Sync + 'static {
    let cipher = Arc::clone(cipher);
    move |index, buf| {
        cipher.seal_chunk(first + index, buf);
        let (crc, id) = checksums(buf);
        Ok((id, crc))
    }
}

/// Where `open_stream` gets sealed chunks from: a directory, a host, memory.
pub trait ChunkSource: Send + Sync + 'static {
    /// Appends the sealed bytes of chunk `index` to `buf` (empty on entry, with room for the
    /// chunk). It need not check them: the caller verifies length, CRC, id and tag.
    fn fetch(&self, index: u64, entry: &ChunkEntry, buf: &mut ChunkBuf) -> Result<(), CodecError>;

    /// Whether chunks may be fetched in any order and several at once (a directory,
    /// memory): then reader threads fetch them, instead of one feeder thread fetching for
    /// all in order (chunks that arrive in order, as from a download).
    fn by_position(&self) -> bool {
        false
    }
}

/// One verified, decrypted chunk, in order.
#[derive(Debug)]
pub struct OpenedChunk {
    pub index: u64,
    plain: PooledBuf,
}

impl OpenedChunk {
    pub fn plaintext(&self) -> &[u8] {
        &self.plain
    }
}

#[derive(Debug)]
pub struct OpenStream(Ordered<(), CodecError>);

impl Iterator for OpenStream {
    type Item = Result<OpenedChunk, CodecError>;
    fn next(&mut self) -> Option<Self::Item> {
        let (index, result) = self.0.next()?;
        Some(result.map(|((), plain)| OpenedChunk { index, plain }))
    }
}

/// Fetches, verifies and decrypts every chunk of `manifest` on `workers` threads, in order.
/// A chunk is released only after all its checks passed.
pub fn open_stream<S: ChunkSource>(
    manifest: Arc<Manifest>,
    cipher: Arc<FileCipher>,
    source: S,
    workers: usize,
) -> Result<OpenStream, CodecError> {
    manifest.validate().map_err(CodecError::Invalid)?;
    if workers == 0 {
        return Err(CodecError::Invalid("at least one worker is needed".into()));
    }
    let capacity = (manifest
        .chunk_bytes
        .min(u32::try_from(manifest.file_bytes.max(1)).unwrap_or(u32::MAX))
        + TAG_BYTES) as usize;
    let buffers = buffers_for(workers).min(manifest.chunks.len() + 1);
    let work_manifest = Arc::clone(&manifest);
    let work = move |index: u64, buf: &mut ChunkBuf| {
        let at = usize::try_from(index).expect("index < chunk count, a usize");
        verify_and_open(&cipher, index, &work_manifest.chunks[at], buf)
    };
    if source.by_position() {
        let count = manifest.chunks.len() as u64;
        let fill = move |index: u64, buf: &mut ChunkBuf| {
            let at = usize::try_from(index).expect("index < chunk count, a usize");
            source.fetch(index, &manifest.chunks[at], buf)
        };
        return Ok(OpenStream(pipeline::run_at(
            buffers,
            capacity,
            (workers, workers),
            count,
            fill,
            work,
        )));
    }
    // Chunks that come in order are fetched on the feeder thread: the copy into the pooled
    // buffer overlaps the workers' verification instead of adding a pass to it.
    let feed = move |index: u64, buf: &mut ChunkBuf| {
        let Some(entry) = usize::try_from(index)
            .ok()
            .and_then(|i| manifest.chunks.get(i))
        else {
            return Ok(false);
        };
        source.fetch(index, entry, buf)?;
        Ok(true)
    };
    Ok(OpenStream(pipeline::run(
        buffers, capacity, workers, feed, work,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ManifestBuilder;
    use crate::ChunkFault;
    use proto::{FileId, FileKey};
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// An in-memory chunk store that tests can tamper with.
    #[derive(Default, Clone)]
    struct Memory(Arc<Mutex<HashMap<ChunkId, Vec<u8>>>>);

    /// The same store, fetched in order by one thread, as a download's chunks are.
    #[derive(Clone)]
    struct InOrder(Memory);

    impl ChunkSource for InOrder {
        fn fetch(
            &self,
            index: u64,
            entry: &ChunkEntry,
            buf: &mut ChunkBuf,
        ) -> Result<(), CodecError> {
            self.0.fetch(index, entry, buf)
        }
    }

    impl ChunkSource for Memory {
        fn by_position(&self) -> bool {
            true
        }

        fn fetch(
            &self,
            index: u64,
            entry: &ChunkEntry,
            buf: &mut ChunkBuf,
        ) -> Result<(), CodecError> {
            let map = self.0.lock().unwrap();
            let bytes = map.get(&entry.id).ok_or(CodecError::Chunk {
                index,
                id: entry.id,
                fault: ChunkFault::Missing,
            })?;
            buf.extend_from_slice(bytes);
            Ok(())
        }
    }

    fn test_cipher() -> FileCipher {
        FileCipher::new(&FileKey([4; 32]), FileId([8; 16]))
    }

    /// Sealed by position, each worker reading its own chunks.
    fn seal_memory(
        data: &[u8],
        chunk_bytes: u32,
        workers: usize,
        chunks: Range<u64>,
    ) -> SealStream {
        let source: Arc<[u8]> = data.into();
        let size = data.len() as u64;
        seal_at(
            Arc::new(source),
            size,
            test_cipher(),
            chunk_bytes,
            workers,
            chunks,
        )
        .unwrap()
    }

    fn collect(stream: SealStream) -> Vec<(u64, ChunkEntry, Vec<u8>)> {
        stream
            .map(|c| {
                let c = c.unwrap();
                (c.index, c.entry, c.bytes().to_vec())
            })
            .collect()
    }

    /// Seals `data` read as a stream, and checks that reading it by position gives the
    /// same chunks.
    fn seal(data: &[u8], chunk_bytes: u32, workers: usize) -> (Arc<FileCipher>, Manifest, Memory) {
        let store = Memory::default();
        let mut builder = ManifestBuilder::new(chunk_bytes);
        let stream = seal_stream(
            std::io::Cursor::new(data.to_vec()),
            test_cipher(),
            chunk_bytes,
            workers,
        )
        .unwrap();
        let chunks = collect(stream);
        assert_eq!(
            collect(seal_memory(data, chunk_bytes, workers, 0..u64::MAX)),
            chunks,
            "by position, {} bytes",
            data.len()
        );
        for (expect, (index, entry, bytes)) in (0u64..).zip(chunks) {
            assert_eq!(index, expect);
            store.0.lock().unwrap().insert(entry.id, bytes);
            builder.push(entry);
        }
        (
            Arc::new(test_cipher()),
            builder.finish("t".into()).unwrap(),
            store,
        )
    }

    /// Opens by position and in order; both must give the same plaintext.
    fn open(
        cipher: &Arc<FileCipher>,
        manifest: &Manifest,
        store: &Memory,
        workers: usize,
    ) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::new();
        for chunk in open_stream(
            Arc::new(manifest.clone()),
            Arc::clone(cipher),
            store.clone(),
            workers,
        )? {
            out.extend_from_slice(chunk?.plaintext());
        }
        let mut in_order = Vec::new();
        for chunk in open_stream(
            Arc::new(manifest.clone()),
            Arc::clone(cipher),
            InOrder(store.clone()),
            workers,
        )? {
            in_order.extend_from_slice(chunk?.plaintext());
        }
        assert_eq!(out, in_order);
        Ok(out)
    }

    #[test]
    fn round_trips_at_every_boundary() {
        let cb = 4096u32;
        for len in [
            0,
            1,
            4095,
            4096,
            4097,
            3 * 4096,
            3 * 4096 + 17,
            40 * 4096 - 1,
        ] {
            for workers in [1, 3] {
                let data: Vec<u8> = (0..len)
                    .map(|i: usize| u8::try_from(i * 31 % 256).unwrap())
                    .collect();
                let (cipher, manifest, store) = seal(&data, cb, workers);
                assert_eq!(manifest.file_bytes, len as u64);
                assert_eq!(
                    manifest.chunks.len() as u64,
                    Manifest::chunk_count_for(len as u64, cb)
                );
                assert_eq!(
                    open(&cipher, &manifest, &store, workers).unwrap(),
                    data,
                    "len {len}"
                );
            }
        }
    }

    #[test]
    fn a_consumer_that_keeps_every_chunk_of_a_small_file_sees_the_end() {
        let data = vec![3u8; 3 * 4096];
        let kept: Vec<_> = seal_memory(&data, 4096, 2, 0..u64::MAX).collect();
        assert_eq!(kept.len(), 3);
        let (cipher, manifest, store) = seal(&data, 4096, 2);
        let opened: Vec<_> = open_stream(Arc::new(manifest), cipher, store, 2)
            .unwrap()
            .collect();
        assert_eq!(opened.len(), 3);
        assert!(kept.iter().all(Result::is_ok) && opened.iter().all(Result::is_ok));
    }

    #[test]
    fn a_range_seals_the_same_chunks_as_the_whole_file() {
        let cb = 4096u32;
        let data: Vec<u8> = (0..10 * 4096 + 100)
            .map(|i: usize| u8::try_from(i * 7 % 251).unwrap())
            .collect();
        let whole =
            collect(seal_stream(std::io::Cursor::new(data.clone()), test_cipher(), cb, 2).unwrap());
        assert_eq!(whole.len(), 11);
        // A middle range, a range running past the end, a range starting past the end.
        for (chunks, want) in [(3u64..7, 3..7), (8..108, 8..11), (11..16, 11..11)] {
            let part = collect(seal_memory(&data, cb, 3, chunks));
            assert_eq!(part, whole[want.clone()], "chunks {want:?}");
        }
    }

    /// A source whose size changes after `after` calls to `size`.
    struct Changing {
        bytes: Arc<[u8]>,
        calls: std::sync::atomic::AtomicU64,
        after: u64,
        fail_at: Option<u64>,
    }

    impl ReadAt for Changing {
        fn read_at(&self, offset: u64, len: usize, buf: &mut ChunkBuf) -> std::io::Result<()> {
            if self.fail_at == Some(offset) {
                return Err(std::io::Error::other("disk on fire"));
            }
            self.bytes.read_at(offset, len, buf)
        }

        fn size(&self) -> std::io::Result<u64> {
            let n = self
                .calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(self.bytes.len() as u64 + u64::from(n >= self.after))
        }
    }

    #[test]
    fn a_source_read_by_position_that_changes_or_fails_is_refused() {
        let cb = 4096u32;
        let data: Arc<[u8]> = vec![5u8; 3 * 4096 + 10].into();
        let size = data.len() as u64;
        let changing = |after, fail_at| {
            Arc::new(Changing {
                bytes: Arc::clone(&data),
                calls: 0.into(),
                after,
                fail_at,
            })
        };
        // Grown by the time its last chunk is read.
        let results: Vec<_> = seal_at(changing(0, None), size, test_cipher(), cb, 2, 0..9)
            .unwrap()
            .map(|c| c.map(|c| c.index))
            .collect();
        assert_eq!(results.len(), 4);
        assert!(results[..3].iter().all(Result::is_ok));
        assert!(
            matches!(results[3], Err(CodecError::InputChanged { expected, read })
                if expected == size && read == size + 1),
            "{:?}",
            results[3]
        );
        // A read error names the offset; nothing after it is released.
        let results: Vec<_> = seal_at(changing(9, Some(8192)), size, test_cipher(), cb, 2, 0..9)
            .unwrap()
            .map(|c| c.map(|c| c.index))
            .collect();
        assert_eq!(results.len(), 3);
        let err = results[2].as_ref().unwrap_err().to_string();
        assert!(
            err.contains("after 8192 bytes") && err.contains("disk on fire"),
            "{err}"
        );
        // Shorter than it was when the seal began.
        let results: Vec<_> = seal_at(changing(9, None), size + 5000, test_cipher(), cb, 2, 0..9)
            .unwrap()
            .map(|c| c.map(|c| c.index))
            .collect();
        assert!(
            matches!(results.last(), Some(Err(CodecError::InputChanged { read, .. })) if *read == size),
            "{results:?}"
        );
    }

    #[test]
    fn a_file_seal_and_its_parts_give_one_manifest_and_refuse_a_changed_file() {
        let cb = 4096u32;
        let data: Vec<u8> = (0..10 * 4096 + 100)
            .map(|i: usize| u8::try_from(i * 13 % 251).unwrap())
            .collect();
        let keys = FileKeys {
            kdf: KdfParams::DEFAULT,
            salt: [1; 16],
            file_id: FileId([2; 16]),
        };
        let key = FileKey([3; 32]);
        let size = data.len() as u64;
        let cursor = || Plaintext::stream(std::io::Cursor::new(data.clone()));
        let memory: Arc<[u8]> = data.clone().into();
        let at = || Arc::new(Arc::clone(&memory)) as Arc<dyn ReadAt>;
        let mut whole = FileSeal::whole(cursor(), &key, keys, cb, 2, Some(size)).unwrap();
        // Each chunk is dropped once looked at: the pipeline's buffers come back.
        let entries: Vec<ChunkEntry> = whole.by_ref().map(|c| c.unwrap().entry).collect();
        assert_eq!(whole.plain_bytes(), size);
        let sealed = whole.finish("f".into()).unwrap();
        assert_eq!(sealed.manifest.chunks, entries);
        assert_eq!(sealed.manifest_id, ChunkId::of(&sealed.envelope));
        // The same key again: the same chunks, and a part of the plan gives the same
        // envelope, hence the same manifest id the deal paid for.
        for range in [0..4u64, 4..11] {
            let mut part = FileSeal::part(
                at(),
                &key,
                keys,
                cb,
                3,
                PartOf {
                    size,
                    range: range.clone(),
                    planned: entries.clone(),
                },
            )
            .unwrap();
            let got: Vec<ChunkEntry> = part.by_ref().map(|c| c.unwrap().entry).collect();
            let want = usize::try_from(range.start).unwrap()..usize::try_from(range.end).unwrap();
            assert_eq!(got, entries[want]);
            assert_eq!(
                part.finish("f".into()).unwrap().manifest_id,
                sealed.manifest_id
            );
        }
        // A file that is not the size it was: refused at the end, whole or in part.
        let mut grew = FileSeal::whole(cursor(), &key, keys, cb, 2, Some(size - 1)).unwrap();
        grew.by_ref().for_each(|c| drop(c.unwrap()));
        assert!(matches!(
            grew.finish(String::new()),
            Err(CodecError::InputChanged { .. })
        ));
        // Read by position, its size is known before anything is sealed.
        assert!(matches!(
            FileSeal::whole(Plaintext::At(at()), &key, keys, cb, 2, Some(size - 1)),
            Err(CodecError::InputChanged { expected, read }) if expected == size - 1 && read == size
        ));
        let short: Arc<[u8]> = data[..5 * 4096].to_vec().into();
        let part = FileSeal::part(
            Arc::new(short),
            &key,
            keys,
            cb,
            2,
            PartOf {
                size,
                range: 4..11,
                planned: entries.clone(),
            },
        )
        .unwrap();
        let got: Vec<_> = part.map(|c| c.map(|c| c.index)).collect();
        assert!(matches!(got[0], Ok(4)), "{got:?}");
        assert!(
            matches!(got[1], Err(CodecError::InputChanged { read, .. }) if read == 5 * 4096),
            "{got:?}"
        );
        assert_eq!(got.len(), 2);
        // More chunks than a manifest holds: refused before anything is sealed.
        let huge = u64::from(CHUNKS_PER_FILE_MAX) * u64::from(cb) + 1;
        assert!(matches!(
            FileSeal::whole(cursor(), &key, keys, cb, 2, Some(huge)),
            Err(CodecError::TooManyChunks { .. })
        ));
    }

    #[test]
    fn a_tampered_chunk_stops_the_stream_at_that_chunk() {
        let data = vec![1u8; 5 * 4096];
        let (cipher, manifest, store) = seal(&data, 4096, 2);
        let victim = manifest.chunks[3].id;
        store.0.lock().unwrap().get_mut(&victim).unwrap()[100] ^= 0x40;
        let mut released = 0;
        let mut error = None;
        for chunk in open_stream(Arc::new(manifest.clone()), cipher, store, 2).unwrap() {
            match chunk {
                Ok(_) => released += 1,
                Err(e) => error = Some(e),
            }
        }
        assert_eq!(
            released, 3,
            "chunks before the bad one are released, none after"
        );
        assert!(
            matches!(
                error,
                Some(CodecError::Chunk {
                    index: 3,
                    fault: ChunkFault::Crc { .. },
                    ..
                })
            ),
            "{error:?}"
        );
    }

    #[test]
    fn a_failing_reader_is_reported_with_its_offset() {
        struct Failing(u64);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("disk on fire"));
                }
                let n = buf.len().min(usize::try_from(self.0).unwrap());
                self.0 -= n as u64;
                Ok(n)
            }
        }
        let results: Vec<Result<u32, CodecError>> =
            seal_stream(Failing(10_000), test_cipher(), 4096, 2)
                .unwrap()
                .map(|c| c.map(|c| c.plain_bytes()))
                .collect();
        assert_eq!(results.len(), 3);
        assert_eq!(
            (results[0].as_ref().unwrap(), results[1].as_ref().unwrap()),
            (&4096, &4096)
        );
        let err = results[2].as_ref().unwrap_err().to_string();
        assert!(
            err.contains("after 8192 bytes") && err.contains("disk on fire"),
            "{err}"
        );
    }

    #[test]
    fn two_seals_of_the_same_input_share_no_ciphertext() {
        let data = vec![9u8; 3 * 4096];
        let a = FileCipher::new(&FileKey([1; 32]), FileId([1; 16]));
        let b = FileCipher::new(&FileKey([2; 32]), FileId([2; 16]));
        let ids = |c: FileCipher| -> Vec<ChunkId> {
            seal_stream(std::io::Cursor::new(data.clone()), c, 4096, 1)
                .unwrap()
                .map(|c| c.unwrap().entry.id)
                .collect()
        };
        let (ia, ib) = (ids(a), ids(b));
        assert!(ia.iter().all(|id| !ib.contains(id)));
        // Equal plaintext chunks in one file still differ: the nonce is the chunk index.
        assert!(ia[0] != ia[1] && ia[1] != ia[2]);
    }
}
