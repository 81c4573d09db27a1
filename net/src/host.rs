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

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ed25519_consensus::{Signature, SigningKey, VerificationKey};
use engine::store::{Engine, PutOutcome, StoreError};
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
use crate::state::{HostState, QuotaError};
use crate::wire::{hello_message, kind, ErrorCode, Reply, Request, FRAME_BODY_MAX};
use crate::NetError;

/// Everything a host's connections share.
#[derive(Debug)]
pub struct Host {
    engine: Arc<Engine>,
    key: VerificationKey,
    state: HostState,
    limits: Limits,
    retention_secs: u64,
    metrics: Arc<Metrics>,
    data_dirs: Vec<PathBuf>,
}

impl Host {
    pub fn new(
        engine: Arc<Engine>,
        key: &SigningKey,
        state: HostState,
        limits: Limits,
        retention_secs: u64,
        data_dirs: Vec<PathBuf>,
    ) -> Host {
        Host {
            engine,
            key: key.verification_key(),
            state,
            limits,
            retention_secs,
            metrics: Arc::new(Metrics::default()),
            data_dirs,
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn data_dirs(&self) -> &[PathBuf] {
        &self.data_dirs
    }

    pub fn state(&self) -> &HostState {
        &self.state
    }

    fn expiry(&self) -> u64 {
        now_secs().saturating_add(self.retention_secs)
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Accepts connections until `shutdown` turns true; at most `max_connections` are served at
/// once (the rest wait in the kernel's queue).
pub async fn serve(host: Arc<Host>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(host.limits.max_connections));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "accept failed");
                continue;
            }
        };
        let host = Arc::clone(&host);
        tokio::spawn(async move {
            host.metrics.connections.fetch_add(1, Relaxed);
            host.metrics.connections_open.fetch_add(1, Relaxed);
            match connection(&host, stream, peer).await {
                Ok(()) => debug!(%peer, "connection closed by the peer"),
                Err(e) => info!(%peer, reason = %e, "connection closed"),
            }
            host.metrics.connections_open.fetch_sub(1, Relaxed);
            drop(slot);
        });
    }
}

/// What one connection may do, from its link.
enum Scope {
    Upload {
        link: [u8; 16],
        bytes_max: u64,
    },
    Download {
        manifest: ChunkId,
        chunks: HashSet<ChunkId>,
    },
}

impl Scope {
    fn may_read(&self, id: &ChunkId) -> bool {
        match self {
            Scope::Upload { .. } => false,
            Scope::Download { manifest, chunks } => id == manifest || chunks.contains(id),
        }
    }
}

type ReplyFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// A request on its way to the writer.
struct Queued {
    request: u32,
    reply: ReplyFuture,
    permits: (Option<OwnedSemaphorePermit>, Option<OwnedSemaphorePermit>),
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
        StoreError::Io(_) | StoreError::ShutDown => ErrorCode::Internal,
    };
    Reply::error(code, e.to_string())
}

async fn send_fatal(w: &mut OwnedWriteHalf, request: u32, code: ErrorCode, msg: String) {
    let _ = write_reply(w, request, &Reply::error(code, msg)).await;
    let _ = w.shutdown().await;
}

async fn connection(host: &Arc<Host>, stream: TcpStream, peer: SocketAddr) -> Result<(), NetError> {
    let _ = stream.set_nodelay(true);
    let limits = host.limits.clone();
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 << 10, rd);
    let mut nonce = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut nonce);
    write_reply(
        &mut wr,
        0,
        &Reply::Welcome {
            nonce,
            peer: peer.to_string(),
            frame_body_max: FRAME_BODY_MAX,
            inflight_bytes_max: limits.inflight_bytes,
        },
    )
    .await?;

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
                0,
                ErrorCode::Timeout,
                "no link within the hello time".into(),
            )
            .await;
            return Err(NetError::Timeout("hello"));
        }
        Ok(Err(e)) => {
            host.metrics.refuse(ErrorCode::Malformed);
            send_fatal(&mut wr, 0, ErrorCode::Malformed, e.to_string()).await;
            return Err(e);
        }
        Ok(Ok(h)) => h,
    };
    let scope = match check_hello(host, &nonce, hello) {
        Ok(s) => s,
        Err((code, msg)) => {
            host.metrics.refuse(code);
            send_fatal(&mut wr, hello_id, code, msg.clone()).await;
            return Err(NetError::Remote { code, message: msg });
        }
    };
    let upload_bytes_left = match &scope {
        Scope::Upload { link, bytes_max } => bytes_max.saturating_sub(host.state.used(link)),
        Scope::Download { .. } => 0,
    };
    write_reply(&mut wr, hello_id, &Reply::Ready { upload_bytes_left }).await?;
    let scope = Arc::new(scope);

    let (tx, rx) = mpsc::channel::<Queued>(limits.inflight_requests);
    let writer = tokio::spawn(write_loop(wr, rx, Arc::clone(&host.metrics)));
    let bytes = Arc::new(Semaphore::new(
        usize::try_from(limits.inflight_bytes >> 10).unwrap_or(usize::MAX),
    ));
    let reads = Arc::new(Semaphore::new(limits.inflight_reads));
    let result: Result<(), NetError> = async {
        loop {
            let h = match tokio::time::timeout(limits.idle(), read_header(&mut rd, FRAME_BODY_MAX))
                .await
            {
                Err(_) => return Err(NetError::Timeout("idle")),
                Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(h))) => h,
                Ok(Err(e)) => {
                    let _ = tx.send(fatal(0, ErrorCode::Malformed, e.to_string())).await;
                    return Err(e);
                }
            };
            // Memory for the body is granted before it is read.
            let kib = u32::try_from((u64::from(h.body_len) + 1023) >> 10).unwrap_or(u32::MAX);
            let byte_permit = Arc::clone(&bytes)
                .acquire_many_owned(kib)
                .await
                .map_err(|_| NetError::Closed)?;
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
                            .send(fatal(h.request, ErrorCode::Malformed, e.to_string()))
                            .await;
                    }
                    return Err(e);
                }
                Ok(Ok(r)) => r,
            };
            let is_read = matches!(
                req,
                Request::Get { .. }
                    | Request::GetRange { .. }
                    | Request::Prove { .. }
                    | Request::GetObject
            );
            let read_permit = if is_read {
                Some(
                    Arc::clone(&reads)
                        .acquire_owned()
                        .await
                        .map_err(|_| NetError::Closed)?,
                )
            } else {
                None
            };
            let is_put = matches!(req, Request::Put { .. });
            let Some(reply) = dispatch(host, &scope, req) else {
                let _ = tx
                    .send(fatal(
                        h.request,
                        ErrorCode::Malformed,
                        format!("frame kind {:#04x} is not allowed after the hello", h.kind),
                    ))
                    .await;
                return Err(NetError::Protocol(
                    "a handshake frame after the hello".into(),
                ));
            };
            let q = Queued {
                request: h.request,
                reply,
                permits: (Some(byte_permit), read_permit),
                started: Instant::now(),
                is_put,
                fatal: false,
            };
            if tx.send(q).await.is_err() {
                return Err(NetError::Closed);
            }
        }
    }
    .await;
    drop(tx);
    let written = writer.await.unwrap_or(Err(NetError::Closed));
    result.and(written)
}

fn fatal(request: u32, code: ErrorCode, msg: String) -> Queued {
    Queued {
        request,
        reply: ready(Reply::error(code, msg)),
        permits: (None, None),
        started: Instant::now(),
        is_put: false,
        fatal: true,
    }
}

fn check_hello(
    host: &Host,
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
    link.check(&host.key, now_secs(), &link.grant, proven.as_ref())
        .map_err(|e| (ErrorCode::LinkRefused, e.to_string()))?;
    match link.grant {
        Grant::Upload { bytes_max } => Ok(Scope::Upload {
            link: link.id,
            bytes_max,
        }),
        Grant::Download { manifest } => match host.state.object(&manifest) {
            Ok(Some(chunks)) => Ok(Scope::Download { manifest, chunks }),
            Ok(None) => Err((
                ErrorCode::NotFound,
                format!("no file with manifest {manifest} was uploaded to this host"),
            )),
            Err(e) => Err((ErrorCode::Internal, e.to_string())),
        },
    }
}

/// Starts one request; `None` for a frame that has no place after the hello.
fn dispatch(host: &Arc<Host>, scope: &Arc<Scope>, req: Request) -> Option<ReplyFuture> {
    let not_granted = |what: &str| {
        ready(Reply::error(
            ErrorCode::NotGranted,
            format!("this connection's link does not allow {what}"),
        ))
    };
    Some(match req {
        Request::Put { id, crc32c, bytes } => {
            let Scope::Upload { link, bytes_max } = **scope else {
                return Some(not_granted("uploading"));
            };
            let len = bytes.len() as u64;
            if let Err(e) = host.state.reserve(&link, bytes_max, len) {
                let code = match e {
                    QuotaError::Exceeded { .. } => ErrorCode::QuotaExceeded,
                    QuotaError::Io(_) => ErrorCode::Internal,
                };
                return Some(ready(Reply::error(code, e.to_string())));
            }
            let pending = host.engine.put(id, crc32c, bytes, host.expiry());
            let host = Arc::clone(host);
            Box::pin(async move {
                match pending.recv().await {
                    Ok(PutOutcome::Stored) => {
                        host.metrics.put_bytes.fetch_add(len, Relaxed);
                        Reply::Stored { existing: false }
                    }
                    Ok(PutOutcome::Existing) => {
                        host.state.release(&link, len);
                        Reply::Stored { existing: true }
                    }
                    Err(e) => {
                        host.state.release(&link, len);
                        store_error(&e)
                    }
                }
            })
        }
        Request::Get { id } => {
            if !scope.may_read(&id) {
                return Some(not_granted("reading this chunk"));
            }
            let p = host.engine.get(id);
            Box::pin(async move { p.recv().await.map_or_else(|e| store_error(&e), Reply::Data) })
        }
        Request::GetRange { id, start, len } => {
            if !scope.may_read(&id) {
                return Some(not_granted("reading this chunk"));
            }
            let p = host
                .engine
                .get_range(id, start..start.saturating_add(u64::from(len)));
            Box::pin(async move { p.recv().await.map_or_else(|e| store_error(&e), Reply::Data) })
        }
        Request::Prove { id, leaf } => {
            if !scope.may_read(&id) {
                return Some(not_granted("proving this chunk"));
            }
            let p = host.engine.prove(id, leaf);
            Box::pin(async move { p.recv().await.map_or_else(|e| store_error(&e), Reply::Data) })
        }
        Request::GetObject => {
            let Scope::Download { manifest, .. } = &**scope else {
                return Some(not_granted("downloading"));
            };
            let p = host.engine.get(*manifest);
            Box::pin(async move { p.recv().await.map_or_else(|e| store_error(&e), Reply::Data) })
        }
        Request::Have { ids } => {
            let pending: Vec<_> = ids.iter().map(|id| host.engine.stat(*id)).collect();
            Box::pin(async move {
                let mut bits = vec![0u8; pending.len().div_ceil(8)];
                for (i, p) in pending.into_iter().enumerate() {
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
            let Scope::Upload { link, bytes_max } = **scope else {
                return Some(not_granted("uploading"));
            };
            let host = Arc::clone(host);
            Box::pin(
                async move { put_object(&host, link, bytes_max, manifest, chunks, envelope).await },
            )
        }
        Request::Hello { .. } | Request::ProxyConnect { .. } | Request::ProxyReceipt(_) => {
            return None
        }
    })
}

/// Stores a manifest envelope and records its chunk list, once every chunk is here.
async fn put_object(
    host: &Arc<Host>,
    link: [u8; 16],
    bytes_max: u64,
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
    let stats: Vec<_> = chunks.iter().map(|id| host.engine.stat(*id)).collect();
    for (id, p) in chunks.iter().zip(stats) {
        match p.recv().await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Reply::error(
                    ErrorCode::NotFound,
                    format!("chunk {id} of this file is not stored here: upload it first"),
                )
            }
            Err(e) => return store_error(&e),
        }
    }
    let len = envelope.len() as u64;
    if let Err(e) = host.state.reserve(&link, bytes_max, len) {
        return Reply::error(ErrorCode::QuotaExceeded, e.to_string());
    }
    let crc = engine::codec::crc32c(&envelope);
    let existing = match host
        .engine
        .put(manifest, crc, envelope, host.expiry())
        .recv()
        .await
    {
        Ok(o) => o == PutOutcome::Existing,
        Err(e) => {
            host.state.release(&link, len);
            return store_error(&e);
        }
    };
    let h = Arc::clone(host);
    let recorded =
        tokio::task::spawn_blocking(move || h.state.put_object(&manifest, &chunks)).await;
    match recorded {
        Ok(Ok(())) => Reply::Stored { existing },
        Ok(Err(e)) => Reply::error(
            ErrorCode::Internal,
            format!("recording the file failed: {e}"),
        ),
        Err(e) => Reply::error(ErrorCode::Internal, e.to_string()),
    }
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Queued>,
    metrics: Arc<Metrics>,
) -> Result<(), NetError> {
    while let Some(q) = rx.recv().await {
        let reply = q.reply.await;
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
        write_reply(&mut wr, q.request, &reply).await?;
        drop(q.permits);
        if q.fatal {
            break;
        }
    }
    let _ = wr.shutdown().await;
    Ok(())
}
