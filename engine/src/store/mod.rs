//! The host chunk store.
//!
//! `shard` is the store: thread-per-core shards on glommio, O_DIRECT segment files, group
//! commit, an in-memory index with checkpoints, compaction. The rest are the parts it is
//! built from, most of them pure functions over bytes so they are tested without a disk:
//! the record format ([`record`]) and how a segment is scanned after a crash, where a torn
//! tail ends ([`record::scan`]); the index checkpoint format ([`checkpoint`]); the chunk's
//! hash tree and outboard for proofs ([`tree`]); the in-memory index (`index`); and the disk
//! every byte goes through ([`disk`]: glommio's O_DIRECT files, or the in-memory twin the
//! tests crash).
//!
//! The formats ([`record`], [`checkpoint`], [`tree`]) are pure and always built; the store
//! itself (`shard`, [`disk`], `index`) is the crate's `store` feature, the only part that
//! builds glommio.
//!
//! Invariant: a record is accepted only if its header checksum, its segment sequence and
//! (where asked) its payload CRC32C all match; anything else ends the scan, and the scan
//! says where, so the runtime truncates there.

pub mod checkpoint;
#[cfg(feature = "store")]
pub mod disk;
#[cfg(feature = "store")]
mod index;
pub mod record;
#[cfg(feature = "store")]
mod shard;
pub mod tree;

pub use record::Layout;
#[cfg(feature = "store")]
pub use shard::{Answer, Engine, EngineConfig, Load, Pending, PutOutcome, StoreError, StoreStats};
