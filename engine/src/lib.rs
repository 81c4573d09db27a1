//! The storage side of Market.space.
//!
//! Today this crate holds the chunk codec: how a file becomes encrypted, verifiable chunks
//! and a manifest, in parallel and with bounded memory (`seal`, `pipeline`), the
//! cryptography of one chunk (`codec`), and the sealed-directory layout that `mspace seal`
//! and `mspace open` read and write (`sealed_dir`). The thread-per-core host store on
//! glommio joins it with the host-engine work.
//!
//! Invariant: this crate never imports tokio, the consensus crate or the network crate; the
//! network's upload path consumes [`seal::seal_stream`] directly, so an upload never writes
//! an encrypted copy of the file.

pub mod codec;
pub mod error;
pub mod pipeline;
pub mod seal;
pub mod sealed_dir;
pub mod sealed_to;
pub mod store;

pub use error::{ChunkFault, CodecError};
