//! Signature checks: what the ledger verifies in bulk (transactions, insurers' quotes,
//! proxies' receipts) and single signed messages (market messages, offers, invoices).
//!
//! Keys sign with `ed25519-consensus` (deterministic RFC 8032 signatures, as malachite's
//! validator keys do); the checks run on `ed25519-zebra` 4. Both apply the ZIP-215 rules, so
//! every node agrees on what is valid, one by one or in a batch (the differential test below
//! holds them to it on the edge cases ZIP-215 was written for). `ed25519-zebra` 4 sits on
//! curve25519-dalek 4, which picks its AVX2 backend at run time where the CPU has it, where
//! `ed25519-consensus` runs curve25519-dalek-ng's serial code: the figures are in
//! docs/BENCHMARKS.md ("Signatures").

use std::cell::RefCell;
use std::collections::HashSet;

use curve25519_dalek::edwards::CompressedEdwardsY;
use rand_core::SeedableRng;

/// How many usable keys each thread remembers (32 bytes each, about 2 MiB with the table);
/// the set starts over when full.
const KNOWN_KEYS_MAX: usize = 1 << 16;

thread_local! {
    static KNOWN_KEYS: RefCell<HashSet<[u8; 32]>> = RefCell::new(HashSet::new());
}

/// Whether `key` may sign: a point of the curve that is not of small order. ZIP-215
/// verification accepts small-order keys, and for those anyone can forge a signature (pick
/// s, let R = sB): an account whose key is, say, all zeros would be anyone's. The answer
/// for a usable key is remembered by the thread, so an account that signs often is
/// decompressed once (the check costs about a fifth of a signature's).
pub fn usable_key(key: &[u8; 32]) -> bool {
    KNOWN_KEYS.with(|known| {
        if known.borrow().contains(key) {
            return true;
        }
        let usable = CompressedEdwardsY(*key)
            .decompress()
            .is_some_and(|p| !p.is_small_order());
        if usable {
            let mut known = known.borrow_mut();
            if known.len() >= KNOWN_KEYS_MAX {
                known.clear();
            }
            known.insert(*key);
        }
        usable
    })
}

/// One signature under ZIP-215 rules. The key's usability is [`usable_key`]'s business.
pub fn verify(key: &[u8; 32], signature: &[u8; 64], message: &[u8]) -> bool {
    ed25519_zebra::VerificationKey::try_from(*key).is_ok_and(|vk| {
        vk.verify(&ed25519_zebra::Signature::from_bytes(signature), message)
            .is_ok()
    })
}

/// Whether `key` may sign ([`usable_key`]) and signed `message` with `signature`: the
/// check for a single signed message whose author is named by its key.
pub fn signed_by(key: &[u8; 32], signature: &[u8; 64], message: &[u8]) -> bool {
    usable_key(key) && verify(key, signature, message)
}

/// Many signatures checked at once: several times cheaper per signature than one by one
/// (and cheaper still when one key signed several), all or nothing.
#[derive(Default)]
pub struct Batch(ed25519_zebra::batch::Verifier);

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sig::Batch")
    }
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds one signature; the message is hashed now and not kept.
    pub fn queue(&mut self, key: &[u8; 32], signature: &[u8; 64], message: &[u8]) {
        self.0.queue((
            ed25519_zebra::VerificationKeyBytes::from(*key),
            ed25519_zebra::Signature::from_bytes(signature),
            message,
        ));
    }

    /// Whether every queued signature is valid. The equations are weighted by a stream
    /// seeded once per batch from the operating system (a syscall per batch rather than per
    /// signature); the weights need only be unpredictable to whoever made the signatures.
    pub fn verify(self) -> bool {
        let rng = rand_chacha::ChaCha20Rng::from_entropy();
        self.0.verify(rng).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::EIGHT_TORSION;
    use ed25519_consensus::SigningKey;

    /// What ed25519-consensus (the signer's library, and the checks before this module) says.
    fn consensus_says(key: &[u8; 32], signature: &[u8; 64], message: &[u8]) -> bool {
        ed25519_consensus::VerificationKey::try_from(*key).is_ok_and(|vk| {
            vk.verify(&ed25519_consensus::Signature::from(*signature), message)
                .is_ok()
        })
    }

    fn batch_says(key: &[u8; 32], signature: &[u8; 64], message: &[u8]) -> bool {
        let mut b = Batch::new();
        b.queue(key, signature, message);
        b.verify()
    }

    /// Every encoding of a small-order point, canonical or not (y >= p is possible for
    /// y = 0 and y = 1 only, with either sign bit): the points ZIP-215's test vectors are
    /// made of.
    fn small_order_encodings() -> Vec<[u8; 32]> {
        let mut out: Vec<[u8; 32]> = EIGHT_TORSION
            .iter()
            .map(|p| p.compress().to_bytes())
            .collect();
        // p = 2^255 - 19, little-endian.
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        for y in [0u8, 1] {
            let mut e = p;
            e[0] += y;
            out.push(e);
            e[31] |= 0x80;
            out.push(e);
        }
        for e in out.clone() {
            let mut flipped = e;
            flipped[31] ^= 0x80;
            out.push(flipped);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    #[test]
    fn agrees_with_ed25519_consensus_on_the_zip215_edge_cases() {
        let message = b"Zcash";
        let encodings = small_order_encodings();
        assert!(encodings.len() >= 14, "{}", encodings.len());
        let mut valid = 0;
        for a in &encodings {
            for r in &encodings {
                // s = 0: valid under ZIP-215 exactly when [8]R + [8k]A is the identity,
                // which small-order A and R always give where they decode.
                let mut sig = [0u8; 64];
                sig[..32].copy_from_slice(r);
                let expected = consensus_says(a, &sig, message);
                assert_eq!(verify(a, &sig, message), expected, "A {a:02x?} R {r:02x?}");
                assert_eq!(
                    batch_says(a, &sig, message),
                    expected,
                    "A {a:02x?} R {r:02x?}"
                );
                valid += usize::from(expected);
                // A non-canonical s (s + l) is refused by both.
                let mut big_s = sig;
                big_s[32..].copy_from_slice(&[
                    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde,
                    0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
                ]);
                assert!(!consensus_says(a, &big_s, message));
                assert!(!verify(a, &big_s, message));
                assert!(!batch_says(a, &big_s, message));
            }
            // None of them may sign for an account.
            assert!(!usable_key(a), "{a:02x?}");
        }
        assert!(
            valid > 0,
            "the cases exercise acceptance as well as refusal"
        );
    }

    #[test]
    fn agrees_with_ed25519_consensus_on_real_and_altered_signatures() {
        let keys: Vec<SigningKey> = (1..=20u8).map(|i| SigningKey::from([i; 32])).collect();
        let mut messages = (0..20u8).map(|i| vec![i; usize::from(i) * 7]);
        let mut batch = Batch::new();
        for (i, k) in keys.iter().enumerate() {
            let key = k.verification_key().to_bytes();
            let message = messages.next().expect("one per key");
            let sig = k.sign(&message).to_bytes();
            assert!(
                usable_key(&key) && usable_key(&key),
                "and again from the cache"
            );
            assert!(consensus_says(&key, &sig, &message));
            assert!(verify(&key, &sig, &message));
            batch.queue(&key, &sig, &message);
            for at in [0, 31, 32, 63] {
                let mut bad = sig;
                bad[at] ^= 1;
                assert_eq!(
                    verify(&key, &bad, &message),
                    consensus_says(&key, &bad, &message)
                );
                assert!(!verify(&key, &bad, &message));
                assert!(!batch_says(&key, &bad, &message));
            }
            let other = keys[(i + 1) % keys.len()].verification_key().to_bytes();
            assert!(!verify(&other, &sig, &message));
        }
        assert!(batch.verify());
    }

    #[test]
    fn off_curve_keys_are_not_usable() {
        let mut y2 = [0u8; 32];
        y2[0] = 2;
        assert!(!usable_key(&y2));
        assert!(!verify(&y2, &[0; 64], b""));
    }
}
