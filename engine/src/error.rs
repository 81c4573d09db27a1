//! Errors of the codec and the sealed-directory operations.

use std::io;
use std::path::PathBuf;

use proto::{ChunkId, DecodeError, FileId};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CodecError {
    /// An operation on a named path failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// Reading the stream being sealed failed.
    #[error("reading the input failed after {offset} bytes: {source}")]
    Read { offset: u64, source: io::Error },
    /// A chunk failed one of its checks; nothing of it was released.
    #[error("chunk {index} (id {id}) {fault}")]
    Chunk {
        index: u64,
        id: ChunkId,
        fault: ChunkFault,
    },
    #[error("the manifest {path} is corrupted: {reason}")]
    ManifestCorrupt { path: PathBuf, reason: String },
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("wrong passphrase: the manifest is intact but does not open with this passphrase")]
    WrongPassphrase,
    #[error("wrong share key: the manifest is intact but does not open with this share key")]
    WrongShareKey,
    #[error(
        "the share key is for file {key_file}, but this sealed directory holds file {dir_file}"
    )]
    ShareKeyForOtherFile { key_file: FileId, dir_file: FileId },
    #[error("the share key names manifest {key_manifest}, but this sealed directory holds manifest {dir_manifest}")]
    ShareKeyForOtherManifest {
        key_manifest: ChunkId,
        dir_manifest: ChunkId,
    },
    #[error("the input is too large: more than {max_chunks} chunks of {chunk_bytes} bytes; choose a larger chunk size")]
    TooManyChunks { max_chunks: u32, chunk_bytes: u32 },
    #[error(
        "the input changed while it was sealed: {expected} bytes at the start, {read} bytes read"
    )]
    InputChanged { expected: u64, read: u64 },
    #[error("{0}")]
    Invalid(String),
}

/// What was wrong with a chunk, in the order the checks run: length, CRC32C, BLAKE3 id,
/// then the AES-GCM tag.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ChunkFault {
    #[error("is missing")]
    Missing,
    #[error(
        "has the wrong length (truncated or extended): expected {expected} bytes, found {found}"
    )]
    Length { expected: u64, found: u64 },
    #[error("fails its CRC32C check: expected {expected:#010x}, found {found:#010x}")]
    Crc { expected: u32, found: u32 },
    #[error("does not match its id: its content hashes to {found} (damaged or replaced)")]
    Id { found: ChunkId },
    #[error("fails authentication (AES-GCM tag): wrong key, or the chunk was tampered with")]
    Tag,
}

impl CodecError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> CodecError {
        let path = path.into();
        move |source| CodecError::Io { op, path, source }
    }
}
