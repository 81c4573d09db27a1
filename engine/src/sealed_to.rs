//! Sealing a small message to an account's key: only the holder of the ed25519 key named
//! can open it (a receiver-bound share, an invoice for its payer). The sender draws an
//! ephemeral X25519 key; the recipient's ed25519 public key is mapped to its X25519 form
//! (the birational map to Montgomery u) and its secret to the clamped scalar ed25519 itself
//! signs with (SHA-512 of the seed, low half); the shared secret keys AES-256-GCM through
//! BLAKE3. Layout in docs/formats.md section 20.

use curve25519_dalek_ng::constants::X25519_BASEPOINT;
use curve25519_dalek_ng::edwards::CompressedEdwardsY;
use curve25519_dalek_ng::montgomery::MontgomeryPoint;
use curve25519_dalek_ng::scalar::Scalar;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use zeroize::Zeroize;

/// Version byte of the sealed form.
pub const SEALED_TO_VERSION: u8 = 1;
/// version + recipient + ephemeral key + tag.
pub const SEALED_TO_OVERHEAD: usize = 1 + 32 + 32 + 16;
/// Longest message sealed this way.
pub const SEALED_TO_MAX: usize = 1 << 20;
/// BLAKE3 `derive_key` context of the AES key.
const KEY_CONTEXT: &str = "market.space 2026-12 sealed to a key v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealedToError {
    #[error("sealed message: {0} bytes, shorter than its {SEALED_TO_OVERHEAD}-byte frame")]
    Truncated(usize),
    #[error("sealed message: {0} bytes, more than {SEALED_TO_MAX} of plaintext")]
    TooLong(usize),
    #[error("sealed message: version {0}; this reader knows version {SEALED_TO_VERSION}")]
    Version(u8),
    #[error("{0} is not a valid ed25519 public key")]
    BadRecipient(String),
    #[error("sealed to key {0}, not to this one")]
    NotForThisKey(String),
    #[error("sealed message: it does not open with this key (altered or damaged)")]
    Damaged,
}

fn hex(b: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(b)
}

/// The X25519 (Montgomery u) form of an ed25519 public key; refused if it is not a point
/// of the curve or is of small order (its shared secret would be predictable).
fn montgomery(recipient: &[u8; 32]) -> Result<MontgomeryPoint, SealedToError> {
    let point = CompressedEdwardsY(*recipient)
        .decompress()
        .filter(|p| !p.is_small_order())
        .ok_or_else(|| SealedToError::BadRecipient(hex(recipient)))?;
    Ok(point.to_montgomery())
}

fn clamp(mut b: [u8; 32]) -> Scalar {
    b[0] &= 248;
    b[31] &= 127;
    b[31] |= 64;
    let s = Scalar::from_bits(b);
    b.zeroize();
    s
}

fn aead(shared: &MontgomeryPoint, ephemeral: &[u8; 32], recipient: &[u8; 32]) -> LessSafeKey {
    let mut h = blake3::Hasher::new_derive_key(KEY_CONTEXT);
    h.update(shared.as_bytes());
    h.update(ephemeral);
    h.update(recipient);
    let mut key = *h.finalize().as_bytes();
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("a 32-byte key"));
    key.zeroize();
    k
}

/// Seals `plaintext` to the holder of ed25519 key `recipient`:
/// `version || recipient || ephemeral || AES-256-GCM(plaintext) || tag`. Each call draws a
/// fresh ephemeral key, so each key is used for one message and the nonce is zero.
pub fn seal_to(recipient: &[u8; 32], plaintext: &[u8]) -> Result<Vec<u8>, SealedToError> {
    if plaintext.len() > SEALED_TO_MAX {
        return Err(SealedToError::TooLong(plaintext.len()));
    }
    let u = montgomery(recipient)?;
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    let e = clamp(seed);
    seed.zeroize();
    let ephemeral = (X25519_BASEPOINT * e).to_bytes();
    let shared = u * e;
    let mut out = Vec::with_capacity(plaintext.len() + SEALED_TO_OVERHEAD);
    out.push(SEALED_TO_VERSION);
    out.extend_from_slice(recipient);
    out.extend_from_slice(&ephemeral);
    let mut body = plaintext.to_vec();
    aead(&shared, &ephemeral, recipient)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(&out[..65]),
            &mut body,
        )
        .map_err(|_| SealedToError::Damaged)?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// The recipient key a sealed message names (read before trying to open it).
pub fn sealed_recipient(sealed: &[u8]) -> Result<[u8; 32], SealedToError> {
    if sealed.len() < SEALED_TO_OVERHEAD {
        return Err(SealedToError::Truncated(sealed.len()));
    }
    if sealed[0] != SEALED_TO_VERSION {
        return Err(SealedToError::Version(sealed[0]));
    }
    Ok(sealed[1..33].try_into().expect("32 bytes"))
}

/// Opens a message sealed to the ed25519 key whose 32-byte seed is `seed`.
pub fn open_from(seed: &[u8; 32], sealed: &[u8]) -> Result<Vec<u8>, SealedToError> {
    let recipient = sealed_recipient(sealed)?;
    if sealed.len() - SEALED_TO_OVERHEAD > SEALED_TO_MAX {
        return Err(SealedToError::TooLong(sealed.len() - SEALED_TO_OVERHEAD));
    }
    let mine = ed25519_consensus::SigningKey::from(*seed)
        .verification_key()
        .to_bytes();
    if mine != recipient {
        return Err(SealedToError::NotForThisKey(hex(&recipient)));
    }
    let ephemeral: [u8; 32] = sealed[33..65].try_into().expect("32 bytes");
    let digest = ring::digest::digest(&ring::digest::SHA512, seed);
    let mut low: [u8; 32] = digest.as_ref()[..32].try_into().expect("32 bytes");
    let s = clamp(low);
    low.zeroize();
    let shared = MontgomeryPoint(ephemeral) * s;
    let mut body = sealed[65..].to_vec();
    let plain = aead(&shared, &ephemeral, &recipient)
        .open_in_place(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(&sealed[..65]),
            &mut body,
        )
        .map_err(|_| SealedToError::Damaged)?;
    Ok(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> ([u8; 32], [u8; 32]) {
        let seed = [i; 32];
        let public = ed25519_consensus::SigningKey::from(seed)
            .verification_key()
            .to_bytes();
        (seed, public)
    }

    #[test]
    fn only_the_recipient_opens_it() {
        let (seed, public) = key(1);
        let sealed = seal_to(&public, b"the share key").unwrap();
        assert_eq!(sealed.len(), 13 + SEALED_TO_OVERHEAD);
        assert_eq!(sealed_recipient(&sealed).unwrap(), public);
        assert_eq!(open_from(&seed, &sealed).unwrap(), b"the share key");
        // Two seals of one message differ (fresh ephemeral keys).
        assert_ne!(seal_to(&public, b"the share key").unwrap(), sealed);
        let (other, _) = key(2);
        assert!(matches!(
            open_from(&other, &sealed),
            Err(SealedToError::NotForThisKey(_))
        ));
        assert!(open_from(&seed, &seal_to(&public, b"").unwrap())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn altered_or_malformed_input_is_refused() {
        let (seed, public) = key(3);
        let good = seal_to(&public, b"pay 100 to k").unwrap();
        for i in [0, 1, 40, 70, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 1;
            let e = open_from(&seed, &bad).unwrap_err();
            assert!(
                matches!(
                    e,
                    SealedToError::Damaged
                        | SealedToError::Version(_)
                        | SealedToError::NotForThisKey(_)
                ),
                "byte {i}: {e}"
            );
        }
        assert_eq!(
            open_from(&seed, &good[..20]),
            Err(SealedToError::Truncated(20))
        );
        // A recipient that is no point, or of small order, is refused.
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        not_a_point[31] = 0x80;
        let small = [0u8; 32]; // y = 0: a point of order 4
        for k in [not_a_point, small] {
            assert!(matches!(
                seal_to(&k, b"x"),
                Err(SealedToError::BadRecipient(_))
            ));
        }
        assert!(matches!(
            seal_to(&public, &vec![0; SEALED_TO_MAX + 1]),
            Err(SealedToError::TooLong(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn opening_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = open_from(&[5; 32], &bytes);
        }
    }
}
