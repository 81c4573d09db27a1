//! A host's signed storage offer (the seed's table 2, message #2): the terms on which it
//! would store a sender's data, signed with the host's key so that a sender (or an exchange
//! passing it on) can show what the host promised. Layout in `docs/formats.md` section 16.
//!
//! A client accepts an offer only through [`SignedOffer::check`]: signed by the host it
//! asked, for the chain it uses, not expired, covering the bytes and days it wants.

use ed25519_consensus::SigningKey;

use crate::decode::{DecodeError, Reader};
use crate::sig;
use crate::tx::{AccountId, Broker, COMMISSION_PERMILLE_MAX};

pub const OFFER_MAGIC: &[u8; 4] = b"MSOF";
/// Version 2 added the exchange and its commission; version 1 offers are refused.
pub const OFFER_VERSION: u8 = 2;
/// Bytes of an encoded offer: the fields, then the signature.
pub const OFFER_BYTES: usize = 4 + 1 + 8 + 32 + 16 + 8 * 6 + 32 + 2 + 64;
/// Domain separation: nothing else a host signs can be an offer.
const SIGNING_CONTEXT: &[u8] = b"market.space 2026-12 storage offer v1\0";
const WHAT: &str = "storage offer";

/// The terms a host offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    pub chain_id: u64,
    /// The host's ed25519 key: its account on the chain.
    pub host: [u8; 32],
    /// Random: names this offer (a payment will cite it, so it is used once).
    pub id: [u8; 16],
    /// MASPC base units per GiB per day.
    pub price_per_gib_day: u64,
    /// Blocks between two storage proofs the host will answer.
    pub proof_period_blocks: u64,
    /// Longest storage the host takes, in days.
    pub max_days: u64,
    /// Most bytes the host takes under this offer.
    pub bytes_max: u64,
    /// The host's deposit on the chain when it made the offer (MASP): what a slashing takes
    /// from.
    pub deposit: u64,
    /// The offer is void after this Unix second.
    pub expiry_unix_secs: u64,
    /// The exchange the sender was matched through and the commission the host pays it:
    /// the payment must name exactly this (`crate::tx::TxBody::UploadPayment`). Encoded as
    /// the exchange's key (32 zero bytes: none) and the commission in thousandths.
    pub broker: Option<Broker>,
}

/// An offer and the host's signature over it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedOffer {
    pub offer: Offer,
    signature: [u8; 64],
}

/// Why an offer is refused. Each names what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    #[error("not a storage offer: {0}")]
    Malformed(String),
    #[error("the offer's signature does not verify: it was altered or not made by its host")]
    Forged,
    #[error("the offer was made by another host (key {0})")]
    OtherHost(String),
    #[error("the offer is for chain {found}, this client uses chain {expected}")]
    OtherChain { expected: u64, found: u64 },
    #[error("the offer expired at {expiry} (Unix seconds; now {now}): ask for a new one")]
    Expired { expiry: u64, now: u64 },
    #[error("the offer covers {offered} bytes and {days} days; {asked_bytes} bytes for {asked_days} days were asked")]
    TooSmall {
        offered: u64,
        days: u64,
        asked_bytes: u64,
        asked_days: u64,
    },
}

impl From<DecodeError> for OfferError {
    fn from(e: DecodeError) -> Self {
        OfferError::Malformed(e.to_string())
    }
}

impl Offer {
    /// The fields as encoded, without the signature.
    fn body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(OFFER_BYTES);
        b.extend_from_slice(OFFER_MAGIC);
        b.push(OFFER_VERSION);
        b.extend_from_slice(&self.chain_id.to_le_bytes());
        b.extend_from_slice(&self.host);
        b.extend_from_slice(&self.id);
        for v in [
            self.price_per_gib_day,
            self.proof_period_blocks,
            self.max_days,
            self.bytes_max,
            self.deposit,
            self.expiry_unix_secs,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let (exchange, commission) = self
            .broker
            .map_or(([0; 32], 0), |x| (x.exchange.0, x.commission_permille));
        assert!(
            exchange != [0; 32] || self.broker.is_none(),
            "no exchange has the all-zero key"
        );
        assert!(
            commission <= COMMISSION_PERMILLE_MAX,
            "a commission is at most all"
        );
        b.extend_from_slice(&exchange);
        b.extend_from_slice(&commission.to_le_bytes());
        b
    }

    fn message(body: &[u8]) -> Vec<u8> {
        [SIGNING_CONTEXT, body].concat()
    }

    /// Signs the offer with `key`, which must be the host's.
    pub fn sign(self, key: &SigningKey) -> SignedOffer {
        assert_eq!(
            key.verification_key().to_bytes(),
            self.host,
            "an offer is signed by its host"
        );
        let signature = key.sign(&Self::message(&self.body())).to_bytes();
        SignedOffer {
            offer: self,
            signature,
        }
    }
}

impl SignedOffer {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = self.offer.body();
        b.extend_from_slice(&self.signature);
        debug_assert_eq!(b.len(), OFFER_BYTES);
        b
    }

    /// Decodes an offer; the signature is checked by [`SignedOffer::check`].
    pub fn from_bytes(bytes: &[u8]) -> Result<SignedOffer, DecodeError> {
        let mut r = Reader::new(WHAT, bytes);
        r.magic(OFFER_MAGIC)?;
        r.version(OFFER_VERSION)?;
        let chain_id = r.u64("chain_id")?;
        let host = r.array("host")?;
        let id = r.array("id")?;
        let price_per_gib_day = r.u64("price_per_gib_day")?;
        let proof_period_blocks = r.u64("proof_period_blocks")?;
        if proof_period_blocks == 0 {
            return Err(r.invalid("proof_period_blocks", "0: a period has at least one block"));
        }
        let max_days = r.u64("max_days")?;
        let bytes_max = r.u64("bytes_max")?;
        let deposit = r.u64("deposit")?;
        let expiry_unix_secs = r.u64("expiry_unix_secs")?;
        let exchange: [u8; 32] = r.array("exchange")?;
        let commission_permille = r.u16("commission_permille")?;
        let broker = if exchange == [0; 32] {
            if commission_permille != 0 {
                return Err(r.invalid("commission_permille", "must be 0 when no exchange is named"));
            }
            None
        } else if commission_permille > COMMISSION_PERMILLE_MAX {
            return Err(r.invalid(
                "commission_permille",
                format!("{commission_permille} is over {COMMISSION_PERMILLE_MAX} (all of the fee)"),
            ));
        } else {
            Some(Broker {
                exchange: AccountId(exchange),
                commission_permille,
            })
        };
        let signature = r.array("signature")?;
        r.finish()?;
        Ok(SignedOffer {
            offer: Offer {
                chain_id,
                host,
                id,
                price_per_gib_day,
                proof_period_blocks,
                max_days,
                bytes_max,
                deposit,
                expiry_unix_secs,
                broker,
            },
            signature,
        })
    }

    /// Accepts the offer only if `host` signed it, for `chain_id`, before `now`, for at
    /// least `bytes` and `days`.
    pub fn check(
        &self,
        host: &[u8; 32],
        chain_id: u64,
        now_unix_secs: u64,
        bytes: u64,
        days: u64,
    ) -> Result<&Offer, OfferError> {
        let o = &self.offer;
        if o.host != *host {
            return Err(OfferError::OtherHost(hex(&o.host)));
        }
        let message = Offer::message(&o.body());
        if !sig::signed_by(&o.host, &self.signature, &message) {
            return Err(OfferError::Forged);
        }
        if o.chain_id != chain_id {
            return Err(OfferError::OtherChain {
                expected: chain_id,
                found: o.chain_id,
            });
        }
        if now_unix_secs >= o.expiry_unix_secs {
            return Err(OfferError::Expired {
                expiry: o.expiry_unix_secs,
                now: now_unix_secs,
            });
        }
        if bytes > o.bytes_max || days > o.max_days {
            return Err(OfferError::TooSmall {
                offered: o.bytes_max,
                days: o.max_days,
                asked_bytes: bytes,
                asked_days: days,
            });
        }
        Ok(o)
    }
}

fn hex(b: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn host() -> SigningKey {
        SigningKey::from([5u8; 32])
    }

    fn offer() -> Offer {
        Offer {
            chain_id: 9,
            host: host().verification_key().to_bytes(),
            id: [1; 16],
            price_per_gib_day: 10,
            proof_period_blocks: 100,
            max_days: 365,
            bytes_max: 1 << 40,
            deposit: 1500,
            expiry_unix_secs: 1_000,
            broker: Some(Broker {
                exchange: AccountId([3; 32]),
                commission_permille: 20,
            }),
        }
    }

    #[test]
    fn an_offer_round_trips_and_checks_only_as_signed() {
        let s = offer().sign(&host());
        let bytes = s.to_bytes();
        assert_eq!(bytes.len(), OFFER_BYTES);
        let back = SignedOffer::from_bytes(&bytes).unwrap();
        assert_eq!(back, s);
        let me = offer().host;
        assert_eq!(back.check(&me, 9, 999, 1 << 30, 30).unwrap(), &offer());
        // Each way a client refuses it, named.
        let cases: Vec<(Result<&Offer, OfferError>, &str)> = vec![
            (back.check(&[7; 32], 9, 999, 1, 1), "another host"),
            (back.check(&me, 8, 999, 1, 1), "chain 9"),
            (back.check(&me, 9, 1_000, 1, 1), "expired"),
            (back.check(&me, 9, 999, 1 << 41, 1), "covers"),
            (back.check(&me, 9, 999, 1, 366), "covers"),
        ];
        for (r, want) in cases {
            let e = r.unwrap_err().to_string();
            assert!(e.contains(want), "{e} (wanted {want:?})");
        }
        // A raised price, or any other changed byte, no longer verifies.
        for at in [13, 61, 69, OFFER_BYTES - 1] {
            let mut forged = bytes.clone();
            forged[at] ^= 1;
            let f = SignedOffer::from_bytes(&forged).unwrap();
            let r = f.check(&f.offer.host, f.offer.chain_id, 0, 0, 0);
            assert!(matches!(r, Err(OfferError::Forged)), "byte {at}: {r:?}");
        }
    }

    #[test]
    fn malformed_offers_are_refused_with_the_field_named() {
        let good = offer().sign(&host()).to_bytes();
        for cut in [0, 3, 4, 5, 44, OFFER_BYTES - 1] {
            assert!(
                SignedOffer::from_bytes(&good[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut long = good.clone();
        long.push(0);
        assert!(SignedOffer::from_bytes(&long).is_err());
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(SignedOffer::from_bytes(&magic).is_err());
        let mut version = good.clone();
        version[4] = 1;
        assert!(SignedOffer::from_bytes(&version).is_err());
        // The broker: none is all-zero with no commission; a commission is at most 1000.
        let at = 4 + 1 + 8 + 32 + 16 + 48;
        let mut none = good.clone();
        none[at..at + 32].fill(0);
        let e = SignedOffer::from_bytes(&none).unwrap_err().to_string();
        assert!(e.contains("no exchange"), "{e}");
        none[at + 32..at + 34].fill(0);
        assert_eq!(SignedOffer::from_bytes(&none).unwrap().offer.broker, None);
        let mut over = good.clone();
        over[at + 32..at + 34].copy_from_slice(&1001u16.to_le_bytes());
        let e = SignedOffer::from_bytes(&over).unwrap_err().to_string();
        assert!(e.contains("commission_permille"), "{e}");
        let mut period = good.clone();
        period[69..77].copy_from_slice(&0u64.to_le_bytes());
        let e = SignedOffer::from_bytes(&period).unwrap_err().to_string();
        assert!(e.contains("proof_period_blocks"), "{e}");
    }
}
