//! The client side of the data plane: connecting through proxies, presenting a link, and
//! the two streaming paths of `mspace put` and `mspace get`.
//!
//! `put_file` reads, seals and uploads in one pass: chunks come from
//! `engine::seal::FileSeal` (the file read by position, bounded memory, no encrypted copy
//! on disk), each is
//! journaled before it is sent, and puts are pipelined within the host's in-flight limit.
//! `get_file` fetches the manifest and chunks in order with requests in flight, verifies
//! and decrypts them with `engine::seal::open_stream`, and renames a temporary file into
//! place only when every chunk passed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use ed25519_consensus::SigningKey;
use engine::buf::ChunkBuf;
use engine::plain::{PlainFile, ReadAt};
use engine::seal::{ChunkSource, FileKeys, FileSeal, PartOf, Plaintext, SealedFile};
use engine::sealed_dir::{open_envelope, open_to_file, Unlock};
use engine::{ChunkFault, CodecError};
use proto::erasure::Scheme;
use proto::link::{Grant, Link};
use proto::{ChunkEntry, ChunkId, FileId, KdfParams, Manifest, ShareKey};
use rand_core::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::io::{read_reply, write_put, Counted, Counters};
use crate::journal::{Journal, JournalHeader};
use crate::wire::{hello_message, ProxyReceipt, Reply, Request, FRAME_BODY_MAX, HAVE_IDS_MAX};
use crate::NetError;

/// One proxy on the way: where it is, its session, and the counters when it became a pipe.
#[derive(Clone, Debug)]
struct Hop {
    addr: String,
    session: [u8; 16],
    /// The proxy's key, chain and price, from its `ProxyReady`: what the receipt states.
    proxy: [u8; 32],
    chain_id: u64,
    price_per_gib: u64,
    up0: u64,
    down0: u64,
}

/// The most a client pays a proxy, MASPC per GiB relayed, unless told otherwise.
pub const PROXY_PRICE_MAX_DEFAULT: u64 = 10;

type Rd = BufReader<ReadHalf<Counted<TcpStream>>>;
type Wr = WriteHalf<Counted<TcpStream>>;

/// An open, accepted connection to a host.
#[derive(Debug)]
pub struct Conn {
    rd: Rd,
    wr: Wr,
    next: u32,
    /// The address the host sees this client at (a proxy's, through proxies).
    pub peer_seen: String,
    pub upload_bytes_left: u64,
    pub inflight_bytes_max: u64,
    pub inflight_requests_max: u32,
    hops: Vec<Hop>,
    counters: Arc<Counters>,
    /// When the first chunk went out on this connection.
    pub first_put: Option<std::time::Instant>,
}

/// How long a client waits for any one reply (a durable put of a large chunk on a busy host
/// included) or for a connection, before it gives up with an error.
pub const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

async fn timed<T>(
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, NetError>>,
) -> Result<T, NetError> {
    tokio::time::timeout(REPLY_TIMEOUT, f)
        .await
        .map_err(|_| NetError::Timeout(what))?
}

fn remote(reply: Reply) -> NetError {
    match reply {
        Reply::Error { code, message } => NetError::Remote { code, message },
        other => NetError::Protocol(format!("unexpected reply {:#04x}", other.kind())),
    }
}

impl Conn {
    /// Connects to the link's host, through `via` proxies in order, and presents the link.
    /// A proxy asking more than `max_proxy_price` (MASPC per GiB relayed) is refused
    /// before anything is relayed.
    pub async fn open(
        link: &Link,
        via: &[String],
        key: &SigningKey,
        max_proxy_price: u64,
    ) -> Result<Conn, NetError> {
        let first = via.first().map_or(link.addr.as_str(), String::as_str);
        let stream = timed("connecting", async {
            TcpStream::connect(first)
                .await
                .map_err(|e| NetError::Protocol(format!("cannot connect to {first}: {e}")))
        })
        .await?;
        let _ = stream.set_nodelay(true);
        let counters = Arc::new(Counters::default());
        let (rd, wr) = tokio::io::split(Counted::new(stream, Arc::clone(&counters)));
        let mut conn = Conn {
            rd: BufReader::with_capacity(256 << 10, rd),
            wr,
            next: 1,
            peer_seen: String::new(),
            upload_bytes_left: 0,
            inflight_bytes_max: 0,
            inflight_requests_max: 0,
            hops: Vec::new(),
            counters,
            first_put: None,
        };
        for (i, proxy) in via.iter().enumerate() {
            let target = via.get(i + 1).map_or(link.addr.as_str(), String::as_str);
            if target.is_empty() || target.len() > crate::wire::ADDR_MAX {
                return Err(NetError::Protocol(format!("{target:?} is not host:port")));
            }
            match conn
                .call(Request::ProxyConnect {
                    target: target.to_string(),
                })
                .await?
            {
                Reply::ProxyReady {
                    session,
                    proxy: proxy_key,
                    chain_id,
                    price_per_gib,
                } => {
                    if price_per_gib > max_proxy_price {
                        return Err(NetError::Protocol(format!(
                            "proxy {proxy} asks {price_per_gib} MASPC per GiB relayed, over the {max_proxy_price} accepted (--max-proxy-price)"
                        )));
                    }
                    conn.hops.push(Hop {
                        addr: proxy.clone(),
                        session,
                        proxy: proxy_key,
                        chain_id,
                        price_per_gib,
                        up0: conn.counters.up.load(Relaxed),
                        // Bytes read ahead past the reply came through the pipe already.
                        down0: conn.counters.down.load(Relaxed) - conn.rd.buffer().len() as u64,
                    });
                }
                other => return Err(remote(other)),
            }
        }
        let (_, welcome) = timed("waiting for the host", read_reply(&mut conn.rd, 4096)).await?;
        let Reply::Welcome {
            nonce,
            peer,
            frame_body_max,
            inflight_bytes_max,
            inflight_requests_max,
        } = welcome
        else {
            return Err(remote(welcome));
        };
        if frame_body_max < proto::CHUNK_BYTES_MAX + proto::TAG_BYTES + 36 {
            return Err(NetError::Protocol(format!(
                "the host takes frames of at most {frame_body_max} bytes, less than a chunk"
            )));
        }
        conn.peer_seen = peer;
        conn.inflight_bytes_max = inflight_bytes_max;
        conn.inflight_requests_max = inflight_requests_max.max(1);
        let bearer = link.bearer.map(|_| {
            (
                key.verification_key().to_bytes(),
                key.sign(&hello_message(&nonce, &link.id)).to_bytes(),
            )
        });
        match conn
            .call(Request::Hello {
                link: link.to_bytes(),
                bearer,
            })
            .await?
        {
            Reply::Ready { upload_bytes_left } => conn.upload_bytes_left = upload_bytes_left,
            other => return Err(remote(other)),
        }
        Ok(conn)
    }

    /// Sends a request without waiting for its reply (pipelining); returns its request id.
    pub async fn send(&mut self, req: &Request) -> Result<u32, NetError> {
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        let frame = req.to_frame(id);
        timed("sending a request", async {
            Ok(self.wr.write_all(&frame).await?)
        })
        .await?;
        Ok(id)
    }

    /// Sends a put from where its bytes are, without waiting for the reply.
    pub async fn send_put(
        &mut self,
        id: &ChunkId,
        crc32c: u32,
        bytes: &[u8],
    ) -> Result<u32, NetError> {
        let req = self.next;
        self.next = self.next.wrapping_add(1);
        self.first_put.get_or_insert_with(std::time::Instant::now);
        timed(
            "sending a chunk",
            write_put(&mut self.wr, req, id, crc32c, bytes),
        )
        .await?;
        Ok(req)
    }

    /// Reads the next reply (replies come in request order), within [`REPLY_TIMEOUT`].
    pub async fn recv(&mut self) -> Result<(u32, Reply), NetError> {
        timed(
            "waiting for a reply",
            read_reply(&mut self.rd, FRAME_BODY_MAX),
        )
        .await
    }

    /// Reads the reply to request `want`: an error frame is an `Err` whatever request it
    /// names (a host that ends the connection may answer request 0), any other reply must
    /// be the one expected.
    pub async fn reply_to(&mut self, want: u32) -> Result<Reply, NetError> {
        let (got, reply) = self.recv().await?;
        if let Reply::Error { .. } = reply {
            return Err(remote(reply));
        }
        if got != want {
            return Err(NetError::Protocol(format!(
                "reply to request {got}, expected {want}"
            )));
        }
        Ok(reply)
    }

    /// Sends one request and reads its reply; an error reply is an `Err`.
    pub async fn call(&mut self, req: Request) -> Result<Reply, NetError> {
        let id = self.send(&req).await?;
        self.reply_to(id).await
    }

    /// What the host recorded the download link's file with (`GetObjectChunks`): the
    /// manifest's chunk ids for a full copy, else its erasure share of each chunk.
    pub async fn object_chunks(&mut self) -> Result<Vec<ChunkId>, NetError> {
        match self.call(Request::GetObjectChunks).await? {
            Reply::Data(b) => Ok(crate::wire::decode_object_chunks(&b)?),
            other => Err(remote(other)),
        }
    }

    /// Which of `ids` the host has.
    pub async fn have(&mut self, ids: &[ChunkId]) -> Result<HashSet<ChunkId>, NetError> {
        let mut out = HashSet::new();
        for batch in ids.chunks(HAVE_IDS_MAX as usize) {
            let Reply::HaveReply { bits } = self
                .call(Request::Have {
                    ids: batch.to_vec(),
                })
                .await?
            else {
                return Err(NetError::Protocol("expected a have reply".into()));
            };
            for (i, id) in batch.iter().enumerate() {
                if bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0) {
                    out.insert(*id);
                }
            }
        }
        Ok(out)
    }

    /// Ends the session: closes the sending side, reads what the host still sends (a
    /// bounded amount, within [`REPLY_TIMEOUT`]), and gives each proxy on the way a signed
    /// receipt of the bytes it relayed. The transfer is done either way: receipts that fail
    /// come back as errors beside those accepted.
    pub async fn finish(mut self, key: &SigningKey) -> Receipts {
        let _ = self.wr.shutdown().await;
        let mut sink = [0u8; 4096];
        let drained = tokio::time::timeout(REPLY_TIMEOUT, async {
            let mut left = 1u64 << 20;
            while left > 0 {
                match self.rd.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n as u64),
                }
            }
        })
        .await;
        let (up, down) = (
            self.counters.up.load(Relaxed),
            self.counters.down.load(Relaxed),
        );
        let mut out = Receipts::default();
        if drained.is_err() {
            out.errors.push("the host did not close the session".into());
        }
        for hop in &self.hops {
            let r = ProxyReceipt::sign(
                key,
                &proto::receipt::Relayed {
                    chain_id: hop.chain_id,
                    proxy: proto::tx::AccountId(hop.proxy),
                    session: hop.session,
                    up_bytes: up - hop.up0,
                    down_bytes: down - hop.down0,
                    price_per_gib: hop.price_per_gib,
                    expiry_unix_secs: crate::now_secs() + proto::receipt::RECEIPT_LIFE_SECS,
                },
            );
            let sent = timed("a proxy receipt", async {
                let mut s = TcpStream::connect(&hop.addr).await?;
                s.write_all(&Request::ProxyReceipt(r.clone()).to_frame(1))
                    .await?;
                let (_, reply) = read_reply(&mut s, 4096).await?;
                match reply {
                    Reply::ReceiptOk => Ok(()),
                    other => Err(remote(other)),
                }
            })
            .await;
            match sent {
                Ok(()) => out.accepted.push(r),
                Err(e) => out.errors.push(format!("proxy {}: {e}", hop.addr)),
            }
        }
        out
    }
}

/// Receipts given to the proxies of a session, and those that failed (which do not undo
/// the transfer).
#[derive(Debug, Default, Clone)]
pub struct Receipts {
    pub accepted: Vec<ProxyReceipt>,
    pub errors: Vec<String>,
}

/// What `put_file` needs.
#[derive(Debug)]
pub struct PutJob {
    pub file: PathBuf,
    pub link: Link,
    pub via: Vec<String>,
    /// The most a proxy of `via` may charge, MASPC per GiB relayed.
    pub max_proxy_price: u64,
    pub key: SigningKey,
    pub passphrase: zeroize::Zeroizing<Vec<u8>>,
    pub chunk_bytes: u32,
    pub workers: usize,
    pub kdf: KdfParams,
    /// Where the upload journal lives.
    pub journal_dir: PathBuf,
    /// For a paid deal: the sealing the payment was made for and the part of the file the
    /// deal covers. The upload seals that part with the plan's salt and file id, and every
    /// chunk must come out as paid for; a file changed since is an error, never a new key.
    pub preset: Option<Preset>,
}

/// What one paid deal of a [`DealPlan`] uploads: the plan's entries `entries` (see
/// [`DealPlan::parts`]); the part holding the manifest envelope also records the file.
#[derive(Clone, Debug)]
pub struct Preset {
    pub plan: DealPlan,
    pub entries: Range<usize>,
    /// For a plan with erasure shares: which share of each chunk this host stores (the
    /// upload sends that share instead of the chunk).
    pub share: Option<u8>,
    /// For a host holding a batch of the file's chunks (a copy spread over several hosts):
    /// those chunks. The part's chunks are `entries` within it, and the file is recorded
    /// on the host with these chunks only.
    pub batch: Option<Range<usize>>,
}

impl Preset {
    /// Part `part` ([`DealPlan::parts_of`]) of the deals of a host holding `batch` of the
    /// plan's chunks (all of them: a full copy, or a share of each) and the manifest.
    pub fn of_batch(
        plan: DealPlan,
        batch: Range<usize>,
        part: Range<usize>,
        share: Option<u8>,
    ) -> Preset {
        let n = plan.chunks.len();
        let end = if part.end > batch.len() {
            n + 1
        } else {
            batch.start + part.end
        };
        Preset {
            entries: batch.start + part.start..end,
            batch: (batch != (0..n)).then_some(batch),
            plan,
            share,
        }
    }

    /// The chunk indices the part sends.
    fn chunks(&self) -> Range<usize> {
        let n = self
            .batch
            .as_ref()
            .map_or(self.plan.chunks.len(), |b| b.end);
        self.entries.start.min(n)..self.entries.end.min(n)
    }

    /// What this host stores of every chunk of the file, in order: the chunk, or its share.
    fn stored(&self) -> Vec<ChunkEntry> {
        self.plan.stored_by(self.share)
    }

    /// The chunks the file is recorded with on this host: what it stores of every chunk, or
    /// of its batch.
    fn listed(&self, stored: &[ChunkEntry]) -> Vec<ChunkId> {
        let all = 0..stored.len();
        stored[self.batch.clone().unwrap_or(all)]
            .iter()
            .map(|c| c.id)
            .collect()
    }

    /// Whether the part holds the manifest envelope (the plan's last entry).
    fn has_manifest(&self) -> bool {
        self.entries.end > self.plan.chunks.len()
    }
}

/// A file sealed once to learn what a deal must cover (the first of the paid upload's two
/// passes): every chunk's id, size and CRC32C, and the manifest envelope's, computed with
/// the ciphertext thrown away. The upload seals the file again with the same key and
/// nonces, which gives the same bytes, and checks each chunk against this list.
#[derive(Clone, Debug)]
pub struct DealPlan {
    pub salt: [u8; 16],
    pub file_id: FileId,
    pub kdf: KdfParams,
    pub chunk_bytes: u32,
    pub file_bytes: u64,
    /// The file's chunks, in order.
    pub chunks: Vec<ChunkEntry>,
    /// The manifest envelope, as a chunk: the deal's last entry.
    pub manifest: ChunkEntry,
    /// With an erasure scheme: each chunk's shares, stored one per host instead of the chunk.
    pub erasure: Option<ErasurePlan>,
}

/// The shares of a planned file (docs/formats.md section 24): host `i` of the file stores
/// share `i` of every chunk, and the manifest envelope whole.
#[derive(Clone, Debug)]
pub struct ErasurePlan {
    pub scheme: Scheme,
    /// `shares[j][i]`: share `i` of chunk `j`, as a chunk the host stores.
    pub shares: Vec<Vec<ChunkEntry>>,
}

/// A share as the chunk a host stores: its id, length and CRC32C.
fn share_entry(share: &[u8]) -> Result<ChunkEntry, CodecError> {
    let (crc32c, id) = engine::codec::checksums(share);
    Ok(ChunkEntry {
        id,
        sealed_bytes: u32::try_from(share.len())
            .map_err(|_| CodecError::Invalid("a share over 4 GiB".into()))?,
        crc32c,
    })
}

fn erasure_error(e: engine::erasure::ErasureError) -> CodecError {
    CodecError::Invalid(format!("erasure coding: {e}"))
}

impl DealPlan {
    /// What host `share` of the file stores of every chunk, in order: the chunk itself
    /// (`None`: a full copy), or its share.
    pub fn stored_by(&self, share: Option<u8>) -> Vec<ChunkEntry> {
        match (share, &self.erasure) {
            (Some(i), Some(e)) => e.shares.iter().map(|s| s[usize::from(i)]).collect(),
            _ => self.chunks.clone(),
        }
    }

    /// What the deals of host `share` cover: what it stores of every chunk (`None`: the
    /// chunks, a full copy), then the manifest envelope.
    pub fn entries_of(&self, share: Option<u8>) -> Vec<ChunkEntry> {
        let mut e = self.stored_by(share);
        e.push(self.manifest);
        e
    }

    /// The share key of the planned file (it opens this file only).
    pub fn share_key(&self, passphrase: &[u8]) -> Result<ShareKey, NetError> {
        let keys = FileKeys {
            kdf: self.kdf,
            salt: self.salt,
            file_id: self.file_id,
        };
        Ok(ShareKey {
            file_id: self.file_id,
            manifest_id: self.manifest.id,
            file_key: keys.file_key(passphrase)?,
        })
    }

    /// The deals the file is paid as, as ranges of [`DealPlan::entries_of`]: one deal covers
    /// at most `DEAL_CHUNKS_MAX` entries, so a larger file is paid in consecutive parts,
    /// the last of which ends with the manifest envelope.
    pub fn parts(&self) -> Vec<Range<usize>> {
        self.parts_of(0..self.chunks.len())
    }

    /// [`DealPlan::parts`] of a host holding `batch` of the chunks and the manifest: ranges
    /// of its entries (the batch's, then the envelope), for [`Preset::of_batch`].
    pub fn parts_of(&self, batch: Range<usize>) -> Vec<Range<usize>> {
        let n = batch.len() + 1;
        let max = proto::tx::DEAL_CHUNKS_MAX as usize;
        (0..n.div_ceil(max))
            .map(|k| k * max..((k + 1) * max).min(n))
            .collect()
    }
}

/// Seals `file` without keeping the ciphertext, for a [`DealPlan`]; blocking (call it off
/// the runtime's threads). `progress(done, total)` counts plaintext bytes. `keys`: the salt
/// and file id of a plan journaled before an interrupted payment, else fresh ones are drawn.
/// `erasure`: also code each sealed chunk into that scheme's shares (thrown away too).
#[allow(clippy::too_many_arguments)] // the sealing's own knobs, then the plan's two choices
pub fn plan_deal(
    file: &Path,
    passphrase: &[u8],
    chunk_bytes: u32,
    kdf: KdfParams,
    workers: usize,
    progress: &dyn Fn(u64, u64),
    keys: Option<([u8; 16], FileId)>,
    erasure: Option<Scheme>,
) -> Result<DealPlan, NetError> {
    let f = std::fs::File::open(file).map_err(|e| {
        NetError::Codec(CodecError::Io {
            op: "open",
            path: file.to_owned(),
            source: e,
        })
    })?;
    let size = f.metadata()?.len();
    // Before the passphrase's slow derivation.
    engine::seal::check_chunk_count(size, chunk_bytes)?;
    let keys = match keys {
        Some((salt, file_id)) => FileKeys { kdf, salt, file_id },
        None => FileKeys::fresh(kdf)?,
    };
    let key = keys.file_key(passphrase)?;
    let mut seal = FileSeal::whole(
        Plaintext::file(f)?,
        &key,
        keys,
        chunk_bytes,
        workers,
        Some(size),
    )?;
    let mut coder = erasure.map(engine::erasure::Encoder::new);
    let mut shares = Vec::new();
    while let Some(chunk) = seal.next() {
        let chunk = chunk?;
        if let Some(coder) = &mut coder {
            let of_chunk = coder
                .shares(chunk.entry.id, chunk.bytes())
                .map_err(erasure_error)?;
            shares.push(
                of_chunk
                    .iter()
                    .map(|s| share_entry(s))
                    .collect::<Result<Vec<_>, _>>()?,
            );
        }
        drop(chunk);
        progress(seal.plain_bytes(), size);
    }
    let SealedFile {
        manifest,
        envelope,
        manifest_id,
    } = seal.finish(file_name(file))?;
    let (salt, file_id) = (keys.salt, keys.file_id);
    Ok(DealPlan {
        salt,
        file_id,
        kdf,
        chunk_bytes,
        file_bytes: size,
        chunks: manifest.chunks.clone(),
        manifest: ChunkEntry {
            id: manifest_id,
            sealed_bytes: u32::try_from(envelope.len())
                .map_err(|_| NetError::Protocol("the manifest envelope is over 4 GiB".into()))?,
            crc32c: engine::codec::crc32c(&envelope),
        },
        erasure: erasure.map(|scheme| ErasurePlan { scheme, shares }),
    })
}

/// The name a manifest records: from the resolved path, so a resumed upload through another
/// name (a symlink) seals the same manifest, never another under the same key.
fn file_name(file: &Path) -> String {
    let name = std::fs::canonicalize(file)
        .ok()
        .and_then(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
        .unwrap_or_default();
    if proto::manifest::check_name(&name).is_ok() {
        name
    } else {
        String::new()
    }
}

/// What an upload did.
#[derive(Debug)]
pub struct PutDone {
    pub file_id: FileId,
    pub manifest_id: ChunkId,
    pub share_key: ShareKey,
    pub manifest: Manifest,
    /// Chunks sent in this run, and those the host already had from an interrupted one.
    pub sent_chunks: u64,
    pub skipped_chunks: u64,
    pub peer_seen: String,
    pub receipts: Receipts,
    /// When its first chunk went out (None: the host had every chunk already).
    pub first_sent: Option<std::time::Instant>,
}

/// The journal file of one upload: per link and file path.
pub fn journal_path(dir: &Path, link: &Link, file: &Path) -> PathBuf {
    journal_path_for(dir, &link.id, file)
}

/// The journal file of an upload under link id `id` (or a pending deal's plan, whose id
/// is [`PENDING_DEAL_ID`]).
pub fn journal_path_for(dir: &Path, id: &[u8; 16], file: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_owned());
    let h = blake3::hash(abs.as_os_str().as_encoded_bytes());
    dir.join(format!(
        "put-{}-{}.journal",
        data_encoding::HEXLOWER.encode(id),
        &h.to_hex()[..16]
    ))
}

/// The "link id" under which a paid upload's plan (its salt and file id) is journaled
/// before the payment goes out, so that a run killed after paying seals the same chunks
/// again and finds its deals instead of paying twice.
pub const PENDING_DEAL_ID: [u8; 16] = *b"pending deal \0\0\0";

/// What an upload sends for one chunk of the file: the sealed chunk, or one of its shares.
struct Piece {
    /// The chunk's index in the file.
    index: u64,
    /// What the host stores: the chunk's entry, or the share's.
    entry: ChunkEntry,
    /// The chunk's plaintext bytes (progress counts these).
    plain: u32,
    bytes: PieceBytes,
}

enum PieceBytes {
    Chunk(engine::seal::SealedChunk),
    Share(Vec<u8>),
}

impl Piece {
    fn bytes(&self) -> &[u8] {
        match &self.bytes {
            PieceBytes::Chunk(c) => c.bytes(),
            PieceBytes::Share(s) => s,
        }
    }
}

enum Sealed {
    Chunk(Piece),
    Done {
        manifest: Manifest,
        envelope: Vec<u8>,
        manifest_id: ChunkId,
    },
}

/// Why an attempt stopped: a changed file restarts the upload with a fresh key.
enum Attempt {
    Done(Box<PutDone>),
    Changed { index: u64 },
}

/// Uploads a file through `job.link`; `progress(done, total)` counts plaintext bytes
/// acknowledged (or found on the host).
pub async fn put_file(
    job: &PutJob,
    progress: Arc<dyn Fn(u64, u64) + Send + Sync>,
) -> Result<PutDone, NetError> {
    let Grant::Upload { .. } = job.link.grant else {
        return Err(NetError::Protocol(
            "this is a download link; `mspace put` needs an upload link".into(),
        ));
    };
    // Held across both attempts: no other run of this upload slips in between.
    let _lock = Journal::lock(&journal_path(&job.journal_dir, &job.link, &job.file))?;
    match put_attempt(job, true, Arc::clone(&progress)).await? {
        Attempt::Done(d) => Ok(*d),
        Attempt::Changed { index } if job.preset.is_some() => Err(NetError::Protocol(format!(
            "chunk {index} of the file is not the one paid for: the file or passphrase changed \
             since the payment"
        ))),
        Attempt::Changed { index } => {
            tracing::warn!(index, "the file or passphrase changed since the interrupted upload: starting over with a fresh key");
            match put_attempt(job, false, progress).await? {
                Attempt::Done(d) => Ok(*d),
                Attempt::Changed { .. } => Err(NetError::Protocol(
                    "the file changed while it was being uploaded".into(),
                )),
            }
        }
    }
}

pub(crate) fn mtime_nanos(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

async fn put_attempt(
    job: &PutJob,
    resume: bool,
    progress: Arc<dyn Fn(u64, u64) + Send + Sync>,
) -> Result<Attempt, NetError> {
    let file = std::fs::File::open(&job.file).map_err(|e| {
        NetError::Codec(CodecError::Io {
            op: "open",
            path: job.file.clone(),
            source: e,
        })
    })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(NetError::Protocol(format!(
            "{} is not a regular file",
            job.file.display()
        )));
    }
    let (size, mtime) = (meta.len(), mtime_nanos(&meta));
    if Manifest::chunk_count_for(size, job.chunk_bytes) > u64::from(proto::CHUNKS_PER_FILE_MAX) {
        return Err(CodecError::TooManyChunks {
            max_chunks: proto::CHUNKS_PER_FILE_MAX,
            chunk_bytes: job.chunk_bytes,
        }
        .into());
    }
    let jpath = journal_path(&job.journal_dir, &job.link, &job.file);
    let found = if resume {
        Journal::find(&jpath, &job.link.id, size, mtime, job.chunk_bytes)
    } else {
        None
    };
    // For a paid part: what this host stores of every chunk of the plan (the chunk, or
    // its share), the ids the journal checks and the file is recorded with.
    let stored: Option<Vec<ChunkEntry>> = job.preset.as_ref().map(Preset::stored);
    let preset =
        job.preset
            .as_ref()
            .zip(stored.as_ref())
            .map(|(Preset { plan: p, .. }, stored)| {
                (
                    JournalHeader {
                        link: job.link.id,
                        file_bytes: size,
                        mtime_nanos: mtime,
                        chunk_bytes: p.chunk_bytes,
                        kdf: p.kdf,
                        salt: p.salt,
                        file_id: p.file_id,
                    },
                    stored.iter().map(|c| c.id).collect::<Vec<_>>(),
                )
            });
    if let Some(Preset { plan: p, .. }) = &job.preset {
        if p.file_bytes != size || p.chunk_bytes != job.chunk_bytes {
            return Ok(Attempt::Changed { index: 0 });
        }
    }
    // A paid upload always checks against what was paid for: every chunk is "previous".
    let found = preset.or(found);
    let (header, previous) = match found {
        Some(f) => f,
        None => {
            let mut salt = [0u8; 16];
            let mut id = [0u8; 16];
            rand_core::OsRng.fill_bytes(&mut salt);
            rand_core::OsRng.fill_bytes(&mut id);
            (
                JournalHeader {
                    link: job.link.id,
                    file_bytes: size,
                    mtime_nanos: mtime,
                    chunk_bytes: job.chunk_bytes,
                    kdf: job.kdf,
                    salt,
                    file_id: FileId(id),
                },
                Vec::new(),
            )
        }
    };
    let keys = FileKeys {
        kdf: header.kdf,
        salt: header.salt,
        file_id: header.file_id,
    };
    let file_key = keys.file_key(&job.passphrase)?;
    let mut journal = Journal::start(&jpath, header, previous)?;

    let mut conn = Conn::open(&job.link, &job.via, &job.key, job.max_proxy_price).await?;
    // What this upload sends: the whole file, or the part of a plan a deal covers.
    let (range, part) = match (&job.preset, &stored) {
        (Some(p), Some(stored)) => {
            let r = p.chunks();
            let entries = stored[r.clone()].to_vec();
            (Some(r.start as u64..r.end as u64), Some(entries))
        }
        _ => (None, None),
    };
    let (present, sealed_left, plain_total) = match &part {
        Some(entries) => {
            let ids: Vec<ChunkId> = entries.iter().map(|e| e.id).collect();
            let present = conn.have(&ids).await?;
            let left: u64 = entries
                .iter()
                .filter(|e| !present.contains(&e.id))
                .map(|e| u64::from(e.sealed_bytes))
                .sum();
            let plain: u64 = job.preset.as_ref().map_or(0, |p| {
                p.plan.chunks[p.chunks()]
                    .iter()
                    .map(|e| u64::from(e.sealed_bytes - proto::TAG_BYTES))
                    .sum()
            });
            (present, left, plain)
        }
        None => {
            let sealed_total = size
                + Manifest::chunk_count_for(size, job.chunk_bytes) * u64::from(proto::TAG_BYTES);
            let present = conn.have(&journal.previous).await?;
            let left =
                sealed_total.saturating_sub(present.len() as u64 * u64::from(job.chunk_bytes));
            (present, left, size)
        }
    };

    if conn.upload_bytes_left < sealed_left {
        return Err(NetError::Remote {
            code: crate::ErrorCode::QuotaExceeded,
            message: format!(
                "the link allows {} more bytes; this upload needs about {sealed_left}",
                conn.upload_bytes_left
            ),
        });
    }

    // Sealing runs on its own threads; chunks come here through a small channel, so at most
    // a few are in memory beyond the pipeline's own buffers.
    let (tx, mut rx) = mpsc::channel::<Result<Sealed, CodecError>>(2);
    let name = file_name(&job.file);
    let (chunk_bytes, workers) = (job.chunk_bytes, job.workers);
    let planned = job.preset.as_ref().map(|p| p.plan.chunks.clone());
    // With a share index: the scheme, to send that share of each chunk instead of it.
    let sharing = job.preset.as_ref().and_then(|p| {
        p.share
            .zip(p.plan.erasure.as_ref().map(|e| e.scheme))
            .map(|(i, scheme)| (usize::from(i), engine::erasure::Encoder::new(scheme)))
    });
    let seal_key = file_key.clone();
    let sealer = tokio::task::spawn_blocking(move || {
        let result = (|| -> Result<(), CodecError> {
            // A part's chunks are checked against the plan one by one (by the upload
            // loop); its manifest is the plan's.
            // Read by position: reader threads read chunks at once, with O_DIRECT
            // where they are not in the page cache.
            let file: Arc<dyn ReadAt> = Arc::new(PlainFile::new(file));
            let mut seal = match (range, planned) {
                (Some(r), Some(planned)) => FileSeal::part(
                    file,
                    &seal_key,
                    keys,
                    chunk_bytes,
                    workers,
                    PartOf {
                        size,
                        range: r,
                        planned,
                    },
                )?,
                _ => FileSeal::whole(
                    Plaintext::At(file),
                    &seal_key,
                    keys,
                    chunk_bytes,
                    workers,
                    Some(size),
                )?,
            };
            let mut sharing = sharing;
            for chunk in seal.by_ref() {
                let chunk = chunk?;
                let piece = match &mut sharing {
                    None => Piece {
                        index: chunk.index,
                        entry: chunk.entry,
                        plain: chunk.plain_bytes(),
                        bytes: PieceBytes::Chunk(chunk),
                    },
                    Some((i, coder)) => {
                        let mut shares = coder
                            .shares(chunk.entry.id, chunk.bytes())
                            .map_err(erasure_error)?;
                        let share = shares.swap_remove(*i);
                        Piece {
                            index: chunk.index,
                            entry: share_entry(&share)?,
                            plain: chunk.plain_bytes(),
                            bytes: PieceBytes::Share(share),
                        }
                    }
                };
                if tx.blocking_send(Ok(Sealed::Chunk(piece))).is_err() {
                    return Ok(());
                }
            }
            let SealedFile {
                manifest,
                envelope,
                manifest_id,
            } = seal.finish(name)?;
            let _ = tx.blocking_send(Ok(Sealed::Done {
                manifest,
                envelope,
                manifest_id,
            }));
            Ok(())
        })();
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(e));
        }
    });

    let result = upload_loop(
        &mut conn,
        &mut journal,
        &mut rx,
        &present,
        plain_total,
        progress,
    )
    .await;
    drop(rx);
    let _ = sealer.await;
    let (manifest, envelope, manifest_id, sent, skipped) = match result? {
        LoopEnd::Changed(index) => {
            drop(journal);
            return Ok(Attempt::Changed { index });
        }
        LoopEnd::Sealed {
            manifest,
            envelope,
            manifest_id,
            sent,
            skipped,
        } => (manifest, envelope, manifest_id, sent, skipped),
    };
    if let Some(p) = &job.preset {
        if p.plan.manifest.id != manifest_id {
            return Err(NetError::Protocol(
                "the manifest sealed now is not the one paid for".into(),
            ));
        }
    }
    // A part before the last stores its chunks only: the file is recorded with the last.
    if job.preset.as_ref().is_none_or(Preset::has_manifest) {
        let chunks: Vec<ChunkId> = match (&job.preset, &stored) {
            (Some(p), Some(stored)) => p.listed(stored),
            _ => manifest.chunks.iter().map(|c| c.id).collect(),
        };
        record_file(&mut conn, &job.link, manifest_id, chunks, envelope).await?;
    }
    journal.remove()?;
    let peer_seen = conn.peer_seen.clone();
    let first_sent = conn.first_put;
    let receipts = conn.finish(&job.key).await;
    let file_id = keys.file_id;
    Ok(Attempt::Done(Box::new(PutDone {
        file_id,
        manifest_id,
        share_key: ShareKey {
            file_id,
            manifest_id,
            file_key,
        },
        manifest,
        sent_chunks: sent,
        skipped_chunks: skipped,
        peer_seen,
        receipts,
        first_sent,
    })))
}

/// Records the uploaded file on the host (`PutObject`) and checks the host's signature.
async fn record_file(
    conn: &mut Conn,
    link: &Link,
    manifest_id: ChunkId,
    chunks: Vec<ChunkId>,
    envelope: Vec<u8>,
) -> Result<(), NetError> {
    let message = crate::wire::object_message(&manifest_id, &chunks);
    match conn
        .call(Request::PutObject {
            manifest: manifest_id,
            chunks,
            envelope,
        })
        .await?
    {
        // Signed by the host itself: no proxy on the way can fake that every chunk is there.
        Reply::ObjectStored { signature } => {
            let vk = ed25519_consensus::VerificationKey::try_from(link.host_key)
                .map_err(|_| NetError::Protocol("the link's host key is not a valid key".into()))?;
            vk.verify(&ed25519_consensus::Signature::from(signature), &message)
                .map_err(|_| {
                    NetError::Protocol(
                        "the host's signature on the stored file does not verify".into(),
                    )
                })?;
        }
        other => return Err(remote(other)),
    }
    Ok(())
}

enum LoopEnd {
    Changed(u64),
    Sealed {
        manifest: Manifest,
        envelope: Vec<u8>,
        manifest_id: ChunkId,
        sent: u64,
        skipped: u64,
    },
}

/// Sends sealed chunks with puts in flight up to half the host's in-flight byte limit,
/// journaling each batch before its bytes go, and reads acknowledgements as they come.
async fn upload_loop(
    conn: &mut Conn,
    journal: &mut Journal,
    rx: &mut mpsc::Receiver<Result<Sealed, CodecError>>,
    present: &HashSet<ChunkId>,
    total: u64,
    progress: Arc<dyn Fn(u64, u64) + Send + Sync>,
) -> Result<LoopEnd, NetError> {
    // Half the host's limits, so replies never wait on requests the host cannot take yet.
    let budget = conn.inflight_bytes_max / 2;
    let max_count = (conn.inflight_requests_max as usize / 2).max(1);
    // Each put in flight: its request id, its bytes, the chunk's plaintext bytes.
    let mut outstanding: VecDeque<(u32, u64, u64)> = VecDeque::new();
    let mut in_flight = 0u64;
    let mut done = 0u64;
    let (mut sent, mut skipped) = (0u64, 0u64);
    let previous = journal.previous.clone();
    loop {
        // Take what the sealer has ready (at least one), then journal the batch once.
        let Some(first) = rx.recv().await else {
            return Err(NetError::Protocol(
                "the sealer stopped without a result".into(),
            ));
        };
        let mut batch = vec![first?];
        while batch.len() < 64 {
            match rx.try_recv() {
                Ok(m) => batch.push(m?),
                Err(_) => break,
            }
        }
        let mut to_send = Vec::new();
        let mut end = None;
        for m in batch {
            match m {
                Sealed::Chunk(c) => {
                    let plain = u64::from(c.plain);
                    if let Some(prev) = usize::try_from(c.index).ok().and_then(|i| previous.get(i))
                    {
                        if *prev != c.entry.id {
                            return Ok(LoopEnd::Changed(c.index));
                        }
                        if present.contains(prev) {
                            skipped += 1;
                            done += plain;
                            progress(done, total);
                            continue;
                        }
                    }
                    to_send.push(c);
                }
                Sealed::Done {
                    manifest,
                    envelope,
                    manifest_id,
                } => end = Some((manifest, envelope, manifest_id)),
            }
        }
        let new: Vec<ChunkId> = to_send
            .iter()
            .filter(|c| c.index >= u64::from(journal.len()))
            .map(|c| c.entry.id)
            .collect();
        if !new.is_empty() {
            journal.append(&new)?;
        }
        for c in to_send {
            let len = c.bytes().len() as u64;
            // Wait for acknowledgements while the window is full.
            while (in_flight + len > budget || outstanding.len() >= max_count)
                && !outstanding.is_empty()
            {
                done += ack(conn, &mut outstanding, &mut in_flight).await?;
                progress(done, total);
            }
            let id = conn
                .send_put(&c.entry.id, c.entry.crc32c, c.bytes())
                .await?;
            outstanding.push_back((id, len, u64::from(c.plain)));
            in_flight += len;
            sent += 1;
        }
        if let Some((manifest, envelope, manifest_id)) = end {
            while !outstanding.is_empty() {
                done += ack(conn, &mut outstanding, &mut in_flight).await?;
                progress(done, total);
            }
            return Ok(LoopEnd::Sealed {
                manifest,
                envelope,
                manifest_id,
                sent,
                skipped,
            });
        }
    }
}

/// Reads the acknowledgement of the oldest put; returns its chunk's plaintext bytes.
async fn ack(
    conn: &mut Conn,
    outstanding: &mut VecDeque<(u32, u64, u64)>,
    in_flight: &mut u64,
) -> Result<u64, NetError> {
    let (want, len, plain) = outstanding
        .pop_front()
        .ok_or(NetError::Protocol("no put in flight".into()))?;
    match conn.reply_to(want).await? {
        Reply::Stored { .. } => {
            *in_flight -= len;
            Ok(plain)
        }
        other => Err(remote(other)),
    }
}

/// How a download proves it may read the file.
#[derive(Clone, Debug)]
pub enum Key {
    Passphrase(zeroize::Zeroizing<Vec<u8>>),
    Share(Box<ShareKey>),
}

/// What `get_file` needs.
#[derive(Clone, Debug)]
pub struct GetJob {
    /// Download links to the same file, one per host holding a copy: chunks are fetched
    /// from all of them at once, and a host that fails is left for the others.
    pub links: Vec<Link>,
    pub via: Vec<String>,
    /// The most a proxy of `via` may charge, MASPC per GiB relayed.
    pub max_proxy_price: u64,
    pub key: SigningKey,
    pub unlock: Key,
    pub out: PathBuf,
    pub overwrite: bool,
    pub workers: usize,
}

#[derive(Debug)]
pub struct GetDone {
    pub file_id: FileId,
    pub manifest_id: ChunkId,
    pub manifest: Manifest,
    pub peer_seen: String,
    pub receipts: Receipts,
    /// Chunks each host sent (by its link's address), in the links' order.
    pub served: Vec<(String, u64)>,
    /// Hosts left out, and why: unreachable at the start, or failed while sending.
    pub lost: Vec<String>,
}

/// Chunks as the fetch task delivers them, in order.
struct NetSource {
    rx: crossbeam_channel::Receiver<(u64, Result<Vec<u8>, NetError>)>,
}

impl ChunkSource for NetSource {
    fn fetch(&self, index: u64, entry: &ChunkEntry, buf: &mut ChunkBuf) -> Result<(), CodecError> {
        let fault = |f| CodecError::Chunk {
            index,
            id: entry.id,
            fault: f,
        };
        match self.rx.recv() {
            Ok((i, Ok(bytes))) if i == index => {
                buf.extend_from_slice(&bytes);
                Ok(())
            }
            Ok((
                _,
                Err(NetError::Remote {
                    code: crate::ErrorCode::NotFound,
                    ..
                }),
            )) => Err(fault(ChunkFault::Missing)),
            Ok((_, Err(e))) => Err(CodecError::Invalid(format!("fetching chunk {index}: {e}"))),
            Ok((i, Ok(_))) => Err(CodecError::Invalid(format!(
                "chunk {i} arrived when {index} was expected"
            ))),
            Err(_) => Err(CodecError::Invalid(format!(
                "the download stopped before chunk {index}"
            ))),
        }
    }
}

/// What the hosts of one download share: which chunks wait to be fetched, how far the
/// opener has taken them, which hosts said they lack a chunk, which are still alive.
struct Fetching {
    /// Chunk indexes not asked of any host now, lowest first.
    pending: BTreeSet<usize>,
    /// Every chunk below this went to the opener; hosts fetch at most `lookahead` past it.
    delivered: usize,
    lookahead: usize,
    /// Hosts (by position) that answered "not found" for a chunk.
    missing: HashMap<usize, Vec<usize>>,
    /// Per host, the chunks it holds: `None` all, or a batch (it is never asked for
    /// others).
    held: Vec<Option<Range<usize>>>,
    /// Per host, the requests it may have in flight: a batch's host fetches up to this
    /// many chunks from its batch's start even before the opener gets there, so the hosts
    /// of a spread copy work at once (held out of order: at most `lookahead` and these).
    window: Vec<usize>,
    alive: Vec<bool>,
    /// Why each host that failed failed.
    failures: Vec<(usize, NetError)>,
    served: Vec<u64>,
    /// Set when the download is over (done, or failed): the hosts' tasks end.
    over: bool,
}

impl Fetching {
    /// Whether host `h` lacks chunk `i`: outside its batch, or it said so.
    fn lacks(&self, h: usize, i: usize) -> bool {
        self.held[h].as_ref().is_some_and(|r| !r.contains(&i))
            || self.missing.get(&i).is_some_and(|m| m.contains(&h))
    }

    /// The waiting chunks host `me` may ask for now, lowest first: within the lookahead
    /// (or, for a batch's host, within its window from the batch's start), and not one it
    /// lacks.
    fn open_to(&self, me: usize) -> impl Iterator<Item = usize> + '_ {
        let ahead = self.delivered + self.lookahead;
        let (from, limit) = match &self.held[me] {
            Some(r) => (r.start, ahead.max(r.start + self.window[me]).min(r.end)),
            None => (0, ahead),
        };
        self.pending
            .range(from..limit.max(from))
            .copied()
            .filter(move |&i| !self.lacks(me, i))
    }

    /// Chunks every live host lacks, some host lacking it (with every host lost, the
    /// download fails with why instead): to the opener as missing (it names them).
    fn unfetchable(&mut self) -> Vec<usize> {
        let hosts = 0..self.alive.len();
        let dead: Vec<usize> = self
            .pending
            .iter()
            .copied()
            .filter(|&i| {
                hosts.clone().any(|h| self.lacks(h, i))
                    && hosts.clone().all(|h| !self.alive[h] || self.lacks(h, i))
            })
            .collect();
        for i in &dead {
            self.pending.remove(i);
        }
        dead
    }
}

/// A host's task with nothing to ask for: unless `state()` (over, work waiting) says the
/// download is over or there is work already, waits for the shared state to change (the
/// opener moving on, a host failing, a chunk completing). Returns whether it is over.
async fn idle(notify: &tokio::sync::Notify, state: impl Fn() -> (bool, bool)) -> bool {
    let woken = notify.notified();
    tokio::pin!(woken);
    woken.as_mut().enable();
    match state() {
        (true, _) => return true,
        (false, true) => return false,
        (false, false) => {}
    }
    woken.await;
    false
}

type Shared = Arc<(std::sync::Mutex<Fetching>, tokio::sync::Notify)>;
type Fetched = (usize, Result<Vec<u8>, NetError>);

fn fetching(sh: &Shared) -> std::sync::MutexGuard<'_, Fetching> {
    sh.0.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn not_found(index: usize) -> NetError {
    NetError::Remote {
        code: crate::ErrorCode::NotFound,
        message: format!("no host holding the file has chunk {index}"),
    }
}

/// One host's part of a download: asks it for the lowest chunks waiting (as many in flight
/// as its session allows, never past the lookahead), hands what arrives to `out`, and puts
/// a chunk it lacks back for the other hosts. On any other failure its chunks in flight go
/// back too and it stops; the connection is returned if it lasted to the end.
async fn fetch_from(
    me: usize,
    mut conn: Conn,
    entries: Arc<Vec<ChunkEntry>>,
    sh: Shared,
    out: mpsc::UnboundedSender<Fetched>,
) -> Option<Conn> {
    let window = conn.inflight_bytes_max / 2;
    let max_count = (conn.inflight_requests_max as usize / 2).clamp(1, 16);
    let mut outstanding: VecDeque<(u32, usize, u64)> = VecDeque::new();
    let mut in_flight = 0u64;
    let failed = |e: NetError, outstanding: &VecDeque<(u32, usize, u64)>| {
        let mut f = fetching(&sh);
        f.alive[me] = false;
        f.pending.extend(outstanding.iter().map(|o| o.1));
        f.failures.push((me, e));
        for i in f.unfetchable() {
            let _ = out.send((i, Err(not_found(i))));
        }
        drop(f);
        sh.1.notify_waiters();
    };
    loop {
        // Ask for more while the session and the lookahead allow.
        while outstanding.len() < max_count {
            let pick = {
                let mut f = fetching(&sh);
                if f.over {
                    return Some(conn);
                }
                let pick = f.open_to(me).find(|&i| {
                    outstanding.is_empty()
                        || in_flight + u64::from(entries[i].sealed_bytes) <= window
                });
                if let Some(i) = pick {
                    f.pending.remove(&i);
                }
                pick
            };
            let Some(i) = pick else { break };
            match conn.send(&Request::Get { id: entries[i].id }).await {
                Ok(id) => {
                    let len = u64::from(entries[i].sealed_bytes);
                    outstanding.push_back((id, i, len));
                    in_flight += len;
                }
                Err(e) => {
                    fetching(&sh).pending.insert(i);
                    failed(e, &outstanding);
                    return None;
                }
            }
        }
        let Some(&(want, i, len)) = outstanding.front() else {
            // Nothing to ask for now: wait until the opener moves on, a chunk comes back
            // from a failed host, or the download is over.
            let over = idle(&sh.1, || {
                let f = fetching(&sh);
                let work = f.open_to(me).next().is_some();
                (f.over, work)
            })
            .await;
            if over {
                return Some(conn);
            }
            continue;
        };
        match conn.reply_to(want).await {
            Ok(Reply::Data(bytes)) => {
                outstanding.pop_front();
                in_flight -= len;
                fetching(&sh).served[me] += 1;
                if out.send((i, Ok(bytes))).is_err() {
                    return Some(conn);
                }
            }
            Err(NetError::Remote {
                code: crate::ErrorCode::NotFound,
                ..
            }) => {
                outstanding.pop_front();
                in_flight -= len;
                let mut f = fetching(&sh);
                f.missing.entry(i).or_default().push(me);
                f.pending.insert(i);
                for i in f.unfetchable() {
                    let _ = out.send((i, Err(not_found(i))));
                }
                drop(f);
                sh.1.notify_waiters();
            }
            Ok(other) => {
                failed(remote(other), &outstanding);
                return None;
            }
            Err(e) => {
                failed(e, &outstanding);
                return None;
            }
        }
    }
}

/// What the hosts of a download from erasure shares share: for each chunk within the
/// lookahead, which hosts were asked for their share of it and what came back.
struct ShareFetching {
    /// Shares that rebuild a chunk.
    k: usize,
    total: usize,
    /// Every chunk below this went to the opener; hosts fetch at most `lookahead` past it.
    delivered: usize,
    lookahead: usize,
    gathering: BTreeMap<usize, Gather>,
    alive: Vec<bool>,
    failures: Vec<(usize, NetError)>,
    served: Vec<u64>,
    over: bool,
}

/// One chunk's shares being gathered.
struct Gather {
    /// Hosts asked (each at most once), answered or not.
    asked: Vec<usize>,
    in_flight: usize,
    /// The distinct shares received, by share index.
    shares: BTreeMap<u8, Vec<u8>>,
    /// Shares to gather before rebuilding: K, and one more each time the shares gathered
    /// did not rebuild the chunk (a corrupt share among them is then outvoted).
    need: usize,
    /// Being rebuilt, or sent on (rebuilt, or as a failure).
    done: bool,
}

impl ShareFetching {
    /// Whether host `me` can help rebuild chunk `j`: not asked of it yet, and not already
    /// covered by the shares received or in flight.
    fn wants(&self, j: usize, me: usize) -> bool {
        self.gathering.get(&j).is_none_or(|g| {
            !g.done && !g.asked.contains(&me) && g.shares.len() + g.in_flight < g.need
        })
    }

    /// Chunk `j`'s gathering, started with K shares needed.
    fn gather(&mut self, j: usize) -> &mut Gather {
        let k = self.k;
        self.gathering.entry(j).or_insert_with(|| Gather {
            asked: Vec::new(),
            in_flight: 0,
            shares: BTreeMap::new(),
            need: k,
            done: false,
        })
    }

    /// The chunks within the lookahead that host `me` can help rebuild, lowest first.
    fn open_to(&self, me: usize) -> impl Iterator<Item = usize> + '_ {
        let end = (self.delivered + self.lookahead).min(self.total);
        (self.delivered..end).filter(move |&j| self.wants(j, me))
    }

    /// Host `me` is asked for its share of chunk `j`.
    fn ask(&mut self, j: usize, me: usize) {
        let g = self.gather(j);
        g.asked.push(me);
        g.in_flight += 1;
    }

    /// Chunks within the lookahead that can no longer get K shares (too few live hosts not
    /// asked yet): marked done, to be sent on as failures.
    fn unfetchable(&mut self) -> Vec<(usize, usize)> {
        let end = (self.delivered + self.lookahead).min(self.total);
        let mut dead = Vec::new();
        for j in self.delivered..end {
            let alive = self.alive.clone();
            let g = self.gather(j);
            if g.done {
                continue;
            }
            let untried = (0..alive.len())
                .filter(|h| alive[*h] && !g.asked.contains(h))
                .count();
            if g.shares.len() + g.in_flight + untried < g.need {
                g.done = true;
                dead.push((j, g.shares.len()));
            }
        }
        dead
    }
}

type SharedShares = Arc<(std::sync::Mutex<ShareFetching>, tokio::sync::Notify)>;

fn share_fetching(sh: &SharedShares) -> std::sync::MutexGuard<'_, ShareFetching> {
    sh.0.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends on the chunks that can no longer be rebuilt, saying how many shares are left.
fn fail_unfetchable(f: &mut ShareFetching, out: &mpsc::UnboundedSender<Fetched>) {
    let k = f.k;
    for (j, got) in f.unfetchable() {
        let _ = out.send((
            j,
            Err(NetError::Protocol(format!(
                "chunk {j}: only {got} of the {k} erasure shares that rebuild it can be had from the hosts left"
            ))),
        ));
    }
}

/// What one host stores of one chunk, checked before it counts: its id is the one the host
/// recorded for that chunk, and its header names that chunk, its length and the scheme of
/// the others. Its share index. (The gateway reads shares with it too.)
pub fn check_share(
    bytes: &[u8],
    want: &ChunkId,
    chunk: &ChunkEntry,
    scheme: Scheme,
) -> Result<u8, String> {
    if ChunkId::of(bytes) != *want {
        return Err("the share sent does not hash to the id the host recorded".into());
    }
    let (h, _) = proto::erasure::ShareHeader::split(bytes).map_err(|e| e.to_string())?;
    if h.chunk != chunk.id || h.scheme != scheme || h.sealed_bytes != chunk.sealed_bytes {
        return Err(format!(
            "the share is of chunk {} ({} bytes) in scheme {}, not of chunk {} ({} bytes) in {scheme}",
            h.chunk, h.sealed_bytes, h.scheme, chunk.id, chunk.sealed_bytes
        ));
    }
    Ok(h.index)
}

/// One host's part of a download from erasure shares: asks it for its share of the lowest
/// chunks that need one (as many in flight as its session allows, within the lookahead);
/// once a chunk has K distinct shares it is rebuilt off the runtime's threads and handed to
/// `out`. A share the host lacks, or sends wrong, is left to the other hosts; any other
/// failure ends this host's part, its requests in flight going back to the others.
#[allow(clippy::too_many_arguments)] // one host's part: its connection, ids, and the shared state
async fn fetch_shares_from(
    me: usize,
    mut conn: Conn,
    ids: Arc<Vec<ChunkId>>,
    entries: Arc<Vec<ChunkEntry>>,
    scheme: Scheme,
    sh: SharedShares,
    out: mpsc::UnboundedSender<Fetched>,
) -> Option<Conn> {
    let max_count = (conn.inflight_requests_max as usize / 2).clamp(1, 16);
    let window = conn.inflight_bytes_max / 2;
    let share_len = |j: usize| u64::from(scheme.share_bytes(entries[j].sealed_bytes));
    let mut outstanding: VecDeque<(u32, usize)> = VecDeque::new();
    let mut in_flight = 0u64;
    let failed = |e: NetError, outstanding: &VecDeque<(u32, usize)>| {
        let mut f = share_fetching(&sh);
        f.alive[me] = false;
        for (_, j) in outstanding {
            if let Some(g) = f.gathering.get_mut(j) {
                g.in_flight -= 1;
            }
        }
        f.failures.push((me, e));
        fail_unfetchable(&mut f, &out);
        drop(f);
        sh.1.notify_waiters();
    };
    loop {
        while outstanding.len() < max_count {
            let pick = {
                let mut f = share_fetching(&sh);
                if f.over {
                    return Some(conn);
                }
                let pick = f
                    .open_to(me)
                    .find(|&j| outstanding.is_empty() || in_flight + share_len(j) <= window);
                if let Some(j) = pick {
                    f.ask(j, me);
                }
                pick
            };
            let Some(j) = pick else { break };
            match conn.send(&Request::Get { id: ids[j] }).await {
                Ok(id) => {
                    outstanding.push_back((id, j));
                    in_flight += share_len(j);
                }
                Err(e) => {
                    if let Some(g) = share_fetching(&sh).gathering.get_mut(&j) {
                        g.in_flight -= 1;
                    }
                    failed(e, &outstanding);
                    return None;
                }
            }
        }
        let Some(&(want, j)) = outstanding.front() else {
            let over = idle(&sh.1, || {
                let f = share_fetching(&sh);
                let work = f.open_to(me).next().is_some();
                (f.over, work)
            })
            .await;
            if over {
                return Some(conn);
            }
            continue;
        };
        let reply = conn.reply_to(want).await;
        let share = match reply {
            Ok(Reply::Data(bytes)) => match check_share(&bytes, &ids[j], &entries[j], scheme) {
                Ok(index) => Some((index, bytes)),
                Err(why) => {
                    // A host that sends a wrong share is left out of the rest.
                    outstanding.pop_front();
                    if let Some(g) = share_fetching(&sh).gathering.get_mut(&j) {
                        g.in_flight -= 1;
                    }
                    failed(
                        NetError::Protocol(format!("its share of chunk {j}: {why}")),
                        &outstanding,
                    );
                    return None;
                }
            },
            Err(NetError::Remote {
                code: crate::ErrorCode::NotFound,
                ..
            }) => None,
            Ok(other) => {
                failed(remote(other), &outstanding);
                return None;
            }
            Err(e) => {
                failed(e, &outstanding);
                return None;
            }
        };
        outstanding.pop_front();
        in_flight -= share_len(j);
        let mut f = share_fetching(&sh);
        if share.is_some() {
            f.served[me] += 1;
        }
        let complete = match f.gathering.get_mut(&j) {
            Some(g) => {
                g.in_flight -= 1;
                if let Some((index, bytes)) = share {
                    g.shares.entry(index).or_insert(bytes);
                }
                if !g.done && g.shares.len() >= g.need {
                    g.done = true;
                    Some(std::mem::take(&mut g.shares))
                } else {
                    None
                }
            }
            None => None,
        };
        fail_unfetchable(&mut f, &out);
        drop(f);
        sh.1.notify_waiters();
        if let Some(shares) = complete {
            tokio::spawn(rebuild_chunk(j, shares, Arc::clone(&sh), out.clone()));
        } else if out.is_closed() {
            return Some(conn);
        }
    }
}

/// Rebuilds chunk `j` from the shares gathered, off the runtime's threads, and hands it to
/// `out`. When they do not rebuild it (a host sent a corrupt share that still hashed to
/// the id it listed), the shares go back to the gathering with one more needed, so another
/// host is asked and the corrupt one is outvoted; when no host is left, the chunk fails.
async fn rebuild_chunk(
    j: usize,
    shares: BTreeMap<u8, Vec<u8>>,
    sh: SharedShares,
    out: mpsc::UnboundedSender<Fetched>,
) {
    let rebuilt = tokio::task::spawn_blocking(move || {
        let refs: Vec<&[u8]> = shares.values().map(Vec::as_slice).collect();
        let r = engine::erasure::rebuild(&refs).map(|(_, chunk)| chunk);
        r.map_err(|e| (e, shares))
    })
    .await;
    match rebuilt {
        Ok(Ok(chunk)) => {
            let _ = out.send((j, Ok(chunk)));
        }
        Ok(Err((engine::erasure::ErasureError::Rebuilt { .. }, shares))) => {
            let mut f = share_fetching(&sh);
            if let Some(g) = f.gathering.get_mut(&j) {
                g.shares = shares;
                g.need += 1;
                g.done = false;
            }
            fail_unfetchable(&mut f, &out);
            drop(f);
            sh.1.notify_waiters();
        }
        Ok(Err((e, _))) => {
            let _ = out.send((
                j,
                Err(NetError::Protocol(format!("rebuilding chunk {j}: {e}"))),
            ));
        }
        Err(e) => {
            let _ = out.send((
                j,
                Err(NetError::Protocol(format!("rebuilding chunk {j}: {e}"))),
            ));
        }
    }
}

/// What one host says it holds of a file.
enum Held {
    Whole,
    Batch(Range<usize>),
    Shares(Vec<ChunkId>),
}

/// Where `list` runs within `chunks`, if it is a non-empty run of consecutive chunks of it
/// (what a host holding a batch of a spread copy lists).
fn batch_of(list: &[ChunkId], chunks: &[ChunkId]) -> Option<Range<usize>> {
    let first = list.first()?;
    let start = chunks.iter().position(|c| c == first)?;
    let r = start..start.checked_add(list.len())?;
    (chunks.get(r.clone())? == list).then_some(r)
}

/// What the download's hosts hold: whole chunks (copies, or batches of a copy spread over
/// several hosts), or one erasure share of each.
enum Holding {
    Copies {
        /// Per host (in the order of the connections kept), the chunks it holds: `None`
        /// all of them, or a batch.
        held: Vec<Option<Range<usize>>>,
    },
    Shares {
        scheme: Scheme,
        /// Per host (in the order of the connections kept), its share of each chunk.
        ids: Vec<Arc<Vec<ChunkId>>>,
    },
}

/// Asks each host what it holds of the file (`GetObjectChunks`): the manifest's chunks, a
/// batch of them (a run of consecutive chunks), or a share of each. Hosts that fail, or
/// hold something else, are dropped into `lost`. A
/// host from before `GetObjectChunks` closes the connection on it as malformed: it is
/// connected to again and taken as a full copy. The scheme is the one most share holders'
/// first share header states (48 bytes asked of each); a host stating another is left out.
/// Shares win: with any host holding shares, hosts with full copies or batches are left
/// out.
async fn holdings(
    conns: &mut Vec<(String, Conn)>,
    job: &GetJob,
    manifest: &Manifest,
    lost: &mut Vec<String>,
) -> Result<Holding, NetError> {
    let chunk_ids: Vec<ChunkId> = manifest.chunks.iter().map(|c| c.id).collect();
    let mut kept = Vec::new();
    let mut shares = 0;
    for (addr, mut conn) in std::mem::take(conns) {
        match conn.object_chunks().await {
            Ok(l) if l == chunk_ids => kept.push((addr, conn, Held::Whole)),
            Ok(l) => match batch_of(&l, &chunk_ids) {
                Some(r) => kept.push((addr, conn, Held::Batch(r))),
                None if l.len() == chunk_ids.len() => {
                    shares += 1;
                    kept.push((addr, conn, Held::Shares(l)));
                }
                None => lost.push(format!(
                    "{addr}: it holds {} pieces of a file of {} chunks",
                    l.len(),
                    chunk_ids.len()
                )),
            },
            Err(NetError::Remote {
                code: crate::ErrorCode::Malformed,
                ..
            }) => {
                // A host older than the request: it holds the file whole.
                let again = match job.links.iter().find(|l| l.addr == addr) {
                    Some(link) => Conn::open(link, &job.via, &job.key, job.max_proxy_price).await,
                    None => Err(NetError::Protocol("no link to it".into())),
                };
                match again {
                    Ok(conn) => kept.push((addr, conn, Held::Whole)),
                    Err(e) => lost.push(format!("{addr}: {e}")),
                }
            }
            Err(e) => lost.push(format!("{addr}: {e}")),
        }
    }
    if shares == 0 {
        let mut held = Vec::new();
        for (a, c, h) in kept {
            held.push(match h {
                Held::Batch(r) => Some(r),
                _ => None,
            });
            conns.push((a, c));
        }
        return Ok(Holding::Copies { held });
    }
    // Each share holder's scheme, from the header of its share of the first chunk.
    let mut holders = Vec::new();
    for (addr, mut conn, held) in kept {
        let list = match held {
            Held::Shares(list) => list,
            Held::Whole => {
                lost.push(format!(
                    "{addr}: it holds a full copy, left out of this download from erasure shares"
                ));
                continue;
            }
            Held::Batch(r) => {
                lost.push(format!(
                    "{addr}: it holds chunks {}..{} of a copy, left out of this download from erasure shares",
                    r.start, r.end
                ));
                continue;
            }
        };
        let head = match conn
            .call(Request::GetRange {
                id: list[0],
                start: 0,
                len: u32::try_from(proto::erasure::SHARE_HEADER_BYTES).expect("48 bytes"),
            })
            .await
        {
            Ok(Reply::Data(b)) => proto::erasure::ShareHeader::head(&b)
                .map_err(NetError::from)
                .and_then(|h| {
                    if h.chunk == chunk_ids[0] && h.sealed_bytes == manifest.chunks[0].sealed_bytes
                    {
                        Ok(Some(h.scheme))
                    } else {
                        Err(NetError::Protocol(
                            "its first share is of another chunk".into(),
                        ))
                    }
                }),
            // It lacks that one share: it may still hold the others.
            Err(NetError::Remote {
                code: crate::ErrorCode::NotFound,
                ..
            }) => Ok(None),
            Ok(other) => Err(remote(other)),
            Err(e) => Err(e),
        };
        match head {
            Ok(scheme) => holders.push((addr, conn, Arc::new(list), scheme)),
            Err(e) => lost.push(format!("{addr}: {e}")),
        }
    }
    let mut votes: Vec<(Scheme, usize)> = Vec::new();
    for s in holders.iter().filter_map(|h| h.3) {
        match votes.iter_mut().find(|v| v.0 == s) {
            Some(v) => v.1 += 1,
            None => votes.push((s, 1)),
        }
    }
    let Some(&(scheme, _)) = votes.iter().max_by_key(|v| v.1) else {
        return Err(NetError::Protocol(format!(
            "the hosts hold erasure shares, and none sends a share header to read the scheme from: {}",
            lost.join("; ")
        )));
    };
    let mut ids = Vec::new();
    for (addr, conn, list, stated) in holders {
        match stated {
            Some(s) if s != scheme => lost.push(format!(
                "{addr}: its shares are of scheme {s}, the others' of {scheme}"
            )),
            _ => {
                conns.push((addr, conn));
                ids.push(list);
            }
        }
    }
    Ok(Holding::Shares { scheme, ids })
}

/// A download's shared state: fetching whole chunks from copies, or shares to rebuild them.
enum Fetch {
    Copies(Shared),
    /// With the sender of rebuilt chunks, for chunks that turn out unfetchable as the
    /// lookahead moves: weak, so that the channel closes (and the delivery ends) once the
    /// hosts' tasks are all gone, however they ended.
    Shares(SharedShares, mpsc::WeakUnboundedSender<Fetched>),
}

impl Fetch {
    /// The opener has taken every chunk below `n`.
    fn delivered(&self, n: usize) {
        match self {
            Fetch::Copies(sh) => {
                fetching(sh).delivered = n;
                sh.1.notify_waiters();
            }
            Fetch::Shares(sh, out) => {
                let mut f = share_fetching(sh);
                f.delivered = n;
                f.gathering.retain(|j, _| *j >= n);
                if let Some(out) = out.upgrade() {
                    fail_unfetchable(&mut f, &out);
                }
                drop(f);
                sh.1.notify_waiters();
            }
        }
    }

    /// Ends the hosts' tasks; returns why hosts failed and what each served.
    fn finish(self) -> (Vec<(usize, NetError)>, Vec<u64>) {
        match self {
            Fetch::Copies(sh) => {
                let mut f = fetching(&sh);
                f.over = true;
                let out = (std::mem::take(&mut f.failures), f.served.clone());
                drop(f);
                sh.1.notify_waiters();
                out
            }
            Fetch::Shares(sh, _) => {
                let mut f = share_fetching(&sh);
                f.over = true;
                let out = (std::mem::take(&mut f.failures), f.served.clone());
                drop(f);
                sh.1.notify_waiters();
                out
            }
        }
    }
}

/// Downloads, verifies and decrypts the file the download links name (one link per host
/// holding a copy, all for the same manifest) into `job.out`, fetching from every host that
/// answers at once; a host that fails while sending leaves its chunks to the others.
pub async fn get_file(
    job: &GetJob,
    progress: Arc<dyn Fn(u64, u64) + Send + Sync>,
) -> Result<GetDone, NetError> {
    let Some(first) = job.links.first() else {
        return Err(NetError::Protocol("no download link given".into()));
    };
    let Grant::Download {
        manifest: manifest_id,
    } = first.grant
    else {
        return Err(NetError::Protocol(
            "this is an upload link; `mspace get` needs a download link".into(),
        ));
    };
    if let Some(other) = job.links.iter().find(|l| l.grant != first.grant) {
        return Err(NetError::Protocol(format!(
            "the links are not for one file: {} grants another than {}",
            other.addr, first.addr
        )));
    }
    engine::sealed_dir::check_open_target(&job.out, job.overwrite)?;
    let opened = futures::future::join_all(
        job.links
            .iter()
            .map(|l| Conn::open(l, &job.via, &job.key, job.max_proxy_price)),
    )
    .await;
    let mut lost = Vec::new();
    let mut conns = Vec::new();
    let mut first_error = None;
    for (l, c) in job.links.iter().zip(opened) {
        match c {
            Ok(c) => conns.push((l.addr.clone(), c)),
            Err(e) => {
                lost.push(format!("{}: {e}", l.addr));
                first_error.get_or_insert(e);
            }
        }
    }
    if conns.is_empty() {
        return Err(match (job.links.len(), first_error) {
            (1, Some(e)) => e,
            _ => NetError::Protocol(format!(
                "no host holding the file answers: {}",
                lost.join("; ")
            )),
        });
    }
    // The manifest from the first host that has it whole.
    let mut envelope = None;
    let mut envelope_error = None;
    // A host that fails here is dropped, and the next one (now first) asked.
    while let Some((_, conn)) = conns.first_mut() {
        let got = match conn.call(Request::GetObject).await {
            Ok(Reply::Data(env)) if ChunkId::of(&env) == manifest_id => Ok(env),
            Ok(Reply::Data(_)) => Err(NetError::Protocol(
                "the host sent a manifest that does not hash to the link's manifest id".into(),
            )),
            Ok(_) => Err(NetError::Protocol("expected the manifest envelope".into())),
            Err(e) => Err(e),
        };
        match got {
            Ok(env) => {
                envelope = Some(env);
                break;
            }
            Err(e) => {
                let (addr, _) = conns.remove(0);
                lost.push(format!("{addr}: {e}"));
                envelope_error.get_or_insert(e);
            }
        }
    }
    let Some(envelope) = envelope else {
        return Err(match (job.links.len(), envelope_error) {
            (1, Some(e)) => e,
            _ => NetError::Protocol(format!(
                "no host holding the file sends its manifest: {}",
                lost.join("; ")
            )),
        });
    };
    let (manifest, cipher) = match &job.unlock {
        Key::Passphrase(p) => open_envelope(&envelope, manifest_id, Unlock::Passphrase(p))?,
        Key::Share(s) => open_envelope(&envelope, manifest_id, Unlock::ShareKey(s))?,
    };
    let manifest = Arc::new(manifest);
    let file_id = cipher.file_id();
    let peer_seen = conns[0].1.peer_seen.clone();
    let entries: Arc<Vec<ChunkEntry>> = Arc::new(manifest.chunks.clone());
    let total = entries.len();
    let holding = holdings(&mut conns, job, &manifest, &mut lost).await?;
    if conns.is_empty() {
        return Err(NetError::Protocol(format!(
            "no host holding the file says what it holds: {}",
            lost.join("; ")
        )));
    }

    // Every host fetches from one list of waiting chunks, at most `lookahead` past what the
    // opener has taken, so chunks held out of order are bounded.
    let windows: Vec<usize> = conns
        .iter()
        .map(|(_, c)| (c.inflight_requests_max as usize / 2).clamp(1, 16))
        .collect();
    let per_host: usize = windows.iter().sum();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Fetched>();
    let addrs: Vec<String> = conns.iter().map(|(a, _)| a.clone()).collect();
    let (fetch, tasks): (Fetch, Vec<_>) = match holding {
        Holding::Copies { held } => {
            let sh: Shared = Arc::new((
                std::sync::Mutex::new(Fetching {
                    pending: (0..total).collect(),
                    delivered: 0,
                    lookahead: per_host.max(1),
                    missing: HashMap::new(),
                    held,
                    window: windows,
                    alive: vec![true; conns.len()],
                    failures: Vec::new(),
                    served: vec![0; conns.len()],
                    over: false,
                }),
                tokio::sync::Notify::new(),
            ));
            // Chunks no host's batch holds (a batch's host lost before it was asked): to
            // the opener as missing now.
            for i in fetching(&sh).unfetchable() {
                let _ = out_tx.send((i, Err(not_found(i))));
            }
            let tasks = conns
                .into_iter()
                .enumerate()
                .map(|(me, (_, conn))| {
                    tokio::spawn(fetch_from(
                        me,
                        conn,
                        Arc::clone(&entries),
                        Arc::clone(&sh),
                        out_tx.clone(),
                    ))
                })
                .collect();
            (Fetch::Copies(sh), tasks)
        }
        Holding::Shares { scheme, ids } => {
            let k = usize::from(scheme.k());
            // K shares per chunk: the lookahead counts chunks, so it covers K requests each.
            let sh: SharedShares = Arc::new((
                std::sync::Mutex::new(ShareFetching {
                    k,
                    total,
                    delivered: 0,
                    lookahead: per_host.div_ceil(k).max(2),
                    gathering: BTreeMap::new(),
                    alive: vec![true; conns.len()],
                    failures: Vec::new(),
                    served: vec![0; conns.len()],
                    over: false,
                }),
                tokio::sync::Notify::new(),
            ));
            if conns.len() < k {
                let mut f = share_fetching(&sh);
                fail_unfetchable(&mut f, &out_tx);
            }
            let tasks = conns
                .into_iter()
                .zip(ids)
                .enumerate()
                .map(|(me, ((_, conn), ids))| {
                    tokio::spawn(fetch_shares_from(
                        me,
                        conn,
                        ids,
                        Arc::clone(&entries),
                        scheme,
                        Arc::clone(&sh),
                        out_tx.clone(),
                    ))
                })
                .collect();
            (Fetch::Shares(sh, out_tx.downgrade()), tasks)
        }
    };
    drop(out_tx);

    // Chunks go to the opener in order, through a bounded channel.
    let (ctx, crx) = crossbeam_channel::bounded(8);
    let deliver = async {
        // Owned here: when delivering stops, for any reason, the opener sees the end.
        let ctx = ctx;
        let mut held: BTreeMap<usize, Result<Vec<u8>, NetError>> = BTreeMap::new();
        let mut next = 0usize;
        while next < total {
            let Some((i, item)) = out_rx.recv().await else {
                break;
            };
            held.insert(i, item);
            while let Some(item) = held.remove(&next) {
                let failed = item.is_err();
                let sender = ctx.clone();
                let index = next as u64;
                // Waiting for room happens off the runtime's threads.
                let gone = tokio::task::spawn_blocking(move || sender.send((index, item)))
                    .await
                    .map_or(true, |r| r.is_err());
                next += 1;
                fetch.delivered(next);
                if gone || failed {
                    return next;
                }
            }
        }
        next
    };

    let out = job.out.clone();
    let overwrite = job.overwrite;
    let workers = job.workers;
    let open_manifest = Arc::clone(&manifest);
    let opener = tokio::task::spawn_blocking(move || {
        let total = open_manifest.file_bytes;
        open_to_file(
            Arc::clone(&open_manifest),
            cipher,
            NetSource { rx: crx },
            &out,
            overwrite,
            workers,
            &mut |done, _| progress(done, total),
        )
    });
    let delivered = deliver.await;
    let (failures, served) = fetch.finish();
    let opened = opener
        .await
        .map_err(|e| NetError::Protocol(format!("the opener failed: {e}")))?;
    let mut receipts = Receipts::default();
    for t in tasks {
        if let Ok(Some(conn)) = t.await {
            let r = conn.finish(&job.key).await;
            receipts.accepted.extend(r.accepted);
            receipts.errors.extend(r.errors);
        }
    }
    let served: Vec<(String, u64)> = addrs.iter().cloned().zip(served).collect();
    for (h, e) in &failures {
        lost.push(format!("{}: {e}", addrs[*h]));
    }
    // The opener's error says which chunk failed and why; when every host stopped first,
    // their errors are the cause.
    match opened {
        Ok(()) => {}
        Err(e) if delivered < total => {
            let mut failures = failures;
            return Err(match (job.links.len(), failures.pop()) {
                (1, Some((_, net))) => net,
                (_, Some(_)) => NetError::Protocol(format!(
                    "every host holding the file stopped before chunk {delivered}: {}",
                    lost.join("; ")
                )),
                (_, None) => e.into(),
            });
        }
        Err(e) => return Err(e.into()),
    }
    Ok(GetDone {
        file_id,
        manifest_id,
        manifest: Arc::try_unwrap(manifest).unwrap_or_else(|m| (*m).clone()),
        peer_seen,
        receipts,
        served,
        lost,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(chunks: usize) -> DealPlan {
        let entry = |i: usize| ChunkEntry {
            id: ChunkId(blake3::hash(&i.to_le_bytes()).into()),
            sealed_bytes: 4096 + proto::TAG_BYTES,
            crc32c: 0,
        };
        DealPlan {
            salt: [0; 16],
            file_id: FileId([0; 16]),
            kdf: KdfParams::DEFAULT,
            chunk_bytes: 4096,
            file_bytes: chunks as u64 * 4096,
            chunks: (0..chunks).map(entry).collect(),
            manifest: entry(usize::MAX),
            erasure: None,
        }
    }

    #[test]
    fn the_hosts_of_a_spread_copy_fetch_from_their_batches_at_once() {
        let f = Fetching {
            pending: (0..50).collect(),
            delivered: 0,
            lookahead: 4,
            missing: HashMap::new(),
            held: vec![Some(0..20), Some(20..48), Some(48..50), None],
            window: vec![2, 2, 3, 2],
            alive: vec![true; 4],
            failures: Vec::new(),
            served: vec![0; 4],
            over: false,
        };
        let open = |h: usize| f.open_to(h).collect::<Vec<_>>();
        // The first batch's host within the lookahead; the others from their batches'
        // starts, within their windows (and their batches); a full copy as before.
        assert_eq!(open(0), vec![0, 1, 2, 3]);
        assert_eq!(open(1), vec![20, 21]);
        assert_eq!(open(2), vec![48, 49]);
        assert_eq!(open(3), vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_batch_is_paid_in_parts_of_its_chunks_and_the_manifest() {
        let p = plan(8_300);
        let max = proto::tx::DEAL_CHUNKS_MAX as usize;
        let batch = 100..4_200;
        let parts = p.parts_of(batch.clone());
        assert_eq!(parts, vec![0..max, max..4_101]);
        let first = Preset::of_batch(p.clone(), batch.clone(), parts[0].clone(), None);
        assert_eq!(
            (first.chunks(), first.has_manifest()),
            (100..100 + max, false)
        );
        let last = Preset::of_batch(p.clone(), batch.clone(), parts[1].clone(), None);
        assert_eq!(
            (last.chunks(), last.has_manifest()),
            (100 + max..4_200, true)
        );
        let listed = last.listed(&last.stored());
        let want: Vec<ChunkId> = p.chunks[batch].iter().map(|c| c.id).collect();
        assert_eq!(listed, want, "the host records its batch only");
        // The whole file is no batch: the same as DealPlan::parts.
        let whole = Preset::of_batch(p.clone(), 0..8_300, p.parts()[2].clone(), None);
        assert_eq!(whole.batch, None);
        assert_eq!(whole.entries, p.parts()[2]);
        assert_eq!(whole.listed(&whole.stored()).len(), 8_300);
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn a_plan_is_paid_in_parts_of_at_most_one_deals_entries() {
        let max = proto::tx::DEAL_CHUNKS_MAX as usize;
        for (chunks, want) in [
            (0, vec![0..1]),
            (1, vec![0..2]),
            (max - 1, vec![0..max]),
            // The manifest alone in a second deal.
            (max, vec![0..max, max..max + 1]),
            (8_300, vec![0..max, max..2 * max, 2 * max..8_301]),
        ] {
            let p = plan(chunks);
            let parts = p.parts();
            assert_eq!(parts, want, "{chunks} chunks");
            // Every entry in exactly one part, in order; only the last has the manifest.
            assert_eq!(
                parts.iter().map(ExactSizeIterator::len).sum::<usize>(),
                chunks + 1
            );
            for (i, r) in parts.iter().enumerate() {
                let preset = Preset {
                    plan: p.clone(),
                    entries: r.clone(),
                    share: None,
                    batch: None,
                };
                assert_eq!(preset.has_manifest(), i + 1 == parts.len());
                assert_eq!(preset.chunks().start, r.start);
                assert!(preset.chunks().end <= chunks);
            }
        }
    }
}
