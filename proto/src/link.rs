//! Temporary links: the seed's "URL, login and password" for a host, as one string a user
//! can paste, `mspace://<host:port>/<base64url>`. A link is a capability signed by the
//! host's ed25519 key: which operation it allows (uploading up to a number of bytes, or
//! reading one sealed file), to whom (a bearer's public key, or anyone holding it), until
//! when, and a random link id the host counts usage against. Layout in `docs/formats.md`
//! section 9.
//!
//! A host accepts a link only through [`Link::check`]: signed by its own key, not expired,
//! for the operation asked, by the bearer named. Scope within the operation (bytes used so
//! far, the chunks of the manifest) is the host's to enforce with the link id.

use std::fmt;

use ed25519_consensus::{Signature, SigningKey, VerificationKey};

use crate::decode::{DecodeError, Reader};
use crate::ids::ChunkId;

pub const LINK_SCHEME: &str = "mspace://";
pub const LINK_VERSION: u8 = 1;
/// Longest `host:port` a link carries.
pub const LINK_ADDR_MAX: usize = 255;
/// Domain separation of the signature: no other message the host signs can be a link.
const SIGNING_CONTEXT: &[u8] = b"market.space 2026-11 link v1\0";
const WHAT: &str = "link";

/// What a link allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Uploading chunks and manifests, up to `bytes_max` bytes in all.
    Upload { bytes_max: u64 },
    /// Reading the sealed file whose manifest is `manifest`, and its chunks.
    Download { manifest: ChunkId },
}

/// A decoded link. Its fields are those the host signed; nothing here is trusted until
/// [`Link::check`] passes.
#[derive(Clone, PartialEq, Eq)]
pub struct Link {
    /// Where the host listens, `host:port`, as signed.
    pub addr: String,
    pub host_key: [u8; 32],
    pub grant: Grant,
    /// Only this key may use the link, if set (it proves possession per request).
    pub bearer: Option<[u8; 32]>,
    pub expiry_unix_secs: u64,
    /// Random: the host counts a link's usage under this id.
    pub id: [u8; 16],
    signature: [u8; 64],
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("addr", &self.addr)
            .field("grant", &self.grant)
            .field("expiry_unix_secs", &self.expiry_unix_secs)
            .finish_non_exhaustive()
    }
}

/// Why a link is refused. Each says what the user can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("not a link: {0}")]
    Malformed(String),
    #[error("the link's signature does not verify: it was altered or not made by this host")]
    Forged,
    #[error("the link was made by another host (key {0})")]
    OtherHost(String),
    #[error("the link expired at {expiry} (Unix seconds; now {now}): ask for a new one")]
    Expired { expiry: u64, now: u64 },
    #[error("the link allows {allowed}, not {asked}")]
    WrongOperation {
        allowed: &'static str,
        asked: &'static str,
    },
    #[error("the link is for another bearer")]
    WrongBearer,
}

impl From<DecodeError> for LinkError {
    fn from(e: DecodeError) -> Self {
        LinkError::Malformed(e.to_string())
    }
}

fn grant_name(g: &Grant) -> &'static str {
    match g {
        Grant::Upload { .. } => "uploading",
        Grant::Download { .. } => "downloading",
    }
}

fn valid_addr(addr: &str) -> bool {
    !addr.is_empty()
        && addr.len() <= LINK_ADDR_MAX
        && addr
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        && addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0))
}

impl Link {
    /// The signed body: everything but the signature.
    fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.push(LINK_VERSION);
        out.push(match self.grant {
            Grant::Upload { .. } => 1,
            Grant::Download { .. } => 2,
        });
        out.push(u8::from(self.bearer.is_some()));
        out.push(0);
        out.extend_from_slice(&self.expiry_unix_secs.to_le_bytes());
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.host_key);
        out.push(u8::try_from(self.addr.len()).expect("checked by sign"));
        out.extend_from_slice(self.addr.as_bytes());
        match self.grant {
            Grant::Upload { bytes_max } => out.extend_from_slice(&bytes_max.to_le_bytes()),
            Grant::Download { manifest } => out.extend_from_slice(&manifest.0),
        }
        if let Some(b) = &self.bearer {
            out.extend_from_slice(b);
        }
        out
    }

    fn message(body: &[u8]) -> Vec<u8> {
        [SIGNING_CONTEXT, body].concat()
    }

    /// A link signed by the host's key. Fails only for an address that is not `host:port`.
    pub fn sign(
        key: &SigningKey,
        addr: &str,
        grant: Grant,
        bearer: Option<[u8; 32]>,
        expiry_unix_secs: u64,
        id: [u8; 16],
    ) -> Result<Link, LinkError> {
        if !valid_addr(addr) {
            return Err(LinkError::Malformed(format!(
                "{addr:?} is not host:port (ASCII, at most {LINK_ADDR_MAX} bytes)"
            )));
        }
        let mut link = Link {
            addr: addr.to_string(),
            host_key: key.verification_key().to_bytes(),
            grant,
            bearer,
            expiry_unix_secs,
            id,
            signature: [0; 64],
        };
        link.signature = key.sign(&Self::message(&link.body())).to_bytes();
        Ok(link)
    }

    /// The bytes after the address in the text form: body then signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.body();
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes the bytes of a link. Checks the structure, not the signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Link, LinkError> {
        let mut r = Reader::new(WHAT, bytes);
        r.version(LINK_VERSION)?;
        let kind = r.u8("kind")?;
        let flags = r.u8("flags")?;
        if flags > 1 {
            return Err(r
                .invalid("flags", format!("unknown bits {flags:#04x}"))
                .into());
        }
        r.reserved("reserved", 1)?;
        let expiry_unix_secs = r.u64("expiry")?;
        let id = r.array::<16>("link id")?;
        let host_key = r.array::<32>("host key")?;
        let addr_len = usize::from(r.u8("address length")?);
        let addr_bytes = r.take("address", addr_len)?;
        let addr = std::str::from_utf8(addr_bytes)
            .ok()
            .filter(|a| valid_addr(a))
            .ok_or_else(|| r.invalid("address", "not host:port in ASCII"))?
            .to_string();
        let grant = match kind {
            1 => Grant::Upload {
                bytes_max: r.u64("bytes_max")?,
            },
            2 => Grant::Download {
                manifest: ChunkId(r.array::<32>("manifest id")?),
            },
            k => return Err(r.invalid("kind", format!("unknown kind {k}")).into()),
        };
        let bearer = if flags == 1 {
            Some(r.array::<32>("bearer")?)
        } else {
            None
        };
        let signature = r.array::<64>("signature")?;
        r.finish()?;
        Ok(Link {
            addr,
            host_key,
            grant,
            bearer,
            expiry_unix_secs,
            id,
            signature,
        })
    }

    /// Parses the text form, `mspace://<host:port>/<base64url>`; the address in the text
    /// must be the one signed.
    pub fn parse(text: &str) -> Result<Link, LinkError> {
        let text = text.trim();
        let rest = text
            .strip_prefix(LINK_SCHEME)
            .ok_or_else(|| LinkError::Malformed(format!("a link starts with {LINK_SCHEME}")))?;
        let (addr, payload) = rest
            .split_once('/')
            .ok_or_else(|| LinkError::Malformed("no '/' after the address".into()))?;
        let bytes = data_encoding::BASE64URL_NOPAD
            .decode(payload.as_bytes())
            .map_err(|e| LinkError::Malformed(format!("the part after the address: {e}")))?;
        let link = Link::from_bytes(&bytes)?;
        if link.addr != addr {
            return Err(LinkError::Malformed(format!(
                "the address {addr:?} is not the one the host signed ({:?})",
                link.addr
            )));
        }
        Ok(link)
    }

    /// The host's check: made by `host_key`, not expired at `now`, allowing `asked`'s
    /// operation, used by the bearer it names (`bearer`: the key the request proved).
    pub fn check(
        &self,
        host_key: &VerificationKey,
        now_unix_secs: u64,
        asked: &Grant,
        bearer: Option<&[u8; 32]>,
    ) -> Result<(), LinkError> {
        if self.host_key != host_key.to_bytes() {
            return Err(LinkError::OtherHost(
                data_encoding::HEXLOWER.encode(&self.host_key),
            ));
        }
        host_key
            .verify(
                &Signature::from(self.signature),
                &Self::message(&self.body()),
            )
            .map_err(|_| LinkError::Forged)?;
        if now_unix_secs >= self.expiry_unix_secs {
            return Err(LinkError::Expired {
                expiry: self.expiry_unix_secs,
                now: now_unix_secs,
            });
        }
        let same_op = matches!(
            (&self.grant, asked),
            (Grant::Upload { .. }, Grant::Upload { .. })
                | (Grant::Download { .. }, Grant::Download { .. })
        );
        let same_file = match (&self.grant, asked) {
            (Grant::Download { manifest: a }, Grant::Download { manifest: b }) => a == b,
            _ => true,
        };
        if !same_op || !same_file {
            return Err(LinkError::WrongOperation {
                allowed: grant_name(&self.grant),
                asked: if same_op {
                    "another file"
                } else {
                    grant_name(asked)
                },
            });
        }
        if let Some(want) = &self.bearer {
            if bearer != Some(want) {
                return Err(LinkError::WrongBearer);
            }
        }
        Ok(())
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{LINK_SCHEME}{}/{}",
            self.addr,
            data_encoding::BASE64URL_NOPAD.encode(&self.to_bytes())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> SigningKey {
        SigningKey::from([7u8; 32])
    }

    fn link(grant: Grant, bearer: Option<[u8; 32]>) -> Link {
        Link::sign(
            &host(),
            "host.example:7070",
            grant,
            bearer,
            2_000_000_000,
            [9; 16],
        )
        .unwrap()
    }

    const NOW: u64 = 1_900_000_000;
    const UP: Grant = Grant::Upload { bytes_max: 1 << 30 };

    #[test]
    fn links_round_trip_through_text_and_pass_the_hosts_check() {
        let file = Grant::Download {
            manifest: ChunkId([3; 32]),
        };
        for (grant, bearer) in [(UP, None), (file, Some([5u8; 32]))] {
            let l = link(grant, bearer);
            let text = l.to_string();
            assert!(text.starts_with("mspace://host.example:7070/"), "{text}");
            let back = Link::parse(&text).unwrap();
            assert_eq!(back, l);
            let vk = host().verification_key();
            back.check(&vk, NOW, &grant, bearer.as_ref()).unwrap();
        }
    }

    #[test]
    fn every_bad_link_is_refused_with_its_reason() {
        let vk = host().verification_key();
        let file = Grant::Download {
            manifest: ChunkId([3; 32]),
        };
        let l = link(UP, None);
        assert_eq!(
            l.check(&vk, 2_000_000_000, &UP, None),
            Err(LinkError::Expired {
                expiry: 2_000_000_000,
                now: 2_000_000_000
            })
        );
        assert!(matches!(
            l.check(&vk, NOW, &file, None),
            Err(LinkError::WrongOperation { .. })
        ));
        let dl = link(file, None);
        let other_file = Grant::Download {
            manifest: ChunkId([4; 32]),
        };
        assert!(matches!(
            dl.check(&vk, NOW, &other_file, None),
            Err(LinkError::WrongOperation {
                asked: "another file",
                ..
            })
        ));
        let other = SigningKey::from([8u8; 32]).verification_key();
        assert!(matches!(
            l.check(&other, NOW, &UP, None),
            Err(LinkError::OtherHost(_))
        ));
        let mine = link(UP, Some([5; 32]));
        assert_eq!(mine.check(&vk, NOW, &UP, None), Err(LinkError::WrongBearer));
        assert_eq!(
            mine.check(&vk, NOW, &UP, Some(&[6; 32])),
            Err(LinkError::WrongBearer)
        );
        // Any byte changed: the signature fails, or the bytes no longer decode.
        let bytes = l.to_bytes();
        for at in 0..bytes.len() {
            let mut b = bytes.clone();
            b[at] ^= 0x10;
            match Link::from_bytes(&b) {
                Ok(forged) => assert!(
                    forged.check(&vk, NOW, &UP, None).is_err(),
                    "byte {at} changed and still accepted"
                ),
                Err(LinkError::Malformed(_)) => {}
                Err(other) => panic!("byte {at}: {other}"),
            }
        }
        // Text-level damage.
        let text = l.to_string();
        for bad in [
            "http://host.example:7070/AAAA".to_string(),
            "mspace://host.example:7070".to_string(),
            text.replace("host.example:7070/", "evil.example:7070/"),
            format!("{text}!"),
            text[..text.len() - 4].to_string(),
            format!("{text}AAAA"),
        ] {
            assert!(
                matches!(Link::parse(&bad), Err(LinkError::Malformed(_))),
                "{bad}"
            );
        }
        assert!(Link::sign(&host(), "no-port", UP, None, 1, [0; 16]).is_err());
        assert!(Link::sign(&host(), "h:0", UP, None, 1, [0; 16]).is_err());
        assert!(Link::sign(&host(), "h\u{e9}:1", UP, None, 1, [0; 16]).is_err());
    }
}
