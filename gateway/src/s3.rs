//! The S3 operations, on s3s: s3s parses and authenticates each request (SigV4, streaming
//! payloads, presigned URLs) and writes the XML; this file decides. A PUT's bytes, and each
//! multipart part's, are spooled to the gateway's disk (bounded memory whatever the size),
//! sealed and uploaded to the host as a file of their own, and only then recorded in the
//! index, in one durable transaction: a gateway killed at any point leaves either the whole
//! object (or part) recorded or nothing. Completing a multipart upload seals nothing: the
//! object is its parts' files in order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::{s3_error, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};
use tokio::io::AsyncWriteExt;

use crate::index::{
    BucketGone, Condition, Index, IndexError, Listing, VersionId, VersionListing, Versioning,
    Written,
};
use crate::record::{self, ObjectRecord, PartRecord, Piece, UploadRecord};
use crate::store::HostStore;

/// S3's smallest part, but for the last.
pub const PART_MIN_BYTES: u64 = 5 << 20;
/// S3's most parts per upload.
pub const PARTS_MAX: i32 = 10_000;
/// S3's most keys per listing page.
const LIST_MAX: i32 = 1000;

/// Per-request limits (s3s has none of its own for object bodies), and how long a
/// multipart upload may stay open.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest object one PUT may carry (S3: 5 GiB).
    pub object_bytes_max: u64,
    /// The largest part (S3: 5 GiB).
    pub part_bytes_max: u64,
    /// A multipart upload not completed this long after it was created is aborted by the
    /// next sweep (its parts' files leave the host), seconds.
    pub open_upload_secs: u64,
    /// Seconds between sweeps.
    pub sweep_every_secs: u64,
    /// PUT and part bodies taken in at once, from spooling until recorded (the gateway's
    /// `max_requests`): past it, SlowDown.
    pub bodies_max: usize,
}

impl Limits {
    /// Days a part is paid for beyond its object's: the longest its upload may stay open
    /// before a sweep aborts it, and two sweep periods (the one that aborts it, and the one
    /// that deletes its object once expired), rounded up.
    pub fn open_upload_days(&self) -> u32 {
        let secs = self
            .open_upload_secs
            .saturating_add(self.sweep_every_secs.saturating_mul(2));
        u32::try_from(secs.div_ceil(86_400)).unwrap_or(u32::MAX)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            object_bytes_max: 5 << 30,
            part_bytes_max: 5 << 30,
            open_upload_secs: 2 * 86_400,
            sweep_every_secs: 3600,
            bodies_max: 64,
        }
    }
}

/// The gateway's S3 service.
#[derive(Debug, Clone)]
pub struct Gateway {
    index: Arc<Index>,
    store: Arc<HostStore>,
    spool: PathBuf,
    limits: Limits,
    metrics: Arc<crate::metrics::Metrics>,
    /// Woken after a write or delete that may have left a sealed file unnamed.
    orphaned: Arc<tokio::sync::Notify>,
    /// A turn per PUT or part body being spooled, sealed or stored ([`Limits::bodies_max`]):
    /// its task holds it until the body is recorded, even past its request's end (a client
    /// gone, a request timed out), so retries cannot pile up spooled bodies.
    bodies: Arc<tokio::sync::Semaphore>,
}

/// A file in the spool, removed when dropped (an error path leaves nothing behind).
struct Spooled(PathBuf);

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn timestamp(ms: u64) -> Timestamp {
    Timestamp::from(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

/// Seconds since the epoch of an HTTP date (the granularity Last-Modified has).
fn secs_of(t: &Timestamp) -> i64 {
    time::OffsetDateTime::from(t.clone()).unix_timestamp()
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    data_encoding::HEXLOWER.encode(&b)
}

fn internal(e: impl std::fmt::Display) -> S3Error {
    tracing::error!("{e}");
    S3Error::with_message(S3ErrorCode::InternalError, e.to_string())
}

fn sorted_metadata(m: Option<Metadata>) -> S3Result<Vec<(String, String)>> {
    let mut v: Vec<(String, String)> = m.unwrap_or_default().into_iter().collect();
    v.sort();
    if record::metadata_bytes(&v) > record::META_BYTES_MAX {
        return Err(s3_error!(
            MetadataTooLarge,
            "user metadata over {} bytes",
            record::META_BYTES_MAX
        ));
    }
    Ok(v)
}

fn metadata_map(v: &[(String, String)]) -> Option<Metadata> {
    (!v.is_empty()).then(|| v.iter().cloned().collect::<HashMap<_, _>>())
}

fn check_content_type(ct: Option<ContentType>) -> S3Result<String> {
    let ct = ct.unwrap_or_default();
    if ct.len() > record::CONTENT_TYPE_MAX {
        return Err(s3_error!(
            InvalidArgument,
            "Content-Type over {} bytes",
            record::CONTENT_TYPE_MAX
        ));
    }
    Ok(ct)
}

fn parse_upload_id(id: &str) -> S3Result<[u8; 16]> {
    data_encoding::HEXLOWER
        .decode(id.as_bytes())
        .ok()
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .ok_or_else(|| s3_error!(NoSuchUpload))
}

/// A request's version id: `null` or one this gateway gave.
fn parse_version(v: &str) -> S3Result<VersionId> {
    VersionId::parse(v).ok_or_else(|| s3_error!(InvalidArgument, "Invalid version id specified"))
}

/// The version id a response names: a real one, or `null` for an object written while
/// versioning was suspended (None: never versioned, so no header).
fn shown_version(rec: &ObjectRecord) -> Option<String> {
    (rec.seq != 0 && !rec.null_version).then(|| rec.version_id())
}

fn etag(e: &str) -> ETag {
    ETag::Strong(e.to_owned())
}

/// A PUT's `If-None-Match` / `If-Match` as an index condition.
fn put_condition(none: Option<IfNoneMatch>, any: Option<IfMatch>) -> S3Result<Condition> {
    let absent = match none {
        None => false,
        Some(ETagCondition::Any) => true,
        Some(ETagCondition::ETag(_)) => {
            return Err(s3_error!(
                NotImplemented,
                "If-None-Match on a write takes only *"
            ))
        }
    };
    let etag = any.map(|c| match c {
        ETagCondition::Any => "*".to_owned(),
        ETagCondition::ETag(e) => e.value().to_owned(),
    });
    Ok(Condition { absent, etag })
}

/// The read conditions of GET and HEAD (RFC 9110 section 13.2.2's order).
struct ReadConditions {
    if_match: Option<IfMatch>,
    if_unmodified_since: Option<IfUnmodifiedSince>,
    if_none_match: Option<IfNoneMatch>,
    if_modified_since: Option<IfModifiedSince>,
}

/// The read conditions of a GET's or HEAD's input (the same four fields).
macro_rules! read_conditions {
    ($input:ident) => {
        ReadConditions {
            if_match: $input.if_match,
            if_unmodified_since: $input.if_unmodified_since,
            if_none_match: $input.if_none_match,
            if_modified_since: $input.if_modified_since,
        }
    };
}

/// A GET's or HEAD's output with the object's headers, and `extra` fields.
macro_rules! object_output {
    ($t:ident, $rec:expr, { $($f:ident: $v:expr),* $(,)? }) => {
        $t {
            accept_ranges: Some("bytes".into()),
            e_tag: Some(etag(&$rec.etag)),
            last_modified: Some(timestamp($rec.modified_ms)),
            content_type: (!$rec.content_type.is_empty()).then(|| $rec.content_type.clone()),
            metadata: metadata_map(&$rec.metadata),
            parts_count: ($rec.parts > 0).then(|| i32::try_from($rec.parts).unwrap_or(i32::MAX)),
            version_id: shown_version(&$rec),
            $($f: $v,)*
            ..Default::default()
        }
    };
}

/// Whether an If-Match / If-None-Match condition names the object with `etag`.
fn etag_matches(c: &ETagCondition, etag: &str) -> bool {
    match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == etag,
    }
}

impl ReadConditions {
    fn check(&self, rec: &ObjectRecord) -> S3Result<()> {
        let modified = i64::try_from(rec.modified_ms / 1000).unwrap_or(i64::MAX);
        let matches = |c: &ETagCondition| etag_matches(c, &rec.etag);
        if let Some(c) = &self.if_match {
            if !matches(c) {
                return Err(s3_error!(PreconditionFailed, "If-Match: the ETag differs"));
            }
        } else if let Some(t) = &self.if_unmodified_since {
            if modified > secs_of(t) {
                return Err(s3_error!(
                    PreconditionFailed,
                    "If-Unmodified-Since: modified since"
                ));
            }
        }
        if let Some(c) = &self.if_none_match {
            if matches(c) {
                return Err(s3_error!(NotModified));
            }
        } else if let Some(t) = &self.if_modified_since {
            if modified <= secs_of(t) {
                return Err(s3_error!(NotModified));
            }
        }
        Ok(())
    }
}

/// Percent-encodes a key for `encoding-type=url` (all but unreserved characters and `/`).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A listing's continuation token: the key (or common prefix) it resumes after, in hex.
fn token_of(after: &str) -> String {
    data_encoding::HEXLOWER.encode(after.as_bytes())
}

fn after_of(token: &str) -> S3Result<String> {
    data_encoding::HEXLOWER
        .decode(token.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            s3_error!(
                InvalidArgument,
                "the continuation token is not one this gateway gave"
            )
        })
}

fn max_keys(m: Option<MaxKeys>) -> S3Result<usize> {
    match m {
        None => Ok(LIST_MAX as usize),
        Some(n) if n < 0 => Err(s3_error!(InvalidArgument, "max-keys is negative")),
        Some(n) => Ok(usize::try_from(n.min(LIST_MAX)).unwrap_or(0)),
    }
}

/// A listing page in S3's terms.
struct Page {
    objects: Vec<Object>,
    prefixes: Vec<CommonPrefix>,
    next: Option<String>,
    max_keys: i32,
    /// `encoding-type=url` was asked for.
    url: bool,
}

/// A key, prefix or marker as a page shows it.
fn enc(url: bool, s: Option<String>) -> Option<String> {
    if url {
        s.map(|s| url_encode(&s))
    } else {
        s
    }
}

fn listed(l: &Listing, url: bool) -> (Vec<Object>, Vec<CommonPrefix>) {
    let enc = |s: &str| if url { url_encode(s) } else { s.to_owned() };
    let objects = l
        .objects
        .iter()
        .map(|(k, r)| Object {
            key: Some(enc(k)),
            size: Some(i64::try_from(r.size).unwrap_or(i64::MAX)),
            e_tag: Some(etag(&r.etag)),
            last_modified: Some(timestamp(r.modified_ms)),
            storage_class: Some(ObjectStorageClass::from_static(
                ObjectStorageClass::STANDARD,
            )),
            ..Default::default()
        })
        .collect();
    let prefixes = l
        .prefixes
        .iter()
        .map(|p| CommonPrefix {
            prefix: Some(enc(p)),
        })
        .collect();
    (objects, prefixes)
}

impl Gateway {
    /// The service over an open index; removes what a killed gateway left in the spool
    /// (bodies and journals of uploads in progress, and the `uploads` folder where older
    /// gateways kept parts until their upload completed).
    pub fn new(
        index: Arc<Index>,
        store: Arc<HostStore>,
        spool: PathBuf,
        limits: Limits,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Gateway, IndexError> {
        std::fs::create_dir_all(&spool)
            .map_err(|e| IndexError::Db(format!("{}: {e}", spool.display())))?;
        let _ = std::fs::remove_dir_all(spool.join("uploads"));
        for entry in std::fs::read_dir(&spool).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("tmp-") {
                let _ = std::fs::remove_file(entry.path());
            } else if name.starts_with("j-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(Gateway {
            index,
            store,
            spool,
            limits,
            metrics,
            orphaned: Arc::new(tokio::sync::Notify::new()),
            bodies: Arc::new(tokio::sync::Semaphore::new(limits.bodies_max)),
        })
    }

    /// A turn to take a body in, or SlowDown (S3 clients retry) when every turn is held.
    fn body_turn(&self) -> S3Result<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.bodies).try_acquire_owned().map_err(|_| {
            S3Error::with_message(
                S3ErrorCode::SlowDown,
                "every upload turn is taken by bodies still being stored",
            )
        })
    }

    /// Sealed files the index holds as named by no object (0 if it cannot be read).
    pub fn orphan_count(&self) -> u64 {
        self.index.orphan_count().unwrap_or(0)
    }

    /// Removes from their host the sealed files no record names any more (see
    /// [`HostStore::drop_file`]), once each has been an orphan for `grace` (a GET that
    /// began before the delete reads on), then forgets them; one that fails stays for the
    /// next pass. Runs at start, after each write or delete that may have unnamed a file,
    /// when the next orphan's grace ends, and every `every` in any case.
    pub async fn collect_orphans(&self, every: Duration, grace: Duration) {
        let mut first_seen: HashMap<[u8; 32], std::time::Instant> = HashMap::new();
        loop {
            let orphans = match self.db(|i| i.orphans()).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!("reading the orphaned files: {e:?}");
                    Vec::new()
                }
            };
            let mut left = 0u64;
            let now = std::time::Instant::now();
            let mut next_due: Option<Duration> = None;
            first_seen.retain(|m, _| orphans.iter().any(|r| r.files().any(|s| s.manifest == *m)));
            for stored in orphans.iter().flat_map(ObjectRecord::files) {
                let manifest = stored.manifest;
                let waited =
                    now.saturating_duration_since(*first_seen.entry(manifest).or_insert(now));
                if waited < grace {
                    let due = grace - waited;
                    next_due = Some(next_due.map_or(due, |d| d.min(due)));
                    continue;
                }
                match self.store.drop_file(stored).await {
                    Ok(done) => {
                        match done {
                            Some(n) => {
                                self.metrics.dropped_files.fetch_add(1, Relaxed);
                                tracing::info!(
                                    manifest = %data_encoding::HEXLOWER.encode(&manifest),
                                    chunks = n,
                                    "removed from its host: no object names it any more"
                                );
                            }
                            None => tracing::info!(
                                manifest = %data_encoding::HEXLOWER.encode(&manifest),
                                "no object names it any more; it stays on its hosts until its deals end"
                            ),
                        }
                        if let Err(e) = self.db(move |i| i.forget_orphan(&manifest)).await {
                            tracing::warn!("forgetting an orphaned file: {e:?}");
                            left += 1;
                        }
                    }
                    Err(e) => {
                        tracing::warn!("removing an orphaned file from its host: {e}");
                        left += 1;
                    }
                }
            }
            if left > 0 {
                tracing::warn!(left, "orphaned files left for the next pass");
            }
            let wait = next_due.map_or(every, |d| d.min(every));
            let _ = tokio::time::timeout(wait, self.orphaned.notified()).await;
        }
    }

    /// Runs an index operation off the async workers (a commit waits for the disk).
    async fn db<T, F>(&self, f: F) -> S3Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Index) -> Result<T, IndexError> + Send + 'static,
    {
        let index = Arc::clone(&self.index);
        tokio::task::spawn_blocking(move || f(&index))
            .await
            .map_err(internal)?
            .map_err(internal)
    }

    async fn need_bucket(&self, bucket: &str) -> S3Result<()> {
        let b = bucket.to_owned();
        if self.db(move |i| i.bucket_exists(&b)).await? {
            Ok(())
        } else {
            Err(s3_error!(NoSuchBucket))
        }
    }

    /// The key's current object, or the version a request names: NoSuchKey when there
    /// is none or the current one is a delete marker, NoSuchVersion for an unknown
    /// version, MethodNotAllowed for a version that is a delete marker (as S3 answers).
    async fn object(
        &self,
        bucket: &str,
        key: &str,
        version: Option<&str>,
    ) -> S3Result<ObjectRecord> {
        let (b, k) = (bucket.to_owned(), key.to_owned());
        let got = match version {
            None => self.db(move |i| i.object(&b, &k)).await?,
            Some(v) => {
                let v = parse_version(v)?;
                self.db(move |i| i.object_version(&b, &k, v)).await?
            }
        };
        match got {
            Some(r) if !r.delete_marker => Ok(r),
            Some(_) if version.is_some() => Err(s3_error!(
                MethodNotAllowed,
                "the version is a delete marker"
            )),
            Some(_) => Err(s3_error!(NoSuchKey)),
            None => {
                self.need_bucket(bucket).await?;
                Err(match version {
                    Some(_) => s3_error!(NoSuchVersion),
                    None => s3_error!(NoSuchKey),
                })
            }
        }
    }

    /// Writes a request body to `path`, at most `max` bytes (not synced: it is sealed and
    /// stored at once, and a killed gateway drops its spool); its size and MD5.
    async fn spool_body(
        &self,
        body: Option<StreamingBlob>,
        path: &Path,
        max: u64,
    ) -> S3Result<(u64, [u8; 16])> {
        let mut f = tokio::fs::File::create(path).await.map_err(internal)?;
        let mut md5 = Md5::new();
        let mut n = 0u64;
        if let Some(mut body) = body {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| {
                    S3Error::with_message(S3ErrorCode::IncompleteBody, e.to_string())
                })?;
                n += chunk.len() as u64;
                if n > max {
                    return Err(s3_error!(EntityTooLarge, "more than {max} bytes"));
                }
                md5.update(&chunk);
                f.write_all(&chunk).await.map_err(internal)?;
            }
        }
        f.flush().await.map_err(internal)?;
        Ok((n, md5.finalize().into()))
    }

    /// Stores a spooled file (nothing for an empty one): an object's or a part's.
    async fn store_file(
        &self,
        path: &Path,
        size: u64,
        days: Option<u32>,
    ) -> S3Result<Option<record::Stored>> {
        if size == 0 {
            return Ok(None);
        }
        let stored =
            self.store.put(path, size, days).await.map_err(|e| {
                S3Error::with_message(S3ErrorCode::ServiceUnavailable, e.to_string())
            })?;
        self.metrics.stored_bytes.fetch_add(size, Relaxed);
        Ok(Some(stored))
    }

    /// The object's bytes `range` as a body, read from its hosts chunk by chunk, piece
    /// after piece.
    async fn body(
        &self,
        rec: &ObjectRecord,
        range: std::ops::Range<u64>,
    ) -> S3Result<StreamingBlob> {
        let mut spans = pieces_in(&rec.pieces, &range);
        let Some((stored, within)) = spans.pop_front() else {
            return Ok(StreamingBlob::wrap(futures::stream::empty::<
                Result<bytes::Bytes, std::io::Error>,
            >()));
        };
        // The first piece is asked for now, so that a host out of reach fails the request
        // with a status; each next one while the last chunk of the one before goes out.
        let first =
            self.store.read(&stored, within).await.map_err(|e| {
                S3Error::with_message(S3ErrorCode::ServiceUnavailable, e.to_string())
            })?;
        let reads = PieceReads {
            store: Arc::clone(&self.store),
            metrics: Arc::clone(&self.metrics),
            reading: Some(first),
            next: None,
            fresh: None,
            spans,
        };
        let stream = futures::stream::unfold(reads, |mut reads| async move {
            let item = reads.next_item().await?;
            Some((item, reads))
        });
        Ok(StreamingBlob::wrap(stream))
    }

    /// Deletes every object its bucket's lifecycle rules expired by `now_secs`, and aborts
    /// every multipart upload open longer than [`Limits::open_upload_secs`] (its parts'
    /// files become orphans); how many objects.
    pub async fn sweep(&self, now_secs: u64) -> S3Result<u64> {
        let open = self.limits.open_upload_secs;
        for (id, up) in self.db(|i| i.uploads()).await? {
            if now_secs.saturating_sub(up.created_ms / 1000) <= open {
                continue;
            }
            match self.db(move |i| i.abort_upload(&id)).await {
                Ok(true) => {
                    self.orphaned.notify_one();
                    tracing::info!(
                        bucket = %up.bucket,
                        key = %up.key,
                        upload = %data_encoding::HEXLOWER.encode(&id),
                        "multipart upload aborted: open longer than open_upload_secs"
                    );
                }
                Ok(false) => {}
                // Left for the next sweep; the lifecycle's expirations go on.
                Err(e) => tracing::warn!("aborting an upload open too long: {e:?}"),
            }
        }
        let all = self.db(|i| i.lifecycles()).await?;
        let mut gone = 0;
        for (bucket, rules) in all {
            let mut after: Option<String> = None;
            loop {
                let (b, a) = (bucket.clone(), after.clone());
                let page = self
                    .db(move |i| i.list(&b, "", None, a.as_deref(), 1000))
                    .await?;
                for (key, rec) in &page.objects {
                    if expires_at(&rules, key, rec.modified_ms).is_some_and(|t| t <= now_secs) {
                        let (b, k) = (bucket.clone(), key.clone());
                        let now = now_secs.saturating_mul(1000);
                        let listed = rec.clone();
                        let d = self
                            .db(move |i| i.expire(&b, &k, &listed, now))
                            .await?
                            .unwrap_or_default();
                        self.orphaned.notify_one();
                        if !d.removed.is_empty() || d.marker.is_some() {
                            tracing::info!(bucket, key, "expired by the bucket's lifecycle");
                            gone += 1;
                        }
                    }
                }
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
        }
        Ok(gone)
    }

    /// Days an object written now under `key` lives by its bucket's lifecycle, if a rule
    /// covers it (at least 1): what a deal for it is paid for.
    async fn lifetime_days(&self, bucket: &str, key: &str) -> S3Result<Option<u32>> {
        let b = bucket.to_owned();
        let Some(rules) = self.db(move |i| i.lifecycle(&b)).await? else {
            return Ok(None);
        };
        let now = now_ms();
        Ok(expires_at(&rules, key, now).map(|t| {
            let secs = t.saturating_sub(now / 1000);
            u32::try_from(secs.div_ceil(86_400).max(1)).unwrap_or(u32::MAX)
        }))
    }

    /// One page of a listing, as ListObjects v1 and v2 both answer it.
    async fn page(
        &self,
        bucket: &str,
        prefix: Option<String>,
        delimiter: Option<String>,
        after: Option<String>,
        max_keys: Option<MaxKeys>,
        encoding: Option<&EncodingType>,
    ) -> S3Result<Page> {
        self.need_bucket(bucket).await?;
        let max = self::max_keys(max_keys)?;
        let b = bucket.to_owned();
        let l = self
            .db(move |i| {
                i.list(
                    &b,
                    prefix.as_deref().unwrap_or_default(),
                    delimiter.as_deref(),
                    after.as_deref(),
                    max,
                )
            })
            .await?;
        let url = encoding.is_some_and(|e| e.as_str() == EncodingType::URL);
        let (objects, prefixes) = listed(&l, url);
        Ok(Page {
            objects,
            prefixes,
            next: l.next,
            max_keys: i32::try_from(max).unwrap_or(LIST_MAX),
            url,
        })
    }

    fn spool_path(&self) -> Spooled {
        Spooled(self.spool.join(format!("tmp-{}", random_hex(8))))
    }

    /// Records `rec` (a copy's when `copying`): its version id, or S3's error. Whatever
    /// happens, the collector is woken: a write replaces a record, and a new file that
    /// could not be recorded is an orphan.
    async fn write_object(
        &self,
        bucket: String,
        key: String,
        rec: ObjectRecord,
        cond: Condition,
        copying: bool,
    ) -> S3Result<Option<String>> {
        let written = self
            .db(move |i| {
                if copying {
                    i.copy_object(&bucket, &key, &rec, &cond)
                } else {
                    i.put_object(&bucket, &key, &rec, &cond)
                }
            })
            .await?;
        self.orphaned.notify_one();
        match written {
            Written::Done(v) => Ok(v),
            Written::NoBucket => Err(s3_error!(NoSuchBucket)),
            Written::ConditionFailed => Err(s3_error!(
                PreconditionFailed,
                "the object's current state does not meet the condition"
            )),
            Written::SourceGone => Err(s3_error!(
                NoSuchKey,
                "the copy's source was deleted while it was copied"
            )),
            Written::UploadGone | Written::PartsChanged => {
                Err(internal("a PUT or copy is no multipart completion"))
            }
        }
    }
}

/// An S3 lifecycle rule as the gateway keeps it: an expiration (days or a date) for a
/// prefix; what needs versions, storage classes, tags or sizes is refused.
fn lifecycle_rule(r: &LifecycleRule) -> S3Result<record::LifecycleRule> {
    let not = |what: &str| s3_error!(NotImplemented, "lifecycle rules with {what}");
    if r.transitions.as_ref().is_some_and(|t| !t.is_empty())
        || r.noncurrent_version_expiration.is_some()
        || r.noncurrent_version_transitions
            .as_ref()
            .is_some_and(|t| !t.is_empty())
    {
        return Err(not(
            "transitions or versions (this gateway keeps one version)",
        ));
    }
    let prefix = match &r.filter {
        Some(f) => {
            if f.and.is_some()
                || f.tag.is_some()
                || f.object_size_greater_than.is_some()
                || f.object_size_less_than.is_some()
            {
                return Err(not("tag, size or combined filters"));
            }
            f.prefix.clone().unwrap_or_default()
        }
        None => r.prefix.clone().unwrap_or_default(),
    };
    let e = r
        .expiration
        .as_ref()
        .ok_or_else(|| s3_error!(InvalidArgument, "a rule needs an Expiration"))?;
    let expiry = match (e.days, &e.date) {
        (Some(d), None) if d > 0 => record::Expiry::Days(u32::try_from(d).unwrap_or(u32::MAX)),
        (None, Some(t)) => record::Expiry::Date(
            u64::try_from(secs_of(t))
                .map_err(|_| s3_error!(InvalidArgument, "a date before 1970"))?,
        ),
        _ => {
            return Err(s3_error!(
                InvalidArgument,
                "an Expiration takes Days (1 or more) or a Date"
            ))
        }
    };
    let id = r.id.clone().unwrap_or_default();
    if id.len() > record::RULE_ID_MAX || prefix.len() > record::KEY_MAX {
        return Err(s3_error!(
            InvalidArgument,
            "a rule's ID or prefix is too long"
        ));
    }
    Ok(record::LifecycleRule {
        id,
        enabled: r.status.as_str() == ExpirationStatus::ENABLED,
        prefix,
        expiry,
    })
}

fn s3_rule(r: &record::LifecycleRule) -> LifecycleRule {
    let (days, date) = match r.expiry {
        record::Expiry::Days(d) => (Some(i32::try_from(d).unwrap_or(i32::MAX)), None),
        record::Expiry::Date(t) => (
            None,
            Some(Timestamp::from(
                SystemTime::UNIX_EPOCH + Duration::from_secs(t),
            )),
        ),
    };
    LifecycleRule {
        id: (!r.id.is_empty()).then(|| r.id.clone()),
        status: ExpirationStatus::from_static(if r.enabled {
            ExpirationStatus::ENABLED
        } else {
            ExpirationStatus::DISABLED
        }),
        filter: Some(LifecycleRuleFilter {
            prefix: Some(r.prefix.clone()),
            ..Default::default()
        }),
        expiration: Some(LifecycleExpiration {
            days,
            date,
            ..Default::default()
        }),
        abort_incomplete_multipart_upload: None,
        noncurrent_version_expiration: None,
        noncurrent_version_transitions: None,
        prefix: None,
        transitions: None,
    }
}

/// When an object written at `modified_ms` under `key` expires by `rules` (Unix seconds),
/// if any enabled rule covers it: the earliest.
pub fn expires_at(rules: &[record::LifecycleRule], key: &str, modified_ms: u64) -> Option<u64> {
    rules
        .iter()
        .filter(|r| r.enabled && key.starts_with(&r.prefix))
        .map(|r| match r.expiry {
            record::Expiry::Days(d) => (modified_ms / 1000).saturating_add(u64::from(d) * 86_400),
            record::Expiry::Date(t) => t,
        })
        .min()
}

/// A body read piece after piece: once a piece has given its last chunk, the next one's
/// read is opened (its download link, connection and manifest) while the client takes that
/// chunk, so a range over many small pieces (8 MiB parts) does not wait for each at its
/// start.
struct PieceReads {
    store: Arc<HostStore>,
    metrics: Arc<crate::metrics::Metrics>,
    reading: Option<crate::store::Reading>,
    /// The next piece's read, opening, and the piece.
    next: Option<(Opening, Span)>,
    /// The current piece while it was opened ahead and has given nothing yet: should its
    /// first chunk fail (its connection idled out while a slow client took the last
    /// chunk of the piece before), it is opened once more.
    fresh: Option<Span>,
    /// The pieces after the next one.
    spans: std::collections::VecDeque<Span>,
}

/// A piece's file and the bytes of it a range takes.
type Span = (record::Stored, std::ops::Range<u64>);
type Opening = tokio::task::JoinHandle<Result<crate::store::Reading, crate::store::StoreError>>;

impl PieceReads {
    /// Starts opening the next piece's read, if there is one and it is not opening yet.
    fn open_next(&mut self) {
        if self.next.is_some() {
            return;
        }
        if let Some(span) = self.spans.pop_front() {
            let (stored, within) = span.clone();
            let store = Arc::clone(&self.store);
            let opening = tokio::spawn(async move { store.read(&stored, within).await });
            self.next = Some((opening, span));
        }
    }

    /// The body's next bytes; after an error, nothing more.
    async fn next_item(&mut self) -> Option<Result<bytes::Bytes, std::io::Error>> {
        loop {
            if let Some(r) = self.reading.as_mut() {
                match r.next().await {
                    Some(Ok(b)) => {
                        self.fresh = None;
                        self.metrics.read_bytes.fetch_add(b.len() as u64, Relaxed);
                        if r.given_all() {
                            self.open_next();
                        }
                        return Some(Ok(b));
                    }
                    Some(Err(e)) => {
                        let Some((stored, within)) = self.fresh.take() else {
                            return self.fail(e);
                        };
                        match self.store.read(&stored, within).await {
                            Ok(again) => self.reading = Some(again),
                            Err(e) => return self.fail(e),
                        }
                        continue;
                    }
                    None => self.reading = None,
                }
            }
            self.open_next();
            // Awaited in place: a body dropped meanwhile still aborts it.
            let opened = (&mut self.next.as_mut()?.0).await;
            let (_, span) = self.next.take()?;
            match opened {
                Ok(Ok(r)) => {
                    self.reading = Some(r);
                    self.fresh = Some(span);
                }
                Ok(Err(e)) => return self.fail(e),
                Err(e) => return self.fail(e),
            }
        }
    }

    /// Stops the body and gives `e` as its last item.
    fn fail(&mut self, e: impl std::fmt::Display) -> Option<Result<bytes::Bytes, std::io::Error>> {
        self.stop();
        Some(Err(std::io::Error::other(e.to_string())))
    }

    fn stop(&mut self) {
        self.reading = None;
        self.fresh = None;
        self.spans.clear();
        if let Some((opening, _)) = self.next.take() {
            opening.abort();
        }
    }
}

impl Drop for PieceReads {
    /// A body dropped early (the client went away) leaves no read opening behind.
    fn drop(&mut self) {
        self.stop();
    }
}

/// The pieces `range` of an object covers, each with the bytes of it the range takes
/// (offsets within the piece), in order.
fn pieces_in(pieces: &[Piece], range: &std::ops::Range<u64>) -> std::collections::VecDeque<Span> {
    let mut out = std::collections::VecDeque::new();
    let mut at = 0u64;
    for p in pieces {
        let (from, to) = (range.start.max(at), range.end.min(at + p.size));
        if from < to {
            out.push_back((p.stored.clone(), from - at..to - at));
        }
        at += p.size;
        if at >= range.end {
            break;
        }
    }
    out
}

fn check_key(key: &str) -> S3Result<()> {
    if key.len() > record::KEY_MAX {
        return Err(s3_error!(KeyTooLongError));
    }
    // The index separates a key from its versions with a 0 byte (and XML cannot carry it).
    if key.contains('\0') {
        return Err(s3_error!(
            InvalidArgument,
            "an object key cannot hold U+0000"
        ));
    }
    Ok(())
}

/// A DeleteObject's answer: the delete marker it made, or the version it removed (and
/// whether that was a delete marker).
fn deleted_output(d: &crate::index::Deleted, asked: Option<String>) -> DeleteObjectOutput {
    match (&d.marker, asked) {
        (Some(m), _) => DeleteObjectOutput {
            delete_marker: Some(true),
            version_id: Some(m.version_id()),
            ..Default::default()
        },
        (None, Some(v)) => DeleteObjectOutput {
            delete_marker: d.removed.first().map(|r| r.delete_marker),
            version_id: Some(v),
            ..Default::default()
        },
        (None, None) => DeleteObjectOutput::default(),
    }
}

#[async_trait::async_trait]
impl S3 for Gateway {
    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let buckets = self.db(|i| i.buckets()).await?;
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(
                buckets
                    .into_iter()
                    .map(|(name, ms)| Bucket {
                        name: Some(name),
                        creation_date: Some(timestamp(ms)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let name = req.input.bucket;
        if name.len() > record::BUCKET_MAX {
            return Err(s3_error!(InvalidBucketName));
        }
        let n = name.clone();
        if self.db(move |i| i.create_bucket(&n, now_ms())).await? {
            Ok(S3Response::new(CreateBucketOutput {
                location: Some(format!("/{name}")),
            }))
        } else {
            Err(s3_error!(BucketAlreadyOwnedByYou))
        }
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.need_bucket(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.need_bucket(&req.input.bucket).await?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let name = req.input.bucket;
        match self.db(move |i| i.delete_bucket(&name)).await? {
            BucketGone::Deleted => Ok(S3Response::new(DeleteBucketOutput::default())),
            BucketGone::NotFound => Err(s3_error!(NoSuchBucket)),
            BucketGone::NotEmpty => Err(s3_error!(BucketNotEmpty)),
        }
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        check_key(&input.key)?;
        let max = self.limits.object_bytes_max;
        if input
            .content_length
            .is_some_and(|n| u64::try_from(n).unwrap_or(0) > max)
        {
            return Err(s3_error!(EntityTooLarge, "more than {max} bytes"));
        }
        let metadata = sorted_metadata(input.metadata)?;
        let content_type = check_content_type(input.content_type)?;
        let cond = put_condition(input.if_none_match, input.if_match)?;
        // Checked before the upload, so a create-only PUT of an existing key costs
        // nothing; checked again when it is recorded.
        let (b, k) = (input.bucket.clone(), input.key.clone());
        let current = self
            .db(move |i| i.object(&b, &k))
            .await?
            .filter(|c| !c.delete_marker);
        if current.is_none() {
            self.need_bucket(&input.bucket).await?;
        }
        if (cond.absent || cond.etag.is_some()) && !cond.holds(current.as_ref()) {
            return Err(s3_error!(
                PreconditionFailed,
                "the object's current state does not meet the condition"
            ));
        }
        let turn = self.body_turn()?;
        let started = std::time::Instant::now();
        let file = self.spool_path();
        let (size, md5) = self.spool_body(input.body, &file.0, max).await?;
        if let Some(want) = &input.content_md5 {
            if data_encoding::BASE64.encode(&md5) != *want {
                return Err(s3_error!(BadDigest));
            }
        }
        let spooled = started.elapsed();
        let days = self.lifetime_days(&input.bucket, &input.key).await?;
        let tag = data_encoding::HEXLOWER.encode(&md5);
        // Stored and recorded on a task of its own: a client gone or a request timed out
        // does not stop it between the two, where it would leave a file on the host that
        // no record names (or that an orphan row would remove).
        let me = self.clone();
        let (bucket, key, etag_kept) = (input.bucket, input.key, tag.clone());
        let version_id = tokio::spawn(async move {
            let stored = me.store_file(&file.0, size, days).await?;
            drop(file);
            tracing::info!(
                bucket = %bucket,
                key = %key,
                size,
                receive_ms = spooled.as_millis(),
                store_ms = (started.elapsed() - spooled).as_millis(),
                "object stored"
            );
            let rec = ObjectRecord {
                size,
                modified_ms: now_ms(),
                etag: etag_kept,
                parts: 0,
                content_type,
                metadata,
                pieces: stored
                    .map(|stored| vec![Piece { size, stored }])
                    .unwrap_or_default(),
                seq: 0,
                null_version: false,
                delete_marker: false,
            };
            let version = me.write_object(bucket, key, rec, cond, false).await?;
            me.metrics.stored_objects.fetch_add(1, Relaxed);
            drop(turn);
            Ok::<_, S3Error>(version)
        })
        .await
        .map_err(internal)??;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(etag(&tag)),
            size: Some(i64::try_from(size).unwrap_or(i64::MAX)),
            version_id,
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let rec = self
            .object(&input.bucket, &input.key, input.version_id.as_deref())
            .await?;
        read_conditions!(input).check(&rec)?;
        if input.part_number.is_some() {
            return Err(s3_error!(NotImplemented, "GET by part number"));
        }
        let (range, content_range) = match input.range {
            None => (0..rec.size, None),
            Some(r) => {
                let got = r
                    .check(rec.size)
                    .map_err(|_| s3_error!(InvalidRange, "the object has {} bytes", rec.size))?;
                let shown = format!("bytes {}-{}/{}", got.start, got.end - 1, rec.size);
                (got, Some(shown))
            }
        };
        let len = range.end - range.start;
        let body = self.body(&rec, range).await?;
        Ok(S3Response::new(object_output!(GetObjectOutput, rec, {
            body: Some(body),
            content_length: Some(i64::try_from(len).unwrap_or(i64::MAX)),
            content_range: content_range,
        })))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let rec = self
            .object(&input.bucket, &input.key, input.version_id.as_deref())
            .await?;
        read_conditions!(input).check(&rec)?;
        Ok(S3Response::new(object_output!(HeadObjectOutput, rec, {
            content_length: Some(i64::try_from(rec.size).unwrap_or(i64::MAX)),
        })))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        self.need_bucket(&input.bucket).await?;
        let version = input.version_id.as_deref().map(parse_version).transpose()?;
        let (b, k) = (input.bucket, input.key);
        let d = self
            .db(move |i| i.delete_object(&b, &k, version, now_ms()))
            .await?;
        self.orphaned.notify_one();
        Ok(S3Response::new(deleted_output(&d, input.version_id)))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        self.need_bucket(&input.bucket).await?;
        let quiet = input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for o in input.delete.objects {
            let version = match o.version_id.as_deref().map(VersionId::parse) {
                None => None,
                Some(Some(v)) => Some(v),
                Some(None) => {
                    errors.push(Error {
                        code: Some("NoSuchVersion".into()),
                        key: Some(o.key),
                        message: Some("Invalid version id specified".into()),
                        version_id: o.version_id,
                    });
                    continue;
                }
            };
            let (b, k) = (input.bucket.clone(), o.key.clone());
            let d = self
                .db(move |i| i.delete_object(&b, &k, version, now_ms()))
                .await?;
            if !quiet {
                let out = deleted_output(&d, o.version_id.clone());
                deleted.push(DeletedObject {
                    key: Some(o.key),
                    version_id: o.version_id,
                    delete_marker: out.delete_marker,
                    delete_marker_version_id: d.marker.as_ref().map(ObjectRecord::version_id),
                });
            }
        }
        self.orphaned.notify_one();
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let input = req.input;
        check_key(&input.key)?;
        let CopySource::Bucket {
            bucket: src_bucket,
            key: src_key,
            version_id,
        } = &input.copy_source
        else {
            return Err(s3_error!(NotImplemented, "copying from an access point"));
        };
        let src = self
            .object(src_bucket, src_key, version_id.as_deref())
            .await?;
        let src_version = shown_version(&src);
        if let Some(c) = &input.copy_source_if_match {
            if !etag_matches(c, &src.etag) {
                return Err(s3_error!(PreconditionFailed, "x-amz-copy-source-if-match"));
            }
        }
        if let Some(c) = &input.copy_source_if_none_match {
            if etag_matches(c, &src.etag) {
                return Err(s3_error!(
                    PreconditionFailed,
                    "x-amz-copy-source-if-none-match"
                ));
            }
        }
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        // Onto itself is a no-op, but for restoring an older version (S3's way to undo).
        let same = input.bucket == **src_bucket && input.key == **src_key && version_id.is_none();
        if same && !replace {
            return Err(s3_error!(
                InvalidRequest,
                "copying an object onto itself changes nothing; give x-amz-metadata-directive: REPLACE"
            ));
        }
        // Objects never change once sealed: the copy names the same sealed file.
        let rec = ObjectRecord {
            modified_ms: now_ms(),
            content_type: if replace {
                check_content_type(input.content_type)?
            } else {
                src.content_type.clone()
            },
            metadata: if replace {
                sorted_metadata(input.metadata)?
            } else {
                src.metadata.clone()
            },
            ..src
        };
        let (tag, ms) = (rec.etag.clone(), rec.modified_ms);
        let version_id = self
            .write_object(input.bucket, input.key, rec, Condition::default(), true)
            .await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag(&tag)),
                last_modified: Some(timestamp(ms)),
                ..Default::default()
            }),
            copy_source_version_id: src_version,
            version_id,
            ..Default::default()
        }))
    }

    async fn put_bucket_lifecycle_configuration(
        &self,
        req: S3Request<PutBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<PutBucketLifecycleConfigurationOutput>> {
        let input = req.input;
        let rules = input
            .lifecycle_configuration
            .map(|c| c.rules)
            .unwrap_or_default();
        if rules.is_empty() || rules.len() > record::RULES_MAX {
            return Err(s3_error!(MalformedXML, "1 to {} rules", record::RULES_MAX));
        }
        let rules = rules
            .iter()
            .map(lifecycle_rule)
            .collect::<S3Result<Vec<_>>>()?;
        let b = input.bucket;
        if self.db(move |i| i.set_lifecycle(&b, Some(&rules))).await? {
            Ok(S3Response::new(
                PutBucketLifecycleConfigurationOutput::default(),
            ))
        } else {
            Err(s3_error!(NoSuchBucket))
        }
    }

    async fn get_bucket_lifecycle_configuration(
        &self,
        req: S3Request<GetBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<GetBucketLifecycleConfigurationOutput>> {
        let b = req.input.bucket.clone();
        self.need_bucket(&b).await?;
        let rules = self
            .db(move |i| i.lifecycle(&b))
            .await?
            .ok_or_else(|| s3_error!(NoSuchLifecycleConfiguration))?;
        Ok(S3Response::new(GetBucketLifecycleConfigurationOutput {
            rules: Some(rules.iter().map(s3_rule).collect()),
            ..Default::default()
        }))
    }

    async fn delete_bucket_lifecycle(
        &self,
        req: S3Request<DeleteBucketLifecycleInput>,
    ) -> S3Result<S3Response<DeleteBucketLifecycleOutput>> {
        let b = req.input.bucket;
        if self.db(move |i| i.set_lifecycle(&b, None)).await? {
            Ok(S3Response::new(DeleteBucketLifecycleOutput::default()))
        } else {
            Err(s3_error!(NoSuchBucket))
        }
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        let b = req.input.bucket;
        let status = match self.db(move |i| i.versioning(&b)).await? {
            None => return Err(s3_error!(NoSuchBucket)),
            Some(Versioning::Off) => None,
            Some(Versioning::Enabled) => Some(BucketVersioningStatus::ENABLED),
            Some(Versioning::Suspended) => Some(BucketVersioningStatus::SUSPENDED),
        };
        Ok(S3Response::new(GetBucketVersioningOutput {
            status: status.map(BucketVersioningStatus::from_static),
            ..Default::default()
        }))
    }

    async fn put_bucket_versioning(
        &self,
        req: S3Request<PutBucketVersioningInput>,
    ) -> S3Result<S3Response<PutBucketVersioningOutput>> {
        let input = req.input;
        let c = input.versioning_configuration;
        if c.mfa_delete
            .as_ref()
            .is_some_and(|m| m.as_str() == MFADelete::ENABLED)
        {
            return Err(s3_error!(NotImplemented, "MFA delete"));
        }
        let v = match c.status.as_ref().map(BucketVersioningStatus::as_str) {
            Some(BucketVersioningStatus::ENABLED) => Versioning::Enabled,
            Some(BucketVersioningStatus::SUSPENDED) => Versioning::Suspended,
            _ => {
                return Err(s3_error!(
                    MalformedXML,
                    "the status must be Enabled or Suspended"
                ))
            }
        };
        let b = input.bucket;
        if self.db(move |i| i.set_versioning(&b, v)).await? {
            Ok(S3Response::new(PutBucketVersioningOutput::default()))
        } else {
            Err(s3_error!(NoSuchBucket))
        }
    }

    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let input = req.input;
        self.need_bucket(&input.bucket).await?;
        let max = self::max_keys(input.max_keys)?;
        let version_marker = match (&input.key_marker, input.version_id_marker.as_deref()) {
            (_, None | Some("")) => None,
            (None, Some(_)) => {
                return Err(s3_error!(
                    InvalidArgument,
                    "a version-id-marker needs a key-marker"
                ))
            }
            (Some(_), Some(v)) => Some(parse_version(v)?),
        };
        let (b, prefix, delimiter, key_marker) = (
            input.bucket.clone(),
            input.prefix.clone(),
            input.delimiter.clone(),
            input.key_marker.clone(),
        );
        let l: VersionListing = self
            .db(move |i| {
                i.list_versions(
                    &b,
                    prefix.as_deref().unwrap_or_default(),
                    delimiter.as_deref(),
                    key_marker.as_deref(),
                    version_marker,
                    max,
                )
            })
            .await?;
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == EncodingType::URL);
        let enc1 = |s: &str| if url { url_encode(s) } else { s.to_owned() };
        let mut versions = Vec::new();
        let mut markers = Vec::new();
        for (key, r, latest) in &l.versions {
            if r.delete_marker {
                markers.push(DeleteMarkerEntry {
                    is_latest: Some(*latest),
                    key: Some(enc1(key)),
                    last_modified: Some(timestamp(r.modified_ms)),
                    version_id: Some(r.version_id()),
                    ..Default::default()
                });
            } else {
                versions.push(ObjectVersion {
                    e_tag: Some(etag(&r.etag)),
                    is_latest: Some(*latest),
                    key: Some(enc1(key)),
                    last_modified: Some(timestamp(r.modified_ms)),
                    size: Some(i64::try_from(r.size).unwrap_or(i64::MAX)),
                    storage_class: Some(ObjectVersionStorageClass::from_static(
                        ObjectVersionStorageClass::STANDARD,
                    )),
                    version_id: Some(r.version_id()),
                    ..Default::default()
                });
            }
        }
        let prefixes = l
            .prefixes
            .iter()
            .map(|p| CommonPrefix {
                prefix: Some(enc1(p)),
            })
            .collect();
        let (next_key, next_version) = match l.next {
            Some((k, v)) => (Some(enc1(&k)), v),
            None => (None, None),
        };
        Ok(S3Response::new(ListObjectVersionsOutput {
            name: Some(input.bucket),
            max_keys: Some(i32::try_from(max).unwrap_or(LIST_MAX)),
            is_truncated: Some(next_key.is_some()),
            next_key_marker: next_key,
            next_version_id_marker: next_version,
            key_marker: enc(url, input.key_marker),
            version_id_marker: input.version_id_marker,
            versions: Some(versions),
            delete_markers: Some(markers),
            common_prefixes: Some(prefixes),
            prefix: enc(url, input.prefix),
            delimiter: enc(url, input.delimiter),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let after = match (&input.continuation_token, &input.start_after) {
            (Some(t), _) => Some(after_of(t)?),
            (None, Some(s)) => Some(s.clone()),
            (None, None) => None,
        };
        let p = self
            .page(
                &input.bucket,
                input.prefix.clone(),
                input.delimiter.clone(),
                after,
                input.max_keys,
                input.encoding_type.as_ref(),
            )
            .await?;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            key_count: Some(i32::try_from(p.objects.len() + p.prefixes.len()).unwrap_or(i32::MAX)),
            max_keys: Some(p.max_keys),
            is_truncated: Some(p.next.is_some()),
            next_continuation_token: p.next.as_deref().map(token_of),
            continuation_token: input.continuation_token,
            contents: Some(p.objects),
            common_prefixes: Some(p.prefixes),
            prefix: enc(p.url, input.prefix),
            delimiter: enc(p.url, input.delimiter),
            start_after: enc(p.url, input.start_after),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let p = self
            .page(
                &input.bucket,
                input.prefix.clone(),
                input.delimiter.clone(),
                input.marker.clone(),
                input.max_keys,
                input.encoding_type.as_ref(),
            )
            .await?;
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            max_keys: Some(p.max_keys),
            is_truncated: Some(p.next.is_some()),
            next_marker: enc(p.url, p.next.clone()),
            marker: enc(p.url, input.marker),
            contents: Some(p.objects),
            common_prefixes: Some(p.prefixes),
            prefix: enc(p.url, input.prefix),
            delimiter: enc(p.url, input.delimiter),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        check_key(&input.key)?;
        let up = UploadRecord {
            bucket: input.bucket.clone(),
            key: input.key.clone(),
            created_ms: now_ms(),
            content_type: check_content_type(input.content_type)?,
            metadata: sorted_metadata(input.metadata)?,
        };
        let mut id = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        if !self.db(move |i| i.create_upload(&id, &up)).await? {
            return Err(s3_error!(NoSuchBucket));
        }
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(data_encoding::HEXLOWER.encode(&id)),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let input = req.input;
        let id = parse_upload_id(&input.upload_id)?;
        if !(1..=PARTS_MAX).contains(&input.part_number) {
            return Err(s3_error!(
                InvalidArgument,
                "part numbers are 1 to {PARTS_MAX}"
            ));
        }
        let part = u32::try_from(input.part_number).unwrap_or(0);
        let up = self
            .db(move |i| i.upload(&id))
            .await?
            .ok_or_else(|| s3_error!(NoSuchUpload))?;
        if up.bucket != input.bucket || up.key != input.key {
            return Err(s3_error!(NoSuchUpload));
        }
        // The part is sealed and stored as a file of its own now, while the client sends
        // the next ones; the completion only records the parts' files as the object.
        let max = self.limits.part_bytes_max;
        let turn = self.body_turn()?;
        let started = std::time::Instant::now();
        let tmp = self.spool_path();
        let (size, md5) = self.spool_body(input.body, &tmp.0, max).await?;
        if let Some(want) = &input.content_md5 {
            if data_encoding::BASE64.encode(&md5) != *want {
                return Err(s3_error!(BadDigest));
            }
        }
        let received = started.elapsed();
        // Paid for the object's days and the longest an upload may stay open: the object's
        // days count from its completion.
        let days = self
            .lifetime_days(&up.bucket, &up.key)
            .await?
            .map(|d| d.saturating_add(self.limits.open_upload_days()));
        // Stored and recorded on a task of its own, as a PUT's body is (see put_object).
        let me = self.clone();
        let recorded = tokio::spawn(async move {
            let stored = me.store_file(&tmp.0, size, days).await?;
            drop(tmp);
            tracing::debug!(
                bucket = %up.bucket,
                key = %up.key,
                part,
                size,
                receive_ms = received.as_millis(),
                store_ms = (started.elapsed() - received).as_millis(),
                "part stored"
            );
            let rec = PartRecord {
                size,
                md5,
                modified_ms: now_ms(),
                stored,
            };
            // An upload aborted meanwhile makes the part's file an orphan (the index does).
            let recorded = me.db(move |i| i.put_part(&id, part, &rec)).await?;
            me.orphaned.notify_one();
            drop(turn);
            Ok::<_, S3Error>(recorded)
        })
        .await
        .map_err(internal)??;
        if !recorded {
            return Err(s3_error!(NoSuchUpload));
        }
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(etag(&data_encoding::HEXLOWER.encode(&md5))),
            ..Default::default()
        }))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        let id = parse_upload_id(&input.upload_id)?;
        self.db(move |i| i.upload(&id))
            .await?
            .ok_or_else(|| s3_error!(NoSuchUpload))?;
        let all = self.db(move |i| i.parts(&id)).await?;
        let marker = u32::try_from(input.part_number_marker.unwrap_or(0)).unwrap_or(0);
        let max =
            usize::try_from(input.max_parts.unwrap_or(LIST_MAX).clamp(0, LIST_MAX)).unwrap_or(0);
        let after: Vec<_> = all.into_iter().filter(|(n, _)| *n > marker).collect();
        let truncated = after.len() > max;
        let page: Vec<Part> = after
            .iter()
            .take(max)
            .map(|(n, p)| Part {
                part_number: Some(i32::try_from(*n).unwrap_or(i32::MAX)),
                size: Some(i64::try_from(p.size).unwrap_or(i64::MAX)),
                e_tag: Some(etag(&data_encoding::HEXLOWER.encode(&p.md5))),
                last_modified: Some(timestamp(p.modified_ms)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            is_truncated: Some(truncated),
            next_part_number_marker: page.last().and_then(|p| p.part_number),
            max_parts: Some(i32::try_from(max).unwrap_or(LIST_MAX)),
            parts: Some(page),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let id = parse_upload_id(&req.input.upload_id)?;
        let found = self.db(move |i| i.abort_upload(&id)).await?;
        self.orphaned.notify_one();
        if !found {
            return Err(s3_error!(NoSuchUpload));
        }
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let id = parse_upload_id(&input.upload_id)?;
        let up = self
            .db(move |i| i.upload(&id))
            .await?
            .ok_or_else(|| s3_error!(NoSuchUpload))?;
        if up.bucket != input.bucket || up.key != input.key {
            return Err(s3_error!(NoSuchUpload));
        }
        let cond = put_condition(input.if_none_match, input.if_match)?;
        let have: HashMap<u32, PartRecord> =
            self.db(move |i| i.parts(&id)).await?.into_iter().collect();
        let asked = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default();
        if asked.is_empty() {
            return Err(s3_error!(MalformedXML, "no parts named"));
        }
        let mut chosen = Vec::with_capacity(asked.len());
        let mut last = 0u32;
        for (i, p) in asked.iter().enumerate() {
            let n = p
                .part_number
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| s3_error!(InvalidPart, "a part without a number"))?;
            if n <= last {
                return Err(s3_error!(InvalidPartOrder));
            }
            last = n;
            let rec = have
                .get(&n)
                .ok_or_else(|| s3_error!(InvalidPart, "part {n} was not uploaded"))?;
            let tag = data_encoding::HEXLOWER.encode(&rec.md5);
            if p.e_tag.as_ref().is_some_and(|e| e.value() != tag) {
                return Err(s3_error!(InvalidPart, "part {n}'s ETag differs"));
            }
            if i + 1 < asked.len() && rec.size < PART_MIN_BYTES {
                return Err(s3_error!(
                    EntityTooSmall,
                    "part {n} has {} bytes; all but the last need {PART_MIN_BYTES}",
                    rec.size
                ));
            }
            chosen.push((n, rec.clone()));
        }
        // The object is the parts' files in order: nothing to seal or store now.
        let mut pieces = Vec::with_capacity(chosen.len());
        let mut size = 0u64;
        let mut md5s = Md5::new();
        for (n, rec) in &chosen {
            md5s.update(rec.md5);
            size += rec.size;
            match &rec.stored {
                Some(stored) => pieces.push(Piece {
                    size: rec.size,
                    stored: stored.clone(),
                }),
                None if rec.size == 0 => {}
                None => {
                    return Err(s3_error!(
                    InvalidPart,
                    "part {n} was kept by an older gateway that no longer has it; upload it again"
                ))
                }
            }
        }
        tracing::info!(
            bucket = %up.bucket,
            key = %up.key,
            size,
            parts = chosen.len(),
            "multipart upload completed"
        );
        let count = u32::try_from(chosen.len()).unwrap_or(u32::MAX);
        let rec = ObjectRecord {
            size,
            modified_ms: now_ms(),
            etag: format!(
                "{}-{count}",
                data_encoding::HEXLOWER.encode(&md5s.finalize())
            ),
            parts: count,
            content_type: up.content_type.clone(),
            metadata: up.metadata.clone(),
            pieces,
            seq: 0,
            null_version: false,
            delete_marker: false,
        };
        let tag = rec.etag.clone();
        let (bucket, key) = (up.bucket.clone(), up.key.clone());
        // Written only if the upload and every chosen part are still as read above: a
        // part uploaded again meanwhile has made the file read an orphan.
        let written = self
            .db(move |i| i.finish_upload(&id, &up, &rec, &cond, &chosen))
            .await?;
        let version_id = match written {
            Written::Done(v) => {
                self.orphaned.notify_one();
                self.metrics.stored_objects.fetch_add(1, Relaxed);
                v
            }
            Written::NoBucket => return Err(s3_error!(NoSuchBucket)),
            Written::ConditionFailed => {
                return Err(s3_error!(
                    PreconditionFailed,
                    "the object's current state does not meet the condition"
                ));
            }
            Written::UploadGone => {
                return Err(s3_error!(
                    NoSuchUpload,
                    "the upload was aborted or completed while it was completed"
                ))
            }
            Written::PartsChanged => {
                return Err(s3_error!(
                    InvalidPart,
                    "a part was uploaded again while the upload was completed; complete it again"
                ))
            }
            Written::SourceGone => {
                return Err(internal("a multipart completion is no copy"));
            }
        };
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(bucket),
            key: Some(key),
            e_tag: Some(etag(&tag)),
            version_id,
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_url_encoded_as_s3_does() {
        assert_eq!(url_encode("a b/c+d~_.-é"), "a%20b/c%2Bd~_.-%C3%A9");
        assert_eq!(after_of(&token_of("a/b c")).unwrap(), "a/b c");
        assert!(after_of("zz").is_err());
        assert!(after_of("ff").is_err(), "not UTF-8");
    }

    #[test]
    fn a_range_maps_onto_the_pieces_it_covers() {
        let piece = |m: u8, size: u64| Piece {
            size,
            stored: record::Stored {
                manifest: [m; 32],
                copies: Vec::new(),
                share_key: String::new(),
                erasure: None,
            },
        };
        let pieces = [piece(1, 10), piece(2, 5), piece(3, 7)];
        let spans = |r: std::ops::Range<u64>| -> Vec<(u8, std::ops::Range<u64>)> {
            pieces_in(&pieces, &r)
                .into_iter()
                .map(|(s, r)| (s.manifest[0], r))
                .collect()
        };
        assert_eq!(spans(0..22), [(1, 0..10), (2, 0..5), (3, 0..7)]);
        assert_eq!(spans(9..11), [(1, 9..10), (2, 0..1)]);
        assert_eq!(spans(10..15), [(2, 0..5)]);
        assert_eq!(spans(14..16), [(2, 4..5), (3, 0..1)]);
        assert_eq!(spans(21..22), [(3, 6..7)]);
        assert!(spans(5..5).is_empty());
        assert!(pieces_in(&[], &(0..3)).is_empty());
    }

    /// The sweep aborts an upload open longer than `open_upload_secs`, its part's file
    /// then an orphan, and keeps a younger one.
    #[tokio::test]
    async fn the_sweep_aborts_uploads_left_open_too_long() {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(Index::open(&dir.path().join("index.redb")).unwrap());
        let store = Arc::new(HostStore {
            placement: crate::store::Placement::Links {
                control: "127.0.0.1:1".into(),
                token: "t".into(),
            },
            key: ed25519_consensus::SigningKey::new(rand_core::OsRng),
            chunk_bytes: 1 << 20,
            workers: 1,
            spool: dir.path().join("spool"),
            stores: tokio::sync::Semaphore::new(1),
        });
        let limits = Limits {
            open_upload_secs: 100,
            ..Limits::default()
        };
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let gw = Gateway::new(
            Arc::clone(&index),
            store,
            dir.path().join("spool"),
            limits,
            metrics,
        )
        .unwrap();
        assert!(index.create_bucket("b", 0).unwrap());
        let open = |id: u8, created_secs: u64| {
            let up = UploadRecord {
                bucket: "b".into(),
                key: format!("k{id}"),
                created_ms: created_secs * 1000,
                content_type: String::new(),
                metadata: Vec::new(),
            };
            assert!(index.create_upload(&[id; 16], &up).unwrap());
        };
        open(1, 1_000);
        open(2, 1_050);
        let part = PartRecord {
            size: 5,
            md5: [0; 16],
            modified_ms: 0,
            stored: Some(record::Stored {
                manifest: [7; 32],
                copies: vec![record::Replica {
                    host_key: [1; 32],
                    host: "127.0.0.1:1".into(),
                    deal: None,
                }],
                share_key: "mss1-x".into(),
                erasure: None,
            }),
        };
        assert!(index.put_part(&[1; 16], 1, &part).unwrap());
        // At 1,100 s neither has been open more than 100 s.
        gw.sweep(1_100).await.unwrap();
        assert_eq!(index.uploads().unwrap().len(), 2);
        assert_eq!(index.orphan_count().unwrap(), 0);
        gw.sweep(1_101).await.unwrap();
        let left: Vec<[u8; 16]> = index.uploads().unwrap().into_iter().map(|u| u.0).collect();
        assert_eq!(left, [[2; 16]]);
        assert_eq!(
            index.orphan_count().unwrap(),
            1,
            "the aborted upload's part"
        );
        // A part is paid for its object's days, the time its upload may stay open and two
        // sweep periods more.
        // A body takes a turn; past `bodies_max` the answer is SlowDown until one ends.
        let limited = Gateway {
            bodies: Arc::new(tokio::sync::Semaphore::new(1)),
            ..gw.clone()
        };
        let turn = limited.body_turn().unwrap();
        let refused = limited.body_turn().unwrap_err();
        assert_eq!(*refused.code(), S3ErrorCode::SlowDown);
        drop(turn);
        assert!(limited.body_turn().is_ok());
        assert_eq!(limits.open_upload_days(), 1);
        assert_eq!(Limits::default().open_upload_days(), 3);
        let daily = Limits {
            sweep_every_secs: 86_400,
            ..Limits::default()
        };
        assert_eq!(daily.open_upload_days(), 4);
    }

    #[test]
    fn upload_ids_are_32_hex_digits() {
        assert!(parse_upload_id(&"ab".repeat(16)).is_ok());
        for bad in [
            "",
            "ab",
            &"AB".repeat(16),
            &"zz".repeat(16),
            &"ab".repeat(17),
        ] {
            assert!(parse_upload_id(bad).is_err(), "{bad}");
        }
    }
}
