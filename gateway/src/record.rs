//! What the gateway's index keeps per object, per multipart upload and per uploaded part,
//! in a versioned binary encoding (docs/formats.md section 23). The index is a file on
//! the customer's disk: every decoder here refuses what it did not write, with the field
//! that was wrong.

/// The version of object, upload and lifecycle records.
pub const RECORD_VERSION: u8 = 1;
/// The version of part records: 2 names the part's sealed file; 1 (older gateways, whose
/// parts waited in the spool until the upload completed) is still read.
pub const PART_VERSION: u8 = 2;
/// Pieces of one object at most: S3's most parts per upload.
pub const PIECES_MAX: usize = 10_000;
/// An ETag as kept (without its quotes): 32 hex digits, then `-N` for a multipart object.
pub const ETAG_MAX: usize = 64;
pub const CONTENT_TYPE_MAX: usize = 256;
/// A host's control address (`host:port`).
pub const ADDR_MAX: usize = 256;
/// A share key's text (`mss1-...`).
pub const SHARE_MAX: usize = 512;
/// An object key (S3's own limit).
pub const KEY_MAX: usize = 1024;
/// A bucket name (S3's own limit).
pub const BUCKET_MAX: usize = 63;
/// User metadata, keys and values together (S3's own limit: 2 KB).
pub const META_BYTES_MAX: usize = 2048;

/// Why a record read from the index is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("the record ends inside its {0}")]
    Truncated(&'static str),
    #[error("record version {0} is not one this gateway reads")]
    Version(u8),
    #[error("the record's {what} is {len} bytes, more than {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("the record's {0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("the record's flags {0:#04x} set unknown bits")]
    Flags(u8),
    #[error("{0} bytes follow the record's end")]
    Trailing(usize),
    #[error("the record lists {0} copies (1 to {COPIES_MAX})")]
    Copies(usize),
    #[error("an expiry of {0} days does not fit")]
    Expiry(u64),
    #[error("the record's erasure scheme: {0}")]
    Erasure(String),
    #[error("the record's pieces: {0}")]
    Pieces(String),
}

/// One copy of an object's sealed file: on which host, and under which deal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    /// The host's key, as it signed the upload link or the deal: a download link must be
    /// signed by it.
    pub host_key: [u8; 32],
    /// The host's control plane, where download links are asked for.
    pub host: String,
    /// The deal holding the file's manifest, when the copy was paid for on chain; None when
    /// it was uploaded through a link the host minted with its control token.
    pub deal: Option<[u8; 32]>,
}

/// Where an object's bytes are: one sealed file, in one or more copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The sealed file's manifest id (what a download link grants).
    pub manifest: [u8; 32],
    /// At least one; all of them with a deal, or one without.
    pub copies: Vec<Replica>,
    /// The file's share key (`mss1-...`): it opens the sealed file. It never leaves this
    /// machine.
    pub share_key: String,
    /// With deals only: the copies hold erasure shares of this scheme (each copy's host
    /// holds one share of every chunk, the shares naming their index; N is the number of
    /// copies), not full copies.
    pub erasure: Option<proto::erasure::Scheme>,
}

/// A run of an object's bytes kept as one sealed file: an object from one PUT is one
/// piece; a multipart object is one piece per part (each sealed and stored as it arrived).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// More than 0.
    pub size: u64,
    pub stored: Stored,
}

/// An object as listed and served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRecord {
    pub size: u64,
    /// Milliseconds since the Unix epoch.
    pub modified_ms: u64,
    /// Without quotes.
    pub etag: String,
    /// 0 for an object from one PUT; the part count for a multipart object.
    pub parts: u32,
    /// Empty when the client gave none.
    pub content_type: String,
    /// User metadata (`x-amz-meta-*`), sorted by key.
    pub metadata: Vec<(String, String)>,
    /// The object's bytes in order, their sizes summing to `size`; none for an empty object
    /// (or a delete marker): nothing to store.
    pub pieces: Vec<Piece>,
    /// Where the record stands among its key's versions: the index's counter when it was
    /// written, larger for later writes (0: written before the index counted).
    pub seq: u64,
    /// Its version id is `null` (written while the bucket's versioning was off or
    /// suspended) rather than the hex of `seq`.
    pub null_version: bool,
    /// A delete marker: no bytes; while current, the key answers NoSuchKey and is not
    /// listed.
    pub delete_marker: bool,
}

impl ObjectRecord {
    /// A record of `size` bytes with nothing else: no parts, content type, metadata,
    /// pieces or version.
    pub fn bare(size: u64, modified_ms: u64, etag: String) -> ObjectRecord {
        ObjectRecord {
            size,
            modified_ms,
            etag,
            parts: 0,
            content_type: String::new(),
            metadata: Vec::new(),
            pieces: Vec::new(),
            seq: 0,
            null_version: false,
            delete_marker: false,
        }
    }

    /// Its version id as S3 clients see it: `null`, or `seq` as 16 hex digits.
    pub fn version_id(&self) -> String {
        if self.null_version || self.seq == 0 {
            "null".into()
        } else {
            format!("{:016x}", self.seq)
        }
    }
}

/// A multipart upload in progress; its bucket and key are in the index's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadRecord {
    pub bucket: String,
    pub key: String,
    pub created_ms: u64,
    pub content_type: String,
    pub metadata: Vec<(String, String)>,
}

/// One uploaded part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartRecord {
    pub size: u64,
    pub md5: [u8; 16],
    pub modified_ms: u64,
    /// The part's sealed file; None for an empty part, and for a part an older gateway
    /// kept in its spool (record version 1), which cannot be completed.
    pub stored: Option<Stored>,
}

const FLAG_STORED: u8 = 1;
/// Set with [`FLAG_STORED`] when the copies were paid for as deals.
const FLAG_DEALS: u8 = 2;
/// A sequence number (u64) follows the flags.
const FLAG_SEQ: u8 = 4;
/// The version id is `null`.
const FLAG_NULL_VERSION: u8 = 8;
/// A delete marker (never with [`FLAG_STORED`]).
const FLAG_DELETE_MARKER: u8 = 16;
/// Set with [`FLAG_DEALS`] when the copies hold erasure shares: K follows the copy count.
const FLAG_ERASURE: u8 = 32;
/// The object is several pieces, each with its own stored-file flags (never with
/// [`FLAG_STORED`]).
const FLAG_PIECES: u8 = 64;
const FLAGS_KNOWN: u8 = FLAG_STORED
    | FLAG_DEALS
    | FLAG_SEQ
    | FLAG_NULL_VERSION
    | FLAG_DELETE_MARKER
    | FLAG_ERASURE
    | FLAG_PIECES;
/// The flags that say how one sealed file is kept.
const FLAGS_FILE: u8 = FLAG_STORED | FLAG_DEALS | FLAG_ERASURE;
/// Copies of one object at most (one per host).
pub const COPIES_MAX: usize = 16;

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// A string of at most `u16::MAX` bytes (every caller's limit is below it).
    fn str16(&mut self, s: &str) {
        let n = u16::try_from(s.len()).unwrap_or(u16::MAX);
        self.0.extend_from_slice(&n.to_le_bytes());
        self.0.extend_from_slice(&s.as_bytes()[..usize::from(n)]);
    }
    /// A sealed file as `flags` ([`file_flags`]) say it is kept.
    fn stored(&mut self, s: &Stored, flags: u8) {
        self.0.extend_from_slice(&s.manifest);
        if flags & FLAG_DEALS != 0 {
            self.u8(u8::try_from(s.copies.len()).unwrap_or(u8::MAX));
            if let Some(e) = s.erasure.filter(|_| flags & FLAG_ERASURE != 0) {
                self.u8(e.k());
            }
            for c in &s.copies {
                self.0.extend_from_slice(&c.host_key);
                self.0.extend_from_slice(&c.deal.unwrap_or_default());
                self.str16(&c.host);
            }
        } else if let Some(c) = s.copies.first() {
            self.0.extend_from_slice(&c.host_key);
            self.str16(&c.host);
        }
        self.str16(&s.share_key);
    }
    fn metadata(&mut self, m: &[(String, String)]) {
        let n = u16::try_from(m.len()).unwrap_or(u16::MAX);
        self.0.extend_from_slice(&n.to_le_bytes());
        for (k, v) in m.iter().take(usize::from(n)) {
            self.str16(k);
            self.str16(v);
        }
    }
}

struct R<'a>(&'a [u8]);

impl<'a> R<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], RecordError> {
        if self.0.len() < n {
            return Err(RecordError::Truncated(what));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, RecordError> {
        Ok(self.take(1, what)?[0])
    }
    fn arr<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], RecordError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, RecordError> {
        Ok(u16::from_le_bytes(self.arr(what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    fn str16(&mut self, what: &'static str, max: usize) -> Result<String, RecordError> {
        let n = usize::from(self.u16(what)?);
        if n > max {
            return Err(RecordError::TooLong { what, len: n, max });
        }
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| RecordError::NotUtf8(what))
    }
    fn metadata(&mut self) -> Result<Vec<(String, String)>, RecordError> {
        let n = usize::from(self.u16("metadata count")?);
        let mut total = 0usize;
        let mut m = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let k = self.str16("metadata key", META_BYTES_MAX)?;
            let v = self.str16("metadata value", META_BYTES_MAX)?;
            total += k.len() + v.len();
            if total > META_BYTES_MAX {
                return Err(RecordError::TooLong {
                    what: "metadata",
                    len: total,
                    max: META_BYTES_MAX,
                });
            }
            m.push((k, v));
        }
        Ok(m)
    }
    fn version(&mut self) -> Result<(), RecordError> {
        match self.u8("version")? {
            RECORD_VERSION => Ok(()),
            v => Err(RecordError::Version(v)),
        }
    }
    /// A sealed file kept as `flags` say (a subset of [`FLAGS_FILE`] with
    /// [`FLAG_STORED`], checked by the caller).
    fn stored(&mut self, flags: u8) -> Result<Stored, RecordError> {
        let manifest = self.arr("manifest id")?;
        let mut erasure = None;
        let copies = if flags & FLAG_DEALS != 0 {
            let n = usize::from(self.u8("copy count")?);
            if n == 0 || n > COPIES_MAX {
                return Err(RecordError::Copies(n));
            }
            if flags & FLAG_ERASURE != 0 {
                let k = self.u8("erasure k")?;
                let scheme = u8::try_from(n)
                    .map_err(|_| RecordError::Copies(n))
                    .and_then(|n| {
                        proto::erasure::Scheme::new(k, n).map_err(RecordError::Erasure)
                    })?;
                erasure = Some(scheme);
            }
            let mut copies = Vec::with_capacity(n);
            for _ in 0..n {
                let host_key = self.arr("host key")?;
                let deal = self.arr("deal id")?;
                copies.push(Replica {
                    host_key,
                    deal: Some(deal),
                    host: self.str16("host address", ADDR_MAX)?,
                });
            }
            copies
        } else {
            vec![Replica {
                host_key: self.arr("host key")?,
                host: self.str16("host address", ADDR_MAX)?,
                deal: None,
            }]
        };
        Ok(Stored {
            manifest,
            copies,
            share_key: self.str16("share key", SHARE_MAX)?,
            erasure,
        })
    }
    /// The flags of one sealed file: [`FLAG_STORED`], with [`FLAG_DEALS`] and
    /// [`FLAG_ERASURE`] as they apply.
    fn file_flags(&mut self, what: &'static str) -> Result<u8, RecordError> {
        let f = self.u8(what)?;
        if f & !FLAGS_FILE != 0 || !valid_file_flags(f) || f & FLAG_STORED == 0 {
            return Err(RecordError::Flags(f));
        }
        Ok(f)
    }
    fn end(self) -> Result<(), RecordError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(RecordError::Trailing(self.0.len()))
        }
    }
}

/// How a sealed file is kept, as flags: [`FLAG_STORED`], [`FLAG_DEALS`] when every copy
/// was paid for as a deal, [`FLAG_ERASURE`] when those copies hold erasure shares.
fn file_flags(s: &Stored) -> u8 {
    let deals = !s.copies.is_empty() && s.copies.iter().all(|c| c.deal.is_some());
    match (deals, s.erasure) {
        (false, _) => FLAG_STORED,
        (true, None) => FLAG_STORED | FLAG_DEALS,
        (true, Some(_)) => FLAG_STORED | FLAG_DEALS | FLAG_ERASURE,
    }
}

/// Deals only with a stored file, erasure only with deals.
fn valid_file_flags(f: u8) -> bool {
    let f = f & FLAGS_FILE;
    !((f & FLAG_DEALS != 0 && f & FLAG_STORED == 0)
        || (f & FLAG_ERASURE != 0 && f & FLAG_DEALS == 0))
}

/// The byte count of user metadata as S3 counts it (keys and values).
pub fn metadata_bytes(m: &[(String, String)]) -> usize {
    m.iter().map(|(k, v)| k.len() + v.len()).sum()
}

impl ObjectRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = W(Vec::with_capacity(160));
        w.u8(RECORD_VERSION);
        // One piece is written as records were before pieces: its flags are the record's.
        let mut flags = match self.pieces.as_slice() {
            [] => 0,
            [one] => file_flags(&one.stored),
            _ => FLAG_PIECES,
        };
        if self.seq != 0 {
            flags |= FLAG_SEQ;
        }
        if self.null_version {
            flags |= FLAG_NULL_VERSION;
        }
        if self.delete_marker {
            flags |= FLAG_DELETE_MARKER;
        }
        w.u8(flags);
        if self.seq != 0 {
            w.u64(self.seq);
        }
        w.u64(self.size);
        w.u64(self.modified_ms);
        w.u32(self.parts);
        w.str16(&self.etag);
        w.str16(&self.content_type);
        w.metadata(&self.metadata);
        match self.pieces.as_slice() {
            [] => {}
            [one] => w.stored(&one.stored, flags),
            many => {
                w.u32(u32::try_from(many.len()).unwrap_or(u32::MAX));
                for p in many {
                    let f = file_flags(&p.stored);
                    w.u64(p.size);
                    w.u8(f);
                    w.stored(&p.stored, f);
                }
            }
        }
        w.0
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let mut r = R(bytes);
        r.version()?;
        let flags = r.u8("flags")?;
        let file_bits = flags & FLAGS_FILE;
        if flags & !FLAGS_KNOWN != 0
            || !valid_file_flags(flags)
            || (flags & FLAG_DELETE_MARKER != 0 && (file_bits != 0 || flags & FLAG_PIECES != 0))
            || (flags & FLAG_PIECES != 0 && file_bits != 0)
        {
            return Err(RecordError::Flags(flags));
        }
        let seq = if flags & FLAG_SEQ != 0 {
            match r.u64("sequence number")? {
                0 => return Err(RecordError::Flags(flags)),
                n => n,
            }
        } else {
            0
        };
        let size = r.u64("size")?;
        let modified_ms = r.u64("modification time")?;
        let parts = r.u32("part count")?;
        let etag = r.str16("etag", ETAG_MAX)?;
        let content_type = r.str16("content type", CONTENT_TYPE_MAX)?;
        let metadata = r.metadata()?;
        let pieces = if flags & FLAG_STORED != 0 {
            vec![Piece {
                size,
                stored: r.stored(flags)?,
            }]
        } else if flags & FLAG_PIECES != 0 {
            let n = r.u32("piece count")?;
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if !(2..=PIECES_MAX).contains(&n) {
                return Err(RecordError::Pieces(format!(
                    "{n} of them (2 to {PIECES_MAX})"
                )));
            }
            let mut pieces = Vec::with_capacity(n);
            let mut total = 0u64;
            for i in 0..n {
                let piece_size = r.u64("piece size")?;
                if piece_size == 0 {
                    return Err(RecordError::Pieces(format!("piece {i} is empty")));
                }
                total = total.checked_add(piece_size).ok_or_else(|| {
                    RecordError::Pieces("their sizes add up to more than 2^64 bytes".into())
                })?;
                let f = r.file_flags("piece flags")?;
                pieces.push(Piece {
                    size: piece_size,
                    stored: r.stored(f)?,
                });
            }
            if total != size {
                return Err(RecordError::Pieces(format!(
                    "they hold {total} bytes, the object {size}"
                )));
            }
            pieces
        } else {
            Vec::new()
        };
        r.end()?;
        Ok(ObjectRecord {
            size,
            modified_ms,
            etag,
            parts,
            content_type,
            metadata,
            pieces,
            seq,
            null_version: flags & FLAG_NULL_VERSION != 0,
            delete_marker: flags & FLAG_DELETE_MARKER != 0,
        })
    }

    /// The sealed files holding the object's bytes.
    pub fn files(&self) -> impl Iterator<Item = &Stored> {
        self.pieces.iter().map(|p| &p.stored)
    }
}

impl UploadRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = W(Vec::with_capacity(96));
        w.u8(RECORD_VERSION);
        w.str16(&self.bucket);
        w.str16(&self.key);
        w.u64(self.created_ms);
        w.str16(&self.content_type);
        w.metadata(&self.metadata);
        w.0
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let mut r = R(bytes);
        r.version()?;
        let bucket = r.str16("bucket", BUCKET_MAX)?;
        let key = r.str16("key", KEY_MAX)?;
        let created_ms = r.u64("creation time")?;
        let content_type = r.str16("content type", CONTENT_TYPE_MAX)?;
        let metadata = r.metadata()?;
        r.end()?;
        Ok(UploadRecord {
            bucket,
            key,
            created_ms,
            content_type,
            metadata,
        })
    }
}

impl PartRecord {
    /// 34 bytes and the sealed file (version 2); a part an older gateway spooled (bytes
    /// but no file) as it wrote it, 33 bytes of version 1.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = W(Vec::with_capacity(160));
        let old = self.stored.is_none() && self.size > 0;
        w.u8(if old { 1 } else { PART_VERSION });
        w.u64(self.size);
        w.0.extend_from_slice(&self.md5);
        w.u64(self.modified_ms);
        match &self.stored {
            None if old => {}
            None => w.u8(0),
            Some(s) => {
                let f = file_flags(s);
                w.u8(f);
                w.stored(s, f);
            }
        }
        w.0
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let mut r = R(bytes);
        let version = r.u8("version")?;
        if version != 1 && version != PART_VERSION {
            return Err(RecordError::Version(version));
        }
        let size = r.u64("size")?;
        let md5 = r.arr("md5")?;
        let modified_ms = r.u64("modification time")?;
        let stored = match version {
            1 => None,
            _ => match r.u8("part flags")? {
                0 if size == 0 => None,
                0 => {
                    return Err(RecordError::Pieces(format!(
                        "a part of {size} bytes names no sealed file"
                    )))
                }
                f if f & !FLAGS_FILE != 0 || !valid_file_flags(f) || f & FLAG_STORED == 0 => {
                    return Err(RecordError::Flags(f))
                }
                _ if size == 0 => {
                    return Err(RecordError::Pieces(
                        "an empty part names a sealed file".into(),
                    ))
                }
                f => Some(r.stored(f)?),
            },
        };
        r.end()?;
        Ok(PartRecord {
            size,
            md5,
            modified_ms,
            stored,
        })
    }
}

/// A bucket's lifecycle rule: objects under `prefix` expire (are deleted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LifecycleRule {
    pub id: String,
    pub enabled: bool,
    pub prefix: String,
    pub expiry: Expiry,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// This many days after the object was written.
    Days(u32),
    /// At this Unix second (objects written later expire at once).
    Date(u64),
}

/// Rules of one bucket at most (S3's limit).
pub const RULES_MAX: usize = 1000;
/// A rule's id (S3's limit).
pub const RULE_ID_MAX: usize = 255;

/// A bucket's lifecycle rules.
pub fn encode_rules(rules: &[LifecycleRule]) -> Vec<u8> {
    let mut w = W(Vec::with_capacity(16 + rules.len() * 32));
    w.u8(RECORD_VERSION);
    w.0.extend_from_slice(&u16::try_from(rules.len()).unwrap_or(u16::MAX).to_le_bytes());
    for r in rules {
        w.str16(&r.id);
        w.u8(u8::from(r.enabled));
        w.str16(&r.prefix);
        match r.expiry {
            Expiry::Days(d) => {
                w.u8(1);
                w.u64(u64::from(d));
            }
            Expiry::Date(t) => {
                w.u8(2);
                w.u64(t);
            }
        }
    }
    w.0
}

pub fn decode_rules(bytes: &[u8]) -> Result<Vec<LifecycleRule>, RecordError> {
    let mut r = R(bytes);
    r.version()?;
    let n = usize::from(r.u16("rule count")?);
    if n > RULES_MAX {
        return Err(RecordError::TooLong {
            what: "rule list",
            len: n,
            max: RULES_MAX,
        });
    }
    let mut rules = Vec::with_capacity(n);
    for _ in 0..n {
        let id = r.str16("rule id", RULE_ID_MAX)?;
        let enabled = match r.u8("rule status")? {
            0 => false,
            1 => true,
            f => return Err(RecordError::Flags(f)),
        };
        let prefix = r.str16("rule prefix", KEY_MAX)?;
        let expiry = match (r.u8("expiry kind")?, r.u64("expiry")?) {
            (1, d) => Expiry::Days(u32::try_from(d).map_err(|_| RecordError::Expiry(d))?),
            (2, t) => Expiry::Date(t),
            (k, _) => return Err(RecordError::Flags(k)),
        };
        rules.push(LifecycleRule {
            id,
            enabled,
            prefix,
            expiry,
        });
    }
    r.end()?;
    Ok(rules)
}

/// Decodes bytes as each record kind in turn (the fuzz target's entry point): never
/// panics, whatever the bytes.
pub fn decode_any(bytes: &[u8]) {
    if let Ok(o) = ObjectRecord::decode(bytes) {
        assert_eq!(ObjectRecord::decode(&o.encode()).as_ref(), Ok(&o));
    }
    if let Ok(u) = UploadRecord::decode(bytes) {
        assert_eq!(UploadRecord::decode(&u.encode()).as_ref(), Ok(&u));
    }
    if let Ok(p) = PartRecord::decode(bytes) {
        let again = p.encode();
        assert_eq!(PartRecord::decode(&again).as_ref(), Ok(&p));
    }
    if let Ok(rules) = decode_rules(bytes) {
        assert_eq!(decode_rules(&encode_rules(&rules)).as_ref(), Ok(&rules));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(m: u8) -> Stored {
        Stored {
            manifest: [m; 32],
            copies: vec![Replica {
                host_key: [9; 32],
                host: "127.0.0.1:7001".into(),
                deal: None,
            }],
            share_key: "msk1-abc".into(),
            erasure: None,
        }
    }

    fn object() -> ObjectRecord {
        ObjectRecord {
            size: 5 << 20,
            modified_ms: 1_796_000_000_000,
            etag: "9e107d9d372bb6826bd81d3542a419d6-2".into(),
            parts: 2,
            content_type: "text/plain".into(),
            metadata: vec![("colour".into(), "blue".into())],
            pieces: vec![Piece {
                size: 5 << 20,
                stored: file(7),
            }],
            seq: 0,
            null_version: false,
            delete_marker: false,
        }
    }

    #[test]
    fn records_round_trip() {
        let o = object();
        assert_eq!(ObjectRecord::decode(&o.encode()), Ok(o.clone()));
        let mut dealt = o.clone();
        let copy = |k: u8| Replica {
            host_key: [k; 32],
            host: format!("127.0.0.1:70{k:02}"),
            deal: Some([k + 100; 32]),
        };
        dealt.pieces[0].stored.copies = vec![copy(1), copy(2)];
        let bytes = dealt.encode();
        assert_eq!(bytes[1], FLAG_STORED | FLAG_DEALS);
        assert_eq!(ObjectRecord::decode(&bytes), Ok(dealt.clone()));
        // The copy count is the byte after the manifest id.
        let at = bytes.len() - (2 * (32 + 32 + 2 + 14)) - 2 - "msk1-abc".len() - 1;
        assert_eq!(bytes[at], 2);
        let mut none = bytes.clone();
        none[at] = 0;
        assert_eq!(ObjectRecord::decode(&none), Err(RecordError::Copies(0)));
        let mut flags = bytes;
        flags[1] = FLAG_DEALS;
        assert_eq!(
            ObjectRecord::decode(&flags),
            Err(RecordError::Flags(FLAG_DEALS))
        );
        // Erasure shares 2/3 on three deals' hosts: K follows the copy count.
        let mut shares = dealt.clone();
        let s = &mut shares.pieces[0].stored;
        s.copies.push(copy(3));
        s.erasure = Some("2/3".parse().unwrap());
        let bytes = shares.encode();
        assert_eq!(bytes[1], FLAG_STORED | FLAG_DEALS | FLAG_ERASURE);
        assert_eq!((bytes[at], bytes[at + 1]), (3, 2));
        assert_eq!(ObjectRecord::decode(&bytes), Ok(shares.clone()));
        let mut bad_k = bytes.clone();
        bad_k[at + 1] = 3;
        assert!(matches!(
            ObjectRecord::decode(&bad_k),
            Err(RecordError::Erasure(_))
        ));
        let mut no_deals = bytes;
        no_deals[1] = FLAG_STORED | FLAG_ERASURE;
        assert_eq!(
            ObjectRecord::decode(&no_deals),
            Err(RecordError::Flags(FLAG_STORED | FLAG_ERASURE))
        );
        let empty = ObjectRecord {
            pieces: vec![],
            size: 0,
            parts: 0,
            metadata: vec![],
            ..o
        };
        assert_eq!(ObjectRecord::decode(&empty.encode()), Ok(empty));
        let u = UploadRecord {
            bucket: "b".into(),
            key: "a/b/c".into(),
            created_ms: 3,
            content_type: String::new(),
            metadata: vec![("k".into(), "v".into())],
        };
        assert_eq!(UploadRecord::decode(&u.encode()), Ok(u));
        let p = PartRecord {
            size: 1,
            md5: [1; 16],
            modified_ms: 2,
            stored: Some(file(3)),
        };
        assert_eq!(PartRecord::decode(&p.encode()), Ok(p.clone()));
        // An empty part names no file: 34 bytes.
        let empty = PartRecord {
            size: 0,
            stored: None,
            ..p.clone()
        };
        assert_eq!(empty.encode().len(), 34);
        assert_eq!(PartRecord::decode(&empty.encode()), Ok(empty.clone()));
        // A part an older gateway spooled (version 1, 33 bytes) is read, without a file.
        let mut old = p.encode()[..33].to_vec();
        old[0] = 1;
        assert_eq!(
            PartRecord::decode(&old),
            Ok(PartRecord {
                stored: None,
                ..p.clone()
            })
        );
        // A part with bytes but no file, or an empty one with a file, is refused.
        let mut bare = empty.encode();
        bare[1] = 1;
        assert!(matches!(
            PartRecord::decode(&bare),
            Err(RecordError::Pieces(_))
        ));
        let mut filed = p.encode();
        filed[1..9].copy_from_slice(&0u64.to_le_bytes());
        assert!(matches!(
            PartRecord::decode(&filed),
            Err(RecordError::Pieces(_))
        ));
        let mut flags = p.encode();
        flags[33] = FLAG_DEALS;
        assert_eq!(
            PartRecord::decode(&flags),
            Err(RecordError::Flags(FLAG_DEALS))
        );
    }

    /// A multipart object: a piece per part, each its own sealed file kept its own way.
    #[test]
    fn pieces_round_trip_and_must_add_up() {
        let mut o = object();
        let mut second = file(8);
        second.copies[0].deal = Some([1; 32]);
        o.size = (5 << 20) + 7;
        o.pieces.push(Piece {
            size: 7,
            stored: second,
        });
        let bytes = o.encode();
        assert_eq!(bytes[1], FLAG_PIECES);
        assert_eq!(ObjectRecord::decode(&bytes), Ok(o.clone()));
        for n in 0..bytes.len() {
            assert!(ObjectRecord::decode(&bytes[..n]).is_err(), "cut at {n}");
        }
        // The object's size against its pieces'.
        let mut short = o.clone();
        short.size -= 1;
        assert!(matches!(
            ObjectRecord::decode(&short.encode()),
            Err(RecordError::Pieces(_))
        ));
        // Sizes whose sum overflows are refused, not wrapped or saturated.
        let mut huge = o.clone();
        huge.size = u64::MAX;
        huge.pieces[0].size = u64::MAX - 1;
        huge.pieces[1].size = 5;
        assert!(matches!(
            ObjectRecord::decode(&huge.encode()),
            Err(RecordError::Pieces(_))
        ));
        // Pieces with the record's own file flags, or a delete marker with pieces.
        let mut both = bytes.clone();
        both[1] |= FLAG_STORED;
        assert_eq!(
            ObjectRecord::decode(&both),
            Err(RecordError::Flags(FLAG_PIECES | FLAG_STORED))
        );
        let mut marked = bytes.clone();
        marked[1] |= FLAG_DELETE_MARKER;
        assert!(matches!(
            ObjectRecord::decode(&marked),
            Err(RecordError::Flags(_))
        ));
        // The piece count follows the metadata; one piece is written the short way.
        let at = 1
            + 1
            + 8
            + 8
            + 4
            + (2 + o.etag.len())
            + (2 + o.content_type.len())
            + 2
            + (2 + 6 + 2 + 4);
        assert_eq!(bytes[at..at + 4], 2u32.to_le_bytes());
        let mut one = bytes.clone();
        one[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(
            ObjectRecord::decode(&one),
            Err(RecordError::Pieces(_))
        ));
        // The first piece's size, then its flags.
        let mut empty = bytes.clone();
        empty[at + 4..at + 12].copy_from_slice(&0u64.to_le_bytes());
        assert!(matches!(
            ObjectRecord::decode(&empty),
            Err(RecordError::Pieces(_))
        ));
        let mut flags = bytes;
        flags[at + 12] = FLAG_ERASURE | FLAG_STORED;
        assert_eq!(
            ObjectRecord::decode(&flags),
            Err(RecordError::Flags(FLAG_ERASURE | FLAG_STORED))
        );
    }

    /// The fuzz target's seeds are the records formats.md section 23 spells out.
    #[test]
    fn the_fuzz_seeds_are_these_records() {
        let seeds = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/seeds/gateway_record/");
        let read = |n: &str| std::fs::read(format!("{seeds}{n}")).unwrap();
        assert_eq!(ObjectRecord::decode(&read("object")), Ok(object()));
        let u = UploadRecord::decode(&read("upload")).unwrap();
        assert_eq!(
            (u.bucket.as_str(), u.key.as_str(), u.created_ms),
            ("bucket", "a/key", 3)
        );
        let rules = decode_rules(&read("lifecycle")).unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(
            (rules[0].prefix.as_str(), rules[0].expiry, rules[1].expiry),
            ("logs/", Expiry::Days(30), Expiry::Date(1_577_836_800))
        );
        let p = PartRecord::decode(&read("part")).unwrap();
        assert_eq!((p.size, p.md5[15], p.modified_ms), (5 << 20, 15, 9));
        assert_eq!(p.stored.as_ref().map(|s| s.manifest), Some([7; 32]));
        let m = ObjectRecord::decode(&read("multipart")).unwrap();
        assert_eq!(
            m.pieces
                .iter()
                .map(|p| (p.size, p.stored.manifest[0]))
                .collect::<Vec<_>>(),
            [(5 << 20, 7), (1, 8)]
        );
        assert_eq!(p.encode(), read("part"));
        let old = PartRecord::decode(&read("part-v1")).unwrap();
        assert_eq!(old.encode(), read("part-v1"));
        assert_eq!((old.size, old.stored), (5 << 20, None));
        assert_eq!(m.encode(), read("multipart"));
        // Every seed with any one byte changed decodes or is refused, and what decodes
        // encodes back to itself (as the fuzz target checks).
        for seed in [
            "object",
            "multipart",
            "part",
            "part-v1",
            "upload",
            "lifecycle",
        ] {
            let bytes = read(seed);
            for at in 0..bytes.len() {
                for x in [1u8, 0x80, 0xff] {
                    let mut b = bytes.clone();
                    b[at] ^= x;
                    decode_any(&b);
                }
            }
        }
        let m = ObjectRecord::decode(&read("delete-marker")).unwrap();
        assert!(m.delete_marker && !m.null_version && m.pieces.is_empty());
        assert_eq!((m.seq, m.version_id().as_str()), (42, "000000000000002a"));
    }

    #[test]
    fn versions_and_delete_markers_round_trip_and_bad_flags_are_refused() {
        let mut o = object();
        o.seq = 7;
        let bytes = o.encode();
        assert_eq!(bytes[1], FLAG_STORED | FLAG_SEQ);
        assert_eq!(bytes[2..10], 7u64.to_le_bytes());
        assert_eq!(ObjectRecord::decode(&bytes), Ok(o.clone()));
        assert_eq!(o.version_id(), "0000000000000007");
        o.null_version = true;
        assert_eq!(ObjectRecord::decode(&o.encode()), Ok(o.clone()));
        assert_eq!(o.version_id(), "null");
        assert_eq!(
            object().version_id(),
            "null",
            "a record from before versions"
        );
        // A sequence flag with a zero sequence, and a delete marker with bytes, are refused.
        let mut zero = bytes.clone();
        zero[2..10].copy_from_slice(&[0; 8]);
        assert_eq!(
            ObjectRecord::decode(&zero),
            Err(RecordError::Flags(FLAG_STORED | FLAG_SEQ))
        );
        let mut marked = bytes;
        marked[1] |= FLAG_DELETE_MARKER;
        assert_eq!(
            ObjectRecord::decode(&marked),
            Err(RecordError::Flags(
                FLAG_STORED | FLAG_SEQ | FLAG_DELETE_MARKER
            ))
        );
    }

    #[test]
    fn lifecycle_rules_round_trip_and_bad_ones_are_refused() {
        let rules = vec![
            LifecycleRule {
                id: "old".into(),
                enabled: true,
                prefix: "logs/".into(),
                expiry: Expiry::Days(30),
            },
            LifecycleRule {
                id: String::new(),
                enabled: false,
                prefix: String::new(),
                expiry: Expiry::Date(1_577_836_800),
            },
        ];
        let bytes = encode_rules(&rules);
        assert_eq!(decode_rules(&bytes), Ok(rules));
        for n in 0..bytes.len() {
            assert!(decode_rules(&bytes[..n]).is_err(), "cut at {n}");
        }
        // The first rule's status byte (after version, count and the 2 + 3 byte id).
        let mut bad = bytes.clone();
        bad[8] = 7;
        assert_eq!(decode_rules(&bad), Err(RecordError::Flags(7)));
        let mut big = bytes;
        big[1..3].copy_from_slice(&2000u16.to_le_bytes());
        assert!(matches!(
            decode_rules(&big),
            Err(RecordError::TooLong {
                what: "rule list",
                ..
            })
        ));
    }

    #[test]
    fn bad_records_are_refused_with_what_was_wrong() {
        let good = object().encode();
        for n in 0..good.len() {
            assert!(
                matches!(
                    ObjectRecord::decode(&good[..n]),
                    Err(RecordError::Truncated(_))
                ),
                "cut at {n}"
            );
        }
        let mut v = good.clone();
        v[0] = 2;
        assert_eq!(ObjectRecord::decode(&v), Err(RecordError::Version(2)));
        let mut v = good.clone();
        v[0] = 3;
        assert_eq!(ObjectRecord::decode(&v), Err(RecordError::Version(3)));
        let mut v = good.clone();
        v[1] = 0x81;
        assert_eq!(ObjectRecord::decode(&v), Err(RecordError::Flags(0x81)));
        v[1] = FLAG_PIECES | FLAG_DEALS;
        assert!(matches!(
            ObjectRecord::decode(&v),
            Err(RecordError::Flags(_))
        ));
        v[1] = 0x20 | FLAG_STORED;
        assert_eq!(ObjectRecord::decode(&v), Err(RecordError::Flags(0x21)));
        let mut v = good.clone();
        v.push(0);
        assert_eq!(ObjectRecord::decode(&v), Err(RecordError::Trailing(1)));
        // The etag's length field (after version, flags, size, time and part count).
        let mut v = good.clone();
        v[22..24].copy_from_slice(&1000u16.to_le_bytes());
        assert_eq!(
            ObjectRecord::decode(&v),
            Err(RecordError::TooLong {
                what: "etag",
                len: 1000,
                max: ETAG_MAX
            })
        );
        let mut v = good;
        v[24] = 0xff;
        assert_eq!(ObjectRecord::decode(&v), Err(RecordError::NotUtf8("etag")));
        // Metadata over S3's 2 KB, in pieces each within it.
        let u = UploadRecord {
            bucket: "b".into(),
            key: "k".into(),
            created_ms: 0,
            content_type: String::new(),
            metadata: vec![
                ("a".into(), "x".repeat(1500)),
                ("b".into(), "y".repeat(1500)),
            ],
        };
        assert!(matches!(
            UploadRecord::decode(&u.encode()),
            Err(RecordError::TooLong {
                what: "metadata",
                ..
            })
        ));
        assert!(PartRecord::decode(&[1; 32]).is_err());
        assert_eq!(PartRecord::decode(&[3; 34]), Err(RecordError::Version(3)));
        assert!(PartRecord::decode(&[]).is_err());
    }
}
