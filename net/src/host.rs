//! The host's data plane: accepts connections, checks the link each one presents, and
//! serves puts, reads, proofs and manifests from the engine within what the link grants.
//!
//! One task reads a connection's frames and submits each request to the engine at once;
//! a second writes the replies in request order as they complete, so a client keeps many
//! requests in flight on one connection. A put's payload is read from the socket into its
//! own buffer and handed to the engine's shard, which copies it once into the DMA buffer it
//! writes from (computing CRC32C and BLAKE3 on the way); a read's bytes go from the shard's
//! buffer to the socket.
//!
//! Every limit in [`Limits`] is enforced here. A malformed frame, a refused link, an idle
//! or too-slow peer ends that connection with a logged reason (and an error frame where the
//! peer can still read one); a refused request within a good connection (not granted, not
//! found, over quota) is answered with an error and changes nothing.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ed25519_consensus::{Signature, SigningKey, VerificationKey};
use engine::store::{Engine, PutOutcome, StoreError};
use futures::StreamExt;
use proto::link::{Grant, Link};
use proto::ChunkId;
use rand_core::RngCore;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::config::Limits;
use crate::io::{body_deadline, read_header, read_request_body, write_reply};
use crate::metrics::Metrics;
use crate::state::{DeleteRefused, HostState, ObjectOutcome, QuotaError};
use crate::wire::{hello_message, kind, object_message, ErrorCode, Reply, Request, FRAME_BODY_MAX};
use crate::NetError;

/// Everything a host's connections share.
#[derive(Debug)]
pub struct Host {
    engine: Arc<Engine>,
    key: SigningKey,
    state: HostState,
    limits: Limits,
    retention_secs: u64,
    metrics: Arc<Metrics>,
    /// What its watcher saw: alerts, the chain, samples (`crate::alerts::run`).
    watch: Arc<crate::alerts::Watch>,
    /// The base price the operator set from the dashboard (`u64::MAX`: none; the
    /// configuration's applies).
    price_override: std::sync::atomic::AtomicU64,
    /// The host-wide memory budget, in KiB.
    memory: Arc<Semaphore>,
    /// Chunk lists of files being downloaded, read once from the state directory.
    objects: Mutex<HashMap<ChunkId, Arc<HashSet<ChunkId>>>>,
    /// Connections open, for whoever waits for the host to be idle.
    open: watch::Sender<u64>,
    /// Offers this host signed and that have not expired: a deal's link is granted only
    /// for a payment that cites one of them, on its terms.
    offers: Mutex<HashMap<[u8; 16], IssuedOffer>>,
    /// The chunks each held deal's upload link may send (the deal's chunk list, read from
    /// the chain when the link is granted), by link id. In memory only: after a restart a
    /// deal's link is asked for again before it uploads.
    deal_chunks: Mutex<HashMap<[u8; 16], Arc<HashSet<ChunkId>>>>,
}

/// The terms of an offer this host made, as the sender asked them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IssuedOffer {
    pub price_per_gib_day: u64,
    pub days: u32,
    pub bytes_max: u64,
    pub expiry_unix_secs: u64,
    /// The exchange the offer named and the commission it promised it.
    pub broker: Option<proto::tx::Broker>,
}

/// How long a stopping host waits for open connections to finish their requests.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);
/// Cached chunk lists; the cache is cleared when it reaches this many files.
const OBJECTS_CACHED: usize = 1024;
/// Budget a proof reply is charged (a leaf and its sibling path).
const PROOF_BYTES: u64 = 4096;

fn kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

fn semaphore_kib(bytes: u64) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(
        usize::try_from(bytes.div_ceil(1024)).unwrap_or(usize::MAX >> 4),
    ))
}

impl Host {
    pub fn new(
        engine: Arc<Engine>,
        key: &SigningKey,
        state: HostState,
        limits: Limits,
        retention_secs: u64,
    ) -> Host {
        Host {
            engine,
            key: key.clone(),
            state,
            memory: semaphore_kib(limits.memory_bytes),
            limits,
            retention_secs,
            metrics: Arc::new(Metrics::default()),
            watch: Arc::default(),
            price_override: std::sync::atomic::AtomicU64::new(u64::MAX),
            objects: Mutex::new(HashMap::new()),
            open: watch::channel(0).0,
            offers: Mutex::new(HashMap::new()),
            deal_chunks: Mutex::new(HashMap::new()),
        }
    }

    /// Records download payment `payment` for the agent to claim, durably, before the
    /// receiver's link is given (`HostState::add_claim`).
    pub fn queue_claim(&self, payment: [u8; 32], deadline: u64) -> Result<(), NetError> {
        self.state.add_claim(&payment, deadline)
    }

    /// Returns once no connection is open: every request a closed connection had started
    /// has finished (stored, recorded, charged or given back).
    pub async fn until_idle(&self) {
        let _ = self.open.subscribe().wait_for(|n| *n == 0).await;
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn watch(&self) -> &Arc<crate::alerts::Watch> {
        &self.watch
    }

    /// The base price (MASPC per GiB per day) set over the configuration's, if any.
    pub fn price_override(&self) -> Option<u64> {
        match self
            .price_override
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            u64::MAX => None,
            p => Some(p),
        }
    }

    pub fn set_price_override(&self, base: Option<u64>) {
        self.price_override.store(
            base.unwrap_or(u64::MAX).min(u64::MAX - 1),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn state(&self) -> &HostState {
        &self.state
    }

    /// The expiry of what is uploaded under `link`: never for a held deal's link (the agent
    /// deletes it when the deal is over), else the retention period from now.
    fn expiry(&self, link: &[u8; 16]) -> u64 {
        if self.state.is_deal_link(link) {
            0
        } else {
            crate::now_secs().saturating_add(self.retention_secs)
        }
    }

    /// Remembers an offer made (expired ones are forgotten).
    pub fn remember_offer(&self, id: [u8; 16], offer: IssuedOffer) {
        let now = crate::now_secs();
        let mut o = self.offers.lock().unwrap_or_else(|p| p.into_inner());
        o.retain(|_, v| v.expiry_unix_secs >= now);
        o.insert(id, offer);
    }

    /// The terms of offer `id`, if this host made it (since it started).
    pub fn issued_offer(&self, id: &[u8; 16]) -> Option<IssuedOffer> {
        self.offers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
    }

    /// Records, durably, that this host holds `deal`, paid by `sender`: what is uploaded
    /// under its link is kept until [`Host::release`] (see [`Host::expiry`]), across
    /// restarts.
    pub fn hold_deal(&self, deal: &[u8; 32], sender: &[u8; 32]) -> Result<(), NetError> {
        self.state.hold_deal(deal, sender)
    }

    /// The chunks `deal`'s upload link may send: exactly the deal's (see [`Scope::Upload`]).
    pub fn allow_deal_chunks(&self, deal: &[u8; 32], chunks: HashSet<ChunkId>) {
        let link: [u8; 16] = deal[..16].try_into().expect("16 bytes");
        self.deal_chunks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(link, Arc::new(chunks));
    }

    fn deal_chunks(&self, link: &[u8; 16]) -> Option<Arc<HashSet<ChunkId>>> {
        self.deal_chunks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(link)
            .cloned()
    }

    /// The chunk list of an uploaded file, from the cache or the state directory (read off
    /// the runtime's threads).
    pub async fn object(
        self: &Arc<Self>,
        manifest: ChunkId,
    ) -> Result<Option<Arc<HashSet<ChunkId>>>, NetError> {
        if let Some(o) = self
            .objects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&manifest)
        {
            return Ok(Some(Arc::clone(o)));
        }
        let h = Arc::clone(self);
        let read = tokio::task::spawn_blocking(move || h.state.object(&manifest))
            .await
            .map_err(|e| NetError::State(e.to_string()))??;
        let Some(set) = read else { return Ok(None) };
        let set = Arc::new(set);
        let mut cache = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= OBJECTS_CACHED {
            cache.clear();
        }
        cache.insert(manifest, Arc::clone(&set));
        Ok(Some(set))
    }
}

/// Accepts connections until `shutdown` turns true; at most `max_connections` are served at
/// once (the rest wait in the kernel's queue).
pub async fn serve(host: Arc<Host>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(host.limits.max_connections));
    loop {
        let accepted = tokio::select! {
            a = async {
                let slot = Arc::clone(&slots).acquire_owned().await;
                (slot, listener.accept().await)
            } => Some(a),
            _ = shutdown.wait_for(|s| *s) => None,
        };
        let Some(accepted) = accepted else {
            // Let the connections finish what they started, for a while.
            let all = u32::try_from(host.limits.max_connections).unwrap_or(u32::MAX);
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all)).await;
            return;
        };
        let (Ok(slot), accepted) = accepted else {
            return;
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, most likely: let connections finish before the next try.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let host = Arc::clone(&host);
        tokio::spawn(async move {
            host.metrics.connections.fetch_add(1, Relaxed);
            host.metrics.connections_open.fetch_add(1, Relaxed);
            host.open.send_modify(|n| *n += 1);
            match connection(&host, stream, peer).await {
                Ok(()) => debug!(%peer, "connection closed by the peer"),
                Err(e) => info!(%peer, reason = %e, "connection closed"),
            }
            host.metrics.connections_open.fetch_sub(1, Relaxed);
            host.open.send_modify(|n| *n -= 1);
            drop(slot);
        });
    }
}

/// The data plane as the host runs it: one acceptor thread per engine shard, each a
/// single-threaded runtime pinned (with `pin`) to its shard's core, each with its own
/// listening socket on `addr` (SO_REUSEPORT: the kernel spreads connections over them), so a
/// connection is accepted and served on a shard's core; requests reach the shard owning
/// each chunk over the engine's channels. Returns the bound address (a port of 0 is chosen
/// once and shared) and the threads, which end when `shutdown` turns true.
pub fn serve_on_cores(
    host: &Arc<Host>,
    addr: std::net::SocketAddr,
    cores: usize,
    pin: bool,
    shutdown: &watch::Receiver<bool>,
) -> std::io::Result<(std::net::SocketAddr, Vec<std::thread::JoinHandle<()>>)> {
    // The acceptors share the port with SO_REUSEPORT, which would as well let a second
    // host process share it and take half the connections: a plain bind first fails if
    // anything listens there already.
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("{addr} is taken ({e}): is another host running on it?"),
            )
        })?);
    }
    let mut bound = addr;
    let mut listeners = Vec::new();
    for _ in 0..cores.max(1) {
        let socket = if bound.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(bound)?;
        bound = socket.local_addr()?;
        listeners.push(socket);
    }
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads = Vec::new();
    // Each acceptor says when it listens: the address is returned only once a client
    // connecting to it at once is not refused.
    let (listening, up) = std::sync::mpsc::channel::<std::io::Result<()>>();
    for (core, socket) in listeners.into_iter().enumerate() {
        let (host, shutdown) = (Arc::clone(host), shutdown.clone());
        let listening = listening.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("data-plane-{core}"))
                .spawn(move || {
                    if pin {
                        let mut set = nix::sched::CpuSet::new();
                        if set.set(core % online).is_ok() {
                            let _ =
                                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
                        }
                    }
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = listening.send(Err(e));
                            return;
                        }
                    };
                    rt.block_on(async move {
                        match socket.listen(1024) {
                            Ok(l) => {
                                let _ = listening.send(Ok(()));
                                serve(host, l, shutdown).await
                            }
                            Err(e) => {
                                let _ = listening.send(Err(e));
                            }
                        }
                    });
                })?,
        );
    }
    drop(listening);
    for _ in 0..threads.len() {
        match up.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::Error::other("a data-plane acceptor died")),
        }
    }
    Ok((bound, threads))
}

/// What one connection may do, from its link.
enum Scope {
    /// An upload link. A deal's (`deal`: its chunk list) sends exactly the deal's chunks
    /// and is not charged by the byte: what it may store is what was paid for. Any other
    /// is charged every byte against `bytes_max`.
    Upload {
        link: [u8; 16],
        bytes_max: u64,
        deal: Option<Arc<HashSet<ChunkId>>>,
    },
    Download {
        manifest: ChunkId,
        chunks: Arc<HashSet<ChunkId>>,
    },
}

impl Scope {
    /// Whether the link covers the chunk a read names (other requests: checked later).
    fn may_access(&self, req: &Request) -> bool {
        match req {
            Request::Get { id } | Request::GetRange { id, .. } | Request::Prove { id, .. } => {
                self.may_read(id)
            }
            _ => true,
        }
    }

    /// For a put or a file record of `id` (a chunk or a manifest): the upload link's id and
    /// its byte limit, `None` for a deal's link (bounded by its chunk list instead), or the
    /// refusal.
    fn upload(&self, id: &ChunkId, what: &str) -> Result<([u8; 16], Option<u64>), Reply> {
        match self {
            Scope::Upload {
                deal: Some(chunks), ..
            } if !chunks.contains(id) => Err(Reply::error(
                ErrorCode::NotGranted,
                format!("{what} {id} is not one of the deal's chunks"),
            )),
            Scope::Upload { link, deal, .. } if deal.is_some() => Ok((*link, None)),
            Scope::Upload {
                link, bytes_max, ..
            } => Ok((*link, Some(*bytes_max))),
            Scope::Download { .. } => Err(Reply::error(
                ErrorCode::NotGranted,
                "this connection's link does not allow uploading",
            )),
        }
    }

    fn may_read(&self, id: &ChunkId) -> bool {
        match self {
            Scope::Upload { .. } => false,
            Scope::Download { manifest, chunks } => id == manifest || chunks.contains(id),
        }
    }

    /// Whether a request of this frame kind is within the link's operation.
    fn allows(&self, kind: u8) -> bool {
        match self {
            Scope::Upload { .. } => matches!(
                kind,
                kind::PUT | kind::PUT_OBJECT | kind::HAVE | kind::DELETE
            ),
            Scope::Download { .. } => {
                matches!(
                    kind,
                    kind::GET
                        | kind::GET_RANGE
                        | kind::PROVE
                        | kind::GET_OBJECT
                        | kind::GET_OBJECT_CHUNKS
                )
            }
        }
    }
}

type ReplyFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// A request on its way to the writer, with the memory it holds until its reply is written.
struct Queued {
    request: u32,
    reply: ReplyFuture,
    permits: Vec<OwnedSemaphorePermit>,
    started: Instant,
    is_put: bool,
    /// The connection ends after this reply.
    fatal: bool,
}

fn ready(reply: Reply) -> ReplyFuture {
    Box::pin(std::future::ready(reply))
}

fn store_error(e: &StoreError) -> Reply {
    let code = match e {
        StoreError::NotFound(_) => ErrorCode::NotFound,
        StoreError::Corrupt { .. } => ErrorCode::Corrupt,
        StoreError::CrcMismatch { .. } => ErrorCode::CrcMismatch,
        StoreError::IdMismatch { .. } => ErrorCode::IdMismatch,
        StoreError::Size(_) => ErrorCode::Malformed,
        StoreError::Full { .. } => ErrorCode::Full,
        StoreError::Range { .. } | StoreError::Leaf { .. } => ErrorCode::Range,
        StoreError::Io(_) | StoreError::ShutDown | StoreError::InUse(_) => ErrorCode::Internal,
    };
    Reply::error(code, e.to_string())
}

/// Writes one reply within the time its length allows at the minimum rate.
async fn write_timed(
    w: &mut OwnedWriteHalf,
    limits: &Limits,
    request: u32,
    reply: &Reply,
) -> Result<(), NetError> {
    let len = match reply {
        Reply::Data(b) => u32::try_from(b.len()).unwrap_or(u32::MAX),
        _ => 4096,
    };
    let deadline = body_deadline(
        std::time::Duration::from_secs(limits.body_base_secs),
        limits.min_body_rate,
        len,
    );
    tokio::time::timeout(deadline, write_reply(w, request, reply))
        .await
        .map_err(|_| NetError::Timeout("writing a reply (the peer does not read)"))?
}

async fn send_fatal(
    w: &mut OwnedWriteHalf,
    limits: &Limits,
    request: u32,
    code: ErrorCode,
    msg: String,
) {
    let _ = write_timed(w, limits, request, &Reply::error(code, msg)).await;
    let _ = w.shutdown().await;
}

async fn connection(host: &Arc<Host>, stream: TcpStream, peer: SocketAddr) -> Result<(), NetError> {
    let _ = stream.set_nodelay(true);
    let limits = host.limits.clone();
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 << 10, rd);
    let mut nonce = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut nonce);
    let welcome = Reply::Welcome {
        nonce,
        peer: peer.to_string(),
        frame_body_max: FRAME_BODY_MAX,
        inflight_bytes_max: limits.inflight_bytes,
        inflight_requests_max: u32::try_from(limits.inflight_requests).unwrap_or(u32::MAX),
    };
    write_timed(&mut wr, &limits, 0, &welcome).await?;

    // The link, within `hello_secs` of connecting.
    let hello = tokio::time::timeout(limits.hello(), async {
        let h = read_header(&mut rd, 4096).await?.ok_or(NetError::Closed)?;
        if h.kind != kind::HELLO {
            return Err(NetError::Protocol(format!(
                "the first frame must be a hello, not kind {:#04x}",
                h.kind
            )));
        }
        Ok((h.request, read_request_body(&mut rd, &h).await?))
    })
    .await;
    let (hello_id, hello) = match hello {
        Err(_) => {
            host.metrics.refuse(ErrorCode::Timeout);
            send_fatal(
                &mut wr,
                &limits,
                0,
                ErrorCode::Timeout,
                "no link within the hello time".into(),
            )
            .await;
            return Err(NetError::Timeout("hello"));
        }
        Ok(Err(e)) => {
            host.metrics.refuse(ErrorCode::Malformed);
            send_fatal(&mut wr, &limits, 0, ErrorCode::Malformed, e.to_string()).await;
            return Err(e);
        }
        Ok(Ok(h)) => h,
    };
    let scope = match check_hello(host, &nonce, hello).await {
        Ok(s) => s,
        Err((code, msg)) => {
            host.metrics.refuse(code);
            send_fatal(&mut wr, &limits, hello_id, code, msg.clone()).await;
            return Err(NetError::Remote { code, message: msg });
        }
    };
    let upload_bytes_left = match &scope {
        Scope::Upload {
            deal: Some(_),
            bytes_max,
            ..
        } => *bytes_max,
        Scope::Upload {
            link, bytes_max, ..
        } => bytes_max.saturating_sub(host.state.used(link)),
        Scope::Download { .. } => 0,
    };
    write_timed(
        &mut wr,
        &limits,
        hello_id,
        &Reply::Ready { upload_bytes_left },
    )
    .await?;
    let scope = Arc::new(scope);

    let (tx, rx) = mpsc::channel::<Queued>(limits.inflight_requests);
    let writer = tokio::spawn(write_loop(
        wr,
        rx,
        Arc::clone(&host.metrics),
        limits.clone(),
    ));
    let bytes = semaphore_kib(limits.inflight_bytes);
    let reads = Arc::new(Semaphore::new(limits.inflight_reads));
    let fatal_reply = |request: u32, code: ErrorCode, msg: String| Queued {
        request,
        reply: ready(Reply::error(code, msg)),
        permits: Vec::new(),
        started: Instant::now(),
        is_put: false,
        fatal: true,
    };
    let result: Result<(), NetError> = async {
        loop {
            let h = match tokio::time::timeout(limits.idle(), read_header(&mut rd, FRAME_BODY_MAX))
                .await
            {
                Err(_) => return Err(NetError::Timeout("idle")),
                Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(h))) => h,
                Ok(Err(e)) => {
                    let _ = tx
                        .send(fatal_reply(0, ErrorCode::Malformed, e.to_string()))
                        .await;
                    return Err(e);
                }
            };
            // Refused before its body is read: a request outside the link's operation (the
            // body is skipped only when small), or larger than this connection may hold.
            if !scope.allows(h.kind)
                && (h.body_len > 4096 || h.kind == kind::HELLO || h.kind >= 0x40)
            {
                let msg = format!(
                    "frame kind {:#04x} is not allowed on this connection",
                    h.kind
                );
                let _ = tx
                    .send(fatal_reply(h.request, ErrorCode::NotGranted, msg.clone()))
                    .await;
                return Err(NetError::Protocol(msg));
            }
            if u64::from(h.body_len) > limits.inflight_bytes {
                let msg = format!(
                    "a {}-byte frame is over this host's in-flight limit",
                    h.body_len
                );
                let _ = tx
                    .send(fatal_reply(h.request, ErrorCode::Limit, msg.clone()))
                    .await;
                return Err(NetError::Protocol(msg));
            }
            // Memory for the body is granted, per connection and host-wide, before it is read.
            let mut permits = Vec::with_capacity(3);
            let need = kib(u64::from(h.body_len));
            permits.push(acquire(&bytes, need, &limits).await?);
            permits.push(acquire(&host.memory, need, &limits).await?);
            let deadline = body_deadline(
                std::time::Duration::from_secs(limits.body_base_secs),
                limits.min_body_rate,
                h.body_len,
            );
            let req = match tokio::time::timeout(deadline, read_request_body(&mut rd, &h)).await {
                Err(_) => {
                    host.metrics.refuse(ErrorCode::Timeout);
                    return Err(NetError::Timeout("frame body"));
                }
                Ok(Err(e)) => {
                    if matches!(e, NetError::Decode(_)) {
                        let _ = tx
                            .send(fatal_reply(h.request, ErrorCode::Malformed, e.to_string()))
                            .await;
                    }
                    return Err(e);
                }
                Ok(Ok(r)) => r,
            };
            let is_put = matches!(req, Request::Put { .. });
            if is_put {
                host.metrics.put_requests.fetch_add(1, Relaxed);
            }
            // A place in the writer's queue first: once a request reaches the store its
            // reply future is never dropped unawaited.
            let slot = match tx.reserve().await {
                Ok(slot) => slot,
                Err(_) => {
                    // The writer stopped (the peer is gone or does not read). A put read
                    // whole is still stored and recorded here, unanswered, as those queued
                    // before it are by the writer, before the connection counts as closed:
                    // its client journaled it as sent and, resuming, will not send it again.
                    if is_put {
                        let _ = dispatch(host, &scope, req).await.await;
                    }
                    return Err(NetError::Closed);
                }
            };
            let reply = if !scope.allows(h.kind) || !scope.may_access(&req) {
                ready(Reply::error(
                    ErrorCode::NotGranted,
                    "this connection's link does not allow this request",
                ))
            } else if let Some(size) = reply_size(host, &scope, &req).await {
                // A read holds a slot and the memory of its reply, on this connection and
                // host-wide; a host too busy to give it memory soon says so and goes on.
                let kib_needed = kib(size);
                let got = async {
                    let r = acquire(&reads, 1, &limits).await?;
                    let b = acquire(&bytes, kib_needed, &limits).await?;
                    let m = tokio::time::timeout(
                        std::time::Duration::from_secs(limits.body_base_secs),
                        Arc::clone(&host.memory).acquire_many_owned(kib_needed),
                    )
                    .await;
                    Ok::<_, NetError>((r, b, m))
                }
                .await?;
                match got {
                    (r, b, Ok(Ok(m))) => {
                        permits.extend([r, b, m]);
                        dispatch(host, &scope, req).await
                    }
                    _ => ready(Reply::error(
                        ErrorCode::Limit,
                        "the host is out of memory for replies right now: try again",
                    )),
                }
            } else {
                dispatch(host, &scope, req).await
            };
            slot.send(Queued {
                request: h.request,
                reply,
                permits,
                started: Instant::now(),
                is_put,
                fatal: false,
            });
        }
    }
    .await;
    drop(tx);
    let written = writer.await.unwrap_or(Err(NetError::Closed));
    result.and(written)
}

/// Waits for `n` permits of `sem`; a wait longer than the idle time means the writer
/// cannot make progress, and the connection ends.
async fn acquire(
    sem: &Arc<Semaphore>,
    n: u32,
    limits: &Limits,
) -> Result<OwnedSemaphorePermit, NetError> {
    tokio::time::timeout(limits.idle(), Arc::clone(sem).acquire_many_owned(n))
        .await
        .map_err(|_| NetError::Timeout("waiting for memory"))?
        .map_err(|_| NetError::Closed)
}

/// The bytes a read's reply will hold, for the memory budget: the chunk's length from the
/// store's index, a range's length, a proof's bound. `None` for requests that are no reads.
async fn reply_size(host: &Host, scope: &Scope, req: &Request) -> Option<u64> {
    let stat = |id: ChunkId| async move {
        host.engine
            .stat(id)
            .recv()
            .await
            .ok()
            .flatten()
            .map_or(0, u64::from)
    };
    let chunk_max = u64::from(proto::CHUNK_BYTES_MAX + proto::TAG_BYTES);
    match req {
        Request::Get { id } => Some(stat(*id).await),
        // What the range can really return, never the length the client chose.
        Request::GetRange { id, start, len } => Some(
            stat(*id)
                .await
                .saturating_sub(*start)
                .min(u64::from(*len))
                .min(chunk_max),
        ),
        Request::Prove { .. } => Some(PROOF_BYTES),
        Request::GetObject => match scope {
            Scope::Download { manifest, .. } => Some(stat(*manifest).await),
            Scope::Upload { .. } => None,
        },
        Request::GetObjectChunks => match scope {
            Scope::Download { chunks, .. } => Some(32 * chunks.len() as u64),
            Scope::Upload { .. } => None,
        },
        _ => None,
    }
}

async fn check_hello(
    host: &Arc<Host>,
    nonce: &[u8; 32],
    hello: Request,
) -> Result<Scope, (ErrorCode, String)> {
    let Request::Hello { link, bearer } = hello else {
        return Err((ErrorCode::Malformed, "expected a hello".into()));
    };
    let link = Link::from_bytes(&link).map_err(|e| (ErrorCode::LinkRefused, e.to_string()))?;
    // The bearer proves possession of its key by signing this connection's nonce.
    let proven = match bearer {
        None => None,
        Some((key, sig)) => {
            let ok = VerificationKey::try_from(key).is_ok_and(|vk| {
                vk.verify(&Signature::from(sig), &hello_message(nonce, &link.id))
                    .is_ok()
            });
            if !ok {
                return Err((
                    ErrorCode::LinkRefused,
                    "the bearer's signature does not verify".into(),
                ));
            }
            Some(key)
        }
    };
    link.check(
        &host.key.verification_key(),
        crate::now_secs(),
        &link.grant,
        proven.as_ref(),
    )
    .map_err(|e| (ErrorCode::LinkRefused, e.to_string()))?;
    match link.grant {
        Grant::Upload { bytes_max } => {
            let deal = if host.state.is_deal_link(&link.id) {
                Some(host.deal_chunks(&link.id).ok_or_else(|| {
                    (
                        ErrorCode::LinkRefused,
                        "this deal's link was granted before the host restarted: ask the host \
                         for the deal's link again"
                            .to_string(),
                    )
                })?)
            } else {
                None
            };
            Ok(Scope::Upload {
                link: link.id,
                bytes_max,
                deal,
            })
        }
        Grant::Download { manifest } => match host.object(manifest).await {
            Ok(Some(chunks)) => Ok(Scope::Download { manifest, chunks }),
            Ok(None) => Err((
                ErrorCode::NotFound,
                format!("no file with manifest {manifest} was uploaded to this host"),
            )),
            Err(e) => Err((ErrorCode::Internal, e.to_string())),
        },
    }
}

fn read_reply(p: engine::store::Pending<Vec<u8>>) -> ReplyFuture {
    Box::pin(async move { p.recv().await.map_or_else(|e| store_error(&e), Reply::Data) })
}

/// Starts one request (already checked against the link's operation). It returns once the
/// request is in the store's queue, so a connection reads no further request while the
/// store has no room (the store's back-pressure, `EngineConfig::queue_depth`); the reply
/// future finishes it.
async fn dispatch(host: &Arc<Host>, scope: &Arc<Scope>, req: Request) -> ReplyFuture {
    let not_granted = |what: &str| {
        ready(Reply::error(
            ErrorCode::NotGranted,
            format!("this connection's link does not allow {what}"),
        ))
    };
    match req {
        Request::Put { id, crc32c, bytes } => {
            // A deal's link: the deal's chunks only, each of the size paid for (its id is
            // the hash of its bytes); any other link: every byte charged.
            let (link, quota) = match scope.upload(&id, "chunk") {
                Ok(u) => u,
                Err(refused) => return ready(refused),
            };
            let len = bytes.len() as u64;
            let charged = if quota.is_some() { len } else { 0 };
            let busy = match Busy::put(host, id) {
                Ok(b) => b,
                Err(e) => return ready(Reply::error(ErrorCode::Busy, e.to_string())),
            };
            if let Err(e) = host
                .state
                .reserve(&link, quota.unwrap_or(u64::MAX), charged)
            {
                let code = match e {
                    QuotaError::Exceeded { .. } => ErrorCode::QuotaExceeded,
                    QuotaError::Io(_) => ErrorCode::Internal,
                };
                return ready(Reply::error(code, e.to_string()));
            }
            let pending = host
                .engine
                .put_async(id, crc32c, bytes, host.expiry(&link))
                .await;
            let host = Arc::clone(host);
            Box::pin(async move {
                // Until this put is answered no delete of the chunk may start.
                let _busy = busy;
                let existing = match pending.recv().await {
                    Ok(PutOutcome::Stored) => {
                        host.metrics.put_bytes.fetch_add(len, Relaxed);
                        false
                    }
                    Ok(PutOutcome::Existing) => {
                        host.state.release(&link, charged);
                        true
                    }
                    Err(e) => {
                        host.state.release(&link, charged);
                        return store_error(&e);
                    }
                };
                // The sender proved it holds the chunk by sending it: from now on the link
                // may list it in a file.
                match host.state.record_upload(link, id) {
                    Ok(()) => Reply::Stored { existing },
                    Err(e) => Reply::error(ErrorCode::Internal, e),
                }
            })
        }
        Request::Get { id } | Request::GetRange { id, .. } | Request::Prove { id, .. }
            if !scope.may_read(&id) =>
        {
            not_granted("reading this chunk: it is not part of the link's file")
        }
        Request::Get { id } => read_reply(host.engine.get_async(id).await),
        Request::GetRange { id, start, len } => read_reply(
            host.engine
                .get_range_async(id, start..start.saturating_add(u64::from(len)))
                .await,
        ),
        Request::Prove { id, leaf } => read_reply(host.engine.prove_async(id, leaf).await),
        Request::GetObject => match &**scope {
            Scope::Download { manifest, .. } => read_reply(host.engine.get_async(*manifest).await),
            Scope::Upload { .. } => not_granted("downloading"),
        },
        Request::GetObjectChunks => match &**scope {
            Scope::Download { manifest, .. } => {
                let (host, manifest) = (Arc::clone(host), *manifest);
                Box::pin(async move {
                    match tokio::task::spawn_blocking(move || host.state.object_chunks(&manifest))
                        .await
                    {
                        Ok(Ok(Some(ids))) => Reply::Data(ids.iter().flat_map(|i| i.0).collect()),
                        Ok(Ok(None)) => Reply::error(
                            ErrorCode::NotFound,
                            format!("file {manifest} is not recorded here"),
                        ),
                        Ok(Err(e)) => Reply::error(ErrorCode::Internal, e.to_string()),
                        Err(e) => Reply::error(ErrorCode::Internal, e.to_string()),
                    }
                })
            }
            Scope::Upload { .. } => not_granted("downloading"),
        },
        Request::Have { ids } => {
            // For an upload link, "have" means stored *and* recorded as sent under this
            // link: a chunk stored but not recorded (the host stopped in between) is sent
            // again, or the file could never be listed.
            let recorded = match **scope {
                Scope::Upload { link, .. } => host.state.uploaded(&link, &ids),
                Scope::Download { .. } => vec![true; ids.len()],
            };
            let mut pending = Vec::with_capacity(ids.len());
            for (id, r) in ids.iter().zip(recorded) {
                pending.push(if r {
                    Some(host.engine.stat_async(*id).await)
                } else {
                    None
                });
            }
            Box::pin(async move {
                let mut bits = vec![0u8; pending.len().div_ceil(8)];
                for (i, p) in pending.into_iter().enumerate() {
                    let Some(p) = p else { continue };
                    match p.recv().await {
                        Ok(Some(_)) => bits[i / 8] |= 1 << (i % 8),
                        Ok(None) => {}
                        Err(e) => return store_error(&e),
                    }
                }
                Reply::HaveReply { bits }
            })
        }
        Request::PutObject {
            manifest,
            chunks,
            envelope,
        } => {
            // A deal's file is recorded by the deal whose last chunk is its manifest.
            let (link, quota) = match scope.upload(&manifest, "manifest") {
                Ok(u) => u,
                Err(refused) => return ready(refused),
            };
            let host = Arc::clone(host);
            Box::pin(
                async move { put_object(&host, link, quota, manifest, chunks, envelope).await },
            )
        }
        Request::Delete { id } => {
            let Scope::Upload { link, .. } = **scope else {
                return not_granted("deleting");
            };
            let host = Arc::clone(host);
            Box::pin(async move { delete(&host, link, id).await })
        }
        Request::Hello { .. } | Request::ProxyConnect { .. } | Request::ProxyReceipt(_) => {
            not_granted("a handshake after the hello")
        }
    }
}

/// A put of one chunk under way, for [`HostState::begin_put`]; ended when dropped, on
/// every path out of the put.
struct Busy {
    host: Arc<Host>,
    id: ChunkId,
}

impl Busy {
    fn put(host: &Arc<Host>, id: ChunkId) -> Result<Busy, DeleteRefused> {
        host.state.begin_put(id)?;
        Ok(Busy {
            host: Arc::clone(host),
            id,
        })
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.host.state.end_put(self.id);
    }
}

/// Chunks counted as listed by a file being recorded ([`HostState::list`]), uncounted
/// when dropped unless the file was recorded.
struct Listed {
    host: Arc<Host>,
    chunks: Vec<ChunkId>,
    keep: bool,
}

impl Drop for Listed {
    fn drop(&mut self) {
        if !self.keep {
            self.host.state.unlist(&self.chunks);
        }
    }
}

/// Withdraws a chunk from an upload link and, when no other link holds it, deletes its
/// bytes: acknowledged only once the store's delete is durable.
async fn delete(host: &Arc<Host>, link: [u8; 16], id: ChunkId) -> Reply {
    let remove = match host.state.begin_delete(&link, id) {
        Ok(remove) => remove,
        Err(e) => {
            let code = match e {
                DeleteRefused::NotUploaded(_) | DeleteRefused::Listed(_) => ErrorCode::NotGranted,
                DeleteRefused::Busy(_) => ErrorCode::Busy,
            };
            return Reply::error(code, e.to_string());
        }
    };
    let removed = if remove {
        match host.engine.delete_async(id).await.recv().await {
            Ok(existed) => existed,
            Err(e) => {
                let _ = host.state.end_delete(&link, id, false);
                return store_error(&e);
            }
        }
    } else {
        false
    };
    match host.state.end_delete(&link, id, true) {
        Ok(()) => Reply::Deleted { removed },
        Err(e) => Reply::error(ErrorCode::Internal, e),
    }
}

impl Host {
    /// Releases what a deal that is over held: the file record of `manifest` (if given:
    /// no other open deal covers it) and the bytes of `chunks` that the deal's upload link
    /// sent and that no other link holds; then forgets the deal. A chunk that could not be
    /// released yet (a put or delete under way) fails the call and the deal stays held,
    /// for a later try. A chunk still listed by a recorded file (a part of a file paid as
    /// several deals, whose record goes with its last part) is left in place and the deal
    /// stays held, to be released again once that record is gone.
    pub async fn release(
        self: &Arc<Self>,
        deal: [u8; 32],
        manifest: Option<ChunkId>,
        chunks: &[ChunkId],
    ) -> Result<Released, NetError> {
        let link: [u8; 16] = deal[..16].try_into().expect("16 bytes");
        // The manifest named is the deal's last chunk; in a part of a file paid as several
        // deals that is a plain chunk with no record, released like the others.
        let (recorded, mut removed) = match manifest {
            Some(m) => self.unrecord(m).await?,
            None => (false, 0),
        };
        let mut deferred = 0u64;
        let envelope = manifest.filter(|_| recorded);
        let ids: Vec<([u8; 16], ChunkId)> = chunks
            .iter()
            .filter(|c| Some(**c) != envelope)
            .map(|c| (link, *c))
            .collect();
        let mut failed: Option<String> = None;
        for ((_, id), answer) in self.delete_all(ids).await {
            match answer {
                Reply::Deleted { removed: true } => removed += 1,
                Reply::Deleted { removed: false } => {}
                // Listed by a file recorded here: deleted once that record is removed.
                Reply::Error {
                    code: ErrorCode::NotGranted,
                    ..
                } if self.state.is_listed(&link, &id) => deferred += 1,
                // Not sent under this link: not the deal's to delete.
                Reply::Error {
                    code: ErrorCode::NotGranted,
                    ..
                } => {}
                other => {
                    failed.get_or_insert_with(|| format!("releasing chunk {id}: {other:?}"));
                }
            }
        }
        if let Some(e) = failed {
            return Err(NetError::State(e));
        }
        if deferred == 0 {
            self.state.drop_deal(&deal)?;
            self.deal_chunks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&link);
        }
        Ok(Released { removed, deferred })
    }
}

/// Chunk deletes a release keeps in flight.
const RELEASE_WINDOW: usize = 64;

/// Why [`Host::drop_object`] kept a file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DropRefused {
    #[error("no file with manifest {0} is recorded here")]
    NotFound(ChunkId),
    #[error("the file is paid for by deal {0}: it is released when the deal ends")]
    UnderDeal(String),
    #[error("{0}")]
    Failed(String),
}

impl Host {
    /// Removes a file uploaded through links this host minted (for its control token):
    /// its record, its envelope, and the bytes of every chunk that no other link or
    /// recorded file holds. A file any chunk of which a held deal paid for is refused.
    /// Returns the chunks removed from the store.
    pub async fn drop_object(self: &Arc<Self>, manifest: ChunkId) -> Result<u64, DropRefused> {
        let failed = |e: NetError| DropRefused::Failed(e.to_string());
        let Some(chunks) = self.state.object(&manifest).map_err(failed)? else {
            return Err(DropRefused::NotFound(manifest));
        };
        let mut links: Vec<([u8; 16], ChunkId)> = Vec::new();
        for c in chunks.iter().chain(std::iter::once(&manifest)) {
            for l in self.state.links_holding(c) {
                if let Some(deal) = self.state.held_deal(&l) {
                    return Err(DropRefused::UnderDeal(
                        data_encoding::HEXLOWER.encode(&deal),
                    ));
                }
                links.push((l, *c));
            }
        }
        let (_, mut removed) = self.unrecord(manifest).await.map_err(failed)?;
        let mut failure = None;
        for ((_, id), answer) in self
            .delete_all(links.into_iter().filter(|(_, c)| *c != manifest).collect())
            .await
        {
            match answer {
                Reply::Deleted { removed: true } => removed += 1,
                // Gone already, or listed by another recorded file (which keeps it).
                Reply::Deleted { removed: false }
                | Reply::Error {
                    code: ErrorCode::NotGranted,
                    ..
                } => {}
                other => {
                    failure.get_or_insert_with(|| format!("removing chunk {id}: {other:?}"));
                }
            }
        }
        match failure {
            Some(e) => Err(DropRefused::Failed(e)),
            None => Ok(removed),
        }
    }

    /// Removes `manifest`'s file record, if there is one, and then its envelope (stored by
    /// the record, not by a put under a link): whether it was recorded, and the chunks
    /// removed from the store (0 or 1).
    async fn unrecord(self: &Arc<Self>, manifest: ChunkId) -> Result<(bool, u64), NetError> {
        let h = Arc::clone(self);
        let recorded = tokio::task::spawn_blocking(move || h.state.remove_object(&manifest))
            .await
            .map_err(|e| NetError::State(e.to_string()))??;
        self.objects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&manifest);
        let removed = recorded
            && self
                .engine
                .delete(manifest)
                .recv()
                .await
                .map_err(|e| NetError::State(e.to_string()))?;
        Ok((recorded, u64::from(removed)))
    }

    /// Deletes each chunk under its link ([`delete`]'s rules), [`RELEASE_WINDOW`] at once:
    /// each is durable before it is answered, so one at a time would cost a file of
    /// thousands of chunks thousands of syncs in a row. Every delete is awaited, failed or
    /// not: one dropped between its start and its end would leave its chunk marked as
    /// being deleted. Each chunk with its answer.
    async fn delete_all(
        self: &Arc<Self>,
        chunks: Vec<([u8; 16], ChunkId)>,
    ) -> Vec<(([u8; 16], ChunkId), Reply)> {
        let host = Arc::clone(self);
        futures::stream::iter(chunks)
            .map(move |(link, id)| {
                let host = Arc::clone(&host);
                async move { ((link, id), delete(&host, link, id).await) }
            })
            .buffer_unordered(RELEASE_WINDOW)
            .collect()
            .await
    }
}

/// What [`Host::release`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    /// Chunks removed from the store.
    pub removed: u64,
    /// Chunks left in place because a recorded file still lists them: the deal stays held.
    pub deferred: u64,
}

impl Released {
    pub fn done(&self) -> bool {
        self.deferred == 0
    }
}

/// Stores a manifest envelope and records its chunk list: every chunk must be stored and
/// have been sent under this same link (or the link of another held deal of the same
/// sender: a file paid in parts). Answers with the host's signature.
async fn put_object(
    host: &Arc<Host>,
    link: [u8; 16],
    bytes_max: Option<u64>,
    manifest: ChunkId,
    chunks: Vec<ChunkId>,
    envelope: Vec<u8>,
) -> Reply {
    if ChunkId::of(&envelope) != manifest {
        return Reply::error(
            ErrorCode::IdMismatch,
            "the envelope does not hash to the manifest id",
        );
    }
    let unique: HashSet<ChunkId> = chunks.iter().copied().collect();
    if unique.len() != chunks.len() {
        return Reply::error(ErrorCode::Malformed, "the chunk list names a chunk twice");
    }
    if let Some(id) = host.state.not_uploaded(&link, &chunks) {
        return Reply::error(
            ErrorCode::NotGranted,
            format!("chunk {id} was not uploaded with this link: upload it first"),
        );
    }
    // From here no delete may take a chunk of the list; undone unless the file is recorded.
    if let Err(e) = host.state.list(&chunks) {
        return Reply::error(ErrorCode::Busy, e.to_string());
    }
    let listed = Listed {
        host: Arc::clone(host),
        chunks: chunks.clone(),
        keep: false,
    };
    let mut stats = Vec::with_capacity(chunks.len());
    for id in &chunks {
        stats.push(host.engine.stat_async(*id).await);
    }
    for (id, p) in chunks.iter().zip(stats) {
        match p.recv().await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Reply::error(
                    ErrorCode::NotFound,
                    format!("chunk {id} of this file is no longer stored here: upload it again"),
                )
            }
            Err(e) => return store_error(&e),
        }
    }
    // The envelope and the record both count against a plain link; a deal's link is not
    // charged (its envelope is a chunk of the deal, paid for).
    let len = match bytes_max {
        Some(_) => envelope.len() as u64 + 48 + 32 * chunks.len() as u64,
        None => 0,
    };
    if let Err(e) = host
        .state
        .reserve(&link, bytes_max.unwrap_or(u64::MAX), len)
    {
        return Reply::error(ErrorCode::QuotaExceeded, e.to_string());
    }
    let crc = engine::codec::crc32c(&envelope);
    if let Err(e) = host
        .engine
        .put(manifest, crc, envelope, host.expiry(&link))
        .recv()
        .await
    {
        host.state.release(&link, len);
        return store_error(&e);
    }
    let h = Arc::clone(host);
    let list = chunks.clone();
    let recorded = tokio::task::spawn_blocking(move || h.state.put_object(&manifest, &list)).await;
    match recorded {
        Ok(Ok(outcome)) => {
            // A recorded file lists its chunks for good; the same list recorded before
            // already counts.
            let mut listed = listed;
            listed.keep = outcome == ObjectOutcome::Recorded;
            if outcome == ObjectOutcome::Existing {
                host.state.release(&link, len);
            }
            Reply::ObjectStored {
                signature: host
                    .key
                    .sign(&object_message(&manifest, &chunks))
                    .to_bytes(),
            }
        }
        Ok(Err(e)) => {
            host.state.release(&link, len);
            Reply::error(ErrorCode::NotGranted, e.to_string())
        }
        Err(e) => Reply::error(ErrorCode::Internal, e.to_string()),
    }
}

/// Writes replies in request order. If writing fails (the peer is gone or does not read),
/// the rest are still awaited, unwritten: every store operation already started finishes
/// and gives back what it charged before the connection is counted closed.
async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Queued>,
    metrics: Arc<Metrics>,
    limits: Limits,
) -> Result<(), NetError> {
    let mut failed: Option<NetError> = None;
    while let Some(q) = rx.recv().await {
        let reply = q.reply.await;
        if failed.is_some() {
            continue;
        }
        let elapsed = q.started.elapsed();
        match &reply {
            Reply::Error { code, .. } => metrics.refuse(*code),
            Reply::Stored { existing } if q.is_put => {
                metrics.puts.fetch_add(1, Relaxed);
                if *existing {
                    metrics.puts_existing.fetch_add(1, Relaxed);
                }
                metrics.put_latency.observe(elapsed);
            }
            Reply::Data(b) => {
                metrics.gets.fetch_add(1, Relaxed);
                metrics.get_bytes.fetch_add(b.len() as u64, Relaxed);
                metrics.get_latency.observe(elapsed);
            }
            _ => {}
        }
        if let Err(e) = write_timed(&mut wr, &limits, q.request, &reply).await {
            // No more requests are taken; those queued are finished above, unwritten.
            rx.close();
            failed = Some(e);
            continue;
        }
        drop(q.permits);
        if q.fatal {
            rx.close();
            break;
        }
    }
    while let Some(q) = rx.recv().await {
        let _ = q.reply.await;
    }
    let _ = wr.shutdown().await;
    failed.map_or(Ok(()), Err)
}
