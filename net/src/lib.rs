//! The network: the binary data plane for chunk bytes (`wire`, `io`, `host`, `client`),
//! the proxy relay (`proxy`), the host's configuration, state and metrics. Wire formats are
//! documented byte by byte in `docs/wire.md`. The host's modules are the `host` feature;
//! without it the crate is the client side and does not build the engine's store.
//!
//! Invariants: no ledger rules here; tokio is used here and in `tools`, never in `engine`
//! or `proto`. The upload path consumes `engine::seal::FileSeal` directly, so an upload
//! never writes an encrypted copy of the file.

// The client side, which a gateway or any customer's program builds.
pub mod client;
pub mod config;
pub mod deal;
pub mod io;
pub mod journal;
pub mod proxy;
pub mod receive;
pub mod record;
pub mod redeem;
pub mod wire;

// The host (feature `host`): it alone builds the engine's store, and with it glommio.
#[cfg(feature = "host")]
pub mod agent;
#[cfg(feature = "host")]
pub mod alerts;
#[cfg(feature = "host")]
pub mod bidder;
#[cfg(feature = "host")]
pub mod control;
#[cfg(feature = "host")]
pub mod dashboard;
#[cfg(feature = "host")]
pub mod host;
#[cfg(feature = "host")]
pub mod host_config;
#[cfg(feature = "host")]
pub mod metrics;
#[cfg(feature = "host")]
pub mod state;

use proto::DecodeError;

pub use wire::ErrorCode;

/// Lowercase hex, as the chain's views write ids and keys.
pub(crate) fn hex(b: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(b)
}

pub(crate) use api::parse_hex32;

/// Unix seconds now: link expiries and chunk retention are counted in these.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Why a network operation failed. Each says what happened and, where it can, what to do.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("the peer closed the connection")]
    Closed,
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("refused ({}): {message}", code.name())]
    Remote { code: ErrorCode, message: String },
    #[error("configuration: {0}")]
    Config(String),
    #[error("host state: {0}")]
    State(String),
    #[error("link: {0}")]
    Link(#[from] proto::link::LinkError),
    #[error("{0}")]
    Codec(#[from] engine::CodecError),
    #[error("upload journal {path}: {reason}")]
    Journal { path: String, reason: String },
}
