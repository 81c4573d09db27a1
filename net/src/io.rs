//! Reading and writing [`crate::wire`] frames on async streams, with the limits that keep a
//! slow or hostile peer from holding memory or a task: a deadline for each frame's body that
//! grows with its length, and a length checked before anything is allocated.

use std::time::Duration;

use proto::ChunkId;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::wire::{Header, Reply, Request, HEADER_BYTES};
use crate::NetError;

/// The time a body of `len` bytes may take to arrive: `base` plus `len` at `min_rate`
/// bytes per second. A peer slower than that is a slow-loris, not a client.
pub fn body_deadline(base: Duration, min_rate: u64, len: u32) -> Duration {
    base + Duration::from_secs_f64(f64::from(len) / min_rate.max(1) as f64)
}

/// Reads a frame header; `Ok(None)` at a clean end of stream (no byte of a new header).
pub async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
    body_max: u32,
) -> Result<Option<Header>, NetError> {
    let mut h = [0u8; HEADER_BYTES];
    let n = r.read(&mut h).await?;
    if n == 0 {
        return Ok(None);
    }
    r.read_exact(&mut h[n..]).await?;
    Ok(Some(Header::decode(&h, body_max)?))
}

/// Reads `len` bytes into a new buffer.
pub async fn read_body<R: AsyncRead + Unpin>(r: &mut R, len: u32) -> Result<Vec<u8>, NetError> {
    // Read into spare capacity: no pass to zero a buffer the socket overwrites anyway.
    let len = len as usize;
    let mut body = Vec::with_capacity(len);
    while body.len() < len {
        let want = (len - body.len()) as u64;
        if (&mut *r).take(want).read_buf(&mut body).await? == 0 {
            return Err(NetError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    Ok(body)
}

/// Reads the body of a request frame. A put's 36-byte prefix (id, CRC) is read apart from
/// its payload, so the payload lands in its own buffer and goes to the store as it is.
pub async fn read_request_body<R: AsyncRead + Unpin>(
    r: &mut R,
    h: &Header,
) -> Result<Request, NetError> {
    if h.kind == crate::wire::kind::PUT && h.body_len > 36 {
        let mut prefix = [0u8; 36];
        r.read_exact(&mut prefix).await?;
        let payload = read_body(r, h.body_len - 36).await?;
        let id = ChunkId(prefix[..32].try_into().expect("32 bytes"));
        let crc32c = u32::from_le_bytes(prefix[32..].try_into().expect("4 bytes"));
        return Ok(Request::Put {
            id,
            crc32c,
            bytes: payload,
        });
    }
    let body = read_body(r, h.body_len).await?;
    Ok(Request::decode(h.kind, body)?)
}

/// Reads one reply frame (header and body).
pub async fn read_reply<R: AsyncRead + Unpin>(
    r: &mut R,
    body_max: u32,
) -> Result<(u32, Reply), NetError> {
    let h = read_header(r, body_max).await?.ok_or(NetError::Closed)?;
    let body = read_body(r, h.body_len).await?;
    Ok((h.request, Reply::decode(h.kind, body)?))
}

/// Writes a put frame without building it in one buffer: header and prefix, then the
/// payload from where it already is.
pub async fn write_put<W: AsyncWrite + Unpin>(
    w: &mut W,
    request: u32,
    id: &ChunkId,
    crc32c: u32,
    payload: &[u8],
) -> Result<(), NetError> {
    let len = u32::try_from(payload.len() + 36)
        .map_err(|_| NetError::Protocol("a chunk too large for a frame".into()))?;
    let mut head = Vec::with_capacity(HEADER_BYTES + 36);
    head.extend_from_slice(
        &Header {
            kind: crate::wire::kind::PUT,
            request,
            body_len: len,
        }
        .encode(),
    );
    head.extend_from_slice(&id.0);
    head.extend_from_slice(&crc32c.to_le_bytes());
    w.write_all(&head).await?;
    w.write_all(payload).await?;
    Ok(())
}

/// Writes a reply; a `Data` reply's bytes are written from where they are.
pub async fn write_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    request: u32,
    reply: &Reply,
) -> Result<(), NetError> {
    if let Reply::Data(bytes) = reply {
        let h = Header {
            kind: crate::wire::kind::DATA,
            request,
            body_len: u32::try_from(bytes.len())
                .map_err(|_| NetError::Protocol("a reply too large for a frame".into()))?,
        };
        w.write_all(&h.encode()).await?;
        w.write_all(bytes).await?;
    } else {
        w.write_all(&reply.to_frame(request)).await?;
    }
    Ok(())
}

/// Byte counters of a connection, as the client's socket sees them.
#[derive(Debug, Default)]
pub struct Counters {
    pub up: AtomicU64,
    pub down: AtomicU64,
}

/// A stream that counts the bytes through it (proxy receipts, idle detection).
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    counters: Arc<Counters>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, counters: Arc<Counters>) -> Self {
        Counted { inner, counters }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.counters.down.fetch_add(n as u64, Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.counters.up.fetch_add(*n as u64, Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
