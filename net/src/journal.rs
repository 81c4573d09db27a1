//! The upload journal: what `mspace put` needs to resume an interrupted upload without
//! re-sending what the host already has, and without ever sealing two different plaintexts
//! under one key and nonce (`docs/wire.md`, "Upload journal").
//!
//! The journal holds the seal's parameters (salt, KDF, file id: the key is derived again
//! from the passphrase, never stored) and, for every chunk *before any byte of it is sent*,
//! its index and id. Sealing is deterministic for a given key, so on resume each re-sealed
//! chunk is compared with its journaled id: equal means the plaintext is unchanged and the
//! host's copy (if it has one) is the same bytes; different means the file or passphrase
//! changed, and the upload starts over with a fresh key, sending nothing under the old one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use proto::decode::{DecodeError, Reader};
use proto::{ChunkId, FileId, KdfParams};

const MAGIC: &[u8; 4] = b"MSPJ";
const VERSION: u8 = 1;
pub const HEADER_BYTES: usize = 92;
pub const ENTRY_BYTES: usize = 40;

fn check_of(bytes: &[u8]) -> [u8; 4] {
    blake3::hash(bytes).as_bytes()[..4]
        .try_into()
        .expect("4 bytes")
}

/// What identifies an upload: the link, the file as it was, and the seal's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalHeader {
    pub link: [u8; 16],
    pub file_bytes: u64,
    pub mtime_nanos: u64,
    pub chunk_bytes: u32,
    pub kdf: KdfParams,
    pub salt: [u8; 16],
    pub file_id: FileId,
}

impl JournalHeader {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = Vec::with_capacity(HEADER_BYTES);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[VERSION, 0, 0, 0]);
        out.extend_from_slice(&self.link);
        out.extend_from_slice(&self.file_bytes.to_le_bytes());
        out.extend_from_slice(&self.mtime_nanos.to_le_bytes());
        out.extend_from_slice(&self.chunk_bytes.to_le_bytes());
        out.extend_from_slice(&self.kdf.m_kib.to_le_bytes());
        out.extend_from_slice(&self.kdf.t.to_le_bytes());
        out.extend_from_slice(&self.kdf.p.to_le_bytes());
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.file_id.0);
        let check = check_of(&out);
        out.extend_from_slice(&check);
        out.try_into().expect("HEADER_BYTES")
    }
}

pub fn encode_entry(index: u32, id: &ChunkId) -> [u8; ENTRY_BYTES] {
    let mut out = [0u8; ENTRY_BYTES];
    out[..4].copy_from_slice(&index.to_le_bytes());
    out[4..36].copy_from_slice(&id.0);
    let check = check_of(&out[..36]);
    out[36..].copy_from_slice(&check);
    out
}

/// Decodes a journal: its header and the ids of chunks 0, 1, 2, ... that may have been
/// sent. A partial entry at the end (a crash mid-append) is ignored; anything else wrong is
/// an error, and the caller starts over.
pub fn decode(bytes: &[u8]) -> Result<(JournalHeader, Vec<ChunkId>), DecodeError> {
    let head = bytes.get(..HEADER_BYTES).ok_or(DecodeError::Truncated {
        what: "upload journal",
        field: "header",
        needed: HEADER_BYTES,
        available: bytes.len(),
    })?;
    let mut r = Reader::new("upload journal", head);
    r.magic(MAGIC)?;
    r.version(VERSION)?;
    r.reserved("reserved", 3)?;
    let header = JournalHeader {
        link: r.array("link id")?,
        file_bytes: r.u64("file bytes")?,
        mtime_nanos: r.u64("mtime")?,
        chunk_bytes: r.u32("chunk bytes")?,
        kdf: KdfParams {
            m_kib: r.u32("kdf memory")?,
            t: r.u32("kdf passes")?,
            p: r.u32("kdf lanes")?,
        },
        salt: r.array("salt")?,
        file_id: FileId(r.array("file id")?),
    };
    let check = r.array::<4>("check")?;
    r.finish()?;
    if check != check_of(&head[..HEADER_BYTES - 4]) {
        return Err(DecodeError::Invalid {
            what: "upload journal",
            field: "header check",
            reason: "does not match: the journal is damaged".into(),
        });
    }
    proto::check_chunk_bytes(header.chunk_bytes).map_err(|e| DecodeError::Invalid {
        what: "upload journal",
        field: "chunk bytes",
        reason: e,
    })?;
    header.kdf.check().map_err(|e| DecodeError::Invalid {
        what: "upload journal",
        field: "kdf",
        reason: e,
    })?;
    let rest = &bytes[HEADER_BYTES..];
    let whole = rest.len() / ENTRY_BYTES * ENTRY_BYTES;
    let mut ids = Vec::with_capacity(whole / ENTRY_BYTES);
    for (i, e) in rest[..whole].chunks_exact(ENTRY_BYTES).enumerate() {
        let index = u32::from_le_bytes(e[..4].try_into().expect("4 bytes"));
        if check_of(&e[..36]) != e[36..] || index as usize != i {
            return Err(DecodeError::Invalid {
                what: "upload journal",
                field: "entry",
                reason: format!("entry {i} is damaged or out of order"),
            });
        }
        ids.push(ChunkId(e[4..36].try_into().expect("32 bytes")));
    }
    Ok((header, ids))
}

/// An open journal, appended to as chunks are about to be sent.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    pub header: JournalHeader,
    /// Ids of chunks journaled before this run (possibly sent).
    pub previous: Vec<ChunkId>,
    written: u32,
}

fn jerr(path: &Path, e: impl std::fmt::Display) -> crate::NetError {
    crate::NetError::Journal {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// An upload's lock ([`Journal::lock`]): removes its file when dropped, before letting go.
#[derive(Debug)]
pub struct JournalLock {
    path: PathBuf,
    _file: File,
}

impl Drop for JournalLock {
    fn drop(&mut self) {
        // Still locked here: the file goes first, the lock when `_file` closes after.
        let _ = fs::remove_file(&self.path);
    }
}

impl Journal {
    /// Takes the upload's lock (`<journal>.lock`, never renamed): one upload of a file through
    /// a link at a time, so two runs never seal with the same key behind each other's back.
    /// Held until the returned lock is dropped, which removes the lock file (so they do not
    /// pile up, one per link, in the state directory) while it still holds it.
    pub fn lock(path: &Path) -> Result<JournalLock, crate::NetError> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| jerr(path, e))?;
        }
        let lock_path = path.with_extension("lock");
        let busy = || {
            jerr(
                path,
                "another `mspace put` of this file through this link is running",
            )
        };
        // A run that held the lock removes the file as it lets go: one that opened the file
        // before that and locks it afterwards holds a lock on a file no longer there, which
        // a third run would not see. So the lock counts only if the path still names the
        // file locked; else the file is opened again.
        for _ in 0..8 {
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&lock_path)
                .map_err(|e| jerr(&lock_path, e))?;
            nix::fcntl::flock(f.as_raw_fd(), nix::fcntl::FlockArg::LockExclusiveNonblock)
                .map_err(|_| busy())?;
            let held = f.metadata().map_err(|e| jerr(&lock_path, e))?.ino();
            match fs::metadata(&lock_path) {
                Ok(m) if m.ino() == held => {
                    return Ok(JournalLock {
                        path: lock_path,
                        _file: f,
                    })
                }
                _ => continue,
            }
        }
        Err(busy())
    }
    /// Reads the journal at `path` if it exists and still describes this upload (same link,
    /// file size and modification time, chunk size); `None` otherwise.
    pub fn find(
        path: &Path,
        link: &[u8; 16],
        file_bytes: u64,
        mtime_nanos: u64,
        chunk_bytes: u32,
    ) -> Option<(JournalHeader, Vec<ChunkId>)> {
        let bytes = fs::read(path).ok()?;
        let (h, ids) = decode(&bytes).ok()?;
        (h.link == *link
            && h.file_bytes == file_bytes
            && h.mtime_nanos == mtime_nanos
            && h.chunk_bytes == chunk_bytes)
            .then_some((h, ids))
    }

    /// Starts the journal at `path` (replacing any other), or continues one found by
    /// [`Journal::find`] with `previous` ids.
    pub fn start(
        path: &Path,
        header: JournalHeader,
        previous: Vec<ChunkId>,
    ) -> Result<Journal, crate::NetError> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| jerr(path, e))?;
        }
        let mut bytes = header.encode().to_vec();
        for (i, id) in previous.iter().enumerate() {
            bytes.extend_from_slice(&encode_entry(u32::try_from(i).unwrap_or(u32::MAX), id));
        }
        // Rewritten whole through a temporary file: a torn tail from the last run is gone.
        let mut suffix = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut suffix);
        let tmp = path.with_extension(format!(
            "{}.partial",
            data_encoding::HEXLOWER.encode(&suffix)
        ));
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| jerr(path, e))?;
            f.write_all(&bytes)
                .and_then(|()| f.sync_all())
                .map_err(|e| jerr(path, e))?;
        }
        fs::rename(&tmp, path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            jerr(path, e)
        })?;
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| jerr(path, e))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| jerr(path, e))?;
        let written = u32::try_from(previous.len()).unwrap_or(u32::MAX);
        Ok(Journal {
            path: path.to_owned(),
            file,
            header,
            previous,
            written,
        })
    }

    /// Chunks journaled so far (this run and before).
    pub fn len(&self) -> u32 {
        self.written
    }

    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// Records chunks `len()..` as about to be sent, durably, before any of their bytes go.
    pub fn append(&mut self, ids: &[ChunkId]) -> Result<(), crate::NetError> {
        let mut bytes = Vec::with_capacity(ids.len() * ENTRY_BYTES);
        for id in ids {
            bytes.extend_from_slice(&encode_entry(self.written, id));
            self.written += 1;
        }
        self.file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| jerr(&self.path, e))
    }

    /// The upload finished: the journal is no longer needed.
    pub fn remove(self) -> Result<(), crate::NetError> {
        // The lock file stays: removing it while locked would let a second run lock a new
        // file of the same name while this one still holds the old.
        fs::remove_file(&self.path).map_err(|e| jerr(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn header() -> JournalHeader {
        JournalHeader {
            link: [1; 16],
            file_bytes: 1 << 20,
            mtime_nanos: 123,
            chunk_bytes: 64 << 10,
            kdf: KdfParams::DEFAULT,
            salt: [2; 16],
            file_id: FileId([3; 16]),
        }
    }

    #[test]
    fn journals_round_trip_and_resume() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.journal");
        let mut j = Journal::start(&p, header(), Vec::new()).unwrap();
        j.append(&[ChunkId([7; 32]), ChunkId([8; 32])]).unwrap();
        drop(j);
        // A torn append is ignored.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&encode_entry(2, &ChunkId([9; 32]))[..13])
            .unwrap();
        let (h, ids) = Journal::find(&p, &[1; 16], 1 << 20, 123, 64 << 10).unwrap();
        assert_eq!(h, header());
        assert_eq!(ids, vec![ChunkId([7; 32]), ChunkId([8; 32])]);
        assert!(
            Journal::find(&p, &[1; 16], 1 << 20, 124, 64 << 10).is_none(),
            "file changed"
        );
        let j = Journal::start(&p, h, ids).unwrap();
        assert_eq!(j.len(), 2);
        j.remove().unwrap();
        assert!(!p.exists());
    }

    #[test]
    fn one_lock_at_a_time_and_its_file_goes_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("put-x.journal");
        let lock_file = p.with_extension("lock");
        let held = Journal::lock(&p).unwrap();
        assert!(lock_file.exists());
        let e = Journal::lock(&p).unwrap_err().to_string();
        assert!(e.contains("another `mspace put`"), "{e}");
        drop(held);
        assert!(!lock_file.exists(), "a released lock leaves no file behind");
        // A lock file a killed run left (no one holds it) is taken over.
        std::fs::write(&lock_file, b"").unwrap();
        let again = Journal::lock(&p).unwrap();
        drop(again);
        assert!(!lock_file.exists());
    }

    #[test]
    fn damaged_journals_are_refused() {
        let mut good = header().encode().to_vec();
        good.extend_from_slice(&encode_entry(0, &ChunkId([7; 32])));
        assert!(decode(&good).is_ok());
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 1;
            assert!(decode(&bad).is_err(), "flip at {i}");
        }
        assert!(decode(&good[..50]).is_err());
        let mut skip = header().encode().to_vec();
        skip.extend_from_slice(&encode_entry(1, &ChunkId([7; 32])));
        assert!(decode(&skip)
            .unwrap_err()
            .to_string()
            .contains("out of order"));
    }
}
