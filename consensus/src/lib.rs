//! The chain: a pure ledger state machine (`ledger`) and, later, the replica that runs it
//! under malachite (`node`), as described in ../shared/design.md sections 5 and 6.
//!
//! Invariant: this crate never depends on the engine crate, and the ledger never reads a
//! clock, a disk or a socket: time is the block's height and timestamp.

pub mod ledger;
pub mod mempool;
#[cfg(feature = "node")]
pub mod node;
