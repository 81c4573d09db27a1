//! The share key: a read capability for exactly one sealed file, as a string a user can
//! paste. It carries the file's key and the manifest's id, nothing derived from the
//! passphrase, so it reveals nothing about the sender's other files.

use std::fmt;
use std::str::FromStr;

use crate::decode::{DecodeError, Reader};
use crate::ids::{ChunkId, FileId, FileKey};

/// Text prefix: names the format and its version, so a pasted string is recognised.
pub const SHARE_KEY_PREFIX: &str = "mss1-";
pub const SHARE_KEY_VERSION: u8 = 1;
/// version + file_id + manifest_id + file_key + checksum.
pub const SHARE_KEY_BYTES: usize = 1 + 16 + 32 + 32 + 4;
/// BLAKE3 `derive_key` context of the checksum, which catches typos and truncated pastes
/// before any decryption is tried.
const CHECKSUM_CONTEXT: &str = "market.space 2026-11 share key checksum v1";
const WHAT: &str = "share key";

#[derive(Clone, PartialEq, Eq)]
pub struct ShareKey {
    pub file_id: FileId,
    pub manifest_id: ChunkId,
    pub file_key: FileKey,
}

impl fmt::Debug for ShareKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShareKey")
            .field("file_id", &self.file_id)
            .field("manifest_id", &self.manifest_id)
            .finish_non_exhaustive()
    }
}

fn checksum(payload: &[u8]) -> [u8; 4] {
    let mut hasher = blake3::Hasher::new_derive_key(CHECKSUM_CONTEXT);
    hasher.update(payload);
    let hash = hasher.finalize();
    let mut out = [0; 4];
    out.copy_from_slice(&hash.as_bytes()[..4]);
    out
}

impl ShareKey {
    pub fn to_bytes(&self) -> [u8; SHARE_KEY_BYTES] {
        let mut out = [0u8; SHARE_KEY_BYTES];
        out[0] = SHARE_KEY_VERSION;
        out[1..17].copy_from_slice(&self.file_id.0);
        out[17..49].copy_from_slice(&self.manifest_id.0);
        out[49..81].copy_from_slice(&self.file_key.0);
        let sum = checksum(&out[..81]);
        out[81..].copy_from_slice(&sum);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(WHAT, bytes);
        r.version(SHARE_KEY_VERSION)?;
        let file_id = FileId(r.array("file_id")?);
        let manifest_id = ChunkId(r.array("manifest_id")?);
        let file_key = FileKey(r.array("file_key")?);
        let sum: [u8; 4] = r.array("checksum")?;
        r.finish()?;
        if sum != checksum(&bytes[..81]) {
            return Err(r_invalid(
                "checksum",
                "the key was mistyped or cut short".into(),
            ));
        }
        Ok(ShareKey {
            file_id,
            manifest_id,
            file_key,
        })
    }
}

fn r_invalid(field: &'static str, reason: String) -> DecodeError {
    DecodeError::Invalid {
        what: WHAT,
        field,
        reason,
    }
}

impl fmt::Display for ShareKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SHARE_KEY_PREFIX)?;
        f.write_str(&data_encoding::BASE64URL_NOPAD.encode(&self.to_bytes()))
    }
}

impl FromStr for ShareKey {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, DecodeError> {
        let s = s.trim();
        let Some(body) = s.strip_prefix(SHARE_KEY_PREFIX) else {
            return Err(r_invalid(
                "prefix",
                format!("a share key starts with {SHARE_KEY_PREFIX:?}"),
            ));
        };
        let bytes = data_encoding::BASE64URL_NOPAD
            .decode(body.as_bytes())
            .map_err(|e| r_invalid("encoding", format!("not base64url: {e}")))?;
        ShareKey::from_bytes(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ShareKey {
        ShareKey {
            file_id: FileId([1; 16]),
            manifest_id: ChunkId([2; 32]),
            file_key: FileKey([3; 32]),
        }
    }

    #[test]
    fn round_trips_as_text() {
        let text = sample().to_string();
        assert!(text.starts_with(SHARE_KEY_PREFIX));
        assert_eq!(text.parse::<ShareKey>().unwrap(), sample());
        assert_eq!(format!("  {text}\n").parse::<ShareKey>().unwrap(), sample());
    }

    #[test]
    fn rejects_malformed_keys() {
        let good = sample().to_string();
        let mut flipped = good.clone().into_bytes();
        let last = flipped.len() - 3;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let cases = [
            ("", "starts with"),
            ("mss2-AAAA", "starts with"),
            ("mss1-!!!!", "base64url"),
            (&good[..good.len() - 6], "truncated"),
            (std::str::from_utf8(&flipped).unwrap(), "checksum"),
        ];
        for (input, expect) in cases {
            let err = input.parse::<ShareKey>().expect_err(input).to_string();
            assert!(err.contains(expect), "{input:?}: {err:?} lacks {expect:?}");
        }
        let mut bytes = sample().to_bytes().to_vec();
        bytes[0] = 7;
        assert!(ShareKey::from_bytes(&bytes)
            .unwrap_err()
            .to_string()
            .contains("version 7"));
        bytes.push(0);
        assert!(ShareKey::from_bytes(&bytes).is_err());
    }

    #[test]
    fn only_the_canonical_base64url_text_is_a_key() {
        // formats.md 4: no padding, the URL-safe alphabet only, zero trailing bits; each
        // non-canonical spelling of the same bytes is refused, not decoded.
        let good = sample().to_string();
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let last = *good.as_bytes().last().unwrap();
        let value = ALPHABET.iter().position(|&c| c == last).unwrap();
        assert_eq!(value & 0x0f, 0, "85 bytes leave 4 trailing bits, all zero");
        let mut trailing = good.clone();
        trailing.pop();
        trailing.push(char::from(ALPHABET[value | 1]));
        let mut standard = good.clone().into_bytes();
        standard[10] = b'+';
        let mut slash = good.clone().into_bytes();
        slash[11] = b'/';
        let cases = [
            format!("{good}="),
            format!("{good}=="),
            String::from_utf8(standard).unwrap(),
            String::from_utf8(slash).unwrap(),
            trailing,
            format!("{good}AAA"),
            format!("{} {}", &good[..20], &good[20..]),
        ];
        for input in &cases {
            let err = input.parse::<ShareKey>().expect_err(input).to_string();
            assert!(err.contains("base64url"), "{input:?}: {err:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn decoder_never_panics(s in "\\PC{0,200}") {
            let _ = s.parse::<ShareKey>();
        }
    }
}
