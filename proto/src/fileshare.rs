//! The file share: what a receiver needs to download a file stored as deals, as one string
//! to paste. It carries the file's share key (`crate::share`) and, for each copy, the deal
//! that holds it and the control address of its host: the receiver asks that host for a
//! download's price, pays it on chain (unless it is free), and is given a link bound to
//! its own key. Layout in docs/formats.md section 19.

use std::fmt;
use std::str::FromStr;

use crate::decode::{DecodeError, Reader};
use crate::share::{ShareKey, SHARE_KEY_BYTES};
use crate::tx::TxId;

/// Text prefix: names the format and its version.
pub const FILE_SHARE_PREFIX: &str = "msf1-";
pub const FILE_SHARE_VERSION: u8 = 1;
/// Most copies one share names.
pub const FILE_SHARE_COPIES_MAX: usize = 16;
/// Longest host control address (bytes of UTF-8).
pub const FILE_SHARE_ADDR_MAX: usize = 255;
/// BLAKE3 `derive_key` context of the checksum over everything before it.
const CHECKSUM_CONTEXT: &str = "market.space 2026-12 file share checksum v1";
const WHAT: &str = "file share";

/// One copy of the file: the deal holding its manifest, and where its host's control plane
/// answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareCopy {
    pub deal: TxId,
    pub host_addr: String,
}

#[derive(Clone, PartialEq, Eq)]
pub struct FileShare {
    pub key: ShareKey,
    pub copies: Vec<ShareCopy>,
}

impl fmt::Debug for FileShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileShare")
            .field("key", &self.key)
            .field("copies", &self.copies)
            .finish()
    }
}

fn checksum(payload: &[u8]) -> [u8; 4] {
    let hash = blake3::Hasher::new_derive_key(CHECKSUM_CONTEXT)
        .update(payload)
        .finalize();
    let mut out = [0; 4];
    out.copy_from_slice(&hash.as_bytes()[..4]);
    out
}

/// Whether `addr` may stand in a share: 1 to 255 bytes of printable ASCII, no spaces.
fn addr_ok(addr: &str) -> bool {
    (1..=FILE_SHARE_ADDR_MAX).contains(&addr.len()) && addr.bytes().all(|b| b.is_ascii_graphic())
}

impl FileShare {
    /// Checks the copies: 1 to [`FILE_SHARE_COPIES_MAX`], each address printable ASCII of
    /// at most [`FILE_SHARE_ADDR_MAX`] bytes.
    pub fn new(key: ShareKey, copies: Vec<ShareCopy>) -> Result<FileShare, String> {
        if copies.is_empty() || copies.len() > FILE_SHARE_COPIES_MAX {
            return Err(format!(
                "{} copies: a share names 1 to {FILE_SHARE_COPIES_MAX}",
                copies.len()
            ));
        }
        if let Some(c) = copies.iter().find(|c| !addr_ok(&c.host_addr)) {
            return Err(format!(
                "host address {:?}: 1 to {FILE_SHARE_ADDR_MAX} printable ASCII characters",
                c.host_addr
            ));
        }
        Ok(FileShare { key, copies })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + SHARE_KEY_BYTES + self.copies.len() * 64 + 4);
        out.push(FILE_SHARE_VERSION);
        out.extend_from_slice(&self.key.to_bytes());
        out.push(u8::try_from(self.copies.len()).expect("checked by new"));
        for c in &self.copies {
            out.extend_from_slice(&c.deal.0);
            out.push(u8::try_from(c.host_addr.len()).expect("checked by new"));
            out.extend_from_slice(c.host_addr.as_bytes());
        }
        let sum = checksum(&out);
        out.extend_from_slice(&sum);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<FileShare, DecodeError> {
        let mut r = Reader::new(WHAT, bytes);
        r.version(FILE_SHARE_VERSION)?;
        let key = ShareKey::from_bytes(r.take("share key", SHARE_KEY_BYTES)?)?;
        let count = usize::from(r.u8("copy count")?);
        if count == 0 || count > FILE_SHARE_COPIES_MAX {
            return Err(r.invalid(
                "copy count",
                format!("{count}: 1 to {FILE_SHARE_COPIES_MAX}"),
            ));
        }
        let mut copies = Vec::with_capacity(count);
        for _ in 0..count {
            let deal = TxId(r.array("deal")?);
            let len = usize::from(r.u8("address length")?);
            let raw = r.take("host address", len)?;
            let host_addr = std::str::from_utf8(raw)
                .ok()
                .filter(|a| addr_ok(a))
                .ok_or_else(|| {
                    r.invalid(
                        "host address",
                        format!("1 to {FILE_SHARE_ADDR_MAX} printable ASCII characters"),
                    )
                })?
                .to_owned();
            copies.push(ShareCopy { deal, host_addr });
        }
        let end = bytes.len() - r.remaining();
        let sum: [u8; 4] = r.array("checksum")?;
        r.finish()?;
        if sum != checksum(&bytes[..end]) {
            return Err(DecodeError::Invalid {
                what: WHAT,
                field: "checksum",
                reason: "the share was mistyped or cut short".into(),
            });
        }
        Ok(FileShare { key, copies })
    }
}

impl fmt::Display for FileShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(FILE_SHARE_PREFIX)?;
        f.write_str(&data_encoding::BASE64URL_NOPAD.encode(&self.to_bytes()))
    }
}

impl FromStr for FileShare {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, DecodeError> {
        let s = s.trim();
        let invalid = |field, reason: String| DecodeError::Invalid {
            what: WHAT,
            field,
            reason,
        };
        let Some(body) = s.strip_prefix(FILE_SHARE_PREFIX) else {
            return Err(invalid(
                "prefix",
                format!("a file share starts with {FILE_SHARE_PREFIX:?}"),
            ));
        };
        let bytes = data_encoding::BASE64URL_NOPAD
            .decode(body.as_bytes())
            .map_err(|e| invalid("encoding", format!("not canonical base64url: {e}")))?;
        FileShare::from_bytes(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ChunkId, FileId, FileKey};

    fn sample() -> FileShare {
        FileShare::new(
            ShareKey {
                file_id: FileId([1; 16]),
                manifest_id: ChunkId([2; 32]),
                file_key: FileKey([3; 32]),
            },
            vec![
                ShareCopy {
                    deal: TxId([4; 32]),
                    host_addr: "127.0.0.1:7401".into(),
                },
                ShareCopy {
                    deal: TxId([5; 32]),
                    host_addr: "host.example.net:7401".into(),
                },
            ],
        )
        .unwrap()
    }

    #[test]
    fn round_trips_as_text() {
        let text = sample().to_string();
        assert!(text.starts_with(FILE_SHARE_PREFIX));
        assert_eq!(text.parse::<FileShare>().unwrap(), sample());
        assert_eq!(format!(" {text}\n").parse::<FileShare>().unwrap(), sample());
    }

    #[test]
    fn rejects_malformed_shares() {
        let good = sample().to_bytes();
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            // Re-seal the checksum, so that the field itself is what is refused.
            let n = b.len() - 4;
            let sum = checksum(&b[..n]);
            b[n..].copy_from_slice(&sum);
            b
        };
        let key_end = 1 + SHARE_KEY_BYTES;
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", Vec::new(), "truncated"),
            ("version", with(&|b| b[0] = 2), "version 2"),
            ("share key", with(&|b| b[5] ^= 1), "share key"),
            ("no copies", with(&|b| b[key_end] = 0), "copy count"),
            ("too many", with(&|b| b[key_end] = 17), "copy count"),
            (
                "empty address",
                with(&|b| b[key_end + 33] = 0),
                "printable ASCII",
            ),
            (
                "space in address",
                with(&|b| b[key_end + 34] = b' '),
                "printable ASCII",
            ),
            (
                "checksum",
                {
                    let mut b = good.clone();
                    let n = b.len();
                    b[n - 1] ^= 1;
                    b
                },
                "mistyped",
            ),
            ("truncated", good[..good.len() - 5].to_vec(), ""),
            (
                "trailing",
                {
                    let mut b = good.clone();
                    b.push(0);
                    b
                },
                "",
            ),
        ];
        for (name, bytes, expect) in cases {
            let err = FileShare::from_bytes(&bytes).expect_err(name).to_string();
            assert!(err.contains(expect), "{name}: {err:?} lacks {expect:?}");
        }
        for (input, expect) in [
            ("", "starts with"),
            ("mss1-AAAA", "starts with"),
            ("msf1-!!", "base64url"),
        ] {
            let err = input.parse::<FileShare>().expect_err(input).to_string();
            assert!(err.contains(expect), "{input:?}: {err:?} lacks {expect:?}");
        }
        assert!(FileShare::new(sample().key, Vec::new()).is_err());
        assert!(FileShare::new(
            sample().key,
            vec![ShareCopy {
                deal: TxId([0; 32]),
                host_addr: "a b".into()
            }]
        )
        .is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = FileShare::from_bytes(&bytes);
        }
    }
}
