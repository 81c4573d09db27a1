//! The replica: malachite (Tendermint) drives the chain, and this module is the only code
//! that imports it (design.md section 6). `types` gives malachite our context, `codec` the
//! bytes of its messages, `store` keeps decided blocks in redb, `state` does what each
//! engine message asks (synchronously, unit-tested), and `run` wires them to the engine.

pub mod codec;
pub mod run;
pub mod sim;
pub mod state;
pub mod store;
pub mod types;

pub use malachitebft_app_channel::app::net::Multiaddr;
pub use malachitebft_app_channel::EngineHandle;
pub use run::{start, NodeConfig, NodeHandle};
pub use state::{ChainParams, Committed, NodeState, Votes, VOTES_KEPT};
