//! The chain: a pure ledger state machine (`ledger`) and the replica that runs it under
//! malachite (`node`), as described in ../shared/design.md sections 5 and 6.
//!
//! Not built yet: this crate holds its place in the workspace so that the layer rules are in
//! force from the start. Invariant: it never depends on the engine crate.
