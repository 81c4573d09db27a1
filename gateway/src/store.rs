//! Where the gateway puts objects. Each object (each part of a multipart one) is its own
//! sealed file with a fresh random key, sealed on this machine; the share key that opens
//! it stays in the gateway's index.
//! Two placements ([`Placement`]): paid storage deals on the chain, one copy per
//! configured host (`net::deal::store`, as `mspace put --host --chain` does: the gateway's
//! key pays, the chain compares the CRCs, the hosts prove it every period), or one host
//! that mints upload links for the gateway with its control token (the data plane alone, as
//! `mspace put --link`).

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
use proto::erasure::Scheme;
use proto::link::Link;
use proto::{ChunkEntry, ChunkId, KdfParams, ShareKey};
use rand_core::RngCore;

use crate::record::{Replica, Stored};

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
    #[error("storing as deals: {0}")]
    Deal(String),
    #[error("finding hosts through the market: {0}")]
    Market(String),
    #[error("reading erasure shares: {0}")]
    Shares(String),
}

/// How objects reach hosts.
#[derive(Clone, Debug)]
pub enum Placement {
    /// One host whose control plane mints links for its control token.
    Links { control: String, token: String },
    /// A storage deal on each host, paid through the chain.
    Deals(DealTerms),
}

/// What the gateway's deals are.
#[derive(Clone, Debug)]
pub struct DealTerms {
    pub chain: Vec<String>,
    /// Fixed hosts, one copy each; empty when `market` matches them per object.
    pub hosts: Vec<String>,
    /// Hosts matched per object through the market.
    pub market: Option<MarketTerms>,
    pub days: u32,
    /// Blocks of storage instead of days (devnets with short periods).
    pub period_blocks: Option<u64>,
    pub max_price_per_gib_day: Option<u64>,
    /// Erasure shares instead of copies: N hosts (fixed, or matched), share `i` of every
    /// chunk on host `i`, any K of which rebuild the object.
    pub erasure: Option<proto::erasure::Scheme>,
}

/// Where the market is asked, and for what.
#[derive(Clone, Debug)]
pub struct MarketTerms {
    /// Indexes listing the exchanges (the nearest live one is asked first).
    pub index: Vec<String>,
    /// Exchanges asked by address (alone, or after the indexes' ones).
    pub exchanges: Vec<String>,
    pub copies: u8,
    pub region: String,
    pub min_rating: u16,
}

/// The price cap of a market match when the configuration sets none, MASPC per GiB per
/// day (as `mspace put --exchange` without `--max-price`).
pub const MARKET_MAX_PRICE_DEFAULT: u64 = 1000;

/// The hosts objects go to, and how they are sealed for them.
pub struct HostStore {
    pub placement: Placement,
    /// The gateway's key: links are bound to it, and with deals its account pays.
    pub key: SigningKey,
    pub chunk_bytes: u32,
    pub workers: usize,
    /// Where each upload's journals live while it runs (a `j-*` folder each).
    pub spool: PathBuf,
    /// Files sealed and stored at once ([`STORES_AT_ONCE`]): each holds a sealing
    /// pipeline's buffers (`engine::pipeline::pipeline_bytes`), whatever number of
    /// PUTs and parts the clients send at once.
    pub stores: tokio::sync::Semaphore,
}

/// Files sealed and stored at once: two keep the disk, the network and the sealing
/// workers busy while one waits on the host; more only hold more buffers.
pub const STORES_AT_ONCE: usize = 2;

impl std::fmt::Debug for HostStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostStore")
            .field("placement", &self.placement)
            .field("chunk_bytes", &self.chunk_bytes)
            .finish_non_exhaustive()
    }
}

/// A link from a host's control plane: minted with its token (`deal: None`) or asked for
/// a deal this gateway paid (`deal_link`, the payment is the authorization).
async fn host_link(
    control: &str,
    token: &str,
    key: &SigningKey,
    grant: api::LinkGrant,
    deal: Option<[u8; 32]>,
) -> Result<Link, StoreError> {
    let fail = |reason: String| StoreError::Control {
        addr: control.to_owned(),
        reason,
    };
    let c = api::host_client(control)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let text = match deal {
        Some(d) => c.deal_link(tarpc::context::current(), d, true).await,
        None => {
            c.mint_link(
                tarpc::context::current(),
                api::LinkRequest {
                    token: token.to_owned(),
                    grant,
                    ttl_secs: LINK_TTL.as_secs(),
                    bearer: Some(key.verification_key().to_bytes()),
                },
            )
            .await
        }
    }
    .map_err(|e| fail(e.to_string()))?
    .map_err(|e| fail(e.to_string()))?;
    Link::parse(&text).map_err(|e| fail(format!("it gave a link that does not parse: {e}")))
}

impl HostStore {
    /// Seals the file at `path` (of `size` bytes, more than 0) and stores it: a deal on
    /// each host (for `days` if given and shorter than the configured days: the bucket's
    /// lifecycle), or an upload through a minted link.
    pub async fn put(
        &self,
        path: &Path,
        size: u64,
        days: Option<u32>,
    ) -> Result<Stored, StoreError> {
        // The upload's journals and locks live in a folder of their own, gone after it:
        // an object is never resumed (a restarted gateway has dropped its spooled body).
        // (The semaphore is never closed.)
        let _turn = self.stores.acquire().await.ok();
        let mut id = [0u8; 8];
        rand_core::OsRng.fill_bytes(&mut id);
        let journals = self
            .spool
            .join(format!("j-{}", data_encoding::HEXLOWER.encode(&id)));
        let stored = match &self.placement {
            Placement::Links { control, token } => {
                self.put_link(path, size, control, token, &journals).await
            }
            Placement::Deals(terms) => self.put_deals(terms, path, &journals, days).await,
        };
        let _ = std::fs::remove_dir_all(&journals);
        stored
    }

    async fn put_link(
        &self,
        path: &Path,
        size: u64,
        control: &str,
        token: &str,
        journals: &Path,
    ) -> Result<Stored, StoreError> {
        let chunks = proto::Manifest::chunk_count_for(size, self.chunk_bytes);
        // The sealed bytes and the manifest (a few dozen bytes per chunk), with room.
        let bytes_max = net::deal::sealed_estimate(size, self.chunk_bytes) + chunks * 128 + 65536;
        let link = host_link(
            control,
            token,
            &self.key,
            api::LinkGrant::Upload { bytes_max },
            None,
        )
        .await?;
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
            journal_dir: journals.to_owned(),
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
            copies: vec![Replica {
                host_key: link.host_key,
                host: control.to_owned(),
                deal: None,
            }],
            share_key: done.share_key.to_string(),
            erasure: None,
        })
    }

    /// One paid deal per configured host (`net::deal::store`): returns once every host's
    /// CRCs matched on chain and storage time runs.
    async fn put_deals(
        &self,
        terms: &DealTerms,
        path: &Path,
        journals: &Path,
        lifetime: Option<u32>,
    ) -> Result<Stored, StoreError> {
        let mut passphrase = zeroize::Zeroizing::new(vec![0u8; 32]);
        rand_core::OsRng.fill_bytes(&mut passphrase);
        let mut job = net::deal::DealJob {
            file: path.to_owned(),
            hosts: terms.hosts.clone(),
            chain: terms.chain.clone(),
            days: lifetime.map_or(terms.days, |l| l.min(terms.days)),
            period_blocks: terms.period_blocks,
            key: self.key.clone(),
            passphrase,
            kdf: OBJECT_KDF,
            chunk_bytes: self.chunk_bytes,
            workers: self.workers,
            journal_dir: journals.to_owned(),
            via: Vec::new(),
            max_proxy_price: 0,
            host_keys: Vec::new(),
            max_price_per_gib_day: terms.max_price_per_gib_day,
            exchange: None,
            download_fee: 0,
            insurance: None,
            erasure: terms.erasure,
            batches: None,
        };
        let quiet: net::deal::Report = Arc::new(|line: &str| tracing::debug!("{line}"));
        if let Some(m) = &terms.market {
            let ask = net::deal::MarketAsk {
                exchanges: m.exchanges.clone(),
                copies: terms.erasure.map_or(m.copies, |e| e.n()),
                max_price_per_gib_day: terms
                    .max_price_per_gib_day
                    .unwrap_or(MARKET_MAX_PRICE_DEFAULT),
                region: m.region.clone(),
                min_rating: m.min_rating,
                spread: false,
            };
            job.max_price_per_gib_day = Some(ask.max_price_per_gib_day);
            let matched = if m.index.is_empty() {
                net::deal::match_on_exchange(&job, &ask, &quiet).await
            } else {
                net::deal::match_through_index(&job, &ask, &m.index, &quiet).await
            }
            .map_err(|e| StoreError::Market(e.to_string()))?;
            tracing::info!(
                exchange = %matched.addr,
                hosts = ?matched.hosts.iter().map(|h| h.addr.as_str()).collect::<Vec<_>>(),
                "hosts matched for an object"
            );
            job.hosts = matched.hosts.iter().map(|h| h.addr.clone()).collect();
            job.host_keys = matched.hosts.iter().map(|h| h.host).collect();
            job.exchange = Some(matched.key);
        }
        let done = net::deal::store(&job, Arc::new(|_, _| {}), quiet)
            .await
            .map_err(|e| StoreError::Deal(e.to_string()))?;
        Ok(Stored {
            manifest: done.plan.manifest.id.0,
            copies: done
                .placed
                .iter()
                .map(|p| Replica {
                    host_key: p.host,
                    host: p.host_addr.clone(),
                    deal: Some(p.deal.0),
                })
                .collect(),
            share_key: done.share_key.to_string(),
            erasure: job.erasure,
        })
    }

    /// Removes a sealed file that no record names any more from its host, where the
    /// gateway may: a file uploaded through links its `[host]` token minted. A file paid
    /// as deals stays on its hosts until the deals end (`Ok(None)`: nothing to do).
    /// The chunks removed.
    pub async fn drop_file(&self, stored: &Stored) -> Result<Option<u64>, StoreError> {
        let Placement::Links { token, .. } = &self.placement else {
            return Ok(None);
        };
        let mut removed = 0;
        for c in stored.copies.iter().filter(|c| c.deal.is_none()) {
            let fail = |reason: String| StoreError::Control {
                addr: c.host.clone(),
                reason,
            };
            let client = api::host_client(&c.host)
                .await
                .map_err(|e| fail(e.to_string()))?;
            match client
                .drop_object(tarpc::context::current(), token.clone(), stored.manifest)
                .await
                .map_err(|e| fail(e.to_string()))?
            {
                Ok(n) => removed += n,
                // Gone already (an earlier try that was not recorded as done).
                Err(api::ControlError::Invalid(why)) if why.starts_with("no file") => {}
                Err(e) => return Err(fail(e.to_string())),
            }
        }
        Ok(Some(removed))
    }

    /// A download link for `copy` of `stored`, signed by that copy's host.
    async fn link_of(&self, stored: &Stored, copy: &Replica) -> Result<Link, StoreError> {
        let token = match &self.placement {
            Placement::Links { token, .. } => token.as_str(),
            Placement::Deals(_) => "",
        };
        let link = host_link(
            &copy.host,
            token,
            &self.key,
            api::LinkGrant::Download {
                manifest: stored.manifest,
            },
            copy.deal,
        )
        .await?;
        if link.host_key == copy.host_key {
            Ok(link)
        } else {
            Err(StoreError::OtherHost)
        }
    }

    /// A download link for `stored` from the first copy's host that gives one.
    async fn download_link(&self, stored: &Stored) -> Result<Link, StoreError> {
        let mut last = StoreError::OtherHost;
        for c in &stored.copies {
            match self.link_of(stored, c).await {
                Ok(link) => return Ok(link),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Bytes `range` of a stored object, as a stream of verified plaintext: only the
    /// chunks that cover the range are fetched, a few at a time (at most
    /// [`READ_AHEAD_BYTES`] of sealed chunks in flight), each checked against its BLAKE3 id
    /// and decrypted before any of it is given out. Nothing touches the disk here. An
    /// object stored as erasure shares is read from K of its hosts at once, each chunk
    /// rebuilt from their shares ([`read_shares`](Self::read_shares)).
    pub async fn read(&self, stored: &Stored, range: Range<u64>) -> Result<Reading, StoreError> {
        if let Some(scheme) = stored.erasure {
            return self.read_shares(stored, scheme, range).await;
        }
        let link = self.download_link(stored).await?;
        let mut conn = Conn::open(&link, &[], &self.key, 0)
            .await
            .map_err(|e| transfer(&link.addr, e.to_string()))?;
        let (manifest, cipher) = manifest_of(&mut conn, stored, &link.addr).await?;
        let (first, end) = chunks_of(&manifest, &range).map_err(|e| transfer(&link.addr, e))?;
        let window = conn.inflight_bytes_max.clamp(1, READ_AHEAD_BYTES);
        let source = Source::Copy {
            conn,
            next_ask: first,
            asked: VecDeque::new(),
            in_flight: 0,
            window,
        };
        Ok(Reading::new(
            source,
            manifest,
            cipher,
            first..end,
            range,
            link.addr,
        ))
    }

    /// [`read`](Self::read) of an object stored as erasure shares: a connection to every
    /// copy's host that answers, each host's share list (`GetObjectChunks`), then per chunk
    /// K shares asked of K hosts at once, a host that fails left for the next.
    async fn read_shares(
        &self,
        stored: &Stored,
        scheme: Scheme,
        range: Range<u64>,
    ) -> Result<Reading, StoreError> {
        let mut hosts = Vec::new();
        let mut why = Vec::new();
        for c in &stored.copies {
            let opened = async {
                let link = self.link_of(stored, c).await?;
                let conn = Conn::open(&link, &[], &self.key, 0)
                    .await
                    .map_err(|e| transfer(&link.addr, e.to_string()))?;
                Ok::<_, StoreError>((link.addr, conn))
            };
            match opened.await {
                Ok(h) => hosts.push(h),
                Err(e) => why.push(e.to_string()),
            }
        }
        if hosts.len() < usize::from(scheme.k()) {
            return Err(StoreError::Shares(format!(
                "{} of the {} hosts holding erasure {scheme} shares answer, {} needed: {}",
                hosts.len(),
                stored.copies.len(),
                scheme.k(),
                why.join("; ")
            )));
        }
        // The manifest from the first host that sends it.
        let mut opened = None;
        for (addr, conn) in &mut hosts {
            match manifest_of(conn, stored, addr).await {
                Ok(m) => {
                    opened = Some(m);
                    break;
                }
                Err(e) => why.push(e.to_string()),
            }
        }
        let Some((manifest, cipher)) = opened else {
            return Err(StoreError::Shares(format!(
                "no host sends the manifest: {}",
                why.join("; ")
            )));
        };
        let mut with_ids = Vec::new();
        for (addr, mut conn) in hosts {
            match conn.object_chunks().await {
                Ok(ids) if ids.len() == manifest.chunks.len() => with_ids.push(ShareHost {
                    addr,
                    conn: Some(conn),
                    ids,
                }),
                Ok(ids) => why.push(format!(
                    "{addr}: it lists {} pieces of {} chunks",
                    ids.len(),
                    manifest.chunks.len()
                )),
                Err(e) => why.push(format!("{addr}: {e}")),
            }
        }
        if with_ids.len() < usize::from(scheme.k()) {
            return Err(StoreError::Shares(format!(
                "{} hosts list their erasure {scheme} shares, {} needed: {}",
                with_ids.len(),
                scheme.k(),
                why.join("; ")
            )));
        }
        let (first, end) = chunks_of(&manifest, &range).map_err(StoreError::Shares)?;
        let addr = with_ids
            .iter()
            .map(|h| h.addr.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let source = Source::Shares {
            hosts: with_ids,
            scheme,
        };
        Ok(Reading::new(
            source,
            manifest,
            cipher,
            first..end,
            range,
            addr,
        ))
    }
}

fn transfer(addr: &str, reason: String) -> StoreError {
    StoreError::Transfer {
        addr: addr.to_owned(),
        reason,
    }
}

/// The manifest of `stored` from the host at the other end of `conn`, opened with the
/// object's share key.
async fn manifest_of(
    conn: &mut Conn,
    stored: &Stored,
    addr: &str,
) -> Result<(proto::Manifest, Arc<FileCipher>), StoreError> {
    let share: ShareKey = stored
        .share_key
        .parse()
        .map_err(|e| transfer(addr, format!("the index's share key does not parse: {e}")))?;
    let manifest_id = ChunkId(stored.manifest);
    let envelope = match conn.call(Request::GetObject).await {
        Ok(Reply::Data(env)) if ChunkId::of(&env) == manifest_id => env,
        Ok(Reply::Data(_)) => {
            return Err(transfer(
                addr,
                "it sent a manifest that is not the stored one".into(),
            ))
        }
        Ok(_) => {
            return Err(transfer(
                addr,
                "it answered the manifest request oddly".into(),
            ))
        }
        Err(e) => return Err(transfer(addr, e.to_string())),
    };
    let (manifest, cipher) = open_envelope(&envelope, manifest_id, Unlock::ShareKey(&share))
        .map_err(|e| transfer(addr, format!("the manifest does not open: {e}")))?;
    Ok((manifest, cipher))
}

/// The chunks `[first, end)` that hold bytes `range` of the file `manifest` describes.
fn chunks_of(manifest: &proto::Manifest, range: &Range<u64>) -> Result<(usize, usize), String> {
    let cb = u64::from(manifest.chunk_bytes);
    if range.end > manifest.file_bytes || range.start >= range.end || cb == 0 {
        return Err(format!(
            "bytes {range:?} are not within the sealed file's {}",
            manifest.file_bytes
        ));
    }
    let first = usize::try_from(range.start / cb).unwrap_or(usize::MAX);
    let end = usize::try_from((range.end - 1) / cb + 1).unwrap_or(usize::MAX);
    if end > manifest.chunks.len() {
        return Err("the manifest lists fewer chunks than its size needs".into());
    }
    Ok((first, end))
}

/// Sealed bytes a read keeps asked for ahead of what it has given out.
pub const READ_AHEAD_BYTES: u64 = 32 << 20;

/// A read in progress (see [`HostStore::read`]).
pub struct Reading {
    source: Source,
    cipher: Arc<FileCipher>,
    chunks: Vec<ChunkEntry>,
    chunk_bytes: u64,
    next_give: usize,
    end: usize,
    range: Range<u64>,
    /// The host (or hosts) read from, for errors.
    addr: String,
}

/// Where a read's chunks come from.
enum Source {
    /// One host's full copy, requests pipelined within `window` bytes.
    Copy {
        conn: Conn,
        next_ask: usize,
        asked: VecDeque<(u32, u64)>,
        in_flight: u64,
        window: u64,
    },
    /// Erasure shares on several hosts, in share order (data shares first).
    Shares {
        hosts: Vec<ShareHost>,
        scheme: Scheme,
    },
}

/// A host holding one erasure share of each chunk.
struct ShareHost {
    addr: String,
    /// `None` once it failed: left out for the rest of the read.
    conn: Option<Conn>,
    /// Its share of each chunk, in chunk order.
    ids: Vec<ChunkId>,
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
    /// Every chunk of the range has been given out: the next `next` is `None`.
    pub fn given_all(&self) -> bool {
        self.next_give >= self.end
    }

    /// A read of bytes `range`, which chunks `chunks` of the file `manifest` hold.
    fn new(
        source: Source,
        manifest: proto::Manifest,
        cipher: Arc<FileCipher>,
        chunks: Range<usize>,
        range: Range<u64>,
        addr: String,
    ) -> Reading {
        Reading {
            source,
            cipher,
            chunks: manifest.chunks,
            chunk_bytes: u64::from(manifest.chunk_bytes),
            next_give: chunks.start,
            end: chunks.end,
            range,
            addr,
        }
    }

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
        let i = self.next_give;
        let mut buf = match &mut self.source {
            Source::Copy {
                conn,
                next_ask,
                asked,
                in_flight,
                window,
            } => {
                while *next_ask < self.end {
                    let len = u64::from(self.chunks[*next_ask].sealed_bytes);
                    if !asked.is_empty() && *in_flight + len > *window {
                        break;
                    }
                    let id = conn
                        .send(&Request::Get {
                            id: self.chunks[*next_ask].id,
                        })
                        .await
                        .map_err(|e| e.to_string())?;
                    asked.push_back((id, len));
                    *in_flight += len;
                    *next_ask += 1;
                }
                let Some((want, len)) = asked.pop_front() else {
                    return Err("nothing asked".into());
                };
                *in_flight -= len;
                let buf = match conn.reply_to(want).await {
                    Ok(Reply::Data(b)) => b,
                    Ok(_) => return Err(format!("chunk {i}: an unexpected answer")),
                    Err(e) => return Err(format!("chunk {i}: {e}")),
                };
                if ChunkId::of(&buf) != self.chunks[i].id {
                    return Err(format!("chunk {i} is not the one sealed (BLAKE3 differs)"));
                }
                buf
            }
            // Rebuilt only if it hashes to the id its shares name, which `check_share`
            // held to this chunk's.
            Source::Shares { hosts, scheme } => rebuilt(hosts, *scheme, i, &self.chunks[i]).await?,
        };
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

/// Chunk `i` rebuilt from K shares: asked of the first K live hosts at once, then of the
/// next ones for what is still missing; a host whose connection fails is left out of the
/// rest of the read, one that lacks the share or sends a wrong one only for this chunk.
/// Shares that do not rebuild the chunk (a corrupt one that still hashed to its listed id)
/// are kept and one more is asked for, so the corrupt one is outvoted.
async fn rebuilt(
    hosts: &mut [ShareHost],
    scheme: Scheme,
    i: usize,
    chunk: &ChunkEntry,
) -> Result<Vec<u8>, String> {
    let mut need = usize::from(scheme.k());
    let mut shares: std::collections::BTreeMap<u8, Vec<u8>> = Default::default();
    let mut tried = vec![false; hosts.len()];
    let mut faults = Vec::new();
    loop {
        while shares.len() < need {
            let pick: Vec<usize> = (0..hosts.len())
                .filter(|&h| !tried[h] && hosts[h].conn.is_some())
                .take(need - shares.len())
                .collect();
            if pick.is_empty() {
                return Err(format!(
                    "chunk {i}: only {} of the {need} erasure shares needed to rebuild it could be had: {}",
                    shares.len(),
                    faults.join("; ")
                ));
            }
            let asks = hosts
                .iter_mut()
                .enumerate()
                .filter(|(h, _)| pick.contains(h))
                .map(|(h, host)| async move {
                    let id = host.ids[i];
                    let conn = host.conn.as_mut().expect("picked live hosts");
                    (h, conn.call(Request::Get { id }).await)
                });
            for (h, got) in futures::future::join_all(asks).await {
                tried[h] = true;
                match got {
                    Ok(Reply::Data(bytes)) => {
                        match net::client::check_share(&bytes, &hosts[h].ids[i], chunk, scheme) {
                            Ok(index) => {
                                shares.entry(index).or_insert(bytes);
                            }
                            Err(why) => faults.push(format!("{}: {why}", hosts[h].addr)),
                        }
                    }
                    Ok(other) => faults.push(format!("{}: {other:?}", hosts[h].addr)),
                    Err(net::NetError::Remote { message, .. }) => {
                        faults.push(format!("{}: {message}", hosts[h].addr));
                    }
                    Err(e) => {
                        faults.push(format!("{}: {e}", hosts[h].addr));
                        hosts[h].conn = None;
                    }
                }
            }
        }
        let (result, back) = tokio::task::spawn_blocking(move || {
            let refs: Vec<&[u8]> = shares.values().map(Vec::as_slice).collect();
            let r = engine::erasure::rebuild(&refs).map(|(_, chunk)| chunk);
            (r, shares)
        })
        .await
        .map_err(|e| format!("chunk {i}: {e}"))?;
        match result {
            Ok(chunk) => return Ok(chunk),
            Err(engine::erasure::ErasureError::Rebuilt { .. }) => {
                faults.push(format!("chunk {i}: {need} shares did not rebuild it"));
                shares = back;
                need += 1;
            }
            Err(e) => return Err(format!("chunk {i}: {e}")),
        }
    }
}
