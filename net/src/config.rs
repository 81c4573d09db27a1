//! Shared by every role: the data plane's limits (`[limits]`) and key files. The host's own
//! configuration file is `host_config` (feature `host`).

use std::path::Path;
use std::time::Duration;

use ed25519_consensus::SigningKey;
use serde::{Deserialize, Serialize};

use crate::NetError;

/// Named limits of the data plane. Every one bounds what a single peer can hold.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connections served at once; more wait in the listen queue.
    pub max_connections: usize,
    /// Seconds a new connection has to present its link.
    pub hello_secs: u64,
    /// Seconds a connection may stay idle between requests.
    pub idle_secs: u64,
    /// A frame's body must arrive within `body_base_secs` plus its length at this rate
    /// (bytes per second): slower peers are cut off.
    pub min_body_rate: u64,
    pub body_base_secs: u64,
    /// Requests one connection may have in flight.
    pub inflight_requests: usize,
    /// Request bytes one connection may have in flight (bodies read but not yet answered).
    pub inflight_bytes: u64,
    /// Reads (whole chunks, ranges, proofs) one connection may have in flight.
    pub inflight_reads: usize,
    /// Bytes of request bodies and replies held by all connections together: the host's
    /// memory bound for the data plane.
    pub memory_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            hello_secs: 10,
            idle_secs: 120,
            min_body_rate: 256 << 10,
            body_base_secs: 10,
            inflight_requests: 64,
            inflight_bytes: 256 << 20,
            inflight_reads: 16,
            memory_bytes: 2 << 30,
        }
    }
}

impl Limits {
    pub fn hello(&self) -> Duration {
        Duration::from_secs(self.hello_secs)
    }
    pub fn idle(&self) -> Duration {
        Duration::from_secs(self.idle_secs)
    }
}

/// Reads a key file: the 32-byte ed25519 seed in hex, one line.
pub fn read_key(path: &Path) -> Result<SigningKey, NetError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| NetError::Config(format!("read key {}: {e}", path.display())))?;
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.trim().as_bytes())
        .map_err(|e| NetError::Config(format!("key {}: not hex: {e}", path.display())))?;
    let seed: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
        NetError::Config(format!(
            "key {}: {} bytes, an ed25519 seed is 32",
            path.display(),
            b.len()
        ))
    })?;
    Ok(SigningKey::from(seed))
}

/// Writes a new random key file readable only by its owner; refuses to replace one.
pub fn write_new_key(path: &Path) -> Result<SigningKey, NetError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = SigningKey::new(rand_core::OsRng);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| NetError::Config(format!("create key {}: {e}", path.display())))?;
    writeln!(f, "{}", data_encoding::HEXLOWER.encode(key.as_bytes()))
        .and_then(|()| f.sync_all())
        .map_err(|e| NetError::Config(format!("write key {}: {e}", path.display())))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn keys_are_written_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let k = write_new_key(&p).unwrap();
        assert_eq!(read_key(&p).unwrap().as_bytes(), k.as_bytes());
        assert!(
            write_new_key(&p).is_err(),
            "an existing key is never replaced"
        );
        std::fs::write(&p, "abcd").unwrap();
        assert!(read_key(&p).unwrap_err().to_string().contains("32"));
        std::fs::write(&p, "zz").unwrap();
        assert!(read_key(&p).is_err());
    }
}
