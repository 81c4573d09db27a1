//! Parameters of the passphrase key derivation (Argon2id), stored in clear in every manifest
//! envelope so that an opener derives the same master key the sealer did.

use crate::decode::{DecodeError, Reader};

/// Argon2id (version 0x13) cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory cost in KiB.
    pub m_kib: u32,
    /// Passes over memory.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

/// The one algorithm identifier defined so far: Argon2id, version 0x13 (RFC 9106).
pub const KDF_ARGON2ID_13: u8 = 1;

/// Bounds an opener accepts. The KDF runs before anything in the manifest can be
/// authenticated, so these stop a crafted manifest from demanding more than a modest
/// machine has (1 GiB, 16x the default) or minutes of work; the lower memory bound is
/// Argon2's own minimum (8 KiB per lane).
pub const KDF_M_KIB_MAX: u32 = 1024 * 1024;
pub const KDF_T_MAX: u32 = 16;
pub const KDF_P_MAX: u32 = 16;

impl KdfParams {
    /// What `mspace seal` uses: 64 MiB, 3 passes, 1 lane (RFC 9106's second recommended
    /// option, with one lane because the sealer derives one key once per file).
    pub const DEFAULT: KdfParams = KdfParams {
        m_kib: 64 * 1024,
        t: 3,
        p: 1,
    };

    pub fn check(&self) -> Result<(), String> {
        if !(1..=KDF_P_MAX).contains(&self.p) {
            return Err(format!("argon2 lanes {} outside 1..={KDF_P_MAX}", self.p));
        }
        if !(1..=KDF_T_MAX).contains(&self.t) {
            return Err(format!("argon2 passes {} outside 1..={KDF_T_MAX}", self.t));
        }
        let m_min = 8 * self.p;
        if !(m_min..=KDF_M_KIB_MAX).contains(&self.m_kib) {
            return Err(format!(
                "argon2 memory {} KiB outside {m_min}..={KDF_M_KIB_MAX} KiB",
                self.m_kib
            ));
        }
        Ok(())
    }

    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.m_kib.to_le_bytes());
        out.extend_from_slice(&self.t.to_le_bytes());
        out.extend_from_slice(&self.p.to_le_bytes());
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let params = KdfParams {
            m_kib: r.u32("kdf m_kib")?,
            t: r.u32("kdf t")?,
            p: r.u32("kdf p")?,
        };
        params
            .check()
            .map_err(|reason| r.invalid("kdf parameters", reason))?;
        Ok(params)
    }
}
