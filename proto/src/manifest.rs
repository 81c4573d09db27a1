//! The manifest of a sealed file: its chunk list, in clear form (the body) and the envelope
//! the body travels in once encrypted. `docs/formats.md` describes both byte by byte.

use crate::decode::{DecodeError, Reader};
use crate::ids::{ChunkId, FileId};
use crate::kdf::{KdfParams, KDF_ARGON2ID_13};
use crate::{check_chunk_bytes, CHUNKS_PER_FILE_MAX, TAG_BYTES};

pub const ENVELOPE_MAGIC: [u8; 4] = *b"MSPM";
pub const ENVELOPE_VERSION: u8 = 1;
pub const ENVELOPE_HEADER_BYTES: usize = 64;
pub const BODY_VERSION: u8 = 1;
/// Fixed part of the body before the name.
pub const BODY_FIXED_BYTES: usize = 24;
/// Bytes of one chunk entry in the body.
pub const ENTRY_BYTES: usize = 40;
/// Longest file name a manifest records (bytes of UTF-8), as on common file systems.
pub const NAME_BYTES_MAX: usize = 255;
/// Largest body a decoder accepts, derived from the limits above.
pub const BODY_BYTES_MAX: usize =
    BODY_FIXED_BYTES + NAME_BYTES_MAX + ENTRY_BYTES * CHUNKS_PER_FILE_MAX as usize;

const WHAT_BODY: &str = "manifest body";
const WHAT_ENVELOPE: &str = "manifest envelope";

/// One chunk as the manifest lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkEntry {
    pub id: ChunkId,
    /// Length of the sealed chunk: plaintext plus the 16-byte tag.
    pub sealed_bytes: u32,
    /// CRC32C (Castagnoli) of the sealed chunk: the transfer check miners compare.
    pub crc32c: u32,
}

/// The decrypted manifest body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Plaintext bytes per chunk; only the last chunk may be shorter.
    pub chunk_bytes: u32,
    /// Plaintext bytes of the whole file.
    pub file_bytes: u64,
    /// The file's name when it was sealed (informational; never used as a path).
    pub name: String,
    pub chunks: Vec<ChunkEntry>,
}

impl Manifest {
    /// Number of chunks a file of `file_bytes` has: `ceil(file_bytes / chunk_bytes)`, zero for
    /// an empty file.
    pub fn chunk_count_for(file_bytes: u64, chunk_bytes: u32) -> u64 {
        file_bytes.div_ceil(u64::from(chunk_bytes))
    }

    /// The largest manifest envelope of a file of `chunks` chunks (its name as long as a
    /// name may be): the header, the body and the body's tag.
    pub fn envelope_bytes_max(chunks: u64) -> u64 {
        (ENVELOPE_HEADER_BYTES + BODY_FIXED_BYTES + NAME_BYTES_MAX) as u64
            + ENTRY_BYTES as u64 * chunks
            + u64::from(TAG_BYTES)
    }

    /// Plaintext length of chunk `index`: `chunk_bytes` except for the last one.
    pub fn plain_len(&self, index: u64) -> u32 {
        let start = index * u64::from(self.chunk_bytes);
        let len = self
            .file_bytes
            .saturating_sub(start)
            .min(u64::from(self.chunk_bytes));
        u32::try_from(len).expect("bounded by chunk_bytes, a u32")
    }

    /// Checks every relation between the fields; both `encode` and `decode` call it, so no
    /// inconsistent manifest is ever written or accepted.
    pub fn validate(&self) -> Result<(), String> {
        check_chunk_bytes(self.chunk_bytes)?;
        check_name(&self.name)?;
        let expected = Self::chunk_count_for(self.file_bytes, self.chunk_bytes);
        if expected > u64::from(CHUNKS_PER_FILE_MAX) {
            return Err(format!(
                "{} bytes in chunks of {} need {expected} chunks, more than the limit of {CHUNKS_PER_FILE_MAX}",
                self.file_bytes, self.chunk_bytes
            ));
        }
        if self.chunks.len() as u64 != expected {
            return Err(format!(
                "{} bytes in chunks of {} make {expected} chunks, the list has {}",
                self.file_bytes,
                self.chunk_bytes,
                self.chunks.len()
            ));
        }
        for (index, entry) in (0u64..).zip(&self.chunks) {
            let want = self.plain_len(index) + TAG_BYTES;
            if entry.sealed_bytes != want {
                return Err(format!(
                    "chunk {index} is listed with {} sealed bytes, its position implies {want}",
                    entry.sealed_bytes
                ));
            }
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        assert!(
            self.validate().is_ok(),
            "encoding an invalid manifest: {:?}",
            self.validate()
        );
        let name = self.name.as_bytes();
        let mut out =
            Vec::with_capacity(BODY_FIXED_BYTES + name.len() + ENTRY_BYTES * self.chunks.len());
        out.push(BODY_VERSION);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.chunk_bytes.to_le_bytes());
        out.extend_from_slice(&self.file_bytes.to_le_bytes());
        let count =
            u32::try_from(self.chunks.len()).expect("validated against CHUNKS_PER_FILE_MAX");
        out.extend_from_slice(&count.to_le_bytes());
        let name_len = u16::try_from(name.len()).expect("validated against NAME_BYTES_MAX");
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(&[0; 2]);
        out.extend_from_slice(name);
        for entry in &self.chunks {
            out.extend_from_slice(&entry.id.0);
            out.extend_from_slice(&entry.sealed_bytes.to_le_bytes());
            out.extend_from_slice(&entry.crc32c.to_le_bytes());
        }
        debug_assert_eq!(Manifest::decode(&out).as_ref(), Ok(self));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > BODY_BYTES_MAX {
            return Err(DecodeError::Invalid {
                what: WHAT_BODY,
                field: "length",
                reason: format!(
                    "{} bytes, more than the limit of {BODY_BYTES_MAX}",
                    bytes.len()
                ),
            });
        }
        let mut r = Reader::new(WHAT_BODY, bytes);
        r.version(BODY_VERSION)?;
        r.reserved("reserved after version", 3)?;
        let chunk_bytes = r.u32("chunk_bytes")?;
        check_chunk_bytes(chunk_bytes).map_err(|e| r.invalid("chunk_bytes", e))?;
        let file_bytes = r.u64("file_bytes")?;
        let count = r.u32("chunk_count")?;
        if count > CHUNKS_PER_FILE_MAX {
            return Err(r.invalid(
                "chunk_count",
                format!("{count} exceeds the limit of {CHUNKS_PER_FILE_MAX}"),
            ));
        }
        let name_len = r.u16("name_len")?;
        r.reserved("reserved after name_len", 2)?;
        let name = r.take("name", usize::from(name_len))?;
        let name = std::str::from_utf8(name)
            .map_err(|e| r.invalid("name", format!("not UTF-8: {e}")))?
            .to_owned();
        // Check the length before allocating for the entries.
        let entries_len = ENTRY_BYTES * count as usize;
        if r.remaining() != entries_len {
            return Err(r.invalid(
                "chunk entries",
                format!(
                    "{count} entries need {entries_len} bytes, {} remain",
                    r.remaining()
                ),
            ));
        }
        let mut chunks = Vec::with_capacity(count as usize);
        for _ in 0..count {
            chunks.push(ChunkEntry {
                id: ChunkId(r.array("chunk id")?),
                sealed_bytes: r.u32("sealed_bytes")?,
                crc32c: r.u32("crc32c")?,
            });
        }
        r.finish()?;
        let manifest = Manifest {
            chunk_bytes,
            file_bytes,
            name,
            chunks,
        };
        manifest.validate().map_err(|e| DecodeError::Invalid {
            what: WHAT_BODY,
            field: "chunk list",
            reason: e,
        })?;
        Ok(manifest)
    }
}

pub fn check_name(name: &str) -> Result<(), String> {
    if name.len() > NAME_BYTES_MAX {
        return Err(format!(
            "file name is {} bytes, the limit is {NAME_BYTES_MAX}",
            name.len()
        ));
    }
    if name.contains(['/', '\0']) || name == "." || name == ".." {
        return Err(format!("file name {name:?} is not a plain file name"));
    }
    Ok(())
}

/// The clear header in front of the encrypted manifest body. It is the AAD of the body's
/// encryption, so none of it can be changed without the body failing to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvelopeHeader {
    pub kdf: KdfParams,
    /// Argon2id salt for the passphrase.
    pub salt: [u8; 16],
    pub file_id: FileId,
    /// Length of the encrypted body that follows, tag included.
    pub sealed_body_bytes: u32,
}

impl EnvelopeHeader {
    pub fn encode(&self) -> [u8; ENVELOPE_HEADER_BYTES] {
        let mut out = Vec::with_capacity(ENVELOPE_HEADER_BYTES);
        out.extend_from_slice(&ENVELOPE_MAGIC);
        out.push(ENVELOPE_VERSION);
        out.push(KDF_ARGON2ID_13);
        out.extend_from_slice(&[0; 2]);
        self.kdf.encode_into(&mut out);
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.file_id.0);
        out.extend_from_slice(&self.sealed_body_bytes.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        out.try_into()
            .expect("the layout above is exactly ENVELOPE_HEADER_BYTES long")
    }

    /// Splits a whole envelope into its header, the header's bytes (the AAD) and the sealed
    /// body, checking that the lengths agree.
    pub fn split(envelope: &[u8]) -> Result<(EnvelopeHeader, &[u8], &[u8]), DecodeError> {
        let mut r = Reader::new(WHAT_ENVELOPE, envelope);
        r.magic(&ENVELOPE_MAGIC)?;
        r.version(ENVELOPE_VERSION)?;
        let alg = r.u8("kdf algorithm")?;
        if alg != KDF_ARGON2ID_13 {
            return Err(r.invalid("kdf algorithm", format!("{alg} is not 1 (Argon2id v0x13)")));
        }
        r.reserved("reserved after kdf algorithm", 2)?;
        let kdf = KdfParams::decode(&mut r)?;
        let salt = r.array("salt")?;
        let file_id = FileId(r.array("file_id")?);
        let sealed_body_bytes = r.u32("sealed_body_bytes")?;
        r.reserved("reserved after sealed_body_bytes", 8)?;
        let min = BODY_FIXED_BYTES + TAG_BYTES as usize;
        let max = BODY_BYTES_MAX + TAG_BYTES as usize;
        if !(min..=max).contains(&(sealed_body_bytes as usize)) {
            return Err(r.invalid(
                "sealed_body_bytes",
                format!("{sealed_body_bytes} outside {min}..={max}"),
            ));
        }
        let body = r.take("sealed body", sealed_body_bytes as usize)?;
        r.finish()?;
        let header = EnvelopeHeader {
            kdf,
            salt,
            file_id,
            sealed_body_bytes,
        };
        Ok((header, &envelope[..ENVELOPE_HEADER_BYTES], body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CHUNK_BYTES_MIN, SECTOR_BYTES};

    /// A named way to damage an encoding.
    type Mutation = Box<dyn Fn(&mut Vec<u8>)>;

    fn sample(file_bytes: u64, chunk_bytes: u32) -> Manifest {
        let count = Manifest::chunk_count_for(file_bytes, chunk_bytes);
        let mut m = Manifest {
            chunk_bytes,
            file_bytes,
            name: "report.pdf".into(),
            chunks: vec![],
        };
        for i in 0..count {
            let sealed_bytes = m.plain_len(i) + TAG_BYTES;
            let id = ChunkId(*blake3::hash(&i.to_le_bytes()).as_bytes());
            m.chunks.push(ChunkEntry {
                id,
                sealed_bytes,
                crc32c: u32::try_from(i).unwrap(),
            });
        }
        m
    }

    #[test]
    fn body_round_trips() {
        for (file_bytes, chunk_bytes) in [
            (0, 4096),
            (1, 4096),
            (4095, 4096),
            (4096, 4096),
            (4097, 4096),
            (1 << 30, 8 << 20),
        ] {
            let m = sample(file_bytes, chunk_bytes);
            assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        }
    }

    /// Each case mutates a valid body and names a word the error must contain.
    #[test]
    fn body_rejects_malformed_input() {
        let good = sample(3 * 4096 + 5, 4096).encode();
        let cases: Vec<(&str, Mutation, &str)> = vec![
            ("empty", Box::new(|b| b.clear()), "truncated"),
            ("version", Box::new(|b| b[0] = 2), "version 2"),
            ("reserved", Box::new(|b| b[1] = 1), "reserved"),
            (
                "chunk size not sector",
                Box::new(|b| b[4..8].copy_from_slice(&4097u32.to_le_bytes())),
                "chunk_bytes",
            ),
            (
                "chunk size too small",
                Box::new(|b| {
                    b[4..8].copy_from_slice(&(CHUNK_BYTES_MIN - SECTOR_BYTES).to_le_bytes())
                }),
                "range",
            ),
            (
                "file size disagrees",
                Box::new(|b| b[8..16].copy_from_slice(&(9 * 4096u64).to_le_bytes())),
                "chunk list",
            ),
            (
                "count too large",
                Box::new(|b| b[16..20].copy_from_slice(&u32::MAX.to_le_bytes())),
                "limit",
            ),
            (
                "count disagrees",
                Box::new(|b| b[16..20].copy_from_slice(&5u32.to_le_bytes())),
                "entries",
            ),
            (
                "truncated entry",
                Box::new(|b| {
                    b.pop();
                }),
                "entries",
            ),
            ("trailing byte", Box::new(|b| b.push(0)), "entries"),
            (
                "sealed length",
                Box::new(|b| {
                    let at = BODY_FIXED_BYTES + 10 + 32;
                    b[at] ^= 1;
                }),
                "sealed bytes",
            ),
            (
                "name not utf8",
                Box::new(|b| b[BODY_FIXED_BYTES] = 0xff),
                "UTF-8",
            ),
            (
                "name with slash",
                Box::new(|b| b[BODY_FIXED_BYTES] = b'/'),
                "plain file name",
            ),
        ];
        for (name, mutate, expect) in cases {
            let mut bytes = good.clone();
            mutate(&mut bytes);
            let err = Manifest::decode(&bytes).expect_err(name).to_string();
            assert!(err.contains(expect), "{name}: {err:?} lacks {expect:?}");
        }
    }

    /// `fuzz/seeds/manifest/body-2-chunks` was written by hand (in Python) from
    /// docs/formats.md alone: the document is enough to produce a body this decoder accepts.
    #[test]
    fn a_body_written_from_the_format_document_decodes() {
        let m =
            Manifest::decode(include_bytes!("../../fuzz/seeds/manifest/body-2-chunks")).unwrap();
        assert_eq!(
            (m.chunk_bytes, m.file_bytes, m.name.as_str(), m.chunks.len()),
            (4096, 5000, "a.txt", 2)
        );
        assert_eq!(
            m.chunks[1],
            ChunkEntry {
                id: ChunkId([0x22; 32]),
                sealed_bytes: 920,
                crc32c: 0x9abc_def0
            }
        );
    }

    #[test]
    fn envelope_header_round_trips_and_rejects() {
        let header = EnvelopeHeader {
            kdf: KdfParams::DEFAULT,
            salt: [7; 16],
            file_id: FileId([9; 16]),
            sealed_body_bytes: 40,
        };
        let mut env = header.encode().to_vec();
        env.extend_from_slice(&[0xaa; 40]);
        let (h, aad, body) = EnvelopeHeader::split(&env).unwrap();
        assert_eq!((h, aad, body.len()), (header, &env[..64], 40));

        let cases: Vec<(&str, Mutation, &str)> = vec![
            ("magic", Box::new(|b| b[0] = b'X'), "magic"),
            ("version", Box::new(|b| b[4] = 9), "version 9"),
            ("kdf algorithm", Box::new(|b| b[5] = 2), "Argon2id"),
            (
                "kdf memory",
                Box::new(|b| b[8..12].copy_from_slice(&u32::MAX.to_le_bytes())),
                "memory",
            ),
            (
                "kdf passes",
                Box::new(|b| b[12..16].copy_from_slice(&0u32.to_le_bytes())),
                "passes",
            ),
            ("reserved", Box::new(|b| b[60] = 1), "reserved"),
            (
                "body too short",
                Box::new(|b| b[52..56].copy_from_slice(&3u32.to_le_bytes())),
                "sealed_body_bytes",
            ),
            (
                "body truncated",
                Box::new(|b| {
                    b.pop();
                }),
                "truncated",
            ),
            ("body longer", Box::new(|b| b.push(1)), "unexpected bytes"),
            ("header only", Box::new(|b| b.truncate(20)), "truncated"),
        ];
        for (name, mutate, expect) in cases {
            let mut bytes = env.clone();
            mutate(&mut bytes);
            let err = EnvelopeHeader::split(&bytes).expect_err(name).to_string();
            assert!(err.contains(expect), "{name}: {err:?} lacks {expect:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn body_decoder_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = Manifest::decode(&bytes);
        }

        #[test]
        fn envelope_decoder_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = EnvelopeHeader::split(&bytes);
        }
    }
}
