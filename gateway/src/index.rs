//! The gateway's object index in redb: buckets, objects (bucket and key to where the
//! sealed object lives), multipart uploads and their parts. Every change is one redb
//! write transaction committed durably before the client hears of it, so a gateway killed
//! at any point has either recorded an object whole or not at all.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};

use crate::record::{ObjectRecord, PartRecord, RecordError, UploadRecord};

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
    Done,
    NoBucket,
    /// The object's current state does not meet the request's condition.
    ConditionFailed,
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
    /// Whether the condition holds for the key's current object.
    pub fn holds(&self, current: Option<&ObjectRecord>) -> bool {
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
                    BucketGone::Deleted
                }
            }
        };
        tx.commit()?;
        Ok(gone)
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

    /// Records an object, replacing the key's current one, if `cond` holds for it.
    pub fn put_object(
        &self,
        bucket: &str,
        key: &str,
        rec: &ObjectRecord,
        cond: &Condition,
    ) -> Result<Written, IndexError> {
        self.write_object(bucket, key, rec, cond, None)
    }

    fn write_object(
        &self,
        bucket: &str,
        key: &str,
        rec: &ObjectRecord,
        cond: &Condition,
        finishing: Option<&[u8; 16]>,
    ) -> Result<Written, IndexError> {
        let tx = self.db.begin_write()?;
        let written = {
            if tx.open_table(BUCKETS)?.get(bucket)?.is_none() {
                Written::NoBucket
            } else {
                let mut t = tx.open_table(OBJECTS)?;
                let k = object_key(bucket, key);
                let current = match t.get(k.as_slice())? {
                    Some(v) => Some(ObjectRecord::decode(v.value())?),
                    None => None,
                };
                if cond.holds(current.as_ref()) {
                    t.insert(k.as_slice(), rec.encode().as_slice())?;
                    if let Some(id) = finishing {
                        tx.open_table(UPLOADS)?.remove(id.as_slice())?;
                        let mut parts = tx.open_table(PARTS)?;
                        let (from, to) = (part_key(id, 0), part_key(id, u32::MAX));
                        parts.retain_in(from.as_slice()..=to.as_slice(), |_, _| false)?;
                    }
                    Written::Done
                } else {
                    Written::ConditionFailed
                }
            }
        };
        if written == Written::Done {
            tx.commit()?;
        } else {
            tx.abort()?;
        }
        Ok(written)
    }

    /// Removes an object; the removed record, if there was one.
    pub fn delete_object(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<ObjectRecord>, IndexError> {
        let tx = self.db.begin_write()?;
        let old = {
            let mut t = tx.open_table(OBJECTS)?;
            let removed = t.remove(object_key(bucket, key).as_slice())?;
            match removed {
                Some(v) => Some(ObjectRecord::decode(v.value())?),
                None => None,
            }
        };
        tx.commit()?;
        Ok(old)
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
        let start = match after {
            Some(a) if a > prefix => object_key(bucket, a),
            _ => base.clone(),
        };
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
            let Ok(key) = std::str::from_utf8(&k[head..]) else {
                return Err(IndexError::Db("an object key is not UTF-8".into()));
            };
            if after.is_some_and(|a| key <= a) {
                continue;
            }
            let rolled = delimiter.and_then(|d| {
                key[prefix.len()..]
                    .find(d)
                    .map(|i| key[..prefix.len() + i + d.len()].to_owned())
            });
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
                None => out
                    .objects
                    .push((key.to_owned(), ObjectRecord::decode(v.value())?)),
            }
            last = Some(name);
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

    /// Records a part (replacing one of the same number); false if the upload is gone.
    pub fn put_part(&self, id: &[u8; 16], part: u32, rec: &PartRecord) -> Result<bool, IndexError> {
        let tx = self.db.begin_write()?;
        let ok = if tx.open_table(UPLOADS)?.get(id.as_slice())?.is_none() {
            false
        } else {
            tx.open_table(PARTS)?
                .insert(part_key(id, part).as_slice(), rec.encode().as_slice())?;
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

    /// Records the upload's object and forgets the upload and its parts, in one
    /// transaction.
    pub fn finish_upload(
        &self,
        id: &[u8; 16],
        up: &UploadRecord,
        rec: &ObjectRecord,
        cond: &Condition,
    ) -> Result<Written, IndexError> {
        self.write_object(&up.bucket, &up.key, rec, cond, Some(id))
    }

    /// Forgets an upload and its parts; false if there was none.
    pub fn abort_upload(&self, id: &[u8; 16]) -> Result<bool, IndexError> {
        let tx = self.db.begin_write()?;
        let found = {
            let found = tx.open_table(UPLOADS)?.remove(id.as_slice())?.is_some();
            let mut parts = tx.open_table(PARTS)?;
            let (from, to) = (part_key(id, 0), part_key(id, u32::MAX));
            parts.retain_in(from.as_slice()..=to.as_slice(), |_, _| false)?;
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
        ObjectRecord {
            size: 1,
            modified_ms: 1,
            etag: etag.into(),
            parts: 0,
            content_type: String::new(),
            metadata: vec![],
            stored: None,
        }
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
                Written::Done
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
            Written::Done
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
            Written::Done
        );
        assert_eq!(i.object("b", "k").unwrap().unwrap().etag, "2");

        let id = [5u8; 16];
        let up = UploadRecord {
            bucket: "b".into(),
            key: "m".into(),
            created_ms: 1,
            content_type: String::new(),
            metadata: vec![],
        };
        assert!(i.create_upload(&id, &up).unwrap());
        let part = PartRecord {
            size: 3,
            md5: [0; 16],
            modified_ms: 1,
        };
        assert!(i.put_part(&id, 2, &part).unwrap());
        assert!(i.put_part(&id, 1, &part).unwrap());
        assert!(!i.put_part(&[6; 16], 1, &part).unwrap());
        let nums: Vec<u32> = i.parts(&id).unwrap().iter().map(|p| p.0).collect();
        assert_eq!(nums, [1, 2]);
        assert_eq!(
            i.finish_upload(&id, &up, &rec("m"), &Condition::default())
                .unwrap(),
            Written::Done
        );
        assert!(i.upload(&id).unwrap().is_none());
        assert!(i.parts(&id).unwrap().is_empty());
        assert_eq!(i.object("b", "m").unwrap().unwrap().etag, "m");
        assert!(!i.abort_upload(&id).unwrap());
        assert!(i.delete_object("b", "m").unwrap().is_some());
        assert!(i.delete_object("b", "m").unwrap().is_none());
    }
}
