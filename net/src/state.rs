//! What a host keeps beside its chunk store (`docs/wire.md`, "Host state"):
//!
//! - `grants.log`: how many bytes each upload link has used, so that a link's allowance
//!   holds across connections and restarts. Appending a record and syncing it for every put
//!   would cost a sync per chunk, so the log records *reservations* in steps of
//!   [`RESERVE_STEP`]: bytes are counted in memory and a new reservation is made durable
//!   before the count passes the last one. After a crash a link is charged its whole last
//!   reservation: it may lose up to one step, never gain.
//! - `objects/<manifest id hex>`: for each sealed file uploaded, the ids of its chunks,
//!   which a download link for that manifest allows reading.
//!
//! Both are written with the temporary-file, sync, rename, directory-sync pattern or
//! appended and synced, and both decoders reject damage with an error naming the file.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use proto::decode::{DecodeError, Reader};
use proto::ChunkId;

/// Reservation step of the grants log.
pub const RESERVE_STEP: u64 = 64 << 20;
const GRANT_RECORD_BYTES: usize = 32;
const GRANT_MAGIC: &[u8; 4] = b"MSGR";
const OBJECT_MAGIC: &[u8; 4] = b"MSOB";
const STATE_VERSION: u8 = 1;

fn check_of(bytes: &[u8]) -> [u8; 4] {
    blake3::hash(bytes).as_bytes()[..4]
        .try_into()
        .expect("4 bytes")
}

/// One grants-log record: `MSGR`, link id, reserved bytes, check (4 bytes of BLAKE3).
pub fn encode_grant(link: &[u8; 16], reserved: u64) -> [u8; GRANT_RECORD_BYTES] {
    let mut out = [0u8; GRANT_RECORD_BYTES];
    out[..4].copy_from_slice(GRANT_MAGIC);
    out[4..20].copy_from_slice(link);
    out[20..28].copy_from_slice(&reserved.to_le_bytes());
    let check = check_of(&out[..28]);
    out[28..].copy_from_slice(&check);
    out
}

/// Decodes a grants log: the highest reservation per link. A partial record at the end (a
/// write cut by a crash) is ignored and reported as the length to keep; a damaged whole
/// record is an error.
pub fn decode_grants(bytes: &[u8]) -> Result<(HashMap<[u8; 16], u64>, usize), DecodeError> {
    let mut out: HashMap<[u8; 16], u64> = HashMap::new();
    let whole = bytes.len() / GRANT_RECORD_BYTES * GRANT_RECORD_BYTES;
    for rec in bytes[..whole].chunks_exact(GRANT_RECORD_BYTES) {
        let mut r = Reader::new("grants log record", rec);
        r.magic(GRANT_MAGIC)?;
        let link = r.array::<16>("link id")?;
        let reserved = r.u64("reserved bytes")?;
        let check = r.array::<4>("check")?;
        r.finish()?;
        if check != check_of(&rec[..28]) {
            return Err(DecodeError::Invalid {
                what: "grants log record",
                field: "check",
                reason: "does not match the record: the log is damaged".into(),
            });
        }
        let e = out.entry(link).or_default();
        *e = (*e).max(reserved);
    }
    Ok((out, whole))
}

/// An object record: `MSOB`, version, 3 reserved bytes, manifest id, chunk count, chunk ids,
/// check (4 bytes of BLAKE3 of everything before).
pub fn encode_object(manifest: &ChunkId, chunks: &[ChunkId]) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + chunks.len() * 32);
    out.extend_from_slice(OBJECT_MAGIC);
    out.extend_from_slice(&[STATE_VERSION, 0, 0, 0]);
    out.extend_from_slice(&manifest.0);
    out.extend_from_slice(
        &u32::try_from(chunks.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for c in chunks {
        out.extend_from_slice(&c.0);
    }
    let check = check_of(&out);
    out.extend_from_slice(&check);
    out
}

pub fn decode_object(bytes: &[u8]) -> Result<(ChunkId, Vec<ChunkId>), DecodeError> {
    let mut r = Reader::new("object record", bytes);
    r.magic(OBJECT_MAGIC)?;
    r.version(STATE_VERSION)?;
    r.reserved("reserved", 3)?;
    let manifest = ChunkId(r.array("manifest id")?);
    let n = r.u32("chunk count")?;
    if n > proto::CHUNKS_PER_FILE_MAX || (n as usize) * 32 + 4 != r.remaining() {
        return Err(r.invalid(
            "chunk count",
            format!("{n} does not match the record's length"),
        ));
    }
    let chunks = (0..n)
        .map(|_| Ok(ChunkId(r.array("chunk id")?)))
        .collect::<Result<Vec<_>, DecodeError>>()?;
    let check = r.array::<4>("check")?;
    r.finish()?;
    if check != check_of(&bytes[..bytes.len() - 4]) {
        return Err(DecodeError::Invalid {
            what: "object record",
            field: "check",
            reason: "does not match the record: it is damaged".into(),
        });
    }
    Ok((manifest, chunks))
}

#[derive(Debug, Default)]
struct LinkUse {
    used: u64,
    reserved: u64,
}

/// The host's state directory.
#[derive(Debug)]
pub struct HostState {
    dir: PathBuf,
    grants: Mutex<(File, HashMap<[u8; 16], LinkUse>)>,
}

/// Why a reservation failed.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("the link allows {left} more bytes, this needs {asked}")]
    Exceeded { left: u64, asked: u64 },
    #[error("recording the link's usage failed: {0}")]
    Io(#[from] std::io::Error),
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl HostState {
    /// Opens (or creates) the state directory, reading the grants log.
    pub fn open(dir: &Path) -> Result<HostState, crate::NetError> {
        let err = |what: &str, e: std::io::Error| {
            crate::NetError::State(format!("{what} {}: {e}", dir.display()))
        };
        fs::create_dir_all(dir.join("objects")).map_err(|e| err("create", e))?;
        let path = dir.join("grants.log");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(err("read grants log in", e)),
        };
        let (reserved, keep) = decode_grants(&bytes)
            .map_err(|e| crate::NetError::State(format!("{}: {e}", path.display())))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| err("open grants log in", e))?;
        if keep != bytes.len() {
            file.set_len(keep as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| err("truncate torn grants log in", e))?;
        }
        sync_dir(dir).map_err(|e| err("sync", e))?;
        let uses = reserved
            .into_iter()
            .map(|(k, r)| {
                (
                    k,
                    LinkUse {
                        used: r,
                        reserved: r,
                    },
                )
            })
            .collect();
        Ok(HostState {
            dir: dir.to_owned(),
            grants: Mutex::new((file, uses)),
        })
    }

    /// Bytes link `id` has used (counting a crash's lost reservation as used).
    pub fn used(&self, id: &[u8; 16]) -> u64 {
        let g = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        g.1.get(id).map_or(0, |u| u.used)
    }

    /// Charges `bytes` to link `id`, whose limit is `max`; durable before it returns `Ok`
    /// whenever the count passes the last reservation.
    pub fn reserve(&self, id: &[u8; 16], max: u64, bytes: u64) -> Result<(), QuotaError> {
        let mut g = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        let (file, uses) = &mut *g;
        let u = uses.entry(*id).or_default();
        let left = max.saturating_sub(u.used);
        if bytes > left {
            return Err(QuotaError::Exceeded { left, asked: bytes });
        }
        let used = u.used + bytes;
        if used > u.reserved {
            let reserved = used.saturating_add(RESERVE_STEP).min(max);
            file.write_all(&encode_grant(id, reserved))?;
            file.sync_data()?;
            u.reserved = reserved;
        }
        u.used = used;
        Ok(())
    }

    /// Gives back bytes charged for a put that failed or was already stored.
    pub fn release(&self, id: &[u8; 16], bytes: u64) {
        let mut g = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = g.1.get_mut(id) {
            u.used = u.used.saturating_sub(bytes);
        }
    }

    fn object_path(&self, manifest: &ChunkId) -> PathBuf {
        self.dir.join("objects").join(manifest.to_hex())
    }

    /// Records a sealed file's chunks under its manifest id, durably.
    pub fn put_object(&self, manifest: &ChunkId, chunks: &[ChunkId]) -> std::io::Result<()> {
        let dir = self.dir.join("objects");
        let path = self.object_path(manifest);
        let tmp = dir.join(format!(".{}.partial", manifest.to_hex()));
        let mut f = File::create(&tmp)?;
        f.write_all(&encode_object(manifest, chunks))?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        sync_dir(&dir)
    }

    /// The chunks of a sealed file, if it was uploaded here.
    pub fn object(&self, manifest: &ChunkId) -> Result<Option<HashSet<ChunkId>>, crate::NetError> {
        let path = self.object_path(manifest);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(crate::NetError::State(format!(
                    "read {}: {e}",
                    path.display()
                )))
            }
        };
        let (m, chunks) = decode_object(&bytes)
            .map_err(|e| crate::NetError::State(format!("{}: {e}", path.display())))?;
        if m != *manifest {
            return Err(crate::NetError::State(format!(
                "{} names manifest {m}",
                path.display()
            )));
        }
        Ok(Some(chunks.into_iter().collect()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn reservations_survive_a_restart_and_never_grant_more() {
        let dir = tempfile::tempdir().unwrap();
        let st = HostState::open(dir.path()).unwrap();
        let id = [1u8; 16];
        st.reserve(&id, 1 << 30, 1000).unwrap();
        st.reserve(&id, 1 << 30, 2000).unwrap();
        assert_eq!(st.used(&id), 3000);
        st.release(&id, 1000);
        assert_eq!(st.used(&id), 2000);
        assert!(matches!(
            st.reserve(&id, 5000, 4000),
            Err(QuotaError::Exceeded { left: 3000, .. })
        ));
        drop(st);
        // A crash loses the count in memory: the link is charged its whole reservation.
        let st = HostState::open(dir.path()).unwrap();
        assert_eq!(st.used(&id), 1000 + RESERVE_STEP);
    }

    #[test]
    fn a_torn_grant_record_is_cut_and_a_damaged_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = encode_grant(&[2; 16], 77).to_vec();
        log.extend_from_slice(&encode_grant(&[2; 16], 99)[..10]);
        fs::write(dir.path().join("grants.log"), &log).unwrap();
        let st = HostState::open(dir.path()).unwrap();
        assert_eq!(st.used(&[2; 16]), 77);
        drop(st);
        assert_eq!(fs::read(dir.path().join("grants.log")).unwrap().len(), 32);

        let mut bad = encode_grant(&[2; 16], 77);
        bad[25] ^= 1;
        fs::write(dir.path().join("grants.log"), bad).unwrap();
        let e = HostState::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");
        let mut bad = encode_grant(&[2; 16], 77);
        bad[0] = b'X';
        assert!(decode_grants(&bad).is_err());
    }

    #[test]
    fn objects_round_trip_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let st = HostState::open(dir.path()).unwrap();
        let m = ChunkId([9; 32]);
        assert!(st.object(&m).unwrap().is_none());
        st.put_object(&m, &[ChunkId([1; 32]), ChunkId([2; 32])])
            .unwrap();
        assert_eq!(st.object(&m).unwrap().unwrap().len(), 2);

        let good = encode_object(&m, &[ChunkId([1; 32])]);
        assert!(decode_object(&good).is_ok());
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(decode_object(&bad).is_err(), "flip at {i}");
        }
        assert!(decode_object(&good[..good.len() - 1]).is_err());
        let mut long = good.clone();
        long.push(0);
        assert!(decode_object(&long).is_err());
        fs::write(dir.path().join("objects").join(m.to_hex()), &good[..20]).unwrap();
        assert!(st.object(&m).is_err());
    }
}
