//! Where the gateway puts objects: sealed on this machine and uploaded to a configured
//! host through links its control plane mints (with the host's control token), the same
//! data plane `mspace put --link` uses. Each object is its own sealed file with a fresh
//! random key; the share key that opens it stays in the gateway's index.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ed25519_consensus::SigningKey;
use engine::codec::FileCipher;
use engine::sealed_dir::{open_envelope, Unlock};
use net::client::{put_file, Conn, PutJob};
use net::wire::{Reply, Request};
use proto::link::Link;
use proto::{ChunkEntry, ChunkId, KdfParams, ShareKey};
use rand_core::RngCore;

use crate::record::Stored;

/// The key derivation for the gateway's objects: each object's passphrase is 32 random
/// bytes, so a memory-hard KDF would add nothing but time; this is Argon2's minimum.
pub const OBJECT_KDF: KdfParams = KdfParams {
    m_kib: 8,
    t: 1,
    p: 1,
};

/// How long a minted link lives: one transfer's worth.
const LINK_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the host's control plane at {addr}: {reason}")]
    Control { addr: String, reason: String },
    #[error("the host at {addr}: {reason}")]
    Transfer { addr: String, reason: String },
    #[error("the host's link is not signed by the host that holds the object")]
    OtherHost,
}

/// The configured host, and how objects are sealed for it.
pub struct HostStore {
    /// Its control plane (`host:port`).
    pub control: String,
    /// Its control token (the host's configuration holds it).
    pub token: String,
    /// The gateway's key: links are bound to it.
    pub key: SigningKey,
    pub chunk_bytes: u32,
    pub workers: usize,
    /// Where upload journals and downloads in progress live.
    pub spool: PathBuf,
}

impl std::fmt::Debug for HostStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostStore")
            .field("control", &self.control)
            .field("chunk_bytes", &self.chunk_bytes)
            .finish_non_exhaustive()
    }
}

impl HostStore {
    async fn mint(&self, grant: api::LinkGrant) -> Result<Link, StoreError> {
        let control = |reason: String| StoreError::Control {
            addr: self.control.clone(),
            reason,
        };
        let c = api::host_client(&self.control)
            .await
            .map_err(|e| control(e.to_string()))?;
        let text = c
            .mint_link(
                tarpc::context::current(),
                api::LinkRequest {
                    token: self.token.clone(),
                    grant,
                    ttl_secs: LINK_TTL.as_secs(),
                    bearer: Some(self.key.verification_key().to_bytes()),
                },
            )
            .await
            .map_err(|e| control(e.to_string()))?
            .map_err(|e| control(e.to_string()))?;
        Link::parse(&text)
            .map_err(|e| control(format!("it minted a link that does not parse: {e}")))
    }

    /// Seals the file at `path` (of `size` bytes, more than 0) and uploads it.
    pub async fn put(&self, path: &Path, size: u64) -> Result<Stored, StoreError> {
        let chunks = proto::Manifest::chunk_count_for(size, self.chunk_bytes);
        // The sealed bytes and the manifest (a few dozen bytes per chunk), with room.
        let bytes_max = net::deal::sealed_estimate(size, self.chunk_bytes) + chunks * 128 + 65536;
        let link = self.mint(api::LinkGrant::Upload { bytes_max }).await?;
        let mut passphrase = zeroize::Zeroizing::new(vec![0u8; 32]);
        rand_core::OsRng.fill_bytes(&mut passphrase);
        let job = PutJob {
            file: path.to_owned(),
            link: link.clone(),
            via: Vec::new(),
            max_proxy_price: 0,
            key: self.key.clone(),
            passphrase,
            chunk_bytes: self.chunk_bytes,
            workers: self.workers,
            kdf: OBJECT_KDF,
            journal_dir: self.spool.clone(),
            preset: None,
        };
        let done = put_file(&job, Arc::new(|_, _| {}))
            .await
            .map_err(|e| StoreError::Transfer {
                addr: link.addr.clone(),
                reason: e.to_string(),
            })?;
        Ok(Stored {
            manifest: done.manifest_id.0,
            host_key: link.host_key,
            host: self.control.clone(),
            share_key: done.share_key.to_string(),
        })
    }

    /// Bytes `range` of a stored object, as a stream of verified plaintext: only the
    /// chunks that cover the range are fetched, a few at a time (at most
    /// [`READ_AHEAD_BYTES`] of sealed chunks in flight), each checked against its BLAKE3 id
    /// and decrypted before any of it is given out. Nothing touches the disk here.
    pub async fn read(&self, stored: &Stored, range: Range<u64>) -> Result<Reading, StoreError> {
        let link = self
            .mint(api::LinkGrant::Download {
                manifest: stored.manifest,
            })
            .await?;
        if link.host_key != stored.host_key {
            return Err(StoreError::OtherHost);
        }
        let transfer = |reason: String| StoreError::Transfer {
            addr: link.addr.clone(),
            reason,
        };
        let share: ShareKey = stored
            .share_key
            .parse()
            .map_err(|e| transfer(format!("the index's share key does not parse: {e}")))?;
        let manifest_id = ChunkId(stored.manifest);
        let mut conn = Conn::open(&link, &[], &self.key, 0)
            .await
            .map_err(|e| transfer(e.to_string()))?;
        let envelope = match conn.call(Request::GetObject).await {
            Ok(Reply::Data(env)) if ChunkId::of(&env) == manifest_id => env,
            Ok(Reply::Data(_)) => {
                return Err(transfer(
                    "it sent a manifest that is not the stored one".into(),
                ))
            }
            Ok(_) => return Err(transfer("it answered the manifest request oddly".into())),
            Err(e) => return Err(transfer(e.to_string())),
        };
        let (manifest, cipher) = open_envelope(&envelope, manifest_id, Unlock::ShareKey(&share))
            .map_err(|e| transfer(format!("the manifest does not open: {e}")))?;
        let cb = u64::from(manifest.chunk_bytes);
        if range.end > manifest.file_bytes || range.start >= range.end || cb == 0 {
            return Err(transfer(format!(
                "bytes {range:?} are not within the sealed file's {}",
                manifest.file_bytes
            )));
        }
        let first = usize::try_from(range.start / cb).unwrap_or(usize::MAX);
        let end = usize::try_from((range.end - 1) / cb + 1).unwrap_or(usize::MAX);
        if end > manifest.chunks.len() {
            return Err(transfer(
                "the manifest lists fewer chunks than its size needs".into(),
            ));
        }
        let window = conn.inflight_bytes_max.clamp(1, READ_AHEAD_BYTES);
        Ok(Reading {
            conn,
            cipher,
            chunks: manifest.chunks,
            chunk_bytes: cb,
            next_ask: first,
            next_give: first,
            end,
            asked: VecDeque::new(),
            in_flight: 0,
            window,
            range,
            addr: link.addr,
        })
    }
}

/// Sealed bytes a read keeps asked for ahead of what it has given out.
pub const READ_AHEAD_BYTES: u64 = 32 << 20;

/// A read in progress (see [`HostStore::read`]).
pub struct Reading {
    conn: Conn,
    cipher: Arc<FileCipher>,
    chunks: Vec<ChunkEntry>,
    chunk_bytes: u64,
    next_ask: usize,
    next_give: usize,
    end: usize,
    asked: VecDeque<(u32, u64)>,
    in_flight: u64,
    window: u64,
    range: Range<u64>,
    addr: String,
}

impl std::fmt::Debug for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reading")
            .field("addr", &self.addr)
            .field("range", &self.range)
            .field("next_give", &self.next_give)
            .finish_non_exhaustive()
    }
}

impl Reading {
    /// The next verified piece of the range; `None` at its end.
    pub async fn next(&mut self) -> Option<Result<bytes::Bytes, std::io::Error>> {
        if self.next_give >= self.end {
            return None;
        }
        let got = self.step().await;
        if got.is_err() {
            // Nothing more after an error.
            self.next_give = self.end;
        }
        Some(got.map_err(|e| std::io::Error::other(format!("the host at {}: {e}", self.addr))))
    }

    async fn step(&mut self) -> Result<bytes::Bytes, String> {
        while self.next_ask < self.end {
            let len = u64::from(self.chunks[self.next_ask].sealed_bytes);
            if !self.asked.is_empty() && self.in_flight + len > self.window {
                break;
            }
            let id = self
                .conn
                .send(&Request::Get {
                    id: self.chunks[self.next_ask].id,
                })
                .await
                .map_err(|e| e.to_string())?;
            self.asked.push_back((id, len));
            self.in_flight += len;
            self.next_ask += 1;
        }
        let Some((want, len)) = self.asked.pop_front() else {
            return Err("nothing asked".into());
        };
        self.in_flight -= len;
        let i = self.next_give;
        let mut buf = match self.conn.reply_to(want).await {
            Ok(Reply::Data(b)) => b,
            Ok(_) => return Err(format!("chunk {i}: an unexpected answer")),
            Err(e) => return Err(format!("chunk {i}: {e}")),
        };
        if ChunkId::of(&buf) != self.chunks[i].id {
            return Err(format!("chunk {i} is not the one sealed (BLAKE3 differs)"));
        }
        self.cipher
            .open_chunk(i as u64, &mut buf)
            .map_err(|e| format!("chunk {i} does not open: {e:?}"))?;
        self.next_give += 1;
        let start = i as u64 * self.chunk_bytes;
        let lo = self.range.start.saturating_sub(start);
        let hi = (self.range.end - start).min(buf.len() as u64);
        let (lo, hi) = (
            usize::try_from(lo).unwrap_or(usize::MAX),
            usize::try_from(hi).unwrap_or(usize::MAX),
        );
        if lo > hi || hi > buf.len() {
            return Err(format!("chunk {i} is shorter than the manifest says"));
        }
        Ok(bytes::Bytes::from(buf).slice(lo..hi))
    }
}
