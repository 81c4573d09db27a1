//! The host chunk store's on-disk layout, as pure functions over bytes.
//!
//! The store itself (thread-per-core shards on glommio, O_DIRECT segment files, group
//! commit, compaction) is the host-engine issue's; what is here is the part every shard
//! runtime will share and that must be right first: the record format
//! ([`record`]), how a segment is scanned after a crash, where a torn tail ends
//! ([`record::scan`]), and the index checkpoint format ([`checkpoint`]). None of it does
//! I/O: the runtime reads bytes, these functions say what they mean.
//!
//! Invariant: a record is accepted only if its header checksum, its segment sequence and
//! (where asked) its payload CRC32C all match; anything else ends the scan, and the scan
//! says where, so the runtime truncates there.

pub mod checkpoint;
pub mod disk;
mod index;
pub mod record;
mod shard;
pub mod tree;

pub use shard::{Answer, Engine, EngineConfig, Load, Pending, PutOutcome, StoreError, StoreStats};
