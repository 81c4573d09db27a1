//! Proof-of-existence certificates (`mspace certify`): a file's BLAKE3 hash recorded on the
//! chain (`TxBody::RecordHash`, the first record of a hash stands), and a certificate that
//! states what the chain says about it: the hash, the block, the block's time and the
//! recording key. A certificate proves nothing by itself: [`Certificate::check`] compares
//! it with the chain's own record (any miner's `MinerApi::hash_record`), and, given the
//! file, its hash with the file's. Format in `docs/formats.md` section 18.

use serde::{Deserialize, Serialize};

use crate::HashRecordView;

/// [`Certificate::version`].
pub const CERT_VERSION: u32 = 1;
/// [`Certificate::kind`].
pub const CERT_KIND: &str = "market.space proof of existence";
/// The largest certificate read.
pub const CERT_BYTES_MAX: usize = 64 << 10;
/// Longest file name a certificate carries.
pub const CERT_NAME_MAX: usize = 255;

/// A certificate, as `mspace certify` writes it (`<file>.cert.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub version: u32,
    pub kind: String,
    /// BLAKE3 of the file (64 lowercase hex digits).
    pub hash: String,
    /// The file's name and size when certified (informational).
    pub name: String,
    pub file_bytes: u64,
    pub chain_id: u64,
    /// The block that recorded the hash, and its time (ms since the Unix epoch, as its
    /// proposer set it).
    pub height: u64,
    pub timestamp_ms: u64,
    /// The recording key (64 lowercase hex digits).
    pub by: String,
}

/// Why a certificate is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("not a certificate: {0}")]
    Malformed(String),
    #[error("the file's BLAKE3 is {file}; the certificate is for {cert}")]
    OtherFile { file: String, cert: String },
    #[error("the certificate is for chain {cert}; this miner's chain is {chain}")]
    OtherChain { cert: u64, chain: u64 },
    #[error("this chain has no record of {0}: the certificate is forged or for another chain")]
    NotRecorded(String),
    #[error("the chain recorded {hash} {chain}; the certificate says {cert}: it was altered")]
    Differs {
        hash: String,
        chain: String,
        cert: String,
    },
}

fn hex64(field: &str, s: &str) -> Result<(), CertError> {
    if s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(CertError::Malformed(format!(
            "{field}: {s:?} is not 64 lowercase hex digits"
        )))
    }
}

impl Certificate {
    /// A certificate of what the chain `chain_id` recorded.
    pub fn new(record: &HashRecordView, name: &str, file_bytes: u64, chain_id: u64) -> Self {
        let name: String = name.chars().filter(|c| !c.is_control()).collect();
        let mut cut = name.len().min(CERT_NAME_MAX);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        Certificate {
            version: CERT_VERSION,
            kind: CERT_KIND.to_owned(),
            hash: record.hash.clone(),
            name: name[..cut].to_owned(),
            file_bytes,
            chain_id,
            height: record.height,
            timestamp_ms: record.timestamp_ms,
            by: record.by.clone(),
        }
    }

    /// Decodes and checks the form: at most [`CERT_BYTES_MAX`] bytes of JSON with exactly
    /// these fields, version and kind as written, hash and key in lowercase hex, a name of
    /// at most [`CERT_NAME_MAX`] bytes without control characters.
    pub fn from_json(bytes: &[u8]) -> Result<Certificate, CertError> {
        if bytes.len() > CERT_BYTES_MAX {
            return Err(CertError::Malformed(format!(
                "{} bytes, at most {CERT_BYTES_MAX}",
                bytes.len()
            )));
        }
        let c: Certificate =
            serde_json::from_slice(bytes).map_err(|e| CertError::Malformed(e.to_string()))?;
        if c.version != CERT_VERSION {
            return Err(CertError::Malformed(format!(
                "version {}: this client reads version {CERT_VERSION}",
                c.version
            )));
        }
        if c.kind != CERT_KIND {
            return Err(CertError::Malformed(format!("kind {:?}", c.kind)));
        }
        hex64("hash", &c.hash)?;
        hex64("by", &c.by)?;
        if c.name.len() > CERT_NAME_MAX || c.name.chars().any(char::is_control) {
            return Err(CertError::Malformed(
                "name: at most 255 bytes, no control characters".into(),
            ));
        }
        Ok(c)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a certificate serializes")
    }

    /// The human-readable form (`<file>.cert.txt`).
    pub fn to_text(&self) -> String {
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.timestamp_ms);
        format!(
            "Market.space proof of existence\n\
             \n\
             File:      {} ({} bytes)\n\
             BLAKE3:    {}\n\
             Recorded:  block {} of chain {}, {} ({} ms since the Unix epoch)\n\
             By key:    {}\n\
             \n\
             The chain holds the first record of this hash. Check it against any miner of the\n\
             chain: mspace certify --verify <this certificate's .json> <the file> --chain <miner>\n",
            if self.name.is_empty() { "-" } else { &self.name },
            self.file_bytes,
            self.hash,
            self.height,
            self.chain_id,
            humantime::format_rfc3339_millis(when),
            self.timestamp_ms,
            self.by
        )
    }

    /// The hash as bytes.
    pub fn hash_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        if let Ok(b) = data_encoding::HEXLOWER.decode(self.hash.as_bytes()) {
            if b.len() == 32 {
                out.copy_from_slice(&b);
            }
        }
        out
    }

    /// Checks the certificate against a file's hash (if given) and the chain's record of
    /// its hash on chain `chain_id`: the same chain, a record, and exactly its block, time
    /// and key.
    pub fn check(
        &self,
        file_hash: Option<&str>,
        chain_id: u64,
        record: Option<&HashRecordView>,
    ) -> Result<(), CertError> {
        if let Some(f) = file_hash {
            if f != self.hash {
                return Err(CertError::OtherFile {
                    file: f.to_owned(),
                    cert: self.hash.clone(),
                });
            }
        }
        if chain_id != self.chain_id {
            return Err(CertError::OtherChain {
                cert: self.chain_id,
                chain: chain_id,
            });
        }
        let r = record.ok_or_else(|| CertError::NotRecorded(self.hash.clone()))?;
        let said = |h: u64, t: u64, by: &str| format!("at height {h}, time {t} ms, by {by}");
        let chain = said(r.height, r.timestamp_ms, &r.by);
        let cert = said(self.height, self.timestamp_ms, &self.by);
        if r.hash != self.hash || chain != cert {
            return Err(CertError::Differs {
                hash: self.hash.clone(),
                chain,
                cert,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn record() -> HashRecordView {
        HashRecordView {
            hash: "ab".repeat(32),
            height: 42,
            timestamp_ms: 1_796_000_000_000,
            by: "cd".repeat(32),
        }
    }

    #[test]
    fn a_certificate_round_trips_and_checks_only_against_its_record() {
        let c = Certificate::new(&record(), "photo\n.bin", 1234, 7);
        assert_eq!(c.name, "photo.bin", "control characters dropped");
        let back = Certificate::from_json(c.to_json().as_bytes()).unwrap();
        assert_eq!(back, c);
        assert_eq!(c.hash_bytes(), [0xab; 32]);
        let text = c.to_text();
        assert!(text.contains("block 42 of chain 7, 2026-"), "{text}");
        assert!(text.contains(&"cd".repeat(32)), "{text}");
        assert_eq!(c.check(Some(&"ab".repeat(32)), 7, Some(&record())), Ok(()));
        let mut later = record();
        later.height = 43;
        let mut other_key = record();
        other_key.by = "ef".repeat(32);
        let cases: Vec<(Result<(), CertError>, &str)> = vec![
            (
                c.check(Some(&"00".repeat(32)), 7, Some(&record())),
                "the file's BLAKE3",
            ),
            (
                c.check(None, 8, Some(&record())),
                "chain 7; this miner's chain is 8",
            ),
            (c.check(None, 7, None), "no record"),
            (c.check(None, 7, Some(&later)), "at height 43"),
            (c.check(None, 7, Some(&other_key)), "it was altered"),
        ];
        for (got, says) in cases {
            let e = got.unwrap_err().to_string();
            assert!(e.contains(says), "{e:?} does not say {says:?}");
        }
    }

    #[test]
    fn malformed_certificates_are_refused_naming_the_field() {
        let good = Certificate::new(&record(), "photo.bin", 1234, 7);
        let json = |c: &Certificate| c.to_json().into_bytes();
        let mut version = good.clone();
        version.version = 2;
        let mut kind = good.clone();
        kind.kind = "receipt".into();
        let mut upper = good.clone();
        upper.hash = "AB".repeat(32);
        let mut short = good.clone();
        short.by = "cd".into();
        let mut name = good.clone();
        name.name = "a\u{7}b".into();
        let extra = String::from_utf8(json(&good))
            .unwrap()
            .replacen('{', "{\"valid\": true,", 1)
            .into_bytes();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (json(&version), "version 2"),
            (json(&kind), "kind \"receipt\""),
            (json(&upper), "hash:"),
            (json(&short), "by:"),
            (json(&name), "no control characters"),
            (extra, "unknown field `valid`"),
            (b"[]".to_vec(), "invalid length 0"),
            (b"7".to_vec(), "invalid type"),
            (vec![b' '; CERT_BYTES_MAX + 1], "at most 65536"),
        ];
        for (bytes, says) in cases {
            let e = Certificate::from_json(&bytes).unwrap_err().to_string();
            assert!(e.contains(says), "{e:?} does not say {says:?}");
        }
    }
}
