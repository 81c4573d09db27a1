//! The cryptography of one sealed file: key derivation, chunk and manifest encryption, and
//! the checksums every chunk carries. Pure functions over buffers; the formats are in
//! `docs/formats.md`.

use argon2::{Algorithm, Argon2, Params, Version};
use proto::{ChunkEntry, ChunkId, FileId, FileKey, KdfParams, Manifest, TAG_BYTES};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use zeroize::Zeroize;

use crate::buf::InPlace;
use crate::error::{ChunkFault, CodecError};

/// BLAKE3 `derive_key` context that turns a master key and a file id into a file key.
pub const FILE_KEY_CONTEXT: &str = "market.space 2026-11 file key v1";
/// First word of every chunk nonce; the manifest body uses [`NONCE_KIND_MANIFEST`], so no
/// chunk nonce can equal the manifest's under the same key.
pub const NONCE_KIND_CHUNK: u32 = 1;
pub const NONCE_KIND_MANIFEST: u32 = 2;
/// Prefix of a chunk's AAD.
pub const CHUNK_AAD_MAGIC: [u8; 4] = *b"MSPC";
pub const CHUNK_FORMAT_VERSION: u8 = 1;
/// CRC32C and BLAKE3 run over a sealed chunk in blocks of this size, so the second pass
/// reads from cache what the first just touched.
const CHECKSUM_BLOCK_BYTES: usize = 256 * 1024;

/// The passphrase-derived key. Zeroed on drop, never printed.
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Argon2id (v0x13) of the passphrase with the manifest's salt and parameters.
pub fn derive_master_key(
    passphrase: &[u8],
    salt: &[u8; 16],
    kdf: KdfParams,
) -> Result<MasterKey, CodecError> {
    kdf.check().map_err(CodecError::Invalid)?;
    let params = Params::new(kdf.m_kib, kdf.t, kdf.p, Some(32))
        .map_err(|e| CodecError::Invalid(format!("argon2 parameters: {e}")))?;
    let mut out = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase, salt, &mut out)
        .map_err(|e| CodecError::Invalid(format!("argon2: {e}")))?;
    Ok(MasterKey(out))
}

/// file key = BLAKE3-derive_key(FILE_KEY_CONTEXT, master key || file id). One-way: a share
/// key (which carries the file key) reveals nothing about the master key or other files.
pub fn derive_file_key(master: &MasterKey, file_id: &FileId) -> FileKey {
    let mut hasher = blake3::Hasher::new_derive_key(FILE_KEY_CONTEXT);
    hasher.update(&master.0);
    hasher.update(&file_id.0);
    FileKey(*hasher.finalize().as_bytes())
}

/// 96-bit GCM nonce: kind (u32 LE) || counter (u64 LE). Unique per (file key, kind, index),
/// and every seal draws a fresh file id, hence a fresh file key.
fn nonce(kind: u32, index: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&kind.to_le_bytes());
    n[4..].copy_from_slice(&index.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// AAD of chunk `index`: "MSPC" || version || file id || index (u64 LE). It binds a chunk to
/// its file and its position: a chunk moved to another index or file fails its tag.
fn chunk_aad(file_id: &FileId, index: u64) -> [u8; 29] {
    let mut aad = [0u8; 29];
    aad[..4].copy_from_slice(&CHUNK_AAD_MAGIC);
    aad[4] = CHUNK_FORMAT_VERSION;
    aad[5..21].copy_from_slice(&file_id.0);
    aad[21..].copy_from_slice(&index.to_le_bytes());
    aad
}

/// AES-256-GCM under one file's key.
pub struct FileCipher {
    key: LessSafeKey,
    file_id: FileId,
}

impl std::fmt::Debug for FileCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCipher")
            .field("file_id", &self.file_id)
            .finish_non_exhaustive()
    }
}

impl FileCipher {
    /// A cipher for a new seal: a fresh random file id, and the file key derived from it and
    /// `master`. Returns the key too, for the share key.
    pub fn fresh(master: &MasterKey) -> Result<(FileCipher, FileKey), CodecError> {
        let mut id = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
            .map_err(|_| CodecError::Invalid("the system random number generator failed".into()))?;
        let file_id = FileId(id);
        let key = derive_file_key(master, &file_id);
        Ok((FileCipher::new(&key, file_id), key))
    }

    /// A cipher for a known key: to open, or to seal only with a key that has sealed nothing
    /// else (see [`crate::seal::seal_stream`]).
    pub fn new(key: &FileKey, file_id: FileId) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, &key.0).expect("AES-256 takes a 32-byte key");
        FileCipher {
            key: LessSafeKey::new(unbound),
            file_id,
        }
    }

    pub fn file_id(&self) -> FileId {
        self.file_id
    }

    /// Encrypts `buf` (plaintext) in place and appends the tag.
    pub fn seal_chunk<B: InPlace>(&self, index: u64, buf: &mut B) {
        let aad = chunk_aad(&self.file_id, index);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(NONCE_KIND_CHUNK, index),
                Aad::from(&aad),
                &mut buf[..],
            )
            .expect("ring fails only for inputs over 64 GiB, far above CHUNK_BYTES_MAX");
        buf.extend_from_slice(tag.as_ref());
    }

    /// Authenticates and decrypts `buf` (sealed chunk) in place, leaving the plaintext.
    pub fn open_chunk<B: InPlace>(&self, index: u64, buf: &mut B) -> Result<(), ChunkFault> {
        let aad = chunk_aad(&self.file_id, index);
        let plain_len = self
            .key
            .open_in_place(
                nonce(NONCE_KIND_CHUNK, index),
                Aad::from(&aad),
                &mut buf[..],
            )
            .map_err(|_| ChunkFault::Tag)?
            .len();
        buf.truncate(plain_len);
        Ok(())
    }

    /// Encrypts a manifest body in place with the envelope header as AAD.
    pub fn seal_manifest(&self, header: &[u8], body: &mut Vec<u8>) {
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(NONCE_KIND_MANIFEST, 0), Aad::from(header), body)
            .expect("manifest bodies are bounded far below ring's limit");
        body.extend_from_slice(tag.as_ref());
    }

    /// Opens a manifest body; `None` means the key is wrong or the envelope was altered.
    pub fn open_manifest(&self, header: &[u8], sealed_body: &[u8]) -> Option<Vec<u8>> {
        let mut body = sealed_body.to_vec();
        let len = self
            .key
            .open_in_place(nonce(NONCE_KIND_MANIFEST, 0), Aad::from(header), &mut body)
            .ok()?
            .len();
        body.truncate(len);
        Some(body)
    }
}

pub fn crc32c(bytes: &[u8]) -> u32 {
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, bytes);
    u32::try_from(crc).expect("a CRC-32 fits in 32 bits")
}

/// CRC32C and BLAKE3 of a sealed chunk in one pass over the cache.
pub fn checksums(bytes: &[u8]) -> (u32, ChunkId) {
    let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    let mut hasher = blake3::Hasher::new();
    for block in bytes.chunks(CHECKSUM_BLOCK_BYTES) {
        crc.update(block);
        hasher.update(block);
    }
    let crc = u32::try_from(crc.finalize()).expect("a CRC-32 fits in 32 bits");
    (crc, ChunkId(*hasher.finalize().as_bytes()))
}

/// Checks a sealed chunk against its manifest entry (length, CRC32C, BLAKE3 id), then
/// decrypts it in place. Nothing of a chunk that fails is returned.
pub fn verify_and_open<B: InPlace>(
    cipher: &FileCipher,
    index: u64,
    entry: &ChunkEntry,
    buf: &mut B,
) -> Result<(), CodecError> {
    let fail = |fault| CodecError::Chunk {
        index,
        id: entry.id,
        fault,
    };
    if buf.len() as u64 != u64::from(entry.sealed_bytes) {
        return Err(fail(ChunkFault::Length {
            expected: entry.sealed_bytes.into(),
            found: buf.len() as u64,
        }));
    }
    let (crc, id) = checksums(&buf[..]);
    if crc != entry.crc32c {
        return Err(fail(ChunkFault::Crc {
            expected: entry.crc32c,
            found: crc,
        }));
    }
    if id != entry.id {
        return Err(fail(ChunkFault::Id { found: id }));
    }
    cipher.open_chunk(index, buf).map_err(fail)
}

/// Collects sealed chunks, in order, into a manifest.
#[derive(Debug)]
pub struct ManifestBuilder {
    chunk_bytes: u32,
    file_bytes: u64,
    chunks: Vec<ChunkEntry>,
}

impl ManifestBuilder {
    pub fn new(chunk_bytes: u32) -> Self {
        ManifestBuilder {
            chunk_bytes,
            file_bytes: 0,
            chunks: Vec::new(),
        }
    }

    pub fn push(&mut self, entry: ChunkEntry) {
        self.file_bytes += u64::from(entry.sealed_bytes - TAG_BYTES);
        self.chunks.push(entry);
    }

    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    pub fn finish(self, name: String) -> Result<Manifest, CodecError> {
        let manifest = Manifest {
            chunk_bytes: self.chunk_bytes,
            file_bytes: self.file_bytes,
            name,
            chunks: self.chunks,
        };
        manifest.validate().map_err(CodecError::Invalid)?;
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher(seed: u8) -> FileCipher {
        FileCipher::new(&FileKey([seed; 32]), FileId([seed; 16]))
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C catalogue's check value for "123456789".
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(checksums(&data), (crc32c(&data), ChunkId::of(&data)));
    }

    #[test]
    fn chunk_binds_key_file_and_index() {
        let c = cipher(1);
        let mut buf = b"hello chunk".to_vec();
        c.seal_chunk(3, &mut buf);
        assert_eq!(buf.len(), 11 + 16);
        let sealed = buf.clone();
        c.open_chunk(3, &mut buf).unwrap();
        assert_eq!(buf, b"hello chunk");
        for (who, idx) in [(cipher(2), 3), (cipher(1), 4)] {
            let mut b = sealed.clone();
            assert_eq!(who.open_chunk(idx, &mut b), Err(ChunkFault::Tag));
        }
        let other_file = FileCipher::new(&FileKey([1; 32]), FileId([2; 16]));
        assert_eq!(
            other_file.open_chunk(3, &mut sealed.clone()),
            Err(ChunkFault::Tag)
        );
    }

    #[test]
    fn verify_reports_each_fault_in_order() {
        let c = cipher(5);
        let mut buf = vec![7u8; 5000];
        c.seal_chunk(0, &mut buf);
        let (crc32c, id) = checksums(&buf);
        let entry = ChunkEntry {
            id,
            sealed_bytes: 5016,
            crc32c,
        };
        let fault = |mut b: Vec<u8>, e: &ChunkEntry| match verify_and_open(&c, 0, e, &mut b) {
            Err(CodecError::Chunk { fault, .. }) => fault,
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            fault(buf[..100].to_vec(), &entry),
            ChunkFault::Length {
                expected: 5016,
                found: 100
            }
        ));
        let mut flipped = buf.clone();
        flipped[10] ^= 1;
        assert!(matches!(
            fault(flipped.clone(), &entry),
            ChunkFault::Crc { .. }
        ));
        // Same CRC in the entry, but the content differs: caught by the id.
        let (crc_flipped, _) = checksums(&flipped);
        assert!(matches!(
            fault(
                flipped,
                &ChunkEntry {
                    crc32c: crc_flipped,
                    ..entry
                }
            ),
            ChunkFault::Id { .. }
        ));
        let mut ok = buf.clone();
        verify_and_open(&c, 0, &entry, &mut ok).unwrap();
        assert_eq!(ok, vec![7u8; 5000]);
        let wrong_key = verify_and_open(&cipher(6), 0, &entry, &mut buf.clone()).unwrap_err();
        assert!(
            matches!(
                wrong_key,
                CodecError::Chunk {
                    fault: ChunkFault::Tag,
                    ..
                }
            ),
            "{wrong_key}"
        );
        assert!(wrong_key.to_string().contains("AES-GCM"), "{wrong_key}");
    }

    #[test]
    fn master_key_depends_on_passphrase_and_salt() {
        let kdf = KdfParams {
            m_kib: 64,
            t: 1,
            p: 1,
        };
        let k = |p: &[u8], s: u8| derive_master_key(p, &[s; 16], kdf).unwrap().0;
        assert_eq!(k(b"a", 1), k(b"a", 1));
        assert_ne!(k(b"a", 1), k(b"b", 1));
        assert_ne!(k(b"a", 1), k(b"a", 2));
        assert!(derive_master_key(
            b"a",
            &[0; 16],
            KdfParams {
                m_kib: 1,
                t: 1,
                p: 1
            }
        )
        .is_err());
    }
}
