//! A bounds-checked reader for fixed-layout little-endian formats, and the error every
//! decoder in this crate returns.

use thiserror::Error;

/// Why a byte string is not a valid encoding. `what` names the format, `field` the field.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("{what}: truncated at {field}: needs {needed} more bytes, {available} left")]
    Truncated {
        what: &'static str,
        field: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("{what}: wrong magic {found:02x?}: this is not a {what}")]
    BadMagic { what: &'static str, found: Vec<u8> },
    #[error("{what}: version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        what: &'static str,
        found: u8,
        supported: u8,
    },
    #[error("{what}: invalid {field}: {reason}")]
    Invalid {
        what: &'static str,
        field: &'static str,
        reason: String,
    },
    #[error("{what}: {extra} unexpected bytes after the end")]
    TrailingBytes { what: &'static str, extra: usize },
}

/// Reads fields in order from a byte slice; every read is bounds-checked.
#[derive(Debug)]
pub struct Reader<'a> {
    what: &'static str,
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(what: &'static str, bytes: &'a [u8]) -> Self {
        Reader { what, bytes }
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated {
                what: self.what,
                field,
                needed: n,
                available: self.bytes.len(),
            });
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(field, N)?);
        Ok(out)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// Reads `n` reserved bytes, which must be zero so that a later version can give them a
    /// meaning without old readers misreading new files.
    pub fn reserved(&mut self, field: &'static str, n: usize) -> Result<(), DecodeError> {
        let bytes = self.take(field, n)?;
        if bytes.iter().any(|&b| b != 0) {
            return Err(self.invalid(
                field,
                format!("reserved bytes must be zero, found {bytes:02x?}"),
            ));
        }
        Ok(())
    }

    pub fn magic(&mut self, expected: &[u8]) -> Result<(), DecodeError> {
        let found = self.take("magic", expected.len())?;
        if found != expected {
            return Err(DecodeError::BadMagic {
                what: self.what,
                found: found.to_vec(),
            });
        }
        Ok(())
    }

    pub fn version(&mut self, supported: u8) -> Result<(), DecodeError> {
        let found = self.u8("version")?;
        if found != supported {
            return Err(DecodeError::UnsupportedVersion {
                what: self.what,
                found,
                supported,
            });
        }
        Ok(())
    }

    pub fn invalid(&self, field: &'static str, reason: impl Into<String>) -> DecodeError {
        DecodeError::Invalid {
            what: self.what,
            field,
            reason: reason.into(),
        }
    }

    /// Ends decoding: every byte must have been consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                what: self.what,
                extra: self.bytes.len(),
            })
        }
    }
}
