//! The network: tarpc control-plane services, the binary data plane for chunk bytes, signed
//! temporary links and the proxy relay.
//!
//! Not built yet: this crate holds its place in the workspace. Its upload path will consume
//! `engine::seal::seal_stream` directly, so an upload never writes an encrypted copy of the
//! file. Invariant: no ledger rules here.
