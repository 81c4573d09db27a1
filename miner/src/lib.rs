//! The miner's role, apart from the consensus engine it runs (`consensus::node`): its files
//! (configuration and genesis, `files`) and its control plane (`service`: the `MinerApi`
//! implementation and the relay to other miners). `tools` only parses arguments and starts
//! runtimes around them.
//!
//! Invariant: no ledger rule here (those are `consensus::ledger`'s); nothing here blocks a
//! runtime thread.

pub mod alerts;
pub mod files;
pub mod service;

pub use files::{
    hex, parse_key_hex, FileError, GenesisAccount, GenesisError, GenesisFile, GenesisValidator,
    MinerConfig,
};
pub use service::{account_view, block_view, deal_view, role_name, MinerService, Relay};
