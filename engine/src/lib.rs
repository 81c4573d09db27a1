//! The storage side of Market.space.
//!
//! The chunk codec: how a file becomes encrypted, verifiable chunks and a manifest, in
//! parallel and with bounded memory (`seal`, `pipeline`, `buf`, `plain`), the cryptography of one chunk
//! (`codec`), and the sealed-directory layout that `mspace seal` and `mspace open` read and
//! write (`sealed_dir`). These are what a client or a gateway builds. The host's
//! thread-per-core chunk store on glommio (`store`) is the `store` feature (on by default
//! in this crate, off in the workspace's dependency: the host's crates ask for it), so a
//! client never builds glommio.
//!
//! Invariant: this crate never imports tokio, the consensus crate or the network crate; the
//! network's upload path consumes [`seal::FileSeal`] directly, so an upload never writes
//! an encrypted copy of the file.

pub mod buf;
pub mod codec;
pub mod erasure;
pub mod error;
pub mod pipeline;
pub mod plain;
pub mod seal;
pub mod sealed_dir;
pub mod sealed_to;
pub mod store;

pub use error::{ChunkFault, CodecError};
