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
//! - `deals/<deal id hex>`: an empty file per storage deal whose upload link this host
//!   granted: what is uploaded under that link (the deal id's first 16 bytes) is kept until
//!   the agent releases the deal, not for the retention period, and an agent that starts
//!   again finds the deals it must still release.
//!
//! They are written with the temporary-file, sync, rename, directory-sync pattern,
//! appended and synced, or created and their directory synced; the decoders reject damage
//! with an error naming the file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use proto::decode::{DecodeError, Reader};
use proto::ChunkId;

/// Reservation step of the grants log.
pub const RESERVE_STEP: u64 = 64 << 20;
const GRANT_RECORD_BYTES: usize = 32;
const UPLOAD_RECORD_BYTES: usize = 56;
const GRANT_MAGIC: &[u8; 4] = b"MSGR";
const UPLOAD_MAGIC: &[u8; 4] = b"MSUP";
/// An uploads-log record withdrawing an earlier `MSUP` of the same link and chunk.
const WITHDRAW_MAGIC: &[u8; 4] = b"MSUD";
const OBJECT_MAGIC: &[u8; 4] = b"MSOB";
const STATE_VERSION: u8 = 1;

fn check_of(bytes: &[u8]) -> [u8; 4] {
    blake3::hash(bytes).as_bytes()[..4]
        .try_into()
        .expect("4 bytes")
}

/// A record of `body` behind `magic`, with its check.
fn record(magic: &[u8; 4], body: &[&[u8]]) -> Vec<u8> {
    let mut out = magic.to_vec();
    for b in body {
        out.extend_from_slice(b);
    }
    let check = check_of(&out);
    out.extend_from_slice(&check);
    out
}

/// A log record's kind (the index of its magic in the list the log accepts) and body.
type Rec<'a> = (usize, &'a [u8]);

/// The whole records of an append-only log of `len`-byte records, each checked; a partial
/// record at the end (a crash mid-append) is left out and the length to keep returned.
fn records<'a>(
    what: &'static str,
    bytes: &'a [u8],
    len: usize,
    magics: &[&[u8; 4]],
) -> Result<(Vec<Rec<'a>>, usize), DecodeError> {
    let whole = bytes.len() / len * len;
    let mut out = Vec::with_capacity(whole / len);
    for (i, rec) in bytes[..whole].chunks_exact(len).enumerate() {
        let magic = magics.iter().position(|m| rec[..4] == m[..]);
        match magic {
            Some(m) if check_of(&rec[..len - 4]) == rec[len - 4..] => {
                out.push((m, &rec[4..len - 4]))
            }
            _ => {
                return Err(DecodeError::Invalid {
                    what,
                    field: "record",
                    reason: format!("record {i} is damaged"),
                })
            }
        }
    }
    Ok((out, whole))
}

/// One grants-log record: `MSGR`, link id, reserved bytes, check (4 bytes of BLAKE3).
pub fn encode_grant(link: &[u8; 16], reserved: u64) -> Vec<u8> {
    record(GRANT_MAGIC, &[link, &reserved.to_le_bytes()])
}

/// Decodes a grants log: the highest reservation per link, and the length to keep.
pub fn decode_grants(bytes: &[u8]) -> Result<(HashMap<[u8; 16], u64>, usize), DecodeError> {
    let (recs, keep) = records("grants log", bytes, GRANT_RECORD_BYTES, &[GRANT_MAGIC])?;
    let mut out: HashMap<[u8; 16], u64> = HashMap::new();
    for (_, r) in recs {
        let link: [u8; 16] = r[..16].try_into().expect("16 bytes");
        let reserved = u64::from_le_bytes(r[16..24].try_into().expect("8 bytes"));
        let e = out.entry(link).or_default();
        *e = (*e).max(reserved);
    }
    Ok((out, keep))
}

/// One uploads-log record: `MSUP`, link id, chunk id, check: the chunk was sent under the link.
pub fn encode_upload(link: &[u8; 16], chunk: &ChunkId) -> Vec<u8> {
    record(UPLOAD_MAGIC, &[link, &chunk.0])
}

/// One uploads-log record withdrawing `chunk` from `link`: `MSUD`, link id, chunk id, check.
pub fn encode_withdrawal(link: &[u8; 16], chunk: &ChunkId) -> Vec<u8> {
    record(WITHDRAW_MAGIC, &[link, &chunk.0])
}

/// Decodes an uploads log: the chunks each link uploaded and did not withdraw, and the
/// length to keep.
pub fn decode_uploads(bytes: &[u8]) -> Result<(UploadSets, usize), DecodeError> {
    let (recs, keep) = records(
        "uploads log",
        bytes,
        UPLOAD_RECORD_BYTES,
        &[UPLOAD_MAGIC, WITHDRAW_MAGIC],
    )?;
    let mut out = UploadSets::new();
    for (magic, r) in recs {
        let link: [u8; 16] = r[..16].try_into().expect("16 bytes");
        let chunk = ChunkId(r[16..48].try_into().expect("32 bytes"));
        if magic == 0 {
            out.entry(link).or_default().insert(chunk);
        } else if let Some(set) = out.get_mut(&link) {
            set.remove(&chunk);
            if set.is_empty() {
                out.remove(&link);
            }
        }
    }
    Ok((out, keep))
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

/// An append-only log file and the length of its whole records (a failed append is cut
/// back to it, so one error never misaligns the records after it).
#[derive(Debug)]
struct Log {
    file: File,
    len: u64,
}

impl Log {
    /// Opens `path`, decodes it with `decode`, cuts a torn tail.
    fn open<T>(
        path: &Path,
        decode: impl Fn(&[u8]) -> Result<(T, usize), DecodeError>,
    ) -> Result<(Log, T), crate::NetError> {
        let err =
            |e: &dyn std::fmt::Display| crate::NetError::State(format!("{}: {e}", path.display()));
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(err(&e)),
        };
        let (value, keep) = decode(&bytes).map_err(|e| err(&e))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| err(&e))?;
        if keep != bytes.len() {
            file.set_len(keep as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| err(&e))?;
        }
        Ok((
            Log {
                file,
                len: keep as u64,
            },
            value,
        ))
    }

    /// Appends and syncs `bytes`; on failure the file is cut back to its last whole record.
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write(bytes, true)
    }

    fn write(&mut self, bytes: &[u8], sync: bool) -> std::io::Result<()> {
        let r =
            self.file.write_all(bytes).and_then(
                |()| {
                    if sync {
                        self.file.sync_data()
                    } else {
                        Ok(())
                    }
                },
            );
        match r {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }
}

/// Chunks recorded as sent, per link.
type UploadSets = HashMap<[u8; 16], HashSet<ChunkId>>;

/// What a put or delete of one chunk has under way ([`HostState::begin_put`],
/// [`HostState::begin_delete`]): the two never overlap, so a put acknowledged as stored
/// (or "already stored") is never followed by a delete that decided before it.
#[derive(Debug, Default)]
struct Busy {
    puts: u32,
    deleting: bool,
}

/// The uploads log and what is decided under its lock.
#[derive(Debug)]
struct Uploads {
    log: Log,
    sets: UploadSets,
    /// How many recorded files list each chunk: a listed chunk is never deleted through
    /// the data plane (the file would lose it). Rebuilt from `objects/` at open.
    listed: HashMap<ChunkId, u32>,
    busy: HashMap<ChunkId, Busy>,
}

/// The host's state directory.
#[derive(Debug)]
pub struct HostState {
    dir: PathBuf,
    grants: Mutex<(Log, HashMap<[u8; 16], LinkUse>)>,
    uploads: Mutex<Uploads>,
    objects_lock: Mutex<()>,
    /// The deals held (`deals/`), by their upload link's id (the deal id's first 16
    /// bytes): every put asks whether its link is one.
    deals: Mutex<HashMap<[u8; 16], Held>>,
    /// The download payments recorded (`claims/`), with their deadlines: read once at
    /// start, then kept with the files as they are added and removed.
    claims: Mutex<BTreeMap<[u8; 32], u64>>,
}

/// A deal the host holds data for, as recorded in `deals/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    deal: [u8; 32],
    /// The deal's sender (the file's content); `None` in a record written before senders
    /// were recorded (an empty file).
    sender: Option<[u8; 32]>,
}

/// Why a delete through the data plane was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeleteRefused {
    #[error("chunk {0} was not uploaded with this link (or was withdrawn already)")]
    NotUploaded(ChunkId),
    #[error("chunk {0} is part of a file recorded here: it cannot be deleted on its own")]
    Listed(ChunkId),
    #[error("chunk {0} has a put or delete under way: retry when it is answered")]
    Busy(ChunkId),
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

/// What recording an object did.
#[derive(Debug, PartialEq, Eq)]
pub enum ObjectOutcome {
    Recorded,
    /// The same list was already recorded.
    Existing,
}

/// A deal's upload link id: the first 16 bytes of the deal id.
fn link_of(deal: &[u8; 32]) -> [u8; 16] {
    deal[..16].try_into().expect("16 bytes")
}

/// The deals recorded in `dir` (`deals/`): each file's name is a deal id in lowercase hex,
/// its content the deal sender's 32-byte key (or nothing, in records of earlier versions).
fn held_deals(dir: &Path) -> Result<HashMap<[u8; 16], Held>, crate::NetError> {
    let err = |path: &Path, e: &dyn std::fmt::Display| {
        crate::NetError::State(format!("{}: {e}", path.display()))
    };
    let mut held = HashMap::new();
    for entry in fs::read_dir(dir).map_err(|e| err(dir, &e))? {
        let path = entry.map_err(|e| err(dir, &e))?.path();
        // A record being written when the host stopped: its deal's link was not granted.
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
        {
            fs::remove_file(&path).map_err(|e| err(&path, &e))?;
            continue;
        }
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| data_encoding::HEXLOWER.decode(n.as_bytes()).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| err(&path, &"not a deal id (64 lowercase hex digits)"))?;
        let content = fs::read(&path).map_err(|e| err(&path, &e))?;
        let sender = decode_deal_record(&content).map_err(|e| err(&path, &e))?;
        held.insert(link_of(&id), Held { deal: id, sender });
    }
    Ok(held)
}

/// The content of a `deals/` record: the sender's 32-byte key, or nothing (a record of a
/// version before senders were recorded).
pub fn decode_deal_record(content: &[u8]) -> Result<Option<[u8; 32]>, String> {
    match content.len() {
        0 => Ok(None),
        32 => Ok(Some(content.try_into().expect("32 bytes"))),
        n => Err(format!(
            "{n} bytes: a deal record holds its sender's 32-byte key"
        )),
    }
}

/// The download payments recorded in `dir` (`claims/`), read at start: each file's name is
/// a payment id in lowercase hex, its content the payment's claim deadline (a height, u64
/// little-endian). A temporary file (a dot name) is one whose link was never given: it is
/// removed.
fn read_claims(dir: &Path) -> Result<BTreeMap<[u8; 32], u64>, crate::NetError> {
    let err = |path: &Path, e: &dyn std::fmt::Display| {
        crate::NetError::State(format!("{}: {e}", path.display()))
    };
    let mut found = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(|e| err(dir, &e))? {
        let path = entry.map_err(|e| err(dir, &e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            fs::remove_file(&path).map_err(|e| err(&path, &e))?;
            continue;
        }
        let id = data_encoding::HEXLOWER
            .decode(name.as_bytes())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| err(&path, &"not a payment id (64 lowercase hex digits)"))?;
        let content = fs::read(&path).map_err(|e| err(&path, &e))?;
        let deadline = decode_claim_record(&content).map_err(|e| err(&path, &e))?;
        found.insert(id, deadline);
    }
    Ok(found)
}

/// The content of a `claims/` record: the payment's claim deadline, u64 little-endian.
pub fn decode_claim_record(content: &[u8]) -> Result<u64, String> {
    <[u8; 8]>::try_from(content)
        .map(u64::from_le_bytes)
        .map_err(|_| {
            format!(
                "{} bytes: a claim record holds its 8-byte deadline",
                content.len()
            )
        })
}

/// How many recorded files list each chunk, from the object records in `dir`.
fn listed_chunks(dir: &Path) -> Result<HashMap<ChunkId, u32>, crate::NetError> {
    let err = |path: &Path, e: &dyn std::fmt::Display| {
        crate::NetError::State(format!("{}: {e}", path.display()))
    };
    let mut listed: HashMap<ChunkId, u32> = HashMap::new();
    for entry in fs::read_dir(dir).map_err(|e| err(dir, &e))? {
        let path = entry.map_err(|e| err(dir, &e))?.path();
        // Temporary files of an object being written start with a dot.
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'))
        {
            continue;
        }
        let bytes = fs::read(&path).map_err(|e| err(&path, &e))?;
        let (_, chunks) = decode_object(&bytes).map_err(|e| err(&path, &e))?;
        for c in chunks {
            *listed.entry(c).or_default() += 1;
        }
    }
    Ok(listed)
}

impl HostState {
    /// Opens (or creates) the state directory, reading its logs and object records.
    pub fn open(dir: &Path) -> Result<HostState, crate::NetError> {
        let err = |what: &str, e: std::io::Error| {
            crate::NetError::State(format!("{what} {}: {e}", dir.display()))
        };
        fs::create_dir_all(dir.join("objects")).map_err(|e| err("create", e))?;
        fs::create_dir_all(dir.join("deals")).map_err(|e| err("create", e))?;
        fs::create_dir_all(dir.join("claims")).map_err(|e| err("create", e))?;
        let (grants, reserved) = Log::open(&dir.join("grants.log"), decode_grants)?;
        let (uploads_log, uploads) = Log::open(&dir.join("uploads.log"), decode_uploads)?;
        sync_dir(dir).map_err(|e| err("sync", e))?;
        let listed = listed_chunks(&dir.join("objects"))?;
        let deals = held_deals(&dir.join("deals"))?;
        let claims = read_claims(&dir.join("claims"))?;
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
            grants: Mutex::new((grants, uses)),
            uploads: Mutex::new(Uploads {
                log: uploads_log,
                sets: uploads,
                listed,
                busy: HashMap::new(),
            }),
            objects_lock: Mutex::new(()),
            deals: Mutex::new(deals),
            claims: Mutex::new(claims),
        })
    }

    /// Records, durably, that this host granted the upload link of `deal`, paid by
    /// `sender`: what comes under it is kept until [`HostState::drop_deal`].
    pub fn hold_deal(&self, deal: &[u8; 32], sender: &[u8; 32]) -> Result<(), crate::NetError> {
        let mut held = self.deals.lock().unwrap_or_else(|p| p.into_inner());
        let record = Held {
            deal: *deal,
            sender: Some(*sender),
        };
        if held.get(&link_of(deal)) == Some(&record) {
            return Ok(());
        }
        let dir = self.dir.join("deals");
        let path = dir.join(data_encoding::HEXLOWER.encode(deal));
        let tmp = dir.join(format!(".{}.partial", data_encoding::HEXLOWER.encode(deal)));
        (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(sender)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            sync_dir(&dir)
        })()
        .map_err(|e| crate::NetError::State(format!("recording {}: {e}", path.display())))?;
        held.insert(link_of(deal), record);
        Ok(())
    }

    /// Forgets a released deal, durably.
    pub fn drop_deal(&self, deal: &[u8; 32]) -> Result<(), crate::NetError> {
        let mut held = self.deals.lock().unwrap_or_else(|p| p.into_inner());
        let dir = self.dir.join("deals");
        let path = dir.join(data_encoding::HEXLOWER.encode(deal));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(crate::NetError::State(format!(
                    "removing {}: {e}",
                    path.display()
                )))
            }
        }
        sync_dir(&dir)
            .map_err(|e| crate::NetError::State(format!("syncing {}: {e}", dir.display())))?;
        held.remove(&link_of(deal));
        Ok(())
    }

    /// Records, durably, a download payment this host is about to serve (before it gives
    /// the receiver its link): the agent claims it, also after a restart, and forgets it
    /// once the chain shows it claimed or its window closed ([`HostState::drop_claim`]).
    pub fn add_claim(&self, payment: &[u8; 32], deadline: u64) -> Result<(), crate::NetError> {
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        if claims.contains_key(payment) {
            return Ok(());
        }
        let dir = self.dir.join("claims");
        let name = data_encoding::HEXLOWER.encode(payment);
        let path = dir.join(&name);
        let tmp = dir.join(format!(".{name}.partial"));
        (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(&deadline.to_le_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            sync_dir(&dir)
        })()
        .map_err(|e| crate::NetError::State(format!("recording {}: {e}", path.display())))?;
        claims.insert(*payment, deadline);
        Ok(())
    }

    /// Forgets a download payment, durably.
    pub fn drop_claim(&self, payment: &[u8; 32]) -> Result<(), crate::NetError> {
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        let dir = self.dir.join("claims");
        let path = dir.join(data_encoding::HEXLOWER.encode(payment));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                claims.remove(payment);
                return Ok(());
            }
            Err(e) => {
                return Err(crate::NetError::State(format!(
                    "removing {}: {e}",
                    path.display()
                )))
            }
        }
        sync_dir(&dir)
            .map_err(|e| crate::NetError::State(format!("syncing {}: {e}", dir.display())))?;
        claims.remove(payment);
        Ok(())
    }

    /// The download payments recorded and not forgotten, with their deadlines, in id order.
    pub fn claims(&self) -> Vec<([u8; 32], u64)> {
        let claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        claims.iter().map(|(p, d)| (*p, *d)).collect()
    }

    /// The deals held, in id order.
    pub fn deals(&self) -> Vec<[u8; 32]> {
        let held = self.deals.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<[u8; 32]> = held.values().map(|h| h.deal).collect();
        v.sort_unstable();
        v
    }

    /// Whether `link` is the upload link of a deal held (its id's first 16 bytes).
    pub fn is_deal_link(&self, link: &[u8; 16]) -> bool {
        self.held_deal(link).is_some()
    }

    /// Bytes link `id` has used (counting a crash's lost reservation as used).
    pub fn used(&self, id: &[u8; 16]) -> u64 {
        let g = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        g.1.get(id).map_or(0, |u| u.used)
    }

    /// Charges `bytes` to link `id`, whose limit is `max`; durable before it returns `Ok`
    /// whenever the count passes the last reservation (once per [`RESERVE_STEP`]).
    pub fn reserve(&self, id: &[u8; 16], max: u64, bytes: u64) -> Result<(), QuotaError> {
        let mut g = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        let (log, uses) = &mut *g;
        let u = uses.entry(*id).or_default();
        let left = max.saturating_sub(u.used);
        if bytes > left {
            return Err(QuotaError::Exceeded { left, asked: bytes });
        }
        let used = u.used + bytes;
        if used > u.reserved {
            let reserved = used.saturating_add(RESERVE_STEP).min(max);
            log.append(&encode_grant(id, reserved))?;
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

    /// Records that `chunk` was sent under `link` (its verified bytes prove the sender holds
    /// it): only such chunks may be listed in that link's objects. The record is written at
    /// once and synced before any object is recorded ([`HostState::put_object`]); one lost
    /// in a crash makes `Have` report the chunk missing to this link, whose client then
    /// sends it again (answered "existing" after its bytes are checked), which records it.
    pub fn record_upload(&self, link: [u8; 16], chunk: ChunkId) -> Result<(), String> {
        let mut u = self.uploads();
        let Uploads { log, sets, .. } = &mut *u;
        if sets.get(&link).is_some_and(|s| s.contains(&chunk)) {
            return Ok(());
        }
        log.write(&encode_upload(&link, &chunk), false)
            .map_err(|e| format!("recording the upload: {e}"))?;
        sets.entry(link).or_default().insert(chunk);
        Ok(())
    }

    fn uploads(&self) -> std::sync::MutexGuard<'_, Uploads> {
        self.uploads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// For each of `chunks`, whether it was recorded as sent under `link`.
    pub fn uploaded(&self, link: &[u8; 16], chunks: &[ChunkId]) -> Vec<bool> {
        let u = self.uploads();
        let set = u.sets.get(link);
        chunks
            .iter()
            .map(|c| set.is_some_and(|s| s.contains(c)))
            .collect()
    }

    /// The first of `chunks` not uploaded under `link`, if any. A chunk uploaded under
    /// the link of another held deal of the same sender counts as uploaded: a file too
    /// large for one deal is paid as several, each part uploaded under its own deal's
    /// link, and its record (under the last part's link) lists them all.
    pub fn not_uploaded(&self, link: &[u8; 16], chunks: &[ChunkId]) -> Option<ChunkId> {
        let siblings: Vec<[u8; 16]> = {
            let held = self.deals.lock().unwrap_or_else(|p| p.into_inner());
            match held.get(link).and_then(|h| h.sender) {
                Some(sender) => held
                    .iter()
                    .filter(|(l, h)| *l != link && h.sender == Some(sender))
                    .map(|(l, _)| *l)
                    .collect(),
                None => Vec::new(),
            }
        };
        let u = self.uploads();
        let sets: Vec<&HashSet<ChunkId>> = std::iter::once(link)
            .chain(&siblings)
            .filter_map(|l| u.sets.get(l))
            .collect();
        chunks
            .iter()
            .find(|c| !sets.iter().any(|s| s.contains(c)))
            .copied()
    }

    /// Whether `chunk`, uploaded under `link`, is listed by a recorded file (so a delete
    /// through the link is refused until that file's record is removed).
    /// The upload links `chunk` was sent under.
    pub fn links_holding(&self, chunk: &ChunkId) -> Vec<[u8; 16]> {
        self.uploads()
            .sets
            .iter()
            .filter(|(_, s)| s.contains(chunk))
            .map(|(l, _)| *l)
            .collect()
    }

    /// The deal whose upload link is `link`, if it is held.
    pub fn held_deal(&self, link: &[u8; 16]) -> Option<[u8; 32]> {
        self.deals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(link)
            .map(|h| h.deal)
    }

    pub fn is_listed(&self, link: &[u8; 16], chunk: &ChunkId) -> bool {
        let u = self.uploads();
        u.sets.get(link).is_some_and(|s| s.contains(chunk))
            && u.listed.get(chunk).is_some_and(|&n| n > 0)
    }

    /// A put of `chunk` starts; refused while a delete of it is under way. Every `Ok` is
    /// matched by one [`HostState::end_put`] once the put is answered.
    pub fn begin_put(&self, chunk: ChunkId) -> Result<(), DeleteRefused> {
        let mut u = self.uploads();
        let b = u.busy.entry(chunk).or_default();
        if b.deleting {
            return Err(DeleteRefused::Busy(chunk));
        }
        b.puts += 1;
        Ok(())
    }

    pub fn end_put(&self, chunk: ChunkId) {
        let mut u = self.uploads();
        if let Some(b) = u.busy.get_mut(&chunk) {
            b.puts = b.puts.saturating_sub(1);
            if b.puts == 0 && !b.deleting {
                u.busy.remove(&chunk);
            }
        }
    }

    /// A delete of `chunk` through `link` starts: the link must have uploaded it, no
    /// recorded file may list it, and no put or delete of it may be under way. Returns
    /// whether the chunk's bytes are to be removed from the store (no other link holds
    /// it). Every `Ok` is matched by one [`HostState::end_delete`].
    pub fn begin_delete(&self, link: &[u8; 16], chunk: ChunkId) -> Result<bool, DeleteRefused> {
        let mut u = self.uploads();
        if !u.sets.get(link).is_some_and(|s| s.contains(&chunk)) {
            return Err(DeleteRefused::NotUploaded(chunk));
        }
        if u.listed.get(&chunk).is_some_and(|&n| n > 0) {
            return Err(DeleteRefused::Listed(chunk));
        }
        let held_elsewhere = u.sets.iter().any(|(l, s)| l != link && s.contains(&chunk));
        let b = u.busy.entry(chunk).or_default();
        if b.deleting || b.puts > 0 {
            return Err(DeleteRefused::Busy(chunk));
        }
        b.deleting = true;
        Ok(!held_elsewhere)
    }

    /// Ends a delete begun with [`HostState::begin_delete`]; if `withdraw`, the link no
    /// longer holds the chunk, recorded in the uploads log. The record is written after
    /// the store's delete and not synced: lost in a crash, it leaves the link holding a
    /// chunk that `Have` reports missing, and a second delete answers "not removed".
    pub fn end_delete(
        &self,
        link: &[u8; 16],
        chunk: ChunkId,
        withdraw: bool,
    ) -> Result<(), String> {
        let mut u = self.uploads();
        u.busy.remove(&chunk);
        if !withdraw {
            return Ok(());
        }
        u.log
            .write(&encode_withdrawal(link, &chunk), false)
            .map_err(|e| format!("recording the delete: {e}"))?;
        if let Some(set) = u.sets.get_mut(link) {
            set.remove(&chunk);
            if set.is_empty() {
                u.sets.remove(link);
            }
        }
        Ok(())
    }

    /// Counts `chunks` as listed by a file about to be recorded, so no delete removes
    /// them meanwhile; refused if a delete of one is under way. Undone with
    /// [`HostState::unlist`] unless the file is recorded.
    pub fn list(&self, chunks: &[ChunkId]) -> Result<(), DeleteRefused> {
        let mut u = self.uploads();
        if let Some(c) = chunks
            .iter()
            .find(|c| u.busy.get(c).is_some_and(|b| b.deleting))
        {
            return Err(DeleteRefused::Busy(*c));
        }
        for c in chunks {
            *u.listed.entry(*c).or_default() += 1;
        }
        Ok(())
    }

    pub fn unlist(&self, chunks: &[ChunkId]) {
        let mut u = self.uploads();
        for c in chunks {
            if let Some(n) = u.listed.get_mut(c) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    u.listed.remove(c);
                }
            }
        }
    }

    fn object_path(&self, manifest: &ChunkId) -> PathBuf {
        self.dir.join("objects").join(manifest.to_hex())
    }

    /// Records a sealed file's chunks under its manifest id, durably. A manifest already
    /// recorded with another list is refused: the first list stands.
    pub fn put_object(
        &self,
        manifest: &ChunkId,
        chunks: &[ChunkId],
    ) -> Result<ObjectOutcome, crate::NetError> {
        // One at a time: the check and the rename must not interleave with another's.
        let _one = self.objects_lock.lock().unwrap_or_else(|p| p.into_inner());
        // The upload records this list relies on are durable before the list is.
        self.uploads()
            .log
            .file
            .sync_data()
            .map_err(|e| crate::NetError::State(format!("syncing the uploads log: {e}")))?;
        if let Some(existing) = self.object_list(manifest)? {
            let same = existing == chunks;
            return if same {
                Ok(ObjectOutcome::Existing)
            } else {
                Err(crate::NetError::State(format!(
                    "manifest {manifest} is already recorded with another chunk list"
                )))
            };
        }
        let io = |e: std::io::Error| {
            crate::NetError::State(format!("recording manifest {manifest}: {e}"))
        };
        let dir = self.dir.join("objects");
        let mut suffix = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut suffix);
        let tmp = dir.join(format!(
            ".{}.{}.partial",
            manifest.to_hex(),
            data_encoding::HEXLOWER.encode(&suffix)
        ));
        let written = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(&encode_object(manifest, chunks))?;
            f.sync_all()?;
            fs::rename(&tmp, self.object_path(manifest))?;
            sync_dir(&dir)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.map_err(io)?;
        Ok(ObjectOutcome::Recorded)
    }

    /// Removes a sealed file's record (its chunks are no longer listed by it), durably;
    /// `false` if it was not recorded.
    pub fn remove_object(&self, manifest: &ChunkId) -> Result<bool, crate::NetError> {
        let _one = self.objects_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(chunks) = self.object_list(manifest)? else {
            return Ok(false);
        };
        let io = |e: std::io::Error| {
            crate::NetError::State(format!("removing manifest {manifest}: {e}"))
        };
        fs::remove_file(self.object_path(manifest)).map_err(io)?;
        sync_dir(&self.dir.join("objects")).map_err(io)?;
        self.unlist(&chunks);
        Ok(true)
    }

    /// The chunks of a sealed file, if it was uploaded here.
    pub fn object(&self, manifest: &ChunkId) -> Result<Option<HashSet<ChunkId>>, crate::NetError> {
        Ok(self.object_list(manifest)?.map(|l| l.into_iter().collect()))
    }

    /// The chunk list of a sealed file as recorded, in order (its erasure shares, for a
    /// file stored as shares).
    pub fn object_chunks(
        &self,
        manifest: &ChunkId,
    ) -> Result<Option<Vec<ChunkId>>, crate::NetError> {
        self.object_list(manifest)
    }

    /// The chunk list of a sealed file as recorded, in order.
    fn object_list(&self, manifest: &ChunkId) -> Result<Option<Vec<ChunkId>>, crate::NetError> {
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
        Ok(Some(chunks))
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
        let mut log = encode_grant(&[2; 16], 77);
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
    fn uploads_are_recorded_per_link() {
        let dir = tempfile::tempdir().unwrap();
        let st = HostState::open(dir.path()).unwrap();
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let c = [ChunkId([7; 32]), ChunkId([8; 32])];
        st.record_upload(a, c[0]).unwrap();
        st.record_upload(a, c[1]).unwrap();
        st.record_upload(b, c[1]).unwrap();
        assert_eq!(st.not_uploaded(&a, &c), None);
        assert_eq!(st.not_uploaded(&b, &c), Some(c[0]));
        drop(st);
        // A torn record at the end is cut; the whole ones are read back.
        let log = dir.path().join("uploads.log");
        let mut f = OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(&encode_upload(&b, &c[0])[..20]).unwrap();
        drop(f);
        let st = HostState::open(dir.path()).unwrap();
        assert_eq!(st.not_uploaded(&a, &c), None);
        assert_eq!(st.not_uploaded(&b, &c), Some(c[0]));
        drop(st);
        assert_eq!(fs::read(&log).unwrap().len(), 3 * 56);
        let mut bytes = fs::read(&log).unwrap();
        bytes[60] ^= 1;
        fs::write(&log, bytes).unwrap();
        let e = HostState::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("record 1 is damaged"), "{e}");
    }

    #[test]
    fn deletes_follow_the_rules_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let st = HostState::open(dir.path()).unwrap();
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let c = [ChunkId([7; 32]), ChunkId([8; 32]), ChunkId([9; 32])];
        for chunk in c {
            st.record_upload(a, chunk).unwrap();
        }
        st.record_upload(b, c[1]).unwrap();
        st.put_object(&ChunkId([1; 32]), &[c[2]]).unwrap();
        st.list(&[c[2]]).unwrap();

        // Only what the link sent, and only bytes nobody else holds are removed.
        assert_eq!(
            st.begin_delete(&b, c[0]),
            Err(DeleteRefused::NotUploaded(c[0]))
        );
        assert_eq!(st.begin_delete(&a, c[2]), Err(DeleteRefused::Listed(c[2])));
        assert_eq!(st.begin_delete(&a, c[1]), Ok(false), "b holds it too");
        st.end_delete(&a, c[1], true).unwrap();
        // A put and a delete of one chunk never overlap.
        st.begin_put(c[0]).unwrap();
        assert_eq!(st.begin_delete(&a, c[0]), Err(DeleteRefused::Busy(c[0])));
        st.end_put(c[0]);
        assert_eq!(st.begin_delete(&a, c[0]), Ok(true));
        assert_eq!(st.begin_put(c[0]), Err(DeleteRefused::Busy(c[0])));
        assert_eq!(st.list(&[c[0]]), Err(DeleteRefused::Busy(c[0])));
        st.end_delete(&a, c[0], true).unwrap();
        st.begin_put(c[0]).unwrap();
        st.end_put(c[0]);
        assert_eq!(
            st.begin_delete(&a, c[0]),
            Err(DeleteRefused::NotUploaded(c[0]))
        );
        drop(st);

        // The withdrawals and the file's list hold across a restart.
        let st = HostState::open(dir.path()).unwrap();
        assert_eq!(st.uploaded(&a, &c), vec![false, false, true]);
        assert_eq!(st.uploaded(&b, &c), vec![false, true, false]);
        assert_eq!(st.begin_delete(&a, c[2]), Err(DeleteRefused::Listed(c[2])));
        assert_eq!(st.begin_delete(&b, c[1]), Ok(true));
        st.end_delete(&b, c[1], false).unwrap();
        assert_eq!(
            st.uploaded(&b, &c),
            vec![false, true, false],
            "not withdrawn"
        );
        drop(st);
        // A withdrawal record with a bad check is damage, named.
        let log = dir.path().join("uploads.log");
        let mut bytes = fs::read(&log).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        fs::write(&log, bytes).unwrap();
        let e = HostState::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is damaged"), "{e}");
    }

    #[test]
    fn a_removed_object_no_longer_lists_its_chunks_even_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let st = HostState::open(dir.path()).unwrap();
        let (link, m, c) = ([4u8; 16], ChunkId([9; 32]), ChunkId([1; 32]));
        st.record_upload(link, c).unwrap();
        st.list(&[c]).unwrap();
        st.put_object(&m, &[c]).unwrap();
        assert_eq!(st.begin_delete(&link, c), Err(DeleteRefused::Listed(c)));
        assert!(st.remove_object(&m).unwrap());
        assert!(!st.remove_object(&m).unwrap(), "removed once");
        assert!(st.object(&m).unwrap().is_none());
        drop(st);
        let st = HostState::open(dir.path()).unwrap();
        assert_eq!(st.begin_delete(&link, c), Ok(true), "no longer listed");
        st.end_delete(&link, c, true).unwrap();
    }

    #[test]
    fn objects_round_trip_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let st = HostState::open(dir.path()).unwrap();
        let m = ChunkId([9; 32]);
        assert!(st.object(&m).unwrap().is_none());
        let list = [ChunkId([1; 32]), ChunkId([2; 32])];
        assert_eq!(st.put_object(&m, &list).unwrap(), ObjectOutcome::Recorded);
        assert_eq!(st.object(&m).unwrap().unwrap().len(), 2);
        assert_eq!(st.put_object(&m, &list).unwrap(), ObjectOutcome::Existing);
        assert!(
            st.put_object(&m, &[list[1], list[0]]).is_err(),
            "the same ids in another order"
        );
        assert!(
            st.put_object(&m, &list[..1]).is_err(),
            "the first list stands"
        );

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

    #[test]
    fn download_claims_survive_a_restart_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = ([0xA1; 32], [0xB2; 32]);
        {
            let st = HostState::open(dir.path()).unwrap();
            assert!(st.claims().is_empty());
            st.add_claim(&b, 90).unwrap();
            st.add_claim(&a, 70).unwrap();
            st.add_claim(&a, 70).unwrap();
        }
        let st = HostState::open(dir.path()).unwrap();
        assert_eq!(st.claims(), vec![(a, 70), (b, 90)]);
        st.drop_claim(&b).unwrap();
        st.drop_claim(&b).unwrap();
        drop(st);
        // One being written when the host stopped is removed (its link was not given); a
        // record of another shape stops the host, named.
        let partial = dir
            .path()
            .join("claims")
            .join(format!(".{}.partial", "c3".repeat(32)));
        fs::write(&partial, []).unwrap();
        assert_eq!(HostState::open(dir.path()).unwrap().claims(), vec![(a, 70)]);
        assert!(!partial.exists());
        let short = dir.path().join("claims").join("d4".repeat(32));
        fs::write(&short, [1; 3]).unwrap();
        let e = HostState::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("8-byte deadline"), "{e}");
        fs::remove_file(&short).unwrap();
        fs::write(dir.path().join("claims").join("zz"), [0; 8]).unwrap();
        let e = HostState::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a payment id"), "{e}");
    }

    #[test]
    fn held_deals_survive_a_restart_and_a_stray_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = ([0xA1; 32], [0xB2; 32]);
        {
            let st = HostState::open(dir.path()).unwrap();
            assert!(!st.is_deal_link(&[0xA1; 16]));
            st.hold_deal(&a, &[1; 32]).unwrap();
            st.hold_deal(&b, &[1; 32]).unwrap();
            st.hold_deal(&a, &[1; 32]).unwrap();
            st.drop_deal(&b).unwrap();
            st.drop_deal(&b).unwrap();
        }
        let st = HostState::open(dir.path()).unwrap();
        assert_eq!(st.deals(), vec![a]);
        assert!(st.is_deal_link(&[0xA1; 16]));
        assert!(!st.is_deal_link(&[0xB2; 16]));
        drop(st);
        for stray in ["notes.txt", "a1a1", &"A1".repeat(32)] {
            let path = dir.path().join("deals").join(stray);
            fs::write(&path, b"").unwrap();
            let e = HostState::open(dir.path()).unwrap_err().to_string();
            assert!(e.contains(stray) && e.contains("not a deal id"), "{e}");
            fs::remove_file(&path).unwrap();
        }
        // A record cut short is named; a record being written when the host stopped is
        // removed (its link was never granted).
        let rec = dir.path().join("deals").join("a1".repeat(32));
        fs::write(&rec, [1; 31]).unwrap();
        let e = HostState::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("31 bytes"), "{e}");
        fs::write(&rec, [1; 32]).unwrap();
        let partial = dir
            .path()
            .join("deals")
            .join(format!(".{}.partial", "c3".repeat(32)));
        fs::write(&partial, [1; 5]).unwrap();
        assert_eq!(HostState::open(dir.path()).unwrap().deals(), vec![a]);
        assert!(!partial.exists());
    }

    #[test]
    fn a_record_may_list_chunks_of_the_same_senders_other_deals_only() {
        let dir = tempfile::tempdir().unwrap();
        let st = HostState::open(dir.path()).unwrap();
        let (alice, bob) = ([0xAA; 32], [0xBB; 32]);
        // Alice's file in two parts (deals 1 and 2), Bob's deal 3, a plain link 4.
        let deal = |b: u8| [b; 32];
        st.hold_deal(&deal(1), &alice).unwrap();
        st.hold_deal(&deal(2), &alice).unwrap();
        st.hold_deal(&deal(3), &bob).unwrap();
        let link = |b: u8| [b; 16];
        let c = |b: u8| ChunkId([b; 32]);
        st.record_upload(link(1), c(10)).unwrap();
        st.record_upload(link(2), c(20)).unwrap();
        st.record_upload(link(3), c(30)).unwrap();
        st.record_upload(link(4), c(40)).unwrap();
        assert_eq!(st.not_uploaded(&link(2), &[c(10), c(20)]), None);
        assert_eq!(
            st.not_uploaded(&link(2), &[c(20), c(30)]),
            Some(c(30)),
            "Bob's"
        );
        assert_eq!(
            st.not_uploaded(&link(2), &[c(40)]),
            Some(c(40)),
            "a plain link's"
        );
        assert_eq!(st.not_uploaded(&link(4), &[c(40), c(10)]), Some(c(10)));
        assert_eq!(st.not_uploaded(&link(3), &[c(10)]), Some(c(10)));
        // Once a part is released, its chunks no longer count.
        st.drop_deal(&deal(1)).unwrap();
        assert_eq!(st.not_uploaded(&link(2), &[c(10), c(20)]), Some(c(10)));
        // Listed: uploaded under the link and named by a recorded file.
        assert!(!st.is_listed(&link(2), &c(20)));
        st.list(&[c(20)]).unwrap();
        st.put_object(&c(99), &[c(20)]).unwrap();
        assert!(st.is_listed(&link(2), &c(20)));
        assert!(!st.is_listed(&link(1), &c(20)));
    }
}
