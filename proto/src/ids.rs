//! Identifiers and keys of sealed files.

use std::fmt;
use std::str::FromStr;

use zeroize::Zeroize;

/// A chunk's identity: the BLAKE3 hash of its sealed bytes (ciphertext and tag). The hash is
/// also the root of a BLAKE3 Merkle tree over those bytes, which is what storage proofs
/// verify slices against. The manifest is addressed the same way.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn of(bytes: &[u8]) -> Self {
        ChunkId(*blake3::hash(bytes).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.0)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.to_hex())
    }
}

impl FromStr for ChunkId {
    type Err = String;
    /// Parses 64 lowercase hex digits, the form file names and the CLI use.
    fn from_str(s: &str) -> Result<Self, String> {
        let bytes = data_encoding::HEXLOWER
            .decode(s.as_bytes())
            .map_err(|e| format!("not a chunk id (64 lowercase hex digits): {e}"))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|v: Vec<u8>| format!("a chunk id has 32 bytes, this has {}", v.len()))?;
        Ok(ChunkId(arr))
    }
}

/// A sealed file's identity: 16 random bytes drawn at each seal. Every chunk's nonce and AAD
/// and the file key derive from it, so two seals of the same file never share a (key, nonce).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId(pub [u8; 16]);

impl FileId {
    pub fn to_hex(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.0)
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({})", self.to_hex())
    }
}

/// The AES-256-GCM key of one file's chunks and manifest. Zeroed on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct FileKey(pub [u8; 32]);

impl Drop for FileKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileKey(<redacted>)")
    }
}
