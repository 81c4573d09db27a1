//! A proxy receipt: a client's signed statement of the bytes one proxy relayed for it in one
//! session, at the price the proxy stated, payable to that proxy's key on one chain. The
//! proxy checks it against its own count and keeps it; the chain pays it once, from the
//! client's proxy allowance (`TxBody::RedeemReceipts`). `docs/wire.md` section 2 and
//! `docs/formats.md` section 6.

use ed25519_consensus::SigningKey;

use crate::decode::{DecodeError, Reader};
use crate::tx::AccountId;

/// Domain separation of a receipt's signature.
pub const RECEIPT_CONTEXT: &[u8] = b"market.space 2026-12 proxy receipt v2\0";
/// Bytes of an encoded receipt.
pub const RECEIPT_BYTES: usize = 8 + 32 + 32 + 16 + 8 + 8 + 8 + 8 + 64;
/// How long a client makes its receipts redeemable: the proxy has this long to be paid.
pub const RECEIPT_LIFE_SECS: u64 = 7 * 24 * 3600;
/// Bytes per GiB: the price is per GiB relayed, both ways together.
const GIB: u128 = 1 << 30;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyReceipt {
    /// The chain the proxy is paid on.
    pub chain_id: u64,
    /// The proxy's key: the only account that can redeem it.
    pub proxy: AccountId,
    /// The client's key: the signer, whose allowance pays.
    pub client: AccountId,
    /// The session's id, from the proxy's `ProxyReady`.
    pub session: [u8; 16],
    /// Bytes from the client towards the host, and back, after the proxy's `ProxyReady`.
    pub up_bytes: u64,
    pub down_bytes: u64,
    /// MASPC per GiB relayed, as the proxy stated it.
    pub price_per_gib: u64,
    /// Redeemable until this Unix second (the block's time).
    pub expiry_unix_secs: u64,
    pub signature: [u8; 64],
}

/// What a receipt states, before the client signs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Relayed {
    pub chain_id: u64,
    pub proxy: AccountId,
    pub session: [u8; 16],
    pub up_bytes: u64,
    pub down_bytes: u64,
    pub price_per_gib: u64,
    pub expiry_unix_secs: u64,
}

impl ProxyReceipt {
    /// Every field but the signature, in encoding order.
    fn body(r: &Relayed, client: &AccountId) -> Vec<u8> {
        let mut m = Vec::with_capacity(RECEIPT_BYTES - 64);
        m.extend_from_slice(&r.chain_id.to_le_bytes());
        m.extend_from_slice(&r.proxy.0);
        m.extend_from_slice(&client.0);
        m.extend_from_slice(&r.session);
        for v in [
            r.up_bytes,
            r.down_bytes,
            r.price_per_gib,
            r.expiry_unix_secs,
        ] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m
    }

    fn relayed(&self) -> Relayed {
        Relayed {
            chain_id: self.chain_id,
            proxy: self.proxy,
            session: self.session,
            up_bytes: self.up_bytes,
            down_bytes: self.down_bytes,
            price_per_gib: self.price_per_gib,
            expiry_unix_secs: self.expiry_unix_secs,
        }
    }

    /// The client's receipt for `r`.
    pub fn sign(key: &SigningKey, r: &Relayed) -> ProxyReceipt {
        let client = AccountId(key.verification_key().to_bytes());
        let m = [RECEIPT_CONTEXT, &Self::body(r, &client)].concat();
        ProxyReceipt {
            chain_id: r.chain_id,
            proxy: r.proxy,
            client,
            session: r.session,
            up_bytes: r.up_bytes,
            down_bytes: r.down_bytes,
            price_per_gib: r.price_per_gib,
            expiry_unix_secs: r.expiry_unix_secs,
            signature: key.sign(&m).to_bytes(),
        }
    }

    /// Whether the client signed it (and its key is usable).
    pub fn verify(&self) -> bool {
        crate::sig::signed_by(&self.client.0, &self.signature, &self.message())
    }

    /// The message the client signs.
    fn message(&self) -> Vec<u8> {
        [RECEIPT_CONTEXT, &Self::body(&self.relayed(), &self.client)].concat()
    }

    /// MASPC owed: ceil((up + down) x price_per_gib / 2^30), at most `u64::MAX`.
    pub fn amount(&self) -> u64 {
        let bytes = u128::from(self.up_bytes) + u128::from(self.down_bytes);
        bytes
            .checked_mul(u128::from(self.price_per_gib))
            .and_then(|b| u64::try_from(b.div_ceil(GIB)).ok())
            .unwrap_or(u64::MAX)
    }

    /// Appends the [`RECEIPT_BYTES`] encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&Self::body(&self.relayed(), &self.client));
        out.extend_from_slice(&self.signature);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECEIPT_BYTES);
        self.encode(&mut out);
        out
    }

    /// Reads one receipt (the signature is not checked here: [`ProxyReceipt::verify`]).
    pub fn read(r: &mut Reader<'_>) -> Result<ProxyReceipt, DecodeError> {
        Ok(ProxyReceipt {
            chain_id: r.u64("chain_id")?,
            proxy: AccountId(r.array("proxy")?),
            client: AccountId(r.array("client")?),
            session: r.array("session")?,
            up_bytes: r.u64("up_bytes")?,
            down_bytes: r.u64("down_bytes")?,
            price_per_gib: r.u64("price_per_gib")?,
            expiry_unix_secs: r.u64("expiry")?,
            signature: r.array("signature")?,
        })
    }

    /// Decodes exactly one receipt (a proxy's receipt file).
    pub fn from_bytes(bytes: &[u8]) -> Result<ProxyReceipt, DecodeError> {
        let mut r = Reader::new("proxy receipt", bytes);
        let receipt = Self::read(&mut r)?;
        r.finish()?;
        Ok(receipt)
    }
}

/// Whether every receipt's client signed it, checked as one batch (ed25519 batch
/// verification, several times cheaper per signature than one by one); `false` if any
/// does not verify (find which with [`ProxyReceipt::verify`]).
pub fn verify_all(receipts: &[ProxyReceipt]) -> bool {
    if receipts
        .iter()
        .any(|r| crate::tx::check_signer(&r.client).is_err())
    {
        return false;
    }
    let mut batch = crate::sig::Batch::new();
    for r in receipts {
        batch.queue(&r.client.0, &r.signature, &r.message());
    }
    batch.verify()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn relayed() -> Relayed {
        Relayed {
            chain_id: 3,
            proxy: AccountId(SigningKey::from([2; 32]).verification_key().to_bytes()),
            session: [5; 16],
            up_bytes: 1 << 30,
            down_bytes: 1,
            price_per_gib: 10,
            expiry_unix_secs: 99,
        }
    }

    #[test]
    fn a_receipt_round_trips_verifies_and_prices_per_started_gib() {
        let r = ProxyReceipt::sign(&SigningKey::from([1; 32]), &relayed());
        assert!(r.verify());
        let bytes = r.to_bytes();
        assert_eq!(bytes.len(), RECEIPT_BYTES);
        assert_eq!(ProxyReceipt::from_bytes(&bytes).unwrap(), r);
        // One GiB and one byte at 10 per GiB: 10.000..01, rounded up.
        assert_eq!(r.amount(), 11);
        let huge = ProxyReceipt {
            up_bytes: u64::MAX,
            down_bytes: u64::MAX,
            price_per_gib: u64::MAX,
            ..r.clone()
        };
        assert_eq!(huge.amount(), u64::MAX);
    }

    #[test]
    fn altered_truncated_or_padded_receipts_are_refused() {
        let r = ProxyReceipt::sign(&SigningKey::from([1; 32]), &relayed());
        // Every field is signed: changing any byte before the signature breaks it.
        let bytes = r.to_bytes();
        for i in [0, 8, 40, 72, 88, 96, 104, 112] {
            let mut b = bytes.clone();
            b[i] ^= 1;
            let altered = ProxyReceipt::from_bytes(&b).unwrap();
            assert!(!altered.verify(), "byte {i}");
        }
        let err = ProxyReceipt::from_bytes(&bytes[..RECEIPT_BYTES - 1]).unwrap_err();
        assert!(err.to_string().contains("signature"), "{err}");
        let mut long = bytes.clone();
        long.push(0);
        assert!(ProxyReceipt::from_bytes(&long).is_err());
        // A client key that is not a point does not verify (nor panic).
        let mut bad = r.clone();
        bad.client = AccountId([0xff; 32]);
        assert!(!bad.verify());
        // Checked as a batch: all good, or not.
        let other = ProxyReceipt::sign(&SigningKey::from([3; 32]), &relayed());
        assert!(verify_all(&[r.clone(), other.clone()]));
        let mut altered = other;
        altered.up_bytes += 1;
        assert!(!verify_all(&[r.clone(), altered]));
        assert!(!verify_all(&[r, bad]));
    }
}
