//! The miner's files: its configuration (`miner.toml`) and the chain's genesis
//! (`genesis.toml`), with the rules a genesis must follow. Formats: `docs/formats.md`
//! section 15.

use std::path::{Path, PathBuf};

use consensus::ledger::Genesis;
use proto::tx::AccountId;
use serde::{Deserialize, Serialize};

/// A file that cannot be read or does not hold what it must.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl FileError {
    fn read(path: &Path, error: std::io::Error) -> FileError {
        FileError::Read {
            path: path.to_owned(),
            error,
        }
    }
}

/// A genesis that breaks a rule (no validator, a stake below the miner deposit, a key
/// listed twice, a supply that overflows, a key that is not an ed25519 public key).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GenesisError(pub String);

/// `miner.toml`, written by `mspace miner init` (see [`MinerConfig::default_text`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinerConfig {
    pub moniker: String,
    pub data_dir: PathBuf,
    pub key_file: PathBuf,
    pub genesis_file: PathBuf,
    pub p2p_listen: String,
    #[serde(default)]
    pub peers: Vec<String>,
    pub control_listen: String,
    /// Where `/metrics` is served (Prometheus text), if anywhere.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    #[serde(default)]
    pub relay_to: Vec<String>,
    #[serde(default = "default_block_time_ms")]
    pub block_time_ms: u64,
    #[serde(default)]
    pub alerts: crate::alerts::AlertConfig,
}

fn default_block_time_ms() -> u64 {
    500
}

impl MinerConfig {
    pub fn default_text(
        moniker: &str,
        data_dir: &Path,
        genesis: &Path,
        p2p_listen: &str,
        control_listen: &str,
        peers: &[String],
        relay_to: &[String],
    ) -> String {
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            r#"# Market.space miner (validator). Written by `mspace miner init`; edit freely.

# A name for logs and metrics.
moniker = {moniker:?}
# The block store (chain.redb) and the consensus write-ahead log (wal/) live here.
data_dir = {data:?}
# The validator's ed25519 key (32 bytes, hex), relative to this file. Keep it private:
# whoever holds it votes with this miner's stake.
key_file = "miner.key"
# The chain's genesis: chain id, first balances and validators. Every miner of a chain
# must have the same file.
genesis_file = {genesis:?}
# Consensus gossip with the other validators (libp2p, TCP).
p2p_listen = {p2p_listen:?}
# The other validators' p2p addresses, e.g. "/ip4/10.0.0.2/tcp/27000".
peers = [{peers}]
# The control plane: clients submit transactions and read the chain here (tarpc).
control_listen = {control_listen:?}
# Other miners' control planes: transactions accepted here are relayed to them, so
# whichever validator proposes next can include them.
relay_to = [{relay}]
# Prometheus metrics at http://<metrics_listen>/metrics (height, mempool, validators,
# supply). Keep it off the public interface.
# metrics_listen = "127.0.0.1:9404"
# Target time between blocks when there is no load, in milliseconds; under load a block
# takes what the mempool holds, up to 4 MiB.
block_time_ms = 500

[alerts]
# The miner raises alerts when it stops earning for its stake: another miner (relay_to)
# is behind_blocks ahead, no new block for stall_secs, fewer peers connected than
# configured, or its signature missing from more than missed_votes of the last 100
# commits. Shown by `mspace chain status`, on /metrics (mspace_miner_alert) and POSTed
# here as JSON.
every_secs = 10
# webhook = "http://127.0.0.1:9900/alerts"
behind_blocks = 10
stall_secs = 30
missed_votes = 10
"#,
            data = data_dir.display().to_string(),
            genesis = genesis.display().to_string(),
            peers = list(peers),
            relay = list(relay_to),
        )
    }

    pub fn load(path: &Path) -> Result<MinerConfig, FileError> {
        let text = std::fs::read_to_string(path).map_err(|e| FileError::read(path, e))?;
        let mut c: MinerConfig =
            api::config::parse_with_env(&text, "miner").map_err(|e| FileError::Invalid {
                path: path.to_owned(),
                reason: format!("invalid miner configuration: {e}"),
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut c.key_file, &mut c.genesis_file, &mut c.data_dir] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        c.alerts.check().map_err(|reason| FileError::Invalid {
            path: path.to_owned(),
            reason,
        })?;
        if c.block_time_ms == 0 || c.block_time_ms > 60_000 {
            return Err(FileError::Invalid {
                path: path.to_owned(),
                reason: "block_time_ms must be 1 to 60000".into(),
            });
        }
        Ok(c)
    }
}

/// `genesis.toml`: the chain's first state.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisFile {
    pub chain_id: u64,
    /// Blocks per proof period [default: the ledger's 100]; a devnet shortens it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof_period_blocks: Option<u64>,
    /// Blocks a host has to complete a paid deal [default: the ledger's 100].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timeout_blocks: Option<u64>,
    #[serde(default)]
    pub accounts: Vec<GenesisAccount>,
    pub validators: Vec<GenesisValidator>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisAccount {
    /// ed25519 public key, hex.
    pub key: String,
    #[serde(default)]
    pub masp: u64,
    #[serde(default)]
    pub maspc: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisValidator {
    pub key: String,
    /// MASP bonded as stake: the validator's voting power.
    pub stake: u64,
    /// Where its control plane is, for the registry.
    pub endpoint: String,
}

pub fn parse_key_hex(s: &str) -> Result<AccountId, GenesisError> {
    let b = data_encoding::HEXLOWER_PERMISSIVE
        .decode(s.trim().as_bytes())
        .map_err(|e| GenesisError(format!("key {s:?} is not hex: {e}")))?;
    let b: [u8; 32] = b
        .try_into()
        .map_err(|b: Vec<u8>| GenesisError(format!("a key is 32 bytes, {s:?} has {}", b.len())))?;
    ed25519_consensus::VerificationKey::try_from(b)
        .map_err(|e| GenesisError(format!("key {s:?} is not an ed25519 public key: {e}")))?;
    Ok(AccountId(b))
}

pub fn hex(b: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(b)
}

impl GenesisFile {
    pub fn load(path: &Path) -> Result<Genesis, FileError> {
        let text = std::fs::read_to_string(path).map_err(|e| FileError::read(path, e))?;
        let invalid = |reason: String| FileError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let g: GenesisFile =
            toml::from_str(&text).map_err(|e| invalid(format!("invalid genesis: {e}")))?;
        g.to_genesis().map_err(|e| invalid(e.to_string()))
    }

    /// The deal timings: the file's, else the ledger's defaults.
    pub fn params(&self) -> consensus::ledger::Params {
        let d = consensus::ledger::Params::default();
        consensus::ledger::Params {
            proof_period_blocks: self.proof_period_blocks.unwrap_or(d.proof_period_blocks),
            completion_timeout_blocks: self
                .completion_timeout_blocks
                .unwrap_or(d.completion_timeout_blocks),
        }
    }

    pub fn to_genesis(&self) -> Result<Genesis, GenesisError> {
        if self.proof_period_blocks == Some(0) || self.completion_timeout_blocks == Some(0) {
            return Err(GenesisError(
                "proof_period_blocks and completion_timeout_blocks must be at least 1".into(),
            ));
        }
        let bail = |m: String| Err(GenesisError(m));
        if self.validators.is_empty() {
            return bail("a genesis needs at least one validator".into());
        }
        let mut accounts = Vec::new();
        for a in &self.accounts {
            accounts.push((parse_key_hex(&a.key)?, a.masp, a.maspc));
        }
        let mut validators = Vec::new();
        for v in &self.validators {
            let min = consensus::ledger::deposit_base(proto::tx::Role::Miner);
            if v.stake < min {
                return bail(format!(
                    "validator {}: stake {} is below the miner deposit of {min} MASP",
                    v.key, v.stake
                ));
            }
            if v.endpoint.is_empty() || v.endpoint.len() > proto::tx::ENDPOINT_BYTES_MAX {
                return bail(format!(
                    "validator {}: endpoint must be 1 to {} bytes",
                    v.key,
                    proto::tx::ENDPOINT_BYTES_MAX
                ));
            }
            validators.push((parse_key_hex(&v.key)?, v.stake, v.endpoint.clone()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (k, _, _) in &validators {
            if !seen.insert(*k) {
                return bail(format!("validator {} is listed twice", hex(&k.0)));
            }
        }
        // Supplies must fit the ledger's u64 totals.
        let mut masp = 0u64;
        let mut maspc = 0u64;
        for (_, a, c) in &accounts {
            masp = masp
                .checked_add(*a)
                .ok_or_else(|| GenesisError("MASP supply overflows".into()))?;
            maspc = maspc
                .checked_add(*c)
                .ok_or_else(|| GenesisError("MASPC supply overflows".into()))?;
        }
        for (_, s, _) in &validators {
            masp = masp
                .checked_add(*s)
                .ok_or_else(|| GenesisError("MASP supply overflows".into()))?;
        }
        Ok(Genesis {
            chain_id: self.chain_id,
            params: self.params(),
            accounts,
            validators,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn key(b: u8) -> String {
        hex(&ed25519_consensus::SigningKey::from([b; 32])
            .verification_key()
            .to_bytes())
    }

    fn validator(b: u8, stake: u64) -> GenesisValidator {
        GenesisValidator {
            key: key(b),
            stake,
            endpoint: "127.0.0.1:27001".into(),
        }
    }

    #[test]
    fn a_genesis_that_breaks_a_rule_is_refused_saying_which() {
        let min = consensus::ledger::deposit_base(proto::tx::Role::Miner);
        let good = GenesisFile {
            chain_id: 7,
            proof_period_blocks: None,
            completion_timeout_blocks: None,
            accounts: vec![GenesisAccount {
                key: key(9),
                masp: 5,
                maspc: 6,
            }],
            validators: vec![validator(1, min)],
        };
        assert_eq!(good.to_genesis().unwrap().validators.len(), 1);
        let cases: Vec<(GenesisFile, &str)> = vec![
            (
                GenesisFile {
                    validators: vec![],
                    ..good.clone()
                },
                "at least one validator",
            ),
            (
                GenesisFile {
                    proof_period_blocks: Some(0),
                    ..good.clone()
                },
                "must be at least 1",
            ),
            (
                GenesisFile {
                    validators: vec![validator(1, min - 1)],
                    ..good.clone()
                },
                "below the miner deposit",
            ),
            (
                GenesisFile {
                    validators: vec![validator(1, min), validator(1, min)],
                    ..good.clone()
                },
                "listed twice",
            ),
            (
                GenesisFile {
                    accounts: vec![GenesisAccount {
                        key: "zz".into(),
                        masp: 0,
                        maspc: 0,
                    }],
                    ..good.clone()
                },
                "not hex",
            ),
            (
                GenesisFile {
                    accounts: vec![GenesisAccount {
                        key: key(9),
                        masp: u64::MAX,
                        maspc: 0,
                    }],
                    ..good.clone()
                },
                "MASP supply overflows",
            ),
        ];
        for (g, want) in cases {
            let e = g.to_genesis().unwrap_err().to_string();
            assert!(e.contains(want), "{e} (wanted {want:?})");
        }
    }

    #[test]
    fn a_bad_file_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("genesis.toml");
        std::fs::write(&p, "chain_id = \"x\"\n").unwrap();
        let e = GenesisFile::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("genesis.toml") && e.contains("invalid genesis"),
            "{e}"
        );
        let e = MinerConfig::load(&dir.path().join("absent.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("absent.toml"), "{e}");
    }
}
