//! Signature checks: what the ledger verifies in bulk (transactions, insurers' quotes,
//! proxies' receipts) and single signed messages (market messages, offers, invoices).
//!
//! Keys sign with `ed25519-consensus` (deterministic RFC 8032 signatures, as malachite's
//! validator keys do); the checks are ZIP-215's equations written here on curve25519-dalek
//! 4 (as ed25519-zebra 4 writes them), so that a signer's key is decompressed once per
//! thread rather than at every check. Both apply the ZIP-215 rules, so every node agrees on
//! what is valid, one by one or in a batch (the differential tests below hold them to it on
//! the edge cases ZIP-215 was written for). curve25519-dalek 4 picks its AVX2 backend at run
//! time where the CPU has it, where `ed25519-consensus` runs curve25519-dalek-ng's serial
//! code: the figures are in docs/BENCHMARKS.md ("Signatures").

use std::cell::RefCell;
use std::collections::HashMap;

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha512};

/// How many usable keys each thread keeps decompressed: 32 bytes of key and 160 of point,
/// about 4 MiB with the table's overhead at most. The table starts over when full.
const KNOWN_KEYS_MAX: usize = 1 << 14;

thread_local! {
    /// Usable keys (see [`usable_key`]) as the points they decompress to, so that a key
    /// which signs often costs its decompression (about a fifth of a signature's check)
    /// once per thread: for the signer check and again for every batch it appears in.
    static KNOWN_KEYS: RefCell<HashMap<[u8; 32], EdwardsPoint>> = RefCell::new(HashMap::new());
}

/// `key` decompressed, and whether it is usable (not of small order): from the thread's
/// table if it is there, else decompressed now and, if usable, added to it. `None` if the
/// bytes are no point of the curve.
fn lookup(key: &[u8; 32]) -> Option<(EdwardsPoint, bool)> {
    if let Some(p) = KNOWN_KEYS.with(|known| known.borrow().get(key).copied()) {
        return Some((p, true));
    }
    let p = CompressedEdwardsY(*key).decompress()?;
    let usable = !p.is_small_order();
    if usable {
        KNOWN_KEYS.with(|known| {
            let mut known = known.borrow_mut();
            if known.len() >= KNOWN_KEYS_MAX {
                known.clear();
            }
            known.insert(*key, p);
        });
    }
    Some((p, usable))
}

/// Whether `key` may sign: a point of the curve that is not of small order. ZIP-215
/// verification accepts small-order keys, and for those anyone can forge a signature (pick
/// s, let R = sB): an account whose key is, say, all zeros would be anyone's. A usable key
/// is remembered by the thread, decompressed (see [`KNOWN_KEYS`]).
pub fn usable_key(key: &[u8; 32]) -> bool {
    // A known key answers without copying its point out of the table.
    KNOWN_KEYS.with(|known| known.borrow().contains_key(key))
        || lookup(key).is_some_and(|(_, usable)| usable)
}

/// A signature's two halves: R's encoding, and s as a scalar if it is canonical (below l),
/// as ZIP-215 requires.
fn halves(signature: &[u8; 64]) -> ([u8; 32], Option<Scalar>) {
    let mut r = [0u8; 32];
    r.copy_from_slice(&signature[..32]);
    let mut s = [0u8; 32];
    s.copy_from_slice(&signature[32..]);
    (r, Scalar::from_canonical_bytes(s).into())
}

/// One signature under ZIP-215 rules: s canonical (below l), A and R any encoding of a
/// point (canonical or not, small order included), and [8]([s]B - [k]A - R) the identity
/// where k = SHA-512(R || A || message) mod l over the bytes as sent. A known key's point
/// comes from the thread's table ([`KNOWN_KEYS`]). The key's usability is [`usable_key`]'s
/// business.
pub fn verify(key: &[u8; 32], signature: &[u8; 64], message: &[u8]) -> bool {
    let Some((a, _)) = lookup(key) else {
        return false;
    };
    let (r_bytes, s) = halves(signature);
    let (Some(r), Some(s)) = (CompressedEdwardsY(r_bytes).decompress(), s) else {
        return false;
    };
    let k = challenge(&r_bytes, key, message);
    (EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &-a, &s) - r)
        .mul_by_cofactor()
        .is_identity()
}

/// k = SHA-512(R || A || message) mod l.
fn challenge(r: &[u8; 32], key: &[u8; 32], message: &[u8]) -> Scalar {
    Scalar::from_hash(
        Sha512::new()
            .chain_update(r)
            .chain_update(key)
            .chain_update(message),
    )
}

/// Whether `key` may sign ([`usable_key`]) and signed `message` with `signature`: the
/// check for a single signed message whose author is named by its key.
pub fn signed_by(key: &[u8; 32], signature: &[u8; 64], message: &[u8]) -> bool {
    usable_key(key) && verify(key, signature, message)
}

/// One queued signature: its challenge `k` = SHA-512(R || A || message) mod l, its R as
/// sent, its s if canonical (a batch with one that is not fails when verified).
struct Queued {
    k: Scalar,
    r: [u8; 32],
    s: Option<Scalar>,
}

/// Many signatures checked at once: several times cheaper per signature than one by one
/// (and cheaper still when one key signed several), all or nothing.
///
/// The batch equation is ZIP-215's, as ed25519-zebra's batch verifier writes it: with
/// random 128-bit weights z_i, the signatures are all valid (barring a chance of 2^-128)
/// exactly when
///
/// ```text
/// [8] ( [-sum z_i s_i] B + sum_A [sum_{i by A} z_i k_i] A + sum_i [z_i] R_i ) = identity
/// ```
///
/// where every s_i must be canonical (below l), every A and R_i must decompress (any
/// encoding, canonical or not, small order included), and k_i = SHA-512(R_i || A || M_i)
/// over the bytes as sent. It is written here rather than taken from ed25519-zebra so that
/// each A comes decompressed from the thread's table of known keys ([`KNOWN_KEYS`]): an
/// account that signs in block after block is decompressed once, not in every batch (the
/// differential tests below hold it to ed25519-consensus's answers).
#[derive(Default)]
pub struct Batch {
    by_key: HashMap<[u8; 32], Vec<Queued>>,
    len: usize,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sig::Batch({} signatures)", self.len)
    }
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds one signature; the message is hashed now and not kept.
    pub fn queue(&mut self, key: &[u8; 32], signature: &[u8; 64], message: &[u8]) {
        let (r, s) = halves(signature);
        let k = challenge(&r, key, message);
        self.by_key
            .entry(*key)
            .or_default()
            .push(Queued { k, r, s });
        self.len += 1;
    }

    /// Whether every queued signature is valid. The equations are weighted by a stream
    /// seeded once per batch from the operating system (a syscall per batch rather than per
    /// signature); the weights need only be unpredictable to whoever made the signatures.
    pub fn verify(self) -> bool {
        let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
        let mut scalars = Vec::with_capacity(1 + self.by_key.len() + self.len);
        let mut points = Vec::with_capacity(scalars.capacity());
        scalars.push(Scalar::ZERO);
        points.push(curve25519_dalek::constants::ED25519_BASEPOINT_POINT);
        let mut b = Scalar::ZERO;
        for (key, queued) in &self.by_key {
            let Some((a, _)) = lookup(key) else {
                return false;
            };
            let mut a_weight = Scalar::ZERO;
            for q in queued {
                let (Some(r), Some(s)) = (CompressedEdwardsY(q.r).decompress(), q.s) else {
                    return false;
                };
                let mut z = [0u8; 32];
                rng.fill_bytes(&mut z[..16]);
                let z = Scalar::from_bytes_mod_order(z);
                b -= z * s;
                a_weight += z * q.k;
                scalars.push(z);
                points.push(r);
            }
            scalars.push(a_weight);
            points.push(a);
        }
        scalars[0] = b;
        EdwardsPoint::vartime_multiscalar_mul(&scalars, &points)
            .mul_by_cofactor()
            .is_identity()
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

    /// A key's terms coalesce in a batch, and its point comes from the thread's table once
    /// seen: the same answers whether the key is new to the thread or known, for valid
    /// signatures and for one altered among several by the same key.
    #[test]
    fn batches_agree_whether_the_keys_are_new_or_known() {
        let keys: Vec<SigningKey> = (0..6u8).map(|i| SigningKey::from([0xA0 + i; 32])).collect();
        let signed: Vec<([u8; 32], [u8; 64], Vec<u8>)> = (0..30u8)
            .map(|i| {
                let k = &keys[usize::from(i) % keys.len()];
                let message = vec![i; 40 + usize::from(i)];
                (
                    k.verification_key().to_bytes(),
                    k.sign(&message).to_bytes(),
                    message,
                )
            })
            .collect();
        let batch = |altered: Option<usize>| {
            let mut b = Batch::new();
            for (i, (key, sig, message)) in signed.iter().enumerate() {
                let mut sig = *sig;
                if altered == Some(i) {
                    sig[40] ^= 0x10;
                }
                b.queue(key, &sig, message);
            }
            b.verify()
        };
        let known = |key: &[u8; 32]| KNOWN_KEYS.with(|k| k.borrow().contains_key(key));
        assert!(
            signed.iter().all(|(key, _, _)| !known(key)),
            "new to this thread"
        );
        // A bad signature among a key's several, before any key is known.
        assert!(!batch(Some(7)));
        assert!(batch(None));
        assert!(
            signed.iter().all(|(key, _, _)| known(key)),
            "a batch remembers them"
        );
        for altered in [0, 7, 29] {
            assert!(!batch(Some(altered)), "altered {altered}, keys known");
        }
        assert!(batch(None));
        // A signature made by another key than the one it is queued under.
        let mut b = Batch::new();
        b.queue(&signed[1].0, &signed[0].1, &signed[0].2);
        assert!(!b.verify());
        assert!(Batch::new().verify(), "nothing queued, nothing wrong");
    }

    #[test]
    fn off_curve_keys_are_not_usable() {
        let mut y2 = [0u8; 32];
        y2[0] = 2;
        assert!(!usable_key(&y2));
        assert!(!verify(&y2, &[0; 64], b""));
    }
}
