//! The deal flow's decisions, as pure functions and state machines: they are given what the
//! chain and the local store say, and return what to do. The host's agent (`net::agent`)
//! and the sender's client (`tools`) are thin shells that read the chain, call these, and
//! carry the actions out; everything here is tested without sockets, disks or clocks.
//!
//! - [`terms`]: what a deal costs and how long it runs, from an offer's price.
//! - [`host`]: the host agent's plan at each block: which paid deals to complete, which
//!   challenges to prove, which chunks to release once their deals are over, and when a
//!   submitted transaction that did not land is sent again.
//! - [`sender`]: what a sender does once it has paid and uploaded: wait, upload again
//!   after a CRC mismatch (bounded), or stop.
//! - [`book`]: an exchange's order book: hosts' standing asks, and which hosts a sender's
//!   request is matched to.
//! - [`pricing`]: a host's price from its policy and how full it is.
//! - [`flood`]: an exchange's flood control: rates per key and per address, bans for keys
//!   that ask and never deal.
//! - [`insurance`]: an insurer's premium for a deal's cover, and when it refuses.
//!
//! Invariant: nothing here performs I/O or reads a clock; heights, and the Unix seconds a
//! caller passes in, are the only time.

pub mod book;
pub mod flood;
pub mod host;
pub mod insurance;
pub mod pricing;
pub mod sender;
pub mod terms;

/// A chunk or deal id: 32 bytes (BLAKE3 roots, transaction ids).
pub type Id = [u8; 32];
