//! The one binary encoding of what replicas keep on disk and send each other (Raft log
//! entries, votes, snapshots, replica RPCs' bodies): bincode 1 with fixed-width integers,
//! little-endian, no trailing bytes, at most [`DECODE_MAX`] bytes. `docs/formats.md`
//! section 25 writes it out byte by byte.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest value decoded (a snapshot of a busy exchange's state is the largest).
pub const DECODE_MAX: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct CodecError {
    what: &'static str,
    reason: String,
}

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
}

/// # Panics
/// Never for the exchange's types (plain data, no serializer of their own that fails).
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    options().serialize(v).expect("an exchange value encodes")
}

/// Decodes `what` from `bytes`: every byte used, nothing malformed, nothing too large, and
/// in the one encoding of the value (maps and sets in key order, no key twice), so that two
/// replicas' bytes of one value are the same bytes.
pub fn decode<T: DeserializeOwned + Serialize>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, CodecError> {
    let v: T = options()
        .with_limit(DECODE_MAX)
        .deserialize(bytes)
        .map_err(|e| CodecError {
            what,
            reason: format!("cannot decode {} bytes: {e}", bytes.len()),
        })?;
    if encode(&v) != bytes {
        return Err(CodecError {
            what,
            reason: "not in its one encoding (keys out of order, or a key twice)".into(),
        });
    }
    Ok(v)
}

/// A decoded value that breaks a rule its type keeps.
pub fn invalid(what: &'static str, reason: String) -> CodecError {
    CodecError { what, reason }
}
