//! What an exchange holds (the seed's 4.4): a host's standing ask and a sender's storage
//! request; and what an index holds: an exchange's listing (where it is). Each is signed by
//! its author so that whoever passes it on cannot forge or alter it, and none goes on
//! chain. Layouts in `docs/formats.md` section 17.
//!
//! An exchange accepts either only through its `check`: a valid signature by the key the
//! message names, for the exchange's chain, not expired, its expiry within the longest life
//! the exchange allows.

use ed25519_consensus::SigningKey;

use crate::decode::{DecodeError, Reader};
use crate::sig;

pub const ASK_MAGIC: &[u8; 4] = b"MSAK";
pub const REQUEST_MAGIC: &[u8; 4] = b"MSRQ";
pub const LISTING_MAGIC: &[u8; 4] = b"MSEX";
pub const BID_MAGIC: &[u8; 4] = b"MSBD";
pub const MARKET_VERSION: u8 = 1;
/// A request's layout version: 2 added `spread`.
pub const REQUEST_VERSION: u8 = 2;
/// A bid's layout version: 2 added `free_bytes`.
pub const BID_VERSION: u8 = 2;
/// Longest region name: lowercase ASCII letters, digits and `-`.
pub const REGION_MAX: usize = 32;
/// Longest host control address in an ask.
pub const ADDR_MAX: usize = 255;
/// The highest rating the chain gives (`consensus::ledger::rating`).
pub const RATING_MAX: u16 = 1000;
/// Most copies one request asks for.
pub const COPIES_MAX: u8 = 16;
const ASK_CONTEXT: &[u8] = b"market.space 2026-12 exchange ask v1\0";
const REQUEST_CONTEXT: &[u8] = b"market.space 2026-12 storage request v1\0";
const LISTING_CONTEXT: &[u8] = b"market.space 2026-12 exchange listing v1\0";
const BID_CONTEXT: &[u8] = b"market.space 2026-12 host bid v1\0";

/// A host's standing ask on an exchange's book: the terms on which it takes new storage
/// until `expiry_unix_secs`. A later ask of the same host (higher `seq`) replaces it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ask {
    pub chain_id: u64,
    /// The host's key: its account on the chain.
    pub host: [u8; 32],
    /// Strictly increasing per host: an exchange keeps the highest and refuses replays.
    pub seq: u64,
    /// MASPC base units per GiB per day.
    pub price_per_gib_day: u64,
    /// Bytes the host can still take.
    pub free_bytes: u64,
    /// Shortest and longest storage it takes, in days.
    pub min_days: u32,
    pub max_days: u32,
    /// Its deposit on the chain when it asked (MASP).
    pub deposit: u64,
    pub expiry_unix_secs: u64,
    /// Where the host is (empty: unsaid).
    pub region: String,
    /// The host's control-plane address, where a sender asks it for a signed offer.
    pub addr: String,
}

/// A sender's storage request: what it wants stored, for how long, at most at what price.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    pub chain_id: u64,
    /// The sender's key: its account on the chain pays.
    pub sender: [u8; 32],
    /// Random: names the request.
    pub nonce: [u8; 16],
    /// Sealed bytes to store; 0: not yet known.
    pub bytes: u64,
    pub days: u32,
    /// Full copies wanted, each on another host (1..=16).
    pub copies: u8,
    /// The most it pays, MASPC per GiB per day.
    pub max_price_per_gib_day: u64,
    /// What a receiver will pay the sender per download (0: free).
    pub download_fee: u64,
    /// Only hosts rated at least this on the chain (0..=1000).
    pub min_rating: u16,
    pub expiry_unix_secs: u64,
    /// Hosts wanted in this region (empty: any).
    pub region: String,
    /// `None`: each copy whole on one host. `Some`: a copy may be spread over several
    /// hosts, each holding a batch of whole chunks (see [`Spread`]).
    pub spread: Option<Spread>,
}

/// How a sender lets a copy be spread over several hosts (per-batch offers): a host with
/// room for part of the copy holds a batch of consecutive chunks, each at most
/// `unit_bytes`, plus `overhead_bytes` that every batch holds whole (the file's manifest
/// envelope, so that each batch host can serve the file's manifest). The request's `bytes`
/// is what one host holding the whole copy stores: the chunks and one overhead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Spread {
    /// The largest chunk as stored (sealed): batches come in multiples of it.
    pub unit_bytes: u32,
    /// What every batch host stores beyond its chunks.
    pub overhead_bytes: u32,
}

impl Spread {
    /// The chunks' bytes of a copy of `bytes` (the request's): what the batches share out.
    pub fn chunk_bytes_of(&self, bytes: u64) -> u64 {
        bytes.saturating_sub(u64::from(self.overhead_bytes))
    }

    /// What a host with `room` free bytes can take of a copy with `left` chunk bytes still
    /// unplaced: whole units (the last one, `left` itself, may be short), after the
    /// overhead; 0 if not even one unit fits. The bytes it holds are this plus the
    /// overhead.
    pub fn batch_of(&self, room: u64, left: u64) -> u64 {
        let unit = u64::from(self.unit_bytes.max(1));
        let fits = room.saturating_sub(u64::from(self.overhead_bytes));
        if fits >= left {
            left
        } else {
            fits / unit * unit
        }
    }
}

/// An exchange's listing on an index: where senders reach it, renewed before it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    pub chain_id: u64,
    /// The exchange's key: its account on the chain (registered as an exchange).
    pub exchange: [u8; 32],
    /// Strictly increasing per exchange (Unix milliseconds).
    pub seq: u64,
    pub expiry_unix_secs: u64,
    /// Where it is (empty: unsaid).
    pub region: String,
    /// Its `ExchangeApi` address.
    pub addr: String,
}

/// A host's answer to one request an exchange forwarded to it (a host that bids request by
/// request rather than, or as well as, keeping a standing ask): a price for that request's
/// days and the bytes it holds of it (all of them, or with a spread request a batch), or a
/// pass (`price_per_gib_day` `None`: it will not take it).
/// Bound to the request by its id ([`request_id`]), so it cannot be replayed onto another.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bid {
    pub chain_id: u64,
    /// The host's key: its account on the chain.
    pub host: [u8; 32],
    /// [`request_id`] of the signed request it answers.
    pub request: [u8; 32],
    /// MASPC base units per GiB per day; `None`: a pass.
    pub price_per_gib_day: Option<u64>,
    /// Its deposit on the chain when it bid (MASP).
    pub deposit: u64,
    pub expiry_unix_secs: u64,
    pub region: String,
    /// The host's control-plane address (empty only in a pass).
    pub addr: String,
    /// The room it offers the request (0 in a pass): at least its bytes for a whole copy;
    /// with the request's spread, less is a batch ([`Spread::batch_of`] of it).
    pub free_bytes: u64,
}

/// A request's id: BLAKE3 of the signed request's bytes as the sender sent them (body and
/// signature), which is what an exchange forwards.
pub fn request_id(signed_request: &[u8]) -> [u8; 32] {
    *blake3::hash(signed_request).as_bytes()
}

/// A message and its author's signature over it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed<T> {
    pub msg: T,
    signature: [u8; 64],
}

pub type SignedAsk = Signed<Ask>;
pub type SignedRequest = Signed<Request>;
pub type SignedListing = Signed<Listing>;
pub type SignedBid = Signed<Bid>;

/// Why an exchange refuses an ask or a request; each names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarketMsgError {
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("the signature does not verify: it was altered or not made by the key it names")]
    Forged,
    #[error("it is for chain {found}, this exchange serves chain {expected}")]
    OtherChain { expected: u64, found: u64 },
    #[error("it expired at {expiry} (Unix seconds; now {now})")]
    Expired { expiry: u64, now: u64 },
    #[error("it lives until {expiry}, more than {max_secs} s from now ({now}): ask for less")]
    TooLong {
        expiry: u64,
        now: u64,
        max_secs: u64,
    },
}

impl From<DecodeError> for MarketMsgError {
    fn from(e: DecodeError) -> Self {
        MarketMsgError::Malformed(e.to_string())
    }
}

/// The fields an exchange checks on either message.
pub trait Authored {
    const CONTEXT: &'static [u8];
    fn author(&self) -> [u8; 32];
    fn chain_id(&self) -> u64;
    fn expiry_unix_secs(&self) -> u64;
    /// The encoding without the signature.
    fn body(&self) -> Vec<u8>;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError>
    where
        Self: Sized;
    const WHAT: &'static str;
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.push(u8::try_from(s.len()).expect("checked lengths fit a u8"));
    b.extend_from_slice(s.as_bytes());
}

fn get_str(r: &mut Reader<'_>, field: &'static str, max: usize) -> Result<String, DecodeError> {
    let n = usize::from(r.u8(field)?);
    if n > max {
        return Err(r.invalid(field, format!("{n} bytes, at most {max}")));
    }
    let raw = r.take(field, n)?;
    let s = std::str::from_utf8(raw).map_err(|_| r.invalid(field, "not UTF-8"))?;
    Ok(s.to_owned())
}

/// Whether `region` is a valid region name (empty, or lowercase letters, digits and `-`).
pub fn region_ok(region: &str) -> bool {
    region.len() <= REGION_MAX
        && region
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

fn get_region(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let region = get_str(r, "region", REGION_MAX)?;
    if !region_ok(&region) {
        return Err(r.invalid("region", "only lowercase letters, digits and '-'"));
    }
    Ok(region)
}

impl Authored for Ask {
    const CONTEXT: &'static [u8] = ASK_CONTEXT;
    const WHAT: &'static str = "host's ask";

    fn author(&self) -> [u8; 32] {
        self.host
    }

    fn chain_id(&self) -> u64 {
        self.chain_id
    }

    fn expiry_unix_secs(&self) -> u64 {
        self.expiry_unix_secs
    }

    fn body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(128 + self.addr.len());
        b.extend_from_slice(ASK_MAGIC);
        b.push(MARKET_VERSION);
        b.extend_from_slice(&self.chain_id.to_le_bytes());
        b.extend_from_slice(&self.host);
        for v in [self.seq, self.price_per_gib_day, self.free_bytes] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.min_days.to_le_bytes());
        b.extend_from_slice(&self.max_days.to_le_bytes());
        b.extend_from_slice(&self.deposit.to_le_bytes());
        b.extend_from_slice(&self.expiry_unix_secs.to_le_bytes());
        put_str(&mut b, &self.region);
        put_str(&mut b, &self.addr);
        b
    }

    fn decode(r: &mut Reader<'_>) -> Result<Ask, DecodeError> {
        r.magic(ASK_MAGIC)?;
        r.version(MARKET_VERSION)?;
        let chain_id = r.u64("chain_id")?;
        let host = r.array("host")?;
        let seq = r.u64("seq")?;
        let price_per_gib_day = r.u64("price_per_gib_day")?;
        let free_bytes = r.u64("free_bytes")?;
        let min_days = r.u32("min_days")?;
        let max_days = r.u32("max_days")?;
        if min_days == 0 || min_days > max_days {
            return Err(r.invalid(
                "max_days",
                format!("days {min_days}..={max_days}: an empty range"),
            ));
        }
        let deposit = r.u64("deposit")?;
        let expiry_unix_secs = r.u64("expiry_unix_secs")?;
        let region = get_region(r)?;
        let addr = get_str(r, "addr", ADDR_MAX)?;
        if addr.is_empty() {
            return Err(r.invalid("addr", "empty: a sender could not reach the host"));
        }
        Ok(Ask {
            chain_id,
            host,
            seq,
            price_per_gib_day,
            free_bytes,
            min_days,
            max_days,
            deposit,
            expiry_unix_secs,
            region,
            addr,
        })
    }
}

impl Authored for Request {
    const CONTEXT: &'static [u8] = REQUEST_CONTEXT;
    const WHAT: &'static str = "storage request";

    fn author(&self) -> [u8; 32] {
        self.sender
    }

    fn chain_id(&self) -> u64 {
        self.chain_id
    }

    fn expiry_unix_secs(&self) -> u64 {
        self.expiry_unix_secs
    }

    fn body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(REQUEST_MAGIC);
        b.push(REQUEST_VERSION);
        b.extend_from_slice(&self.chain_id.to_le_bytes());
        b.extend_from_slice(&self.sender);
        b.extend_from_slice(&self.nonce);
        b.extend_from_slice(&self.bytes.to_le_bytes());
        b.extend_from_slice(&self.days.to_le_bytes());
        b.push(self.copies);
        b.extend_from_slice(&self.max_price_per_gib_day.to_le_bytes());
        b.extend_from_slice(&self.download_fee.to_le_bytes());
        b.extend_from_slice(&self.min_rating.to_le_bytes());
        b.extend_from_slice(&self.expiry_unix_secs.to_le_bytes());
        put_str(&mut b, &self.region);
        match self.spread {
            None => b.push(0),
            Some(sp) => {
                b.push(1);
                b.extend_from_slice(&sp.unit_bytes.to_le_bytes());
                b.extend_from_slice(&sp.overhead_bytes.to_le_bytes());
            }
        }
        b
    }

    fn decode(r: &mut Reader<'_>) -> Result<Request, DecodeError> {
        r.magic(REQUEST_MAGIC)?;
        r.version(REQUEST_VERSION)?;
        let chain_id = r.u64("chain_id")?;
        let sender = r.array("sender")?;
        let nonce = r.array("nonce")?;
        let bytes = r.u64("bytes")?;
        let days = r.u32("days")?;
        if days == 0 {
            return Err(r.invalid("days", "0: storage lasts at least a day"));
        }
        let copies = r.u8("copies")?;
        if copies == 0 || copies > COPIES_MAX {
            return Err(r.invalid("copies", format!("{copies}: 1 to {COPIES_MAX}")));
        }
        let max_price_per_gib_day = r.u64("max_price_per_gib_day")?;
        let download_fee = r.u64("download_fee")?;
        let min_rating = r.u16("min_rating")?;
        if min_rating > RATING_MAX {
            return Err(r.invalid(
                "min_rating",
                format!("{min_rating}: ratings run 0 to {RATING_MAX}"),
            ));
        }
        let expiry_unix_secs = r.u64("expiry_unix_secs")?;
        let region = get_region(r)?;
        let spread = match r.u8("spread")? {
            0 => None,
            1 => {
                let unit_bytes = r.u32("spread.unit_bytes")?;
                if unit_bytes == 0 {
                    return Err(r.invalid("spread.unit_bytes", "0: a batch holds whole chunks"));
                }
                let overhead_bytes = r.u32("spread.overhead_bytes")?;
                if bytes <= u64::from(overhead_bytes) {
                    return Err(r.invalid(
                        "spread.overhead_bytes",
                        format!("{overhead_bytes}: not below the request's {bytes} bytes, nothing to spread"),
                    ));
                }
                Some(Spread {
                    unit_bytes,
                    overhead_bytes,
                })
            }
            n => return Err(r.invalid("spread", format!("{n}: 0 (whole copies) or 1"))),
        };
        Ok(Request {
            chain_id,
            sender,
            nonce,
            bytes,
            days,
            copies,
            max_price_per_gib_day,
            download_fee,
            min_rating,
            expiry_unix_secs,
            region,
            spread,
        })
    }
}

impl Authored for Listing {
    const CONTEXT: &'static [u8] = LISTING_CONTEXT;
    const WHAT: &'static str = "exchange listing";

    fn author(&self) -> [u8; 32] {
        self.exchange
    }

    fn chain_id(&self) -> u64 {
        self.chain_id
    }

    fn expiry_unix_secs(&self) -> u64 {
        self.expiry_unix_secs
    }

    fn body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(96 + self.addr.len());
        b.extend_from_slice(LISTING_MAGIC);
        b.push(MARKET_VERSION);
        b.extend_from_slice(&self.chain_id.to_le_bytes());
        b.extend_from_slice(&self.exchange);
        b.extend_from_slice(&self.seq.to_le_bytes());
        b.extend_from_slice(&self.expiry_unix_secs.to_le_bytes());
        put_str(&mut b, &self.region);
        put_str(&mut b, &self.addr);
        b
    }

    fn decode(r: &mut Reader<'_>) -> Result<Listing, DecodeError> {
        r.magic(LISTING_MAGIC)?;
        r.version(MARKET_VERSION)?;
        let chain_id = r.u64("chain_id")?;
        let exchange = r.array("exchange")?;
        let seq = r.u64("seq")?;
        let expiry_unix_secs = r.u64("expiry_unix_secs")?;
        let region = get_region(r)?;
        let addr = get_str(r, "addr", ADDR_MAX)?;
        if addr.is_empty() {
            return Err(r.invalid("addr", "empty: no one could reach the exchange"));
        }
        Ok(Listing {
            chain_id,
            exchange,
            seq,
            expiry_unix_secs,
            region,
            addr,
        })
    }
}

impl Authored for Bid {
    const CONTEXT: &'static [u8] = BID_CONTEXT;
    const WHAT: &'static str = "host's bid";

    fn author(&self) -> [u8; 32] {
        self.host
    }

    fn chain_id(&self) -> u64 {
        self.chain_id
    }

    fn expiry_unix_secs(&self) -> u64 {
        self.expiry_unix_secs
    }

    fn body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(128 + self.addr.len());
        b.extend_from_slice(BID_MAGIC);
        b.push(BID_VERSION);
        b.extend_from_slice(&self.chain_id.to_le_bytes());
        b.extend_from_slice(&self.host);
        b.extend_from_slice(&self.request);
        match self.price_per_gib_day {
            None => b.extend_from_slice(&[0; 9]),
            Some(p) => {
                b.push(1);
                b.extend_from_slice(&p.to_le_bytes());
            }
        }
        b.extend_from_slice(&self.deposit.to_le_bytes());
        b.extend_from_slice(&self.expiry_unix_secs.to_le_bytes());
        put_str(&mut b, &self.region);
        put_str(&mut b, &self.addr);
        b.extend_from_slice(&self.free_bytes.to_le_bytes());
        b
    }

    fn decode(r: &mut Reader<'_>) -> Result<Bid, DecodeError> {
        r.magic(BID_MAGIC)?;
        r.version(BID_VERSION)?;
        let chain_id = r.u64("chain_id")?;
        let host = r.array("host")?;
        let request = r.array("request")?;
        let flag = r.u8("bids")?;
        let price = r.u64("price_per_gib_day")?;
        let price_per_gib_day = match flag {
            0 if price == 0 => None,
            0 => return Err(r.invalid("price_per_gib_day", "a pass carries no price")),
            1 => Some(price),
            f => return Err(r.invalid("bids", format!("{f}: 0 (a pass) or 1 (a bid)"))),
        };
        let deposit = r.u64("deposit")?;
        let expiry_unix_secs = r.u64("expiry_unix_secs")?;
        let region = get_region(r)?;
        let addr = get_str(r, "addr", ADDR_MAX)?;
        if addr.is_empty() && price_per_gib_day.is_some() {
            return Err(r.invalid("addr", "empty: a sender could not reach the host"));
        }
        let free_bytes = r.u64("free_bytes")?;
        if (free_bytes == 0) == price_per_gib_day.is_some() {
            return Err(r.invalid(
                "free_bytes",
                format!("{free_bytes}: a bid offers room, a pass none"),
            ));
        }
        Ok(Bid {
            chain_id,
            host,
            request,
            price_per_gib_day,
            deposit,
            expiry_unix_secs,
            region,
            addr,
            free_bytes,
        })
    }
}

impl<T: Authored> Signed<T> {
    /// Signs `msg` with `key`, which must be its author's.
    ///
    /// # Panics
    /// If `key` is not the author's, or a string field is longer than its format allows
    /// (callers build messages from checked configuration).
    pub fn sign(msg: T, key: &SigningKey) -> Signed<T> {
        assert_eq!(
            key.verification_key().to_bytes(),
            msg.author(),
            "a {} is signed by its author",
            T::WHAT
        );
        let signature = key.sign(&[T::CONTEXT, &msg.body()].concat()).to_bytes();
        Signed { msg, signature }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = self.msg.body();
        b.extend_from_slice(&self.signature);
        b
    }

    /// Decodes; the signature is checked by [`Signed::check`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Signed<T>, DecodeError> {
        let mut r = Reader::new(T::WHAT, bytes);
        let msg = T::decode(&mut r)?;
        let signature = r.array("signature")?;
        r.finish()?;
        Ok(Signed { msg, signature })
    }

    /// Decodes and checks in one step: see [`Signed::check`].
    pub fn open(
        bytes: &[u8],
        chain_id: u64,
        now_unix_secs: u64,
        life_max_secs: u64,
    ) -> Result<Signed<T>, MarketMsgError> {
        let s = Signed::from_bytes(bytes)?;
        s.check(chain_id, now_unix_secs, life_max_secs)?;
        Ok(s)
    }

    /// Accepts the message only if its author signed it, for `chain_id`, it has not expired
    /// at `now_unix_secs` and does not live more than `life_max_secs` from now.
    pub fn check(
        &self,
        chain_id: u64,
        now_unix_secs: u64,
        life_max_secs: u64,
    ) -> Result<&T, MarketMsgError> {
        let m = &self.msg;
        // A small-order key would let anyone sign in its name: refused like a forgery.
        let message = [T::CONTEXT, &m.body()].concat();
        if !sig::signed_by(&m.author(), &self.signature, &message) {
            return Err(MarketMsgError::Forged);
        }
        if m.chain_id() != chain_id {
            return Err(MarketMsgError::OtherChain {
                expected: chain_id,
                found: m.chain_id(),
            });
        }
        let expiry = m.expiry_unix_secs();
        if now_unix_secs >= expiry {
            return Err(MarketMsgError::Expired {
                expiry,
                now: now_unix_secs,
            });
        }
        if expiry - now_unix_secs > life_max_secs {
            return Err(MarketMsgError::TooLong {
                expiry,
                now: now_unix_secs,
                max_secs: life_max_secs,
            });
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn key(i: u8) -> SigningKey {
        SigningKey::from([i; 32])
    }

    fn ask() -> Ask {
        Ask {
            chain_id: 9,
            host: key(1).verification_key().to_bytes(),
            seq: 3,
            price_per_gib_day: 12,
            free_bytes: 1 << 40,
            min_days: 1,
            max_days: 365,
            deposit: 2000,
            expiry_unix_secs: 1_060,
            region: "eu-west".into(),
            addr: "10.0.0.7:7001".into(),
        }
    }

    fn request() -> Request {
        Request {
            chain_id: 9,
            sender: key(2).verification_key().to_bytes(),
            nonce: [7; 16],
            bytes: 5 << 30,
            days: 30,
            copies: 2,
            max_price_per_gib_day: 20,
            download_fee: 0,
            min_rating: 0,
            expiry_unix_secs: 1_030,
            region: String::new(),
            spread: None,
        }
    }

    #[test]
    fn a_small_order_author_is_refused_though_its_signature_verifies() {
        // The identity point as the key and (R = identity, s = 0) as the signature satisfy
        // the ZIP-215 equation for every message: anyone could sign as that key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut signature = [0u8; 64];
        signature[0] = 1;
        let mut r = request();
        r.sender = identity;
        let message = [Request::CONTEXT, &r.body()].concat();
        assert!(ed25519_consensus::VerificationKey::try_from(identity)
            .unwrap()
            .verify(&ed25519_consensus::Signature::from(signature), &message)
            .is_ok());
        let forged = Signed { msg: r, signature };
        assert!(matches!(
            forged.check(9, 1_000, 60),
            Err(MarketMsgError::Forged)
        ));
    }

    #[test]
    fn both_round_trip_and_check_only_as_signed() {
        let a = Signed::sign(ask(), &key(1));
        let back = SignedAsk::from_bytes(&a.to_bytes()).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.check(9, 1_000, 120).unwrap(), &ask());
        let q = Signed::sign(request(), &key(2));
        let back = SignedRequest::open(&q.to_bytes(), 9, 1_000, 60).unwrap();
        assert_eq!(back.msg, request());

        let mut altered = a.to_bytes();
        altered[30] ^= 1;
        let altered = SignedAsk::from_bytes(&altered).unwrap();
        let cases: Vec<(Result<&Ask, MarketMsgError>, &str)> = vec![
            (altered.check(9, 1_000, 120), "does not verify"),
            (
                a.check(8, 1_000, 120),
                "chain 9, this exchange serves chain 8",
            ),
            (a.check(9, 1_060, 120), "expired at 1060"),
            (a.check(9, 1_000, 30), "more than 30 s from now"),
        ];
        for (got, says) in cases {
            let e = got.unwrap_err().to_string();
            assert!(e.contains(says), "{e:?} does not say {says:?}");
        }
    }

    #[test]
    fn a_listing_round_trips_and_is_refused_altered_or_empty() {
        let l = Listing {
            chain_id: 9,
            exchange: key(3).verification_key().to_bytes(),
            seq: 5,
            expiry_unix_secs: 1_030,
            region: "eu".into(),
            addr: "10.0.0.9:7500".into(),
        };
        let s = Signed::sign(l.clone(), &key(3));
        let bytes = s.to_bytes();
        assert_eq!(bytes.len(), 4 + 1 + 8 + 32 + 8 + 8 + 3 + 14 + 64);
        assert_eq!(SignedListing::open(&bytes, 9, 1_000, 60).unwrap().msg, l);
        let mut altered = bytes.clone();
        altered[50] ^= 1;
        let e = SignedListing::open(&altered, 9, 1_000, 60)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not verify"), "{e}");
        let mut no_addr = l;
        no_addr.addr.clear();
        let body = no_addr.body();
        let e = SignedListing::from_bytes(&[body, vec![0; 64]].concat())
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid addr: empty"), "{e}");
        let e = SignedListing::from_bytes(&bytes[..40])
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated at exchange"), "{e}");
    }

    #[test]
    fn a_bid_round_trips_is_bound_to_its_request_and_refuses_bad_flags() {
        let q = Signed::sign(request(), &key(2)).to_bytes();
        let bid = Bid {
            chain_id: 9,
            host: key(1).verification_key().to_bytes(),
            request: request_id(&q),
            price_per_gib_day: Some(12),
            deposit: 2000,
            expiry_unix_secs: 1_030,
            region: "eu".into(),
            addr: "10.0.0.7:7001".into(),
            free_bytes: 5 << 30,
        };
        let bytes = Signed::sign(bid.clone(), &key(1)).to_bytes();
        assert_eq!(
            bytes.len(),
            4 + 1 + 8 + 32 + 32 + 9 + 8 + 8 + 3 + 14 + 8 + 64
        );
        assert_eq!(SignedBid::open(&bytes, 9, 1_000, 60).unwrap().msg, bid);
        assert_ne!(request_id(&q), request_id(&q[..q.len() - 1]));
        let pass = Bid {
            price_per_gib_day: None,
            addr: String::new(),
            free_bytes: 0,
            ..bid.clone()
        };
        let p = Signed::sign(pass.clone(), &key(1)).to_bytes();
        assert_eq!(SignedBid::open(&p, 9, 1_000, 60).unwrap().msg, pass);
        let flag_at = 4 + 1 + 8 + 32 + 32;
        let mut bad_flag = bytes.clone();
        bad_flag[flag_at] = 2;
        let mut priced_pass = p.clone();
        priced_pass[flag_at + 1] = 1;
        let no_addr = Bid {
            addr: String::new(),
            ..bid
        };
        let no_addr = [no_addr.body(), vec![0; 64]].concat();
        let room_at = bytes.len() - 64 - 8;
        let mut roomless = bytes.clone();
        roomless[room_at..room_at + 8].fill(0);
        let mut roomy_pass = p.clone();
        roomy_pass[p.len() - 64 - 8] = 1;
        let mut altered = bytes.clone();
        altered[flag_at + 1] ^= 1;
        for (got, says) in [
            (SignedBid::open(&bad_flag, 9, 1_000, 60), "invalid bids: 2"),
            (
                SignedBid::open(&priced_pass, 9, 1_000, 60),
                "a pass carries no price",
            ),
            (
                SignedBid::open(&no_addr, 9, 1_000, 60),
                "invalid addr: empty",
            ),
            (SignedBid::open(&altered, 9, 1_000, 60), "does not verify"),
            (
                SignedBid::open(&roomless, 9, 1_000, 60),
                "invalid free_bytes: 0: a bid offers room",
            ),
            (
                SignedBid::open(&roomy_pass, 9, 1_000, 60),
                "invalid free_bytes: 1",
            ),
            (SignedBid::open(&q, 9, 1_000, 60), "not a host's bid"),
        ] {
            let e = got.unwrap_err().to_string();
            assert!(e.contains(says), "{e:?} does not say {says:?}");
        }
    }

    #[test]
    fn a_batch_takes_whole_units_after_the_overhead() {
        let sp = Spread {
            unit_bytes: 10,
            overhead_bytes: 5,
        };
        assert_eq!(sp.chunk_bytes_of(105), 100);
        // (room, left) -> batch
        for (room, left, batch) in [
            (4, 100, 0),
            (14, 100, 0),
            (15, 100, 10),
            (39, 100, 30),
            (105, 100, 100),
            (1000, 7, 7),
            (11, 7, 0),
            (12, 7, 7),
        ] {
            assert_eq!(sp.batch_of(room, left), batch, "room {room} left {left}");
        }
    }

    #[test]
    fn malformed_messages_are_refused_with_the_field_named() {
        let a = Signed::sign(ask(), &key(1)).to_bytes();
        let q = Signed::sign(request(), &key(2)).to_bytes();
        let region_at = 4 + 1 + 8 + 32 + 8 * 3 + 4 + 4 + 8 + 8;
        let copies_at = 4 + 1 + 8 + 32 + 16 + 8 + 4;
        let mut bad_region = a.clone();
        bad_region[region_at + 1] = b'E';
        let mut no_copies = q.clone();
        no_copies[copies_at] = 0;
        let mut many_copies = q.clone();
        many_copies[copies_at] = 17;
        let mut high_rating = q.clone();
        high_rating[copies_at + 17..][..2].copy_from_slice(&1001u16.to_le_bytes());
        let mut long_region = q.clone();
        long_region[q.len() - 66] = 33;
        // The spread flag is the last byte before the signature.
        let mut bad_flag = q.clone();
        bad_flag[q.len() - 65] = 2;
        let spread = |unit: u32, overhead: u32| {
            let mut r = request();
            r.spread = Some(Spread {
                unit_bytes: unit,
                overhead_bytes: overhead,
            });
            Signed::sign(r, &key(2)).to_bytes()
        };
        let (no_unit, all_overhead) = (spread(0, 10), spread(1 << 20, u32::MAX));
        let mut r = request();
        r.bytes = 4096;
        r.spread = Some(Spread {
            unit_bytes: 1,
            overhead_bytes: 4096,
        });
        let nothing_left = Signed::sign(r, &key(2)).to_bytes();
        let mut empty_days = a.clone();
        empty_days[4 + 1 + 8 + 32 + 24..][..4].copy_from_slice(&400u32.to_le_bytes());
        let cases: Vec<(Result<(), DecodeError>, &str)> = vec![
            (
                SignedAsk::from_bytes(&a[..a.len() - 1]).map(drop),
                "truncated at signature",
            ),
            (
                SignedAsk::from_bytes(&[a.clone(), vec![0]].concat()).map(drop),
                "unexpected bytes",
            ),
            (SignedAsk::from_bytes(&q).map(drop), "not a host's ask"),
            (
                SignedAsk::from_bytes(&bad_region).map(drop),
                "invalid region",
            ),
            (
                SignedAsk::from_bytes(&empty_days).map(drop),
                "an empty range",
            ),
            (
                SignedRequest::from_bytes(&no_copies).map(drop),
                "invalid copies: 0",
            ),
            (
                SignedRequest::from_bytes(&high_rating).map(drop),
                "invalid min_rating: 1001",
            ),
            (
                SignedRequest::from_bytes(&many_copies).map(drop),
                "invalid copies: 17",
            ),
            (
                SignedRequest::from_bytes(&long_region).map(drop),
                "33 bytes, at most 32",
            ),
            (
                SignedRequest::from_bytes(&[]).map(drop),
                "truncated at magic",
            ),
            (
                SignedRequest::from_bytes(&bad_flag).map(drop),
                "invalid spread: 2",
            ),
            (
                SignedRequest::from_bytes(&no_unit).map(drop),
                "invalid spread.unit_bytes: 0",
            ),
            (
                SignedRequest::from_bytes(&nothing_left).map(drop),
                "nothing to spread",
            ),
        ];
        // A request spread over batches round-trips.
        let q = SignedRequest::from_bytes(&all_overhead).unwrap();
        assert_eq!(
            q.msg.spread,
            Some(Spread {
                unit_bytes: 1 << 20,
                overhead_bytes: u32::MAX
            })
        );
        for (got, says) in cases {
            let e = got.unwrap_err().to_string();
            assert!(e.contains(says), "{e:?} does not say {says:?}");
        }
    }
}
