//! The gateway's object index in redb: buckets, objects (bucket and key to where the
//! sealed object lives), their older versions, multipart uploads and their parts. Every
//! change is one redb write transaction committed durably before the client hears of it,
//! so a gateway killed at any point has either recorded an object whole or not at all.
//!
//! Versions (S3's bucket versioning): `objects` holds each key's current record (an
//! object or a delete marker); `versions` holds the noncurrent ones, newest first per key.
//! Every key with noncurrent versions has a current record (deleting the current version
//! promotes the newest noncurrent one), so a bucket is empty when `objects` has nothing
//! under it.

use std::path::Path;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::record::{ObjectRecord, PartRecord, Piece, RecordError, UploadRecord};

/// Bucket name to its creation time (ms since the epoch).
const BUCKETS: TableDefinition<&str, u64> = TableDefinition::new("buckets");
/// `bucket 0x00 key` to an [`ObjectRecord`]: a byte order that is S3's listing order.
const OBJECTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("objects");
/// Upload id to an [`UploadRecord`].
const UPLOADS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("uploads");
/// Upload id then the part number (big-endian u32) to a [`PartRecord`].
const PARTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("parts");
/// Bucket name to its lifecycle rules ([`crate::record::encode_rules`]).
const LIFECYCLE: TableDefinition<&str, &[u8]> = TableDefinition::new("lifecycle");
/// `bucket 0x00 key 0x00 (u64::MAX - seq, big-endian)` to a noncurrent [`ObjectRecord`]:
/// a key's versions newest first, after its current record in listing order.
const VERSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("versions");
/// Bucket name to its versioning (1 enabled, 2 suspended); absent: never enabled.
const VERSIONING: TableDefinition<&str, u8> = TableDefinition::new("versioning");
/// `seq`: the last sequence number given to an object record; `refs`: 1 once `refs` was
/// built from the records.
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// A sealed file's manifest id to the number of records (current or not) naming it.
const REFS: TableDefinition<&[u8], u64> = TableDefinition::new("refs");
/// A sealed file no record names any more, to the last record that named it: to be
/// removed from its host (when it can be), then forgotten.
const ORPHANS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("orphans");

/// Counts each of `rec`'s sealed files as named once more (`up`) or once less; a file no
/// record names any more becomes an orphan.
fn refer(tx: &redb::WriteTransaction, rec: &ObjectRecord, up: bool) -> Result<(), IndexError> {
    for p in &rec.pieces {
        refer_file(tx, rec, p, up)?;
    }
    Ok(())
}

/// Counts the sealed file of `piece` (of `rec`) as named once more or once less.
fn refer_file(
    tx: &redb::WriteTransaction,
    rec: &ObjectRecord,
    piece: &Piece,
    up: bool,
) -> Result<(), IndexError> {
    let m = piece.stored.manifest;
    let mut refs = tx.open_table(REFS)?;
    let n = refs.get(m.as_slice())?.map_or(0, |v| v.value());
    if up {
        refs.insert(m.as_slice(), n + 1)?;
    } else if n <= 1 {
        refs.remove(m.as_slice())?;
        orphan(tx, rec, piece)?;
    } else {
        refs.insert(m.as_slice(), n - 1)?;
    }
    Ok(())
}

/// Records `piece`'s file as named by no record: kept as `rec` holding that one piece.
fn orphan(
    tx: &redb::WriteTransaction,
    rec: &ObjectRecord,
    piece: &Piece,
) -> Result<(), IndexError> {
    let alone = ObjectRecord {
        size: piece.size,
        pieces: vec![piece.clone()],
        ..rec.clone()
    };
    tx.open_table(ORPHANS)?
        .insert(piece.stored.manifest.as_slice(), alone.encode().as_slice())?;
    Ok(())
}

/// What a part's file counts as: a record holding the part alone (none for an empty part).
fn part_piece(part: &PartRecord) -> Option<(ObjectRecord, Piece)> {
    let stored = part.stored.clone()?;
    let piece = Piece {
        size: part.size,
        stored,
    };
    let rec = ObjectRecord::bare(
        part.size,
        part.modified_ms,
        data_encoding::HEXLOWER.encode(&part.md5),
    );
    Some((rec, piece))
}

/// A multipart completion's upload id and the parts it chose, as it read them.
type Finishing<'a> = (&'a [u8; 16], &'a [(u32, PartRecord)]);

/// Why a completion of upload `id` with the parts `chosen` (as read before its
/// transaction) cannot be written now, if it cannot: the upload is gone, or a part was
/// uploaded again (its file read may be an orphan already).
fn parts_moved(
    tx: &redb::WriteTransaction,
    id: &[u8; 16],
    chosen: &[(u32, PartRecord)],
) -> Result<Option<Written>, IndexError> {
    if tx.open_table(UPLOADS)?.get(id.as_slice())?.is_none() {
        return Ok(Some(Written::UploadGone));
    }
    let parts = tx.open_table(PARTS)?;
    for (n, read) in chosen {
        let now = parts
            .get(part_key(id, *n).as_slice())?
            .map(|v| PartRecord::decode(v.value()))
            .transpose()?;
        if now.as_ref() != Some(read) {
            return Ok(Some(Written::PartsChanged));
        }
    }
    Ok(None)
}

/// Removes the upload `id`'s parts, counting each one's file as named once less.
fn drop_parts(tx: &redb::WriteTransaction, id: &[u8; 16]) -> Result<(), IndexError> {
    let mut parts = tx.open_table(PARTS)?;
    let (from, to) = (part_key(id, 0), part_key(id, u32::MAX));
    let mut files = Vec::new();
    for e in parts.range(from.as_slice()..=to.as_slice())? {
        files.extend(part_piece(&PartRecord::decode(e?.1.value())?));
    }
    parts.retain_in(from.as_slice()..=to.as_slice(), |_, _| false)?;
    drop(parts);
    for (rec, piece) in files {
        refer_file(tx, &rec, &piece, false)?;
    }
    Ok(())
}

/// A bucket's versioning, as S3 has it: once enabled, it can be suspended but not turned
/// off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Versioning {
    Off,
    Enabled,
    Suspended,
}

/// A version id as a request names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionId {
    Null,
    Seq(u64),
}

impl VersionId {
    /// `null`, or the 16 hex digits [`ObjectRecord::version_id`] writes.
    pub fn parse(s: &str) -> Option<VersionId> {
        if s == "null" {
            return Some(VersionId::Null);
        }
        if s.len() != 16 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        u64::from_str_radix(s, 16)
            .ok()
            .filter(|n| *n != 0)
            .map(VersionId::Seq)
    }

    fn names(self, r: &ObjectRecord) -> bool {
        match self {
            VersionId::Null => r.version_id() == "null",
            VersionId::Seq(n) => r.seq == n && !r.null_version,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("the object index: {0}")]
    Db(String),
    #[error("a record of the object index is damaged: {0}")]
    Record(#[from] RecordError),
}

macro_rules! db_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for IndexError {
            fn from(e: $t) -> Self {
                IndexError::Db(e.to_string())
            }
        }
    )*};
}
db_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// What a conditional write found.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// Recorded; its version id when the bucket's versioning is on or suspended.
    Done(Option<String>),
    NoBucket,
    /// The object's current state does not meet the request's condition.
    ConditionFailed,
    /// A copy's source file is no longer named by any record (deleted meanwhile): it may
    /// be gone from its host already.
    SourceGone,
    /// A completion's upload was aborted or completed meanwhile.
    UploadGone,
    /// A part a completion names was uploaded again meanwhile: the file it read may be an
    /// orphan already.
    PartsChanged,
}

/// A write's condition on the object it replaces (S3's If-None-Match / If-Match on PUT).
#[derive(Clone, Debug, Default)]
pub struct Condition {
    /// Only if no object has the key (`If-None-Match: *`).
    pub absent: bool,
    /// Only if the current object's ETag is this one (`If-Match`); `Some("*")`: any object.
    pub etag: Option<String>,
}

impl Condition {
    /// Whether the condition holds for the key's current object (a delete marker is no
    /// object).
    pub fn holds(&self, current: Option<&ObjectRecord>) -> bool {
        let current = current.filter(|c| !c.delete_marker);
        if self.absent && current.is_some() {
            return false;
        }
        match (&self.etag, current) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(e), Some(c)) => e == "*" || *e == c.etag,
        }
    }
}

#[derive(Debug)]
pub enum BucketGone {
    Deleted,
    NotFound,
    NotEmpty,
}

/// What a delete did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Records gone for good (their sealed files are no longer named by the index).
    pub removed: Vec<ObjectRecord>,
    /// The delete marker it made (versioning on or suspended, no version named).
    pub marker: Option<ObjectRecord>,
}

/// One page of a version listing: per key, newest first.
#[derive(Debug, Default)]
pub struct VersionListing {
    /// (key, record, whether it is the key's current one).
    pub versions: Vec<(String, ObjectRecord, bool)>,
    pub prefixes: Vec<String>,
    /// Where the next page starts: after this key, and after this version of it (None:
    /// after the whole key or common prefix).
    pub next: Option<(String, Option<String>)>,
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct Listing {
    pub objects: Vec<(String, ObjectRecord)>,
    pub prefixes: Vec<String>,
    /// Where the next page starts (after this key or common prefix), if there is one.
    pub next: Option<String>,
}

#[derive(Debug)]
pub struct Index {
    db: Database,
}

fn object_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(bucket.len() + 1 + key.len());
    k.extend_from_slice(bucket.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Where a key's noncurrent versions start in `versions`.
fn versions_of(bucket: &str, key: &str) -> Vec<u8> {
    let mut k = object_key(bucket, key);
    k.push(0);
    k
}

fn version_key(bucket: &str, key: &str, seq: u64) -> Vec<u8> {
    let mut k = versions_of(bucket, key);
    k.extend_from_slice(&(u64::MAX - seq).to_be_bytes());
    k
}

fn decode_opt(v: Option<redb::AccessGuard<'_, &[u8]>>) -> Result<Option<ObjectRecord>, IndexError> {
    Ok(match v {
        Some(v) => Some(ObjectRecord::decode(v.value())?),
        None => None,
    })
}

fn versioning_in(tx: &redb::WriteTransaction, bucket: &str) -> Result<Versioning, IndexError> {
    Ok(
        match tx.open_table(VERSIONING)?.get(bucket)?.map(|v| v.value()) {
            Some(1) => Versioning::Enabled,
            Some(2) => Versioning::Suspended,
            Some(v) => {
                return Err(IndexError::Db(format!(
                    "bucket {bucket}: versioning state {v}"
                )))
            }
            None => Versioning::Off,
        },
    )
}

/// The key's noncurrent versions, newest first: (table key, record).
fn noncurrent(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    bucket: &str,
    key: &str,
) -> Result<Vec<(Vec<u8>, ObjectRecord)>, IndexError> {
    let from = versions_of(bucket, key);
    let mut out = Vec::new();
    for e in t.range(from.as_slice()..)? {
        let (k, v) = e?;
        let k = k.value();
        if !k.starts_with(&from) || k.len() != from.len() + 8 {
            break;
        }
        out.push((k.to_vec(), ObjectRecord::decode(v.value())?));
    }
    Ok(out)
}

/// Makes `rec` the key's current record under the bucket's versioning, giving it the next
/// sequence number: the record it replaces (`current`) becomes a noncurrent version when
/// it has a version id of its own and versioning is on or suspended, else it is gone; a
/// `null` record replaces the key's other `null` version. What is gone is returned.
fn install(
    tx: &redb::WriteTransaction,
    bucket: &str,
    key: &str,
    rec: &mut ObjectRecord,
    current: Option<ObjectRecord>,
) -> Result<(Versioning, Vec<ObjectRecord>), IndexError> {
    let state = versioning_in(tx, bucket)?;
    {
        let mut c = tx.open_table(COUNTERS)?;
        let seq = c.get("seq")?.map_or(0, |v| v.value()) + 1;
        c.insert("seq", seq)?;
        rec.seq = seq;
    }
    rec.null_version = state != Versioning::Enabled;
    refer(tx, rec, true)?;
    let mut gone = Vec::new();
    let mut versions = tx.open_table(VERSIONS)?;
    if rec.null_version {
        for (k, old) in noncurrent(&versions, bucket, key)? {
            if old.version_id() == "null" {
                versions.remove(k.as_slice())?;
                gone.push(old);
            }
        }
    }
    if let Some(cur) = current {
        if state == Versioning::Off || (rec.null_version && cur.version_id() == "null") {
            gone.push(cur);
        } else {
            versions.insert(
                version_key(bucket, key, cur.seq).as_slice(),
                cur.encode().as_slice(),
            )?;
        }
    }
    tx.open_table(OBJECTS)?
        .insert(object_key(bucket, key).as_slice(), rec.encode().as_slice())?;
    for g in &gone {
        refer(tx, g, false)?;
    }
    Ok((state, gone))
}

/// Where a listing of `prefix` resuming after `marker` starts in `objects`.
fn listing_start(bucket: &str, prefix: &str, marker: Option<&str>) -> Vec<u8> {
    match marker {
        Some(m) if m > prefix => object_key(bucket, m),
        _ => object_key(bucket, prefix),
    }
}

/// The object key of an `objects` key whose bucket part is `head` bytes.
fn key_in(k: &[u8], head: usize) -> Result<&str, IndexError> {
    std::str::from_utf8(&k[head..]).map_err(|_| IndexError::Db("an object key is not UTF-8".into()))
}

/// The common prefix `key` rolls up into: up to and including the delimiter's first
/// occurrence after `prefix`, if there is one.
fn rolled_up(key: &str, prefix: &str, delimiter: Option<&str>) -> Option<String> {
    delimiter.and_then(|d| {
        key[prefix.len()..]
            .find(d)
            .map(|i| key[..prefix.len() + i + d.len()].to_owned())
    })
}

fn part_key(upload: &[u8; 16], part: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(upload);
    k[16..].copy_from_slice(&part.to_be_bytes());
    k
}

impl Index {
    /// Opens (or creates) the index at `path`.
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => IndexError::Db(format!(
                "{} is open in another process (is this gateway already running?)",
                path.display()
            )),
            e => IndexError::Db(format!("{}: {e}", path.display())),
        })?;
        let tx = db.begin_write()?;
        {
            tx.open_table(BUCKETS)?;
            tx.open_table(OBJECTS)?;
            tx.open_table(UPLOADS)?;
            tx.open_table(PARTS)?;
            tx.open_table(LIFECYCLE)?;
            tx.open_table(VERSIONS)?;
            tx.open_table(VERSIONING)?;
            tx.open_table(COUNTERS)?;
            tx.open_table(ORPHANS)?;
            // Counted once, from the records an older gateway wrote without counting.
            if tx.open_table(COUNTERS)?.get("refs")?.is_none() {
                let mut counts: std::collections::HashMap<[u8; 32], u64> = Default::default();
                for table in [OBJECTS, VERSIONS] {
                    for e in tx.open_table(table)?.iter()? {
                        for s in ObjectRecord::decode(e?.1.value())?.files() {
                            *counts.entry(s.manifest).or_default() += 1;
                        }
                    }
                }
                let mut refs = tx.open_table(REFS)?;
                for (m, n) in counts {
                    refs.insert(m.as_slice(), n)?;
                }
                tx.open_table(COUNTERS)?.insert("refs", 1)?;
            }
        }
        tx.commit()?;
        Ok(Index { db })
    }

    pub fn buckets(&self) -> Result<Vec<(String, u64)>, IndexError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(BUCKETS)?;
        let mut out = Vec::new();
        for e in t.iter()? {
            let (k, v) = e?;
            out.push((k.value().to_owned(), v.value()));
        }
        Ok(out)
    }

    pub fn bucket_exists(&self, name: &str) -> Result<bool, IndexError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(BUCKETS)?.get(name)?.is_some())
    }

    /// False if it already existed.
    pub fn create_bucket(&self, name: &str, now_ms: u64) -> Result<bool, IndexError> {
        let tx = self.db.begin_write()?;
        let created = {
            let mut t = tx.open_table(BUCKETS)?;
            if t.get(name)?.is_some() {
                false
            } else {
                t.insert(name, now_ms)?;
                true
            }
        };
        tx.commit()?;
        Ok(created)
    }

    pub fn delete_bucket(&self, name: &str) -> Result<BucketGone, IndexError> {
        let tx = self.db.begin_write()?;
        let gone = {
            let mut t = tx.open_table(BUCKETS)?;
            if t.get(name)?.is_none() {
                BucketGone::NotFound
            } else {
                let objects = tx.open_table(OBJECTS)?;
                let start = object_key(name, "");
                let busy = match objects.range(start.as_slice()..)?.next() {
                    Some(e) => e?.0.value().starts_with(&start),
                    None => false,
                };
                if busy {
                    BucketGone::NotEmpty
                } else {
                    t.remove(name)?;
                    tx.open_table(LIFECYCLE)?.remove(name)?;
                    tx.open_table(VERSIONING)?.remove(name)?;
                    BucketGone::Deleted
                }
            }
        };
        tx.commit()?;
        Ok(gone)
    }

    /// A bucket's versioning; None if there is no bucket.
    pub fn versioning(&self, bucket: &str) -> Result<Option<Versioning>, IndexError> {
        let tx = self.db.begin_write()?;
        let got = if tx.open_table(BUCKETS)?.get(bucket)?.is_none() {
            None
        } else {
            Some(versioning_in(&tx, bucket)?)
        };
        tx.abort()?;
        Ok(got)
    }

    /// Turns a bucket's versioning on or suspends it (`Off` is refused: S3 cannot turn
    /// it off); false if there is no bucket.
    pub fn set_versioning(&self, bucket: &str, v: Versioning) -> Result<bool, IndexError> {
        let code = match v {
            Versioning::Enabled => 1,
            Versioning::Suspended => 2,
            Versioning::Off => {
                return Err(IndexError::Db("versioning cannot be turned off".into()))
            }
        };
        let tx = self.db.begin_write()?;
        let found = tx.open_table(BUCKETS)?.get(bucket)?.is_some();
        if found {
            tx.open_table(VERSIONING)?.insert(bucket, code)?;
        }
        tx.commit()?;
        Ok(found)
    }

    /// Sets (`Some`) or removes a bucket's lifecycle rules; false if there is no bucket.
    pub fn set_lifecycle(
        &self,
        bucket: &str,
        rules: Option<&[crate::record::LifecycleRule]>,
    ) -> Result<bool, IndexError> {
        let tx = self.db.begin_write()?;
        let found = tx.open_table(BUCKETS)?.get(bucket)?.is_some();
        if found {
            let mut t = tx.open_table(LIFECYCLE)?;
            match rules {
                Some(r) => {
                    t.insert(bucket, crate::record::encode_rules(r).as_slice())?;
                }
                None => {
                    t.remove(bucket)?;
                }
            }
        }
        tx.commit()?;
        Ok(found)
    }

    pub fn lifecycle(
        &self,
        bucket: &str,
    ) -> Result<Option<Vec<crate::record::LifecycleRule>>, IndexError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(LIFECYCLE)?;
        let got = t.get(bucket)?;
        Ok(match got {
            Some(v) => Some(crate::record::decode_rules(v.value())?),
            None => None,
        })
    }

    /// Every bucket's lifecycle rules.
    pub fn lifecycles(
        &self,
    ) -> Result<Vec<(String, Vec<crate::record::LifecycleRule>)>, IndexError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(LIFECYCLE)?;
        let mut out = Vec::new();
        for e in t.iter()? {
            let (k, v) = e?;
            out.push((
                k.value().to_owned(),
                crate::record::decode_rules(v.value())?,
            ));
        }
        Ok(out)
    }

    pub fn object(&self, bucket: &str, key: &str) -> Result<Option<ObjectRecord>, IndexError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(OBJECTS)?;
        let got = t.get(object_key(bucket, key).as_slice())?;
        Ok(match got {
            Some(v) => Some(ObjectRecord::decode(v.value())?),
            None => None,
        })
    }

    /// The version `v` of a key (current or not), if it exists.
    pub fn object_version(
        &self,
        bucket: &str,
        key: &str,
        v: VersionId,
    ) -> Result<Option<ObjectRecord>, IndexError> {
        let tx = self.db.begin_read()?;
        let current = decode_opt(
            tx.open_table(OBJECTS)?
                .get(object_key(bucket, key).as_slice())?,
        )?;
        if let Some(c) = current.filter(|c| v.names(c)) {
            return Ok(Some(c));
        }
        let t = tx.open_table(VERSIONS)?;
        Ok(noncurrent(&t, bucket, key)?
            .into_iter()
            .map(|(_, r)| r)
            .find(|r| v.names(r)))
    }

    /// Records an object, replacing the key's current one, if `cond` holds for it.
    pub fn put_object(
        &self,
        bucket: &str,
        key: &str,
        rec: &ObjectRecord,
        cond: &Condition,
    ) -> Result<Written, IndexError> {
        self.write_object(bucket, key, rec, cond, None, false)
    }

    /// Records a copy: `rec` names the sealed file of an existing record, which must still
    /// be named by some record when the copy is written ([`Written::SourceGone`] if not:
    /// a delete in between may have had it removed from its host).
    pub fn copy_object(
        &self,
        bucket: &str,
        key: &str,
        rec: &ObjectRecord,
        cond: &Condition,
    ) -> Result<Written, IndexError> {
        self.write_object(bucket, key, rec, cond, None, true)
    }

    /// Writes `rec` as the key's current record if `cond` holds. A new sealed file (not a
    /// copy) that cannot be recorded (no bucket, a failed condition) becomes an orphan in
    /// the same transaction, so that it is removed from its host.
    fn write_object(
        &self,
        bucket: &str,
        key: &str,
        rec: &ObjectRecord,
        cond: &Condition,
        finishing: Option<Finishing<'_>>,
        copying: bool,
    ) -> Result<Written, IndexError> {
        let tx = self.db.begin_write()?;
        let named = |m: &[u8; 32]| -> Result<bool, IndexError> {
            Ok(tx
                .open_table(REFS)?
                .get(m.as_slice())?
                .is_some_and(|n| n.value() > 0))
        };
        let written = {
            if copying && rec.files().any(|s| !named(&s.manifest).unwrap_or(false)) {
                Written::SourceGone
            } else if let Some(gone) = finishing
                .map(|(id, chosen)| parts_moved(&tx, id, chosen))
                .transpose()?
                .flatten()
            {
                gone
            } else if tx.open_table(BUCKETS)?.get(bucket)?.is_none() {
                Written::NoBucket
            } else {
                let k = object_key(bucket, key);
                let current = decode_opt(tx.open_table(OBJECTS)?.get(k.as_slice())?)?;
                if cond.holds(current.as_ref()) {
                    let mut rec = rec.clone();
                    let (state, _) = install(&tx, bucket, key, &mut rec, current)?;
                    if let Some((id, _)) = finishing {
                        // After the object counted its pieces: a part it keeps stays named.
                        tx.open_table(UPLOADS)?.remove(id.as_slice())?;
                        drop_parts(&tx, id)?;
                    }
                    Written::Done((state != Versioning::Off).then(|| rec.version_id()))
                } else {
                    Written::ConditionFailed
                }
            }
        };
        match &written {
            Written::Done(_) => tx.commit()?,
            // A completion's pieces stay named by the upload's parts (it may be completed
            // again, or aborted).
            Written::NoBucket | Written::ConditionFailed
                if !copying && finishing.is_none() && !rec.pieces.is_empty() =>
            {
                for p in &rec.pieces {
                    orphan(&tx, rec, p)?;
                }
                tx.commit()?;
            }
            _ => tx.abort()?,
        }
        Ok(written)
    }

    /// Sealed files no record names any more, with the last record that named each.
    pub fn orphans(&self) -> Result<Vec<ObjectRecord>, IndexError> {
        let tx = self.db.begin_read()?;
        let mut out = Vec::new();
        for e in tx.open_table(ORPHANS)?.iter()? {
            out.push(ObjectRecord::decode(e?.1.value())?);
        }
        Ok(out)
    }

    pub fn orphan_count(&self) -> Result<u64, IndexError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(ORPHANS)?.len()?)
    }

    /// Forgets an orphan: its file was removed from its host, or stays there until its
    /// deals end.
    pub fn forget_orphan(&self, manifest: &[u8; 32]) -> Result<(), IndexError> {
        let tx = self.db.begin_write()?;
        tx.open_table(ORPHANS)?.remove(manifest.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes as S3 does: with no version named, removes the current object (versioning
    /// off) or puts a delete marker in front of it (made at `now_ms`); with a version,
    /// removes that version for good (the newest other one becomes current if it was).
    pub fn delete_object(
        &self,
        bucket: &str,
        key: &str,
        version: Option<VersionId>,
        now_ms: u64,
    ) -> Result<Deleted, IndexError> {
        Ok(self
            .delete_inner(bucket, key, version, now_ms, None)?
            .unwrap_or_default())
    }

    /// Deletes the key's current object (as [`Index::delete_object`] with no version)
    /// only if it is still `listed`: a lifecycle sweep must not expire an object written
    /// after it listed the key. None when it changed.
    pub fn expire(
        &self,
        bucket: &str,
        key: &str,
        listed: &ObjectRecord,
        now_ms: u64,
    ) -> Result<Option<Deleted>, IndexError> {
        self.delete_inner(bucket, key, None, now_ms, Some(listed))
    }

    fn delete_inner(
        &self,
        bucket: &str,
        key: &str,
        version: Option<VersionId>,
        now_ms: u64,
        only_if: Option<&ObjectRecord>,
    ) -> Result<Option<Deleted>, IndexError> {
        let tx = self.db.begin_write()?;
        let mut out = Deleted::default();
        {
            let k = object_key(bucket, key);
            let current = decode_opt(tx.open_table(OBJECTS)?.get(k.as_slice())?)?;
            if only_if.is_some() && current.as_ref() != only_if {
                tx.abort()?;
                return Ok(None);
            }
            match version {
                None => {
                    if versioning_in(&tx, bucket)? == Versioning::Off {
                        if let Some(c) = decode_opt(tx.open_table(OBJECTS)?.remove(k.as_slice())?)?
                        {
                            refer(&tx, &c, false)?;
                            out.removed.push(c);
                        }
                    } else {
                        let mut marker = ObjectRecord {
                            delete_marker: true,
                            ..ObjectRecord::bare(0, now_ms, String::new())
                        };
                        let (_, gone) = install(&tx, bucket, key, &mut marker, current)?;
                        out.removed = gone;
                        out.marker = Some(marker);
                    }
                }
                Some(v) => {
                    let mut versions = tx.open_table(VERSIONS)?;
                    if let Some(c) = current.filter(|c| v.names(c)) {
                        let mut objects = tx.open_table(OBJECTS)?;
                        objects.remove(k.as_slice())?;
                        if let Some((vk, newest)) =
                            noncurrent(&versions, bucket, key)?.into_iter().next()
                        {
                            versions.remove(vk.as_slice())?;
                            objects.insert(k.as_slice(), newest.encode().as_slice())?;
                        }
                        refer(&tx, &c, false)?;
                        out.removed.push(c);
                    } else if let Some((vk, old)) = noncurrent(&versions, bucket, key)?
                        .into_iter()
                        .find(|(_, r)| v.names(r))
                    {
                        versions.remove(vk.as_slice())?;
                        refer(&tx, &old, false)?;
                        out.removed.push(old);
                    }
                }
            }
        }
        tx.commit()?;
        Ok(Some(out))
    }

    /// Up to `max` objects and common prefixes of `bucket` under `prefix`, in key order,
    /// after `after` (a key or a common prefix given by an earlier page). With a
    /// delimiter, keys whose rest after the prefix holds it are rolled up into one common
    /// prefix each (up to and including the delimiter's first occurrence).
    pub fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max: usize,
    ) -> Result<Listing, IndexError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(OBJECTS)?;
        let base = object_key(bucket, prefix);
        let start = listing_start(bucket, prefix, after);
        let head = bucket.len() + 1;
        let mut out = Listing::default();
        let mut last: Option<String> = None;
        let delimiter = delimiter.filter(|d| !d.is_empty());
        for e in t.range(start.as_slice()..)? {
            let (k, v) = e?;
            let k = k.value();
            if !k.starts_with(&base) {
                break;
            }
            let key = key_in(k, head)?;
            if after.is_some_and(|a| key <= a) {
                continue;
            }
            let rec = ObjectRecord::decode(v.value())?;
            // A key whose current record is a delete marker is not listed (nor rolled up).
            if rec.delete_marker {
                continue;
            }
            let rolled = rolled_up(key, prefix, delimiter);
            let name = match &rolled {
                Some(cp) => {
                    if last.as_deref() == Some(cp) || after.is_some_and(|a| cp.as_str() <= a) {
                        continue;
                    }
                    cp.clone()
                }
                None => key.to_owned(),
            };
            if out.objects.len() + out.prefixes.len() == max {
                out.next = last;
                return Ok(out);
            }
            match rolled {
                Some(cp) => out.prefixes.push(cp),
                None => out.objects.push((key.to_owned(), rec)),
            }
            last = Some(name);
        }
        Ok(out)
    }

    /// Up to `max` versions (delete markers too) and common prefixes of `bucket` under
    /// `prefix`, in key order and newest first per key, after `key_marker` (the whole key,
    /// or with `version_marker` only its versions up to that one).
    pub fn list_versions(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        key_marker: Option<&str>,
        version_marker: Option<VersionId>,
        max: usize,
    ) -> Result<VersionListing, IndexError> {
        let tx = self.db.begin_read()?;
        let objects = tx.open_table(OBJECTS)?;
        let versions = tx.open_table(VERSIONS)?;
        let base = object_key(bucket, prefix);
        let start = listing_start(bucket, prefix, key_marker);
        let head = bucket.len() + 1;
        let delimiter = delimiter.filter(|d| !d.is_empty());
        let mut out = VersionListing::default();
        let mut last: Option<(String, Option<String>)> = None;
        let mut count = 0usize;
        for e in objects.range(start.as_slice()..)? {
            let (k, v) = e?;
            let k = k.value();
            if !k.starts_with(&base) {
                break;
            }
            let key = key_in(k, head)?;
            if key_marker.is_some_and(|m| key < m) {
                continue;
            }
            let rolled = rolled_up(key, prefix, delimiter);
            if let Some(cp) = rolled {
                let seen = last.as_ref().is_some_and(|(l, v)| v.is_none() && *l == cp);
                if seen || key_marker.is_some_and(|m| cp.as_str() <= m) {
                    continue;
                }
                if count == max {
                    out.next = last;
                    return Ok(out);
                }
                out.prefixes.push(cp.clone());
                count += 1;
                last = Some((cp, None));
                continue;
            }
            let mut all = vec![(ObjectRecord::decode(v.value())?, true)];
            all.extend(
                noncurrent(&versions, bucket, key)?
                    .into_iter()
                    .map(|(_, r)| (r, false)),
            );
            let skip = if key_marker == Some(key) {
                match version_marker {
                    None => continue,
                    Some(VersionId::Seq(n)) => all.iter().take_while(|(r, _)| r.seq >= n).count(),
                    Some(VersionId::Null) => all
                        .iter()
                        .position(|(r, _)| r.version_id() == "null")
                        .map_or(0, |i| i + 1),
                }
            } else {
                0
            };
            for (rec, latest) in all.into_iter().skip(skip) {
                if count == max {
                    out.next = last;
                    return Ok(out);
                }
                let id = rec.version_id();
                out.versions.push((key.to_owned(), rec, latest));
                count += 1;
                last = Some((key.to_owned(), Some(id)));
            }
        }
        Ok(out)
    }

    pub fn create_upload(&self, id: &[u8; 16], rec: &UploadRecord) -> Result<bool, IndexError> {
        let tx = self.db.begin_write()?;
        let ok = if tx.open_table(BUCKETS)?.get(rec.bucket.as_str())?.is_none() {
            false
        } else {
            tx.open_table(UPLOADS)?
                .insert(id.as_slice(), rec.encode().as_slice())?;
            true
        };
        tx.commit()?;
        Ok(ok)
    }

    pub fn upload(&self, id: &[u8; 16]) -> Result<Option<UploadRecord>, IndexError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(UPLOADS)?;
        let got = t.get(id.as_slice())?;
        Ok(match got {
            Some(v) => Some(UploadRecord::decode(v.value())?),
            None => None,
        })
    }

    /// Every upload in progress.
    pub fn uploads(&self) -> Result<Vec<([u8; 16], UploadRecord)>, IndexError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(UPLOADS)?;
        let mut out = Vec::new();
        for e in t.iter()? {
            let (k, v) = e?;
            let id: [u8; 16] = k
                .value()
                .try_into()
                .map_err(|_| IndexError::Db("an upload id is not 16 bytes".into()))?;
            out.push((id, UploadRecord::decode(v.value())?));
        }
        Ok(out)
    }

    /// Records a part, replacing one of the same number (whose file is then named once
    /// less); false if the upload is gone, and then the part's file is an orphan at once.
    pub fn put_part(&self, id: &[u8; 16], part: u32, rec: &PartRecord) -> Result<bool, IndexError> {
        let tx = self.db.begin_write()?;
        let new = part_piece(rec);
        let ok = if tx.open_table(UPLOADS)?.get(id.as_slice())?.is_none() {
            if let Some((r, p)) = &new {
                orphan(&tx, r, p)?;
            }
            false
        } else {
            if let Some((r, p)) = &new {
                refer_file(&tx, r, p, true)?;
            }
            let old = tx
                .open_table(PARTS)?
                .insert(part_key(id, part).as_slice(), rec.encode().as_slice())?
                .map(|v| PartRecord::decode(v.value()))
                .transpose()?;
            if let Some((r, p)) = old.as_ref().and_then(part_piece) {
                refer_file(&tx, &r, &p, false)?;
            }
            true
        };
        tx.commit()?;
        Ok(ok)
    }

    /// The upload's parts, by number.
    pub fn parts(&self, id: &[u8; 16]) -> Result<Vec<(u32, PartRecord)>, IndexError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PARTS)?;
        let (from, to) = (part_key(id, 0), part_key(id, u32::MAX));
        let mut out = Vec::new();
        for e in t.range(from.as_slice()..=to.as_slice())? {
            let (k, v) = e?;
            let mut n = [0u8; 4];
            n.copy_from_slice(&k.value()[16..20]);
            out.push((u32::from_be_bytes(n), PartRecord::decode(v.value())?));
        }
        Ok(out)
    }

    /// Records the upload's object (its pieces are the files of the parts `chosen`, as they
    /// were read) and forgets the upload and its parts, in one transaction: a part's file
    /// the object does not keep becomes an orphan. When the object cannot be recorded, the
    /// upload stays as it was; when the upload is gone or a chosen part is no longer as
    /// read ([`Written::UploadGone`], [`Written::PartsChanged`]), nothing is written.
    pub fn finish_upload(
        &self,
        id: &[u8; 16],
        up: &UploadRecord,
        rec: &ObjectRecord,
        cond: &Condition,
        chosen: &[(u32, PartRecord)],
    ) -> Result<Written, IndexError> {
        self.write_object(&up.bucket, &up.key, rec, cond, Some((id, chosen)), false)
    }

    /// Forgets an upload and its parts; false if there was none.
    pub fn abort_upload(&self, id: &[u8; 16]) -> Result<bool, IndexError> {
        let tx = self.db.begin_write()?;
        let found = {
            let found = tx.open_table(UPLOADS)?.remove(id.as_slice())?.is_some();
            drop_parts(&tx, id)?;
            found
        };
        tx.commit()?;
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(etag: &str) -> ObjectRecord {
        ObjectRecord::bare(1, 1, etag.into())
    }

    /// An upload of `key` in bucket `b`.
    fn upload(key: &str) -> UploadRecord {
        UploadRecord {
            bucket: "b".into(),
            key: key.into(),
            created_ms: 1,
            content_type: String::new(),
            metadata: vec![],
        }
    }

    /// A piece of `size` bytes in the sealed file `[m; 32]`.
    fn piece(m: u8, size: u64) -> Piece {
        Piece {
            size,
            stored: crate::record::Stored {
                manifest: [m; 32],
                copies: vec![crate::record::Replica {
                    host_key: [9; 32],
                    host: "127.0.0.1:1".into(),
                    deal: None,
                }],
                share_key: "mss1-x".into(),
                erasure: None,
            },
        }
    }

    /// The orphans' files (the first byte of each manifest id), sorted.
    fn orphans(i: &Index) -> Vec<u8> {
        let mut v: Vec<u8> = i
            .orphans()
            .unwrap()
            .iter()
            .flat_map(|r| r.files().map(|s| s.manifest[0]).collect::<Vec<_>>())
            .collect();
        v.sort_unstable();
        v
    }

    fn index() -> (tempfile::TempDir, Index) {
        let d = tempfile::tempdir().unwrap();
        let i = Index::open(&d.path().join("index.redb")).unwrap();
        (d, i)
    }

    #[test]
    fn listing_rolls_up_prefixes_and_pages_in_key_order() {
        let (_d, i) = index();
        assert!(i.create_bucket("b", 1).unwrap());
        assert!(!i.create_bucket("b", 2).unwrap());
        i.create_bucket("c", 1).unwrap();
        for k in ["a/1", "a/2", "a/b/3", "b", "c/x", "d"] {
            assert_eq!(
                i.put_object("b", k, &rec(k), &Condition::default())
                    .unwrap(),
                Written::Done(None)
            );
        }
        i.put_object("c", "a/9", &rec("x"), &Condition::default())
            .unwrap();
        let names = |l: &Listing| {
            let mut v: Vec<String> = l.objects.iter().map(|(k, _)| k.clone()).collect();
            v.extend(l.prefixes.iter().map(|p| format!("{p}*")));
            v
        };
        let all = i.list("b", "", None, None, 1000).unwrap();
        assert_eq!(names(&all), ["a/1", "a/2", "a/b/3", "b", "c/x", "d"]);
        assert!(all.next.is_none());
        let top = i.list("b", "", Some("/"), None, 1000).unwrap();
        assert_eq!(names(&top), ["b", "d", "a/*", "c/*"]);
        let under_a = i.list("b", "a/", Some("/"), None, 1000).unwrap();
        assert_eq!(names(&under_a), ["a/1", "a/2", "a/b/*"]);
        // Pages of two, each starting where the last one stopped.
        let mut after = None;
        let mut seen = Vec::new();
        loop {
            let p = i.list("b", "", Some("/"), after.as_deref(), 2).unwrap();
            // A page's keys and prefixes interleave in key order.
            let mut page: Vec<String> = p.objects.iter().map(|(k, _)| k.clone()).collect();
            page.extend(p.prefixes.iter().cloned());
            page.sort();
            seen.extend(page);
            match p.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, ["a/", "b", "c/", "d"]);
        assert!(matches!(
            i.delete_bucket("b").unwrap(),
            BucketGone::NotEmpty
        ));
        assert!(matches!(
            i.delete_bucket("zz").unwrap(),
            BucketGone::NotFound
        ));
    }

    #[test]
    fn conditions_and_uploads_are_kept_in_one_transaction() {
        let (_d, i) = index();
        let absent = Condition {
            absent: true,
            etag: None,
        };
        assert_eq!(
            i.put_object("b", "k", &rec("1"), &absent).unwrap(),
            Written::NoBucket
        );
        i.create_bucket("b", 1).unwrap();
        assert_eq!(
            i.put_object("b", "k", &rec("1"), &absent).unwrap(),
            Written::Done(None)
        );
        assert_eq!(
            i.put_object("b", "k", &rec("2"), &absent).unwrap(),
            Written::ConditionFailed
        );
        let if_match = |e: &str| Condition {
            absent: false,
            etag: Some(e.into()),
        };
        assert_eq!(
            i.put_object("b", "k", &rec("2"), &if_match("0")).unwrap(),
            Written::ConditionFailed
        );
        assert_eq!(
            i.put_object("b", "k", &rec("2"), &if_match("1")).unwrap(),
            Written::Done(None)
        );
        assert_eq!(i.object("b", "k").unwrap().unwrap().etag, "2");

        let id = [5u8; 16];
        let up = upload("m");
        assert!(i.create_upload(&id, &up).unwrap());
        let part = PartRecord {
            size: 0,
            md5: [0; 16],
            modified_ms: 1,
            stored: None,
        };
        assert!(i.put_part(&id, 2, &part).unwrap());
        assert!(i.put_part(&id, 1, &part).unwrap());
        assert!(!i.put_part(&[6; 16], 1, &part).unwrap());
        let nums: Vec<u32> = i.parts(&id).unwrap().iter().map(|p| p.0).collect();
        assert_eq!(nums, [1, 2]);
        let chosen = i.parts(&id).unwrap();
        assert_eq!(
            i.finish_upload(&id, &up, &rec("m"), &Condition::default(), &chosen)
                .unwrap(),
            Written::Done(None)
        );
        assert!(i.upload(&id).unwrap().is_none());
        assert!(i.parts(&id).unwrap().is_empty());
        assert_eq!(i.object("b", "m").unwrap().unwrap().etag, "m");
        assert!(!i.abort_upload(&id).unwrap());
        assert_eq!(i.delete_object("b", "m", None, 9).unwrap().removed.len(), 1);
        assert_eq!(
            i.delete_object("b", "m", None, 9).unwrap(),
            Deleted::default()
        );
    }

    #[test]
    fn versions_are_kept_listed_newest_first_and_deleted_as_s3_does() {
        let (_d, i) = index();
        i.create_bucket("b", 1).unwrap();
        assert_eq!(i.versioning("b").unwrap(), Some(Versioning::Off));
        assert_eq!(i.versioning("zz").unwrap(), None);
        let put = |k: &str, e: &str| match i
            .put_object("b", k, &rec(e), &Condition::default())
            .unwrap()
        {
            Written::Done(v) => v,
            other => panic!("{other:?}"),
        };
        // Off: a PUT replaces, and the replaced record is gone.
        assert_eq!(put("k", "0"), None);
        assert!(i.set_versioning("b", Versioning::Enabled).unwrap());
        assert!(!i.set_versioning("zz", Versioning::Enabled).unwrap());
        let v1 = put("k", "1").unwrap();
        let v2 = put("k", "2").unwrap();
        assert_ne!(v1, v2);
        assert_eq!(
            VersionId::parse(&v1).map(|v| matches!(v, VersionId::Seq(_))),
            Some(true)
        );
        for bad in [
            "",
            "NULL",
            "00000000000000000",
            "000000000000000g",
            "0000000000000000",
        ] {
            assert_eq!(VersionId::parse(bad), None, "{bad:?}");
        }
        let get = |v: &str| {
            i.object_version("b", "k", VersionId::parse(v).unwrap())
                .unwrap()
                .map(|r| r.etag)
        };
        assert_eq!(get(&v1).as_deref(), Some("1"));
        assert_eq!(
            get("null").as_deref(),
            Some("0"),
            "the record from before is the null version"
        );
        assert_eq!(i.object("b", "k").unwrap().unwrap().etag, "2");
        // A delete marker hides the key from GET's current record and from listings.
        let d = i.delete_object("b", "k", None, 5).unwrap();
        let marker = d.marker.unwrap();
        assert!(marker.delete_marker && d.removed.is_empty());
        assert!(i.object("b", "k").unwrap().unwrap().delete_marker);
        assert!(i.list("b", "", None, None, 10).unwrap().objects.is_empty());
        let vl = put("l", "x").unwrap();
        let names = |l: &VersionListing| -> Vec<String> {
            l.versions
                .iter()
                .map(|(k, r, latest)| {
                    let what = if r.delete_marker {
                        "marker".into()
                    } else {
                        r.etag.clone()
                    };
                    format!("{k}:{what}{}", if *latest { "*" } else { "" })
                })
                .collect()
        };
        let all = i.list_versions("b", "", None, None, None, 100).unwrap();
        assert_eq!(names(&all), ["k:marker*", "k:2", "k:1", "k:0", "l:x*"]);
        assert!(all.next.is_none());
        // Pages of two, resumed from (key, version) markers.
        let mut seen = Vec::new();
        let (mut km, mut vm): (Option<String>, Option<String>) = (None, None);
        loop {
            let p = i
                .list_versions(
                    "b",
                    "",
                    None,
                    km.as_deref(),
                    vm.as_deref().map(|v| VersionId::parse(v).unwrap()),
                    2,
                )
                .unwrap();
            seen.extend(names(&p));
            match p.next {
                Some((k, v)) => (km, vm) = (Some(k), v),
                None => break,
            }
        }
        assert_eq!(seen, names(&all));
        // Deleting the marker by its version id brings the object back; deleting a
        // version removes it for good; the newest other becomes current.
        let d = i
            .delete_object(
                "b",
                "k",
                Some(VersionId::parse(&marker.version_id()).unwrap()),
                6,
            )
            .unwrap();
        assert_eq!(d.removed.len(), 1);
        assert_eq!(i.object("b", "k").unwrap().unwrap().etag, "2");
        i.delete_object("b", "k", VersionId::parse(&v2), 7).unwrap();
        assert_eq!(i.object("b", "k").unwrap().unwrap().etag, "1");
        assert_eq!(
            names(&i.list_versions("b", "k", None, None, None, 100).unwrap()),
            ["k:1*", "k:0"]
        );
        // Suspended: PUTs write the null version, replacing the old null one.
        i.set_versioning("b", Versioning::Suspended).unwrap();
        assert_eq!(put("k", "3").as_deref(), Some("null"));
        assert_eq!(
            names(&i.list_versions("b", "k", None, None, None, 100).unwrap()),
            ["k:3*", "k:1"]
        );
        assert!(matches!(
            i.delete_bucket("b").unwrap(),
            BucketGone::NotEmpty
        ));
        for v in ["null".to_string(), v1] {
            i.delete_object("b", "k", VersionId::parse(&v), 8).unwrap();
        }
        i.delete_object("b", "l", VersionId::parse(&vl), 8).unwrap();
        assert!(matches!(i.delete_bucket("b").unwrap(), BucketGone::Deleted));
    }

    #[test]
    fn a_sealed_file_is_an_orphan_once_no_record_names_it() {
        let (_d, i) = index();
        i.create_bucket("b", 1).unwrap();
        let named = |m: u8| ObjectRecord {
            pieces: vec![piece(m, 1)],
            ..rec("e")
        };
        let put = |k: &str, r: &ObjectRecord| {
            i.put_object("b", k, r, &Condition::default()).unwrap();
        };
        let orphans = || orphans(&i);
        // A copy names the same file: it is no orphan until both are gone.
        put("a", &named(1));
        put("copy", &named(1));
        i.delete_object("b", "a", None, 2).unwrap();
        assert!(orphans().is_empty());
        i.delete_object("b", "copy", None, 2).unwrap();
        assert_eq!(orphans(), [1]);
        i.forget_orphan(&[1; 32]).unwrap();
        assert!(orphans().is_empty());
        // Overwritten with versioning off: the old file goes.
        put("k", &named(2));
        put("k", &named(3));
        assert_eq!(orphans(), [2]);
        i.forget_orphan(&[2; 32]).unwrap();
        // With versioning on, an overwritten or deleted object is still a version; its file
        // goes with its last version.
        i.set_versioning("b", Versioning::Enabled).unwrap();
        put("k", &named(4));
        i.delete_object("b", "k", None, 3).unwrap();
        assert!(orphans().is_empty());
        let all = i.list_versions("b", "k", None, None, None, 100).unwrap();
        for (_, r, _) in &all.versions {
            let v = VersionId::parse(&r.version_id()).unwrap();
            i.delete_object("b", "k", Some(v), 4).unwrap();
        }
        assert_eq!(orphans(), [3, 4]);
        for m in [3, 4] {
            i.forget_orphan(&[m; 32]).unwrap();
        }
        // A copy whose source was deleted meanwhile is refused: its file may be gone.
        i.set_versioning("b", Versioning::Suspended).unwrap();
        put("src", &named(5));
        i.delete_object("b", "src", Some(VersionId::Null), 5)
            .unwrap();
        assert_eq!(orphans(), [5]);
        assert_eq!(
            i.copy_object("b", "dst", &named(5), &Condition::default())
                .unwrap(),
            Written::SourceGone
        );
        assert!(i.object("b", "dst").unwrap().is_none());
        i.forget_orphan(&[5; 32]).unwrap();
        // A new file that cannot be recorded is an orphan at once.
        assert_eq!(
            i.put_object("nobucket", "k", &named(6), &Condition::default())
                .unwrap(),
            Written::NoBucket
        );
        let absent = Condition {
            absent: true,
            etag: None,
        };
        put("taken", &named(7));
        assert_eq!(
            i.put_object("b", "taken", &named(8), &absent).unwrap(),
            Written::ConditionFailed
        );
        assert_eq!(orphans(), [6, 8]);
    }

    /// A multipart upload's parts name their files from the moment they are recorded: a
    /// part replaced, left out of the completion or aborted is an orphan; the ones the
    /// object keeps are named by it.
    #[test]
    fn parts_name_their_files_until_the_object_or_nothing_does() {
        let (_d, i) = index();
        i.create_bucket("b", 1).unwrap();
        let up = upload("m");
        let part = |m: u8| PartRecord {
            size: 10 + u64::from(m),
            md5: [m; 16],
            modified_ms: 1,
            stored: Some(piece(m, 10 + u64::from(m)).stored),
        };
        let id = [1u8; 16];
        assert!(i.create_upload(&id, &up).unwrap());
        for (n, m) in [(1, 1), (2, 2), (3, 3)] {
            assert!(i.put_part(&id, n, &part(m)).unwrap());
        }
        assert!(orphans(&i).is_empty());
        // Part 2 uploaded again: its first file goes.
        assert!(i.put_part(&id, 2, &part(4)).unwrap());
        assert_eq!(orphans(&i), [2]);
        i.forget_orphan(&[2; 32]).unwrap();
        // A part of an upload that is gone is an orphan at once.
        assert!(!i.put_part(&[9; 16], 1, &part(5)).unwrap());
        assert_eq!(orphans(&i), [5]);
        i.forget_orphan(&[5; 32]).unwrap();
        // A completion whose condition fails leaves the upload and its parts as they were.
        i.put_object("b", "m", &rec("x"), &Condition::default())
            .unwrap();
        let object = ObjectRecord {
            size: 11 + 14,
            pieces: vec![piece(1, 11), piece(4, 14)],
            ..rec("m")
        };
        let absent = Condition {
            absent: true,
            etag: None,
        };
        let chosen = [(1, part(1)), (2, part(4))];
        assert_eq!(
            i.finish_upload(&id, &up, &object, &absent, &chosen)
                .unwrap(),
            Written::ConditionFailed
        );
        assert!(orphans(&i).is_empty());
        assert_eq!(i.parts(&id).unwrap().len(), 3);
        // A completion that read part 2 before it was uploaded again writes nothing: the
        // file it read is an orphan now.
        let read = [(1, part(1)), (2, part(2))];
        assert_eq!(
            i.finish_upload(&id, &up, &object, &Condition::default(), &read)
                .unwrap(),
            Written::PartsChanged
        );
        assert!(orphans(&i).is_empty());
        assert_eq!(i.object("b", "m").unwrap().unwrap().etag, "x");
        // Completed with parts 1 and 2: part 3's file goes, the others are the object's.
        assert_eq!(
            i.finish_upload(&id, &up, &object, &Condition::default(), &chosen)
                .unwrap(),
            Written::Done(None)
        );
        // Completed again (a retry, or a second completion racing the first): gone.
        assert_eq!(
            i.finish_upload(&id, &up, &object, &Condition::default(), &chosen)
                .unwrap(),
            Written::UploadGone
        );
        assert_eq!(orphans(&i), [3]);
        i.forget_orphan(&[3; 32]).unwrap();
        assert_eq!(
            i.object("b", "m").unwrap(),
            Some(ObjectRecord {
                seq: 2,
                null_version: true,
                ..object.clone()
            })
        );
        // A copy names both files; they go with the last record naming them.
        i.copy_object("b", "c", &object, &Condition::default())
            .unwrap();
        i.delete_object("b", "m", None, 2).unwrap();
        assert!(orphans(&i).is_empty());
        i.delete_object("b", "c", None, 2).unwrap();
        assert_eq!(orphans(&i), [1, 4]);
        let kept = i.orphans().unwrap();
        assert!(kept
            .iter()
            .all(|r| r.pieces.len() == 1 && r.size == r.pieces[0].size));
        // An aborted upload's parts are orphans.
        let id = [2u8; 16];
        assert!(i.create_upload(&id, &up).unwrap());
        assert!(i.put_part(&id, 1, &part(6)).unwrap());
        assert!(i.abort_upload(&id).unwrap());
        assert_eq!(orphans(&i), [1, 4, 6]);
    }

    #[test]
    fn a_sweep_expires_only_the_record_it_listed() {
        let (_d, i) = index();
        i.create_bucket("b", 1).unwrap();
        i.put_object("b", "k", &rec("old"), &Condition::default())
            .unwrap();
        let listed = i.object("b", "k").unwrap().unwrap();
        i.put_object("b", "k", &rec("new"), &Condition::default())
            .unwrap();
        assert_eq!(i.expire("b", "k", &listed, 9).unwrap(), None);
        assert_eq!(i.object("b", "k").unwrap().unwrap().etag, "new");
        let now = i.object("b", "k").unwrap().unwrap();
        assert_eq!(i.expire("b", "k", &now, 9).unwrap().unwrap().removed, [now]);
        assert!(i.object("b", "k").unwrap().is_none());
    }
}
