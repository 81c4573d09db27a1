//! The sender's record of a file it stored as deals (`<state>/files/<manifest id>.json`,
//! written by `mspace put` when the deals are done): which deals hold its copies, on which
//! hosts, and each host's emergency link, a download link for the deal's whole length
//! (`HostApi::emergency_link`). `mspace get --file MANIFEST_ID` fetches from every copy
//! through those links alone: no exchange, index, miner or host control plane is asked.
//! Format in `docs/wire.md` section 4.2. The file is read back from disk, so it is checked
//! like any input ([`FileRecord::from_json`]).

use std::path::{Path, PathBuf};

use proto::link::{Grant, Link};
use proto::ChunkId;
use serde::{Deserialize, Serialize};

/// [`FileRecord::version`].
pub const RECORD_VERSION: u32 = 1;
/// The largest record read.
pub const RECORD_BYTES_MAX: usize = 1 << 20;
/// Most copies a record lists.
pub const RECORD_COPIES_MAX: usize = 256;

/// A stored file's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    /// [`RECORD_VERSION`].
    pub version: u32,
    /// The file's manifest id (64 lowercase hex digits): what the links grant.
    pub manifest_id: String,
    /// The file's name when it was stored (informational).
    pub name: String,
    pub file_bytes: u64,
    pub copies: Vec<CopyRecord>,
    /// The file's share key (`mss1-...`), for `mspace share`: a secret, which is why the
    /// record is written readable by its owner only. Absent in records written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_key: Option<String>,
    /// With `mspace put --erasure K/N`: the scheme, `K/N`; each of the N copies is then the
    /// host holding one share of each chunk (share `i` on `copies[i]`), not a full copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erasure: Option<String>,
    /// With `mspace put --spread`, when a copy was spread over several hosts: how many
    /// copies the hosts make; each entry of `copies` is then a host holding a batch of
    /// consecutive chunks (or a whole copy), not necessarily a full copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread_copies: Option<u32>,
}

/// One copy: a deal with a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyRecord {
    /// The host's key and control address.
    pub host: String,
    pub host_addr: String,
    /// The deal holding the file's manifest.
    pub deal: String,
    /// The host's emergency link; `None` if it gave none (then `link_error` says why).
    pub link: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_error: Option<String>,
}

/// Why a record is refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("no record of file {0} here (it is written by `mspace put` when its deals are done)")]
    Missing(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the file record is malformed: {0}")]
    Malformed(String),
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one, never a
/// mix: a temporary file in the same folder (readable by its owner only), synced, renamed
/// over `path`, the folder synced.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

fn hex32(field: &str, s: &str) -> Result<[u8; 32], RecordError> {
    let ok = s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    ok.then(|| data_encoding::HEXLOWER.decode(s.as_bytes()).ok())
        .flatten()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            RecordError::Malformed(format!("{field}: {s:?} is not 64 lowercase hex digits"))
        })
}

impl FileRecord {
    /// Decodes and checks a record: at most [`RECORD_BYTES_MAX`] bytes of JSON with exactly
    /// these fields, version [`RECORD_VERSION`], ids in lowercase hex, at most
    /// [`RECORD_COPIES_MAX`] copies, and each link a download link for this manifest.
    pub fn from_json(bytes: &[u8]) -> Result<FileRecord, RecordError> {
        if bytes.len() > RECORD_BYTES_MAX {
            return Err(RecordError::Malformed(format!(
                "{} bytes, at most {RECORD_BYTES_MAX}",
                bytes.len()
            )));
        }
        let r: FileRecord =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed(e.to_string()))?;
        if r.version != RECORD_VERSION {
            return Err(RecordError::Malformed(format!(
                "version {}: this client reads version {RECORD_VERSION}",
                r.version
            )));
        }
        let manifest = ChunkId(hex32("manifest_id", &r.manifest_id)?);
        if r.copies.len() > RECORD_COPIES_MAX {
            return Err(RecordError::Malformed(format!(
                "{} copies, at most {RECORD_COPIES_MAX}",
                r.copies.len()
            )));
        }
        if let Some(text) = &r.share_key {
            let key: proto::ShareKey = text
                .parse()
                .map_err(|e| RecordError::Malformed(format!("share_key: {e}")))?;
            if key.manifest_id != manifest {
                return Err(RecordError::Malformed(format!(
                    "share_key is for manifest {}, the record for {}",
                    key.manifest_id.to_hex(),
                    r.manifest_id
                )));
            }
        }
        if let Some(text) = &r.erasure {
            let scheme: proto::erasure::Scheme = text
                .parse()
                .map_err(|e| RecordError::Malformed(format!("erasure: {e}")))?;
            if r.copies.len() != usize::from(scheme.n()) {
                return Err(RecordError::Malformed(format!(
                    "erasure {scheme} has {} hosts, the record lists {}",
                    scheme.n(),
                    r.copies.len()
                )));
            }
        }
        if let Some(n) = r.spread_copies {
            if n == 0 || n as usize > r.copies.len() || r.erasure.is_some() {
                return Err(RecordError::Malformed(format!(
                    "spread_copies {n} with {} hosts{}: 1 to the hosts, full copies only",
                    r.copies.len(),
                    if r.erasure.is_some() {
                        " and erasure shares"
                    } else {
                        ""
                    }
                )));
            }
        }
        for (i, c) in r.copies.iter().enumerate() {
            hex32(&format!("copies[{i}].host"), &c.host)?;
            hex32(&format!("copies[{i}].deal"), &c.deal)?;
            if let Some(text) = &c.link {
                let link = Link::parse(text)
                    .map_err(|e| RecordError::Malformed(format!("copies[{i}].link: {e}")))?;
                if link.grant != (Grant::Download { manifest }) {
                    return Err(RecordError::Malformed(format!(
                        "copies[{i}].link does not grant a download of manifest {}",
                        r.manifest_id
                    )));
                }
            }
        }
        Ok(r)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a record serializes")
    }

    /// Where the record of `manifest` lives under the client's state directory.
    pub fn path(state: &Path, manifest: &ChunkId) -> PathBuf {
        state
            .join("files")
            .join(format!("{}.json", manifest.to_hex()))
    }

    /// Writes the record durably (a temporary file, synced, renamed over the old one).
    pub fn save(&self, state: &Path) -> std::io::Result<PathBuf> {
        let manifest =
            ChunkId(hex32("manifest_id", &self.manifest_id).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
            })?);
        let path = FileRecord::path(state, &manifest);
        std::fs::create_dir_all(path.parent().expect("a record path has a folder"))?;
        write_durably(&path, self.to_json().as_bytes())?;
        Ok(path)
    }

    /// Reads the record of `manifest` (hex) from the state directory.
    pub fn load(state: &Path, manifest: &str) -> Result<FileRecord, RecordError> {
        let id = ChunkId(hex32("the manifest id", manifest)?);
        let path = FileRecord::path(state, &id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RecordError::Missing(manifest.to_owned()))
            }
            Err(source) => return Err(RecordError::Io { path, source }),
        };
        let r = FileRecord::from_json(&bytes)?;
        if r.manifest_id != manifest {
            return Err(RecordError::Malformed(format!(
                "{} holds the record of manifest {}",
                path.display(),
                r.manifest_id
            )));
        }
        Ok(r)
    }

    /// The copies' links (those recorded), in order.
    pub fn links(&self) -> Vec<Link> {
        self.copies
            .iter()
            .filter_map(|c| c.link.as_deref())
            .filter_map(|t| Link::parse(t).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use ed25519_consensus::SigningKey;

    fn record() -> FileRecord {
        let manifest = ChunkId([7; 32]);
        let key = SigningKey::from([1; 32]);
        let link = Link::sign(
            &key,
            "127.0.0.1:7400",
            Grant::Download { manifest },
            Some([2; 32]),
            4_000_000_000,
            [3; 16],
        )
        .unwrap();
        FileRecord {
            version: RECORD_VERSION,
            manifest_id: manifest.to_hex(),
            name: "photo.bin".into(),
            file_bytes: 1234,
            copies: vec![
                CopyRecord {
                    host: "ab".repeat(32),
                    host_addr: "127.0.0.1:7401".into(),
                    deal: "cd".repeat(32),
                    link: Some(link.to_string()),
                    link_error: None,
                },
                CopyRecord {
                    host: "ef".repeat(32),
                    host_addr: "127.0.0.1:7411".into(),
                    deal: "01".repeat(32),
                    link: None,
                    link_error: Some("connection refused".into()),
                },
            ],
            share_key: Some(share_key(manifest)),
            erasure: None,
            spread_copies: None,
        }
    }

    fn share_key(manifest: ChunkId) -> String {
        proto::ShareKey {
            file_id: proto::FileId([4; 16]),
            manifest_id: manifest,
            file_key: proto::FileKey([5; 32]),
        }
        .to_string()
    }

    #[test]
    fn a_record_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let r = record();
        let path = r.save(dir.path()).unwrap();
        assert!(path.ends_with(format!("files/{}.json", r.manifest_id)));
        assert_eq!(FileRecord::load(dir.path(), &r.manifest_id).unwrap(), r);
        assert_eq!(r.links().len(), 1);
        // It holds the share key: its owner alone reads it.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let mut old = r.clone();
        old.share_key = None;
        assert!(!old.to_json().contains("share_key"));
        assert!(!old.to_json().contains("erasure"));
        let mut shares = r.clone();
        shares.copies.push(r.copies[1].clone());
        shares.erasure = Some("2/3".into());
        shares.save(dir.path()).unwrap();
        assert_eq!(
            FileRecord::load(dir.path(), &r.manifest_id).unwrap(),
            shares
        );
        let e = FileRecord::load(dir.path(), &"00".repeat(32)).unwrap_err();
        assert!(matches!(e, RecordError::Missing(_)), "{e}");
    }

    #[test]
    fn malformed_records_are_refused_naming_the_field() {
        let good = record();
        let json = |r: &FileRecord| r.to_json().into_bytes();
        let mut other_file = good.clone();
        other_file.manifest_id = "08".repeat(32);
        other_file.share_key = None;
        let mut upper = good.clone();
        upper.copies[0].deal = "CD".repeat(32);
        let mut bad_link = good.clone();
        bad_link.copies[0].link = Some("mspace://nothing".into());
        let mut version = good.clone();
        version.version = 2;
        let mut bad_key = good.clone();
        bad_key.share_key = Some("mss1-AAAA".into());
        let mut other_key = good.clone();
        other_key.share_key = Some(share_key(ChunkId([9; 32])));
        let mut bad_scheme = good.clone();
        bad_scheme.erasure = Some("3/2".into());
        let mut wrong_n = good.clone();
        wrong_n.erasure = Some("2/3".into());
        let mut many = good.clone();
        many.copies = vec![good.copies[1].clone(); RECORD_COPIES_MAX + 1];
        let mut no_copies = good.clone();
        no_copies.spread_copies = Some(0);
        let mut more_copies = good.clone();
        more_copies.spread_copies = Some(3);
        let mut spread_shares = good.clone();
        spread_shares.erasure = Some("2/3".into());
        spread_shares.copies.push(good.copies[0].clone());
        spread_shares.spread_copies = Some(1);
        // A copy spread over the two hosts reads back.
        let mut spread = good.clone();
        spread.spread_copies = Some(1);
        assert_eq!(FileRecord::from_json(&json(&spread)).unwrap(), spread);
        let extra = String::from_utf8(json(&good))
            .unwrap()
            .replacen('{', "{\"surprise\": 1,", 1)
            .into_bytes();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (json(&other_file), "does not grant a download of manifest"),
            (json(&upper), "copies[0].deal"),
            (json(&bad_link), "copies[0].link"),
            (json(&version), "version 2"),
            (json(&bad_key), "share_key: "),
            (json(&other_key), "share_key is for manifest"),
            (json(&many), "at most 256"),
            (json(&bad_scheme), "erasure: "),
            (json(&no_copies), "spread_copies 0 with 2 hosts"),
            (json(&more_copies), "spread_copies 3 with 2 hosts"),
            (json(&spread_shares), "and erasure shares"),
            (json(&wrong_n), "has 3 hosts, the record lists 2"),
            (extra, "unknown field `surprise`"),
            (b"{".to_vec(), "EOF"),
            (vec![b' '; RECORD_BYTES_MAX + 1], "at most 1048576"),
        ];
        for (bytes, says) in cases {
            let e = FileRecord::from_json(&bytes).unwrap_err().to_string();
            assert!(e.contains(says), "{e:?} does not say {says:?}");
        }
    }
}
