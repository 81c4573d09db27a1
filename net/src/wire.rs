//! The data plane's frames: a 12-byte header and a body, both documented byte by byte in
//! `docs/wire.md`. Pure: encoders append to a `Vec`, decoders take `&[u8]` and return a
//! value or a [`DecodeError`] naming the field. The async reading and writing of frames is
//! in [`crate::io`].

use proto::decode::{DecodeError, Reader};
use proto::ChunkId;

/// The protocol version every frame header carries. 2: `ProxyReady` states the proxy's
/// key, chain and price, and a `ProxyReceipt` is a `proto::receipt::ProxyReceipt`.
pub const WIRE_VERSION: u8 = 2;
/// Bytes of a frame header.
pub const HEADER_BYTES: usize = 12;
/// The largest body of any frame: an object (manifest id, a million chunk ids and the
/// manifest envelope) is the largest; a put is at most a chunk plus 36 bytes.
pub const FRAME_BODY_MAX: u32 = 80 << 20;
/// Most chunk ids one `Have` asks about.
pub const HAVE_IDS_MAX: u32 = 4096;
/// Longest message an error frame carries.
pub const ERROR_MESSAGE_MAX: usize = 1024;
/// Longest `host:port` in a frame.
pub const ADDR_MAX: usize = 255;

/// Domain separation of the bearer's proof in `Hello`.
pub const HELLO_CONTEXT: &[u8] = b"market.space 2026-11 hello v1\0";
/// Domain separation of the host's signature on a stored object.
pub const OBJECT_CONTEXT: &[u8] = b"market.space 2026-11 object stored v1\0";

/// Frame kinds. Client requests are below 0x40, proxy requests 0x40..0x7f, replies have the
/// high bit set.
pub mod kind {
    pub const HELLO: u8 = 0x01;
    pub const PUT: u8 = 0x02;
    pub const GET: u8 = 0x03;
    pub const GET_RANGE: u8 = 0x04;
    pub const PROVE: u8 = 0x05;
    pub const HAVE: u8 = 0x06;
    pub const PUT_OBJECT: u8 = 0x07;
    pub const GET_OBJECT: u8 = 0x08;
    pub const DELETE: u8 = 0x09;
    pub const GET_OBJECT_CHUNKS: u8 = 0x0A;
    pub const PROXY_CONNECT: u8 = 0x41;
    pub const PROXY_RECEIPT: u8 = 0x42;
    pub const WELCOME: u8 = 0x81;
    pub const READY: u8 = 0x82;
    pub const STORED: u8 = 0x83;
    pub const DATA: u8 = 0x84;
    pub const HAVE_REPLY: u8 = 0x85;
    pub const OBJECT_STORED: u8 = 0x86;
    pub const DELETED: u8 = 0x87;
    pub const PROXY_READY: u8 = 0xC1;
    pub const RECEIPT_OK: u8 = 0xC2;
    pub const ERROR: u8 = 0xFF;
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    /// Chosen by the client, echoed in the reply to that request.
    pub request: u32,
    pub body_len: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[0] = self.kind;
        h[1] = WIRE_VERSION;
        h[4..8].copy_from_slice(&self.request.to_le_bytes());
        h[8..12].copy_from_slice(&self.body_len.to_le_bytes());
        h
    }

    /// Decodes a header and checks its length against `body_max` before anything is read
    /// or allocated for the body.
    pub fn decode(bytes: &[u8; HEADER_BYTES], body_max: u32) -> Result<Header, DecodeError> {
        let mut r = Reader::new("frame header", bytes);
        let kind = r.u8("kind")?;
        r.version(WIRE_VERSION)?;
        r.reserved("reserved", 2)?;
        let request = r.u32("request id")?;
        let body_len = r.u32("body length")?;
        r.finish()?;
        if body_len > body_max {
            return Err(DecodeError::Invalid {
                what: "frame header",
                field: "body length",
                reason: format!("{body_len} bytes, over the limit of {body_max}"),
            });
        }
        Ok(Header {
            kind,
            request,
            body_len,
        })
    }
}

/// A whole frame: header fields and body, for encoding.
pub fn frame(kind: u8, request: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(
        &Header {
            kind,
            request,
            body_len: u32::try_from(body.len()).expect("bodies are bounded by FRAME_BODY_MAX"),
        }
        .encode(),
    );
    out.extend_from_slice(body);
    out
}

/// Why a request failed. The code travels on the wire; the message is for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    Malformed = 1,
    LinkRefused = 2,
    NotGranted = 3,
    NotFound = 4,
    Corrupt = 5,
    CrcMismatch = 6,
    IdMismatch = 7,
    Full = 8,
    QuotaExceeded = 9,
    Range = 10,
    Limit = 11,
    Internal = 12,
    Timeout = 13,
    Unreachable = 14,
    BadReceipt = 15,
    Busy = 16,
}

impl ErrorCode {
    pub fn from_u16(v: u16) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match v {
            1 => Malformed,
            2 => LinkRefused,
            3 => NotGranted,
            4 => NotFound,
            5 => Corrupt,
            6 => CrcMismatch,
            7 => IdMismatch,
            8 => Full,
            9 => QuotaExceeded,
            10 => Range,
            11 => Limit,
            12 => Internal,
            13 => Timeout,
            14 => Unreachable,
            15 => BadReceipt,
            16 => Busy,
            _ => return None,
        })
    }

    /// A short name, for logs and metric labels.
    pub fn name(self) -> &'static str {
        use ErrorCode::*;
        match self {
            Malformed => "malformed",
            LinkRefused => "link_refused",
            NotGranted => "not_granted",
            NotFound => "not_found",
            Corrupt => "corrupt",
            CrcMismatch => "crc_mismatch",
            IdMismatch => "id_mismatch",
            Full => "full",
            QuotaExceeded => "quota_exceeded",
            Range => "range",
            Limit => "limit",
            Internal => "internal",
            Timeout => "timeout",
            Unreachable => "unreachable",
            BadReceipt => "bad_receipt",
            Busy => "busy",
        }
    }
}

/// Requests a client (or a proxy's client) sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// The link as bytes ([`proto::link::Link::to_bytes`]) and, for a link that names a
    /// bearer, the bearer's key and its signature over [`HELLO_CONTEXT`], the host's nonce
    /// and the link id.
    Hello {
        link: Vec<u8>,
        bearer: Option<([u8; 32], [u8; 64])>,
    },
    Put {
        id: ChunkId,
        crc32c: u32,
        bytes: Vec<u8>,
    },
    Get {
        id: ChunkId,
    },
    GetRange {
        id: ChunkId,
        start: u64,
        len: u32,
    },
    Prove {
        id: ChunkId,
        leaf: u64,
    },
    Have {
        ids: Vec<ChunkId>,
    },
    /// A sealed file's manifest envelope, and the ids of its chunks (already stored), so that
    /// a download link for the manifest can name them.
    PutObject {
        manifest: ChunkId,
        chunks: Vec<ChunkId>,
        envelope: Vec<u8>,
    },
    /// The manifest envelope of the download link's file.
    GetObject,
    /// The ids of what the host holds of the download link's file, in the order its upload
    /// recorded them (`PutObject`): the manifest's chunks for a full copy, this host's
    /// erasure shares of each chunk (docs/formats.md section 24) otherwise. Answered with
    /// [`Reply::Data`] holding the ids, 32 bytes each ([`decode_object_chunks`]).
    GetObjectChunks,
    /// Withdraws a chunk sent under this upload link that no recorded file lists.
    Delete {
        id: ChunkId,
    },
    ProxyConnect {
        target: String,
    },
    ProxyReceipt(ProxyReceipt),
}

pub use proto::receipt::ProxyReceipt;

/// The message a host signs when it has recorded an object: the manifest id and its chunk
/// list as sent, so a client (through any proxy) knows the host itself has every chunk.
pub fn object_message(manifest: &ChunkId, chunks: &[ChunkId]) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    for c in chunks {
        h.update(&c.0);
    }
    let mut m = OBJECT_CONTEXT.to_vec();
    m.extend_from_slice(&manifest.0);
    m.extend_from_slice(
        &u32::try_from(chunks.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    m.extend_from_slice(h.finalize().as_bytes());
    m
}

/// The message a link's bearer signs in `Hello`.
pub fn hello_message(nonce: &[u8; 32], link_id: &[u8; 16]) -> Vec<u8> {
    [HELLO_CONTEXT, nonce, link_id].concat()
}

/// Reads the ids a [`Request::GetObjectChunks`] is answered with: 32 bytes each, at most
/// `proto::CHUNKS_PER_FILE_MAX` of them.
pub fn decode_object_chunks(bytes: &[u8]) -> Result<Vec<ChunkId>, DecodeError> {
    let invalid = |reason: String| DecodeError::Invalid {
        what: "object chunks",
        field: "ids",
        reason,
    };
    if !bytes.len().is_multiple_of(32) {
        return Err(invalid(format!(
            "{} bytes, not a whole number of 32-byte ids",
            bytes.len()
        )));
    }
    if bytes.len() / 32 > proto::CHUNKS_PER_FILE_MAX as usize {
        return Err(invalid(format!(
            "{} ids, over the {} a file may have",
            bytes.len() / 32,
            proto::CHUNKS_PER_FILE_MAX
        )));
    }
    Ok(bytes
        .chunks_exact(32)
        .map(|c| ChunkId(c.try_into().expect("32 bytes")))
        .collect())
}

fn put_ids(out: &mut Vec<u8>, ids: &[ChunkId]) {
    out.extend_from_slice(&u32::try_from(ids.len()).unwrap_or(u32::MAX).to_le_bytes());
    for id in ids {
        out.extend_from_slice(&id.0);
    }
}

fn take_ids(r: &mut Reader<'_>, max: u32) -> Result<Vec<ChunkId>, DecodeError> {
    let n = r.u32("id count")?;
    if n > max {
        return Err(r.invalid("id count", format!("{n}, over the limit of {max}")));
    }
    // The count is checked against the bytes left before allocating for it.
    if (n as usize).saturating_mul(32) > r.remaining() {
        return Err(r.invalid("ids", format!("{n} ids announced, fewer bytes follow")));
    }
    (0..n).map(|_| Ok(ChunkId(r.array("id")?))).collect()
}

fn put_addr(out: &mut Vec<u8>, addr: &str) {
    out.push(u8::try_from(addr.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(addr.as_bytes());
}

fn take_addr(r: &mut Reader<'_>, field: &'static str) -> Result<String, DecodeError> {
    let n = usize::from(r.u8(field)?);
    let bytes = r.take(field, n)?;
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()) => Ok(s.to_string()),
        _ => Err(r.invalid(field, "not a printable ASCII address")),
    }
}

impl Request {
    pub fn kind(&self) -> u8 {
        match self {
            Request::Hello { .. } => kind::HELLO,
            Request::Put { .. } => kind::PUT,
            Request::Get { .. } => kind::GET,
            Request::GetRange { .. } => kind::GET_RANGE,
            Request::Prove { .. } => kind::PROVE,
            Request::Have { .. } => kind::HAVE,
            Request::PutObject { .. } => kind::PUT_OBJECT,
            Request::GetObject => kind::GET_OBJECT,
            Request::GetObjectChunks => kind::GET_OBJECT_CHUNKS,
            Request::Delete { .. } => kind::DELETE,
            Request::ProxyConnect { .. } => kind::PROXY_CONNECT,
            Request::ProxyReceipt(_) => kind::PROXY_RECEIPT,
        }
    }

    /// The body of this request's frame.
    pub fn encode_body(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Request::Hello { link, bearer } => {
                out.extend_from_slice(&u16::try_from(link.len()).unwrap_or(0).to_le_bytes());
                out.extend_from_slice(link);
                match bearer {
                    None => out.push(0),
                    Some((key, sig)) => {
                        out.push(1);
                        out.extend_from_slice(key);
                        out.extend_from_slice(sig);
                    }
                }
            }
            Request::Put { id, crc32c, bytes } => {
                out.reserve(36 + bytes.len());
                out.extend_from_slice(&id.0);
                out.extend_from_slice(&crc32c.to_le_bytes());
                out.extend_from_slice(bytes);
            }
            Request::Get { id } | Request::Delete { id } => out.extend_from_slice(&id.0),
            Request::GetRange { id, start, len } => {
                out.extend_from_slice(&id.0);
                out.extend_from_slice(&start.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
            }
            Request::Prove { id, leaf } => {
                out.extend_from_slice(&id.0);
                out.extend_from_slice(&leaf.to_le_bytes());
            }
            Request::Have { ids } => put_ids(&mut out, ids),
            Request::PutObject {
                manifest,
                chunks,
                envelope,
            } => {
                out.extend_from_slice(&manifest.0);
                put_ids(&mut out, chunks);
                out.extend_from_slice(envelope);
            }
            Request::GetObject | Request::GetObjectChunks => {}
            Request::ProxyConnect { target } => put_addr(&mut out, target),
            Request::ProxyReceipt(r) => r.encode(&mut out),
        }
        out
    }

    /// The whole frame.
    pub fn to_frame(&self, request: u32) -> Vec<u8> {
        frame(self.kind(), request, &self.encode_body())
    }

    /// Decodes a request body of frame kind `kind`. A put's payload is taken by value
    /// (`body` is moved in) so the bytes are not copied again.
    pub fn decode(kind: u8, body: Vec<u8>) -> Result<Request, DecodeError> {
        if kind == kind::PUT {
            if body.len() < 37 {
                return Err(DecodeError::Invalid {
                    what: "put",
                    field: "body",
                    reason: format!(
                        "{} bytes; a put is an id, a CRC and 1 or more bytes",
                        body.len()
                    ),
                });
            }
            let mut r = Reader::new("put", &body);
            let id = ChunkId(r.array("id")?);
            let crc32c = r.u32("crc32c")?;
            let mut bytes = body;
            bytes.drain(..36);
            return Ok(Request::Put { id, crc32c, bytes });
        }
        let what = match kind {
            kind::HELLO => "hello",
            kind::GET => "get",
            kind::GET_RANGE => "range get",
            kind::PROVE => "prove",
            kind::HAVE => "have",
            kind::PUT_OBJECT => "put object",
            kind::GET_OBJECT => "get object",
            kind::GET_OBJECT_CHUNKS => "get object chunks",
            kind::DELETE => "delete",
            kind::PROXY_CONNECT => "proxy connect",
            kind::PROXY_RECEIPT => "proxy receipt",
            k => {
                return Err(DecodeError::Invalid {
                    what: "frame",
                    field: "kind",
                    reason: format!("{k:#04x} is not a request"),
                })
            }
        };
        let mut r = Reader::new(what, &body);
        let req = match kind {
            kind::HELLO => {
                let n = usize::from(r.u16("link length")?);
                let link = r.take("link", n)?.to_vec();
                let bearer = match r.u8("bearer flag")? {
                    0 => None,
                    1 => Some((r.array("bearer key")?, r.array("bearer signature")?)),
                    f => return Err(r.invalid("bearer flag", format!("{f}, not 0 or 1"))),
                };
                Request::Hello { link, bearer }
            }
            kind::GET => Request::Get {
                id: ChunkId(r.array("id")?),
            },
            kind::GET_RANGE => Request::GetRange {
                id: ChunkId(r.array("id")?),
                start: r.u64("start")?,
                len: r.u32("length")?,
            },
            kind::PROVE => Request::Prove {
                id: ChunkId(r.array("id")?),
                leaf: r.u64("leaf")?,
            },
            kind::HAVE => Request::Have {
                ids: take_ids(&mut r, HAVE_IDS_MAX)?,
            },
            kind::PUT_OBJECT => {
                let manifest = ChunkId(r.array("manifest id")?);
                let chunks = take_ids(&mut r, proto::CHUNKS_PER_FILE_MAX)?;
                let envelope = r.take("envelope", r.remaining())?.to_vec();
                if envelope.is_empty() {
                    return Err(r.invalid("envelope", "empty"));
                }
                Request::PutObject {
                    manifest,
                    chunks,
                    envelope,
                }
            }
            kind::GET_OBJECT => Request::GetObject,
            kind::GET_OBJECT_CHUNKS => Request::GetObjectChunks,
            kind::DELETE => Request::Delete {
                id: ChunkId(r.array("id")?),
            },
            kind::PROXY_CONNECT => Request::ProxyConnect {
                target: take_addr(&mut r, "target")?,
            },
            _ => Request::ProxyReceipt(ProxyReceipt::read(&mut r)?),
        };
        r.finish()?;
        Ok(req)
    }
}

/// Replies a host or proxy sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The host's first frame on every connection: a fresh nonce for the bearer's proof, the
    /// address it sees the peer at, and its limits.
    Welcome {
        nonce: [u8; 32],
        peer: String,
        frame_body_max: u32,
        inflight_bytes_max: u64,
        inflight_requests_max: u32,
    },
    /// The link was accepted; for an upload link, the bytes it still allows.
    Ready {
        upload_bytes_left: u64,
    },
    /// A put was stored (`existing`: it already was).
    Stored {
        existing: bool,
    },
    /// An object was recorded: the host's signature over [`object_message`].
    ObjectStored {
        signature: [u8; 64],
    },
    /// The link no longer holds the chunk (`removed`: its bytes were deleted from the
    /// disk; otherwise another upload still holds them, or they were gone already).
    Deleted {
        removed: bool,
    },
    /// Chunk bytes, a range, a proof or a manifest envelope.
    Data(Vec<u8>),
    /// One bit per id asked, in order, least significant bit first: set if stored.
    HaveReply {
        bits: Vec<u8>,
    },
    /// The relay is open: the session's id, and who the proxy is and what it charges, for
    /// the client's receipt.
    ProxyReady {
        session: [u8; 16],
        proxy: [u8; 32],
        chain_id: u64,
        price_per_gib: u64,
    },
    ReceiptOk,
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl Reply {
    pub fn kind(&self) -> u8 {
        match self {
            Reply::Welcome { .. } => kind::WELCOME,
            Reply::Ready { .. } => kind::READY,
            Reply::Stored { .. } => kind::STORED,
            Reply::ObjectStored { .. } => kind::OBJECT_STORED,
            Reply::Deleted { .. } => kind::DELETED,
            Reply::Data(_) => kind::DATA,
            Reply::HaveReply { .. } => kind::HAVE_REPLY,
            Reply::ProxyReady { .. } => kind::PROXY_READY,
            Reply::ReceiptOk => kind::RECEIPT_OK,
            Reply::Error { .. } => kind::ERROR,
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
        let mut message: String = message.into();
        if message.len() > ERROR_MESSAGE_MAX {
            let mut end = ERROR_MESSAGE_MAX;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Reply::Error { code, message }
    }

    pub fn encode_body(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Reply::Welcome {
                nonce,
                peer,
                frame_body_max,
                inflight_bytes_max,
                inflight_requests_max,
            } => {
                out.extend_from_slice(nonce);
                out.extend_from_slice(&frame_body_max.to_le_bytes());
                out.extend_from_slice(&inflight_bytes_max.to_le_bytes());
                out.extend_from_slice(&inflight_requests_max.to_le_bytes());
                put_addr(&mut out, peer);
            }
            Reply::Ready { upload_bytes_left } => {
                out.extend_from_slice(&upload_bytes_left.to_le_bytes())
            }
            Reply::Stored { existing } => out.push(u8::from(*existing)),
            Reply::Deleted { removed } => out.push(u8::from(*removed)),
            Reply::ObjectStored { signature } => out.extend_from_slice(signature),
            Reply::Data(bytes) => out.extend_from_slice(bytes),
            Reply::HaveReply { bits } => out.extend_from_slice(bits),
            Reply::ProxyReady {
                session,
                proxy,
                chain_id,
                price_per_gib,
            } => {
                out.extend_from_slice(session);
                out.extend_from_slice(proxy);
                out.extend_from_slice(&chain_id.to_le_bytes());
                out.extend_from_slice(&price_per_gib.to_le_bytes());
            }
            Reply::ReceiptOk => {}
            Reply::Error { code, message } => {
                out.extend_from_slice(&(*code as u16).to_le_bytes());
                out.extend_from_slice(message.as_bytes());
            }
        }
        out
    }

    pub fn to_frame(&self, request: u32) -> Vec<u8> {
        frame(self.kind(), request, &self.encode_body())
    }

    /// Decodes a reply body of frame kind `kind`; `Data` takes the body by value.
    pub fn decode(kind: u8, body: Vec<u8>) -> Result<Reply, DecodeError> {
        if kind == kind::DATA {
            return Ok(Reply::Data(body));
        }
        let what = match kind {
            kind::WELCOME => "welcome",
            kind::READY => "ready",
            kind::STORED => "stored",
            kind::OBJECT_STORED => "object stored",
            kind::DELETED => "deleted",
            kind::HAVE_REPLY => "have reply",
            kind::PROXY_READY => "proxy ready",
            kind::RECEIPT_OK => "receipt ok",
            kind::ERROR => "error",
            k => {
                return Err(DecodeError::Invalid {
                    what: "frame",
                    field: "kind",
                    reason: format!("{k:#04x} is not a reply"),
                })
            }
        };
        let mut r = Reader::new(what, &body);
        let reply = match kind {
            kind::WELCOME => Reply::Welcome {
                nonce: r.array("nonce")?,
                frame_body_max: r.u32("frame body max")?,
                inflight_bytes_max: r.u64("in-flight bytes max")?,
                inflight_requests_max: r.u32("in-flight requests max")?,
                peer: take_addr(&mut r, "peer")?,
            },
            kind::READY => Reply::Ready {
                upload_bytes_left: r.u64("upload bytes left")?,
            },
            kind::STORED => Reply::Stored {
                existing: match r.u8("existing")? {
                    0 => false,
                    1 => true,
                    v => return Err(r.invalid("existing", format!("{v}, not 0 or 1"))),
                },
            },
            kind::OBJECT_STORED => Reply::ObjectStored {
                signature: r.array("signature")?,
            },
            kind::DELETED => Reply::Deleted {
                removed: match r.u8("removed")? {
                    0 => false,
                    1 => true,
                    v => return Err(r.invalid("removed", format!("{v}, not 0 or 1"))),
                },
            },
            kind::HAVE_REPLY => Reply::HaveReply {
                bits: r.take("bits", r.remaining())?.to_vec(),
            },
            kind::PROXY_READY => Reply::ProxyReady {
                session: r.array("session")?,
                proxy: r.array("proxy")?,
                chain_id: r.u64("chain_id")?,
                price_per_gib: r.u64("price_per_gib")?,
            },
            kind::RECEIPT_OK => Reply::ReceiptOk,
            _ => {
                let code = r.u16("code")?;
                let code = ErrorCode::from_u16(code)
                    .ok_or_else(|| r.invalid("code", format!("unknown error code {code}")))?;
                let msg = r.take("message", r.remaining())?;
                if msg.len() > ERROR_MESSAGE_MAX {
                    return Err(r.invalid("message", "longer than 1024 bytes"));
                }
                let message = std::str::from_utf8(msg)
                    .map_err(|_| r.invalid("message", "not UTF-8"))?
                    .to_string();
                Reply::Error { code, message }
            }
        };
        r.finish()?;
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn id(b: u8) -> ChunkId {
        ChunkId([b; 32])
    }

    fn requests() -> Vec<Request> {
        let key = ed25519_consensus::SigningKey::from([7u8; 32]);
        vec![
            Request::Hello {
                link: vec![1, 2, 3],
                bearer: None,
            },
            Request::Hello {
                link: vec![9; 200],
                bearer: Some(([4; 32], [5; 64])),
            },
            Request::Put {
                id: id(1),
                crc32c: 0xdead_beef,
                bytes: vec![7; 100],
            },
            Request::Get { id: id(2) },
            Request::GetRange {
                id: id(3),
                start: 4096,
                len: 1024,
            },
            Request::Prove {
                id: id(4),
                leaf: 17,
            },
            Request::Have {
                ids: vec![id(5), id(6)],
            },
            Request::PutObject {
                manifest: id(7),
                chunks: vec![id(8)],
                envelope: vec![1; 50],
            },
            Request::GetObject,
            Request::GetObjectChunks,
            Request::Delete { id: id(9) },
            Request::ProxyConnect {
                target: "127.0.0.1:7000".into(),
            },
            Request::ProxyReceipt(receipt(&key)),
        ]
    }

    fn replies() -> Vec<Reply> {
        vec![
            Reply::Welcome {
                nonce: [1; 32],
                peer: "10.0.0.1:5555".into(),
                frame_body_max: FRAME_BODY_MAX,
                inflight_bytes_max: 1 << 28,
                inflight_requests_max: 64,
            },
            Reply::ObjectStored { signature: [3; 64] },
            Reply::Ready {
                upload_bytes_left: 99,
            },
            Reply::Stored { existing: true },
            Reply::Deleted { removed: false },
            Reply::Data(vec![1, 2, 3]),
            Reply::HaveReply { bits: vec![0b101] },
            Reply::ProxyReady {
                session: [9; 16],
                proxy: [4; 32],
                chain_id: 2,
                price_per_gib: 7,
            },
            Reply::ReceiptOk,
            Reply::error(ErrorCode::NotGranted, "not in this link"),
        ]
    }

    fn split(frame: &[u8]) -> (Header, Vec<u8>) {
        let h = Header::decode(frame[..HEADER_BYTES].try_into().unwrap(), FRAME_BODY_MAX).unwrap();
        assert_eq!(h.body_len as usize, frame.len() - HEADER_BYTES);
        (h, frame[HEADER_BYTES..].to_vec())
    }

    #[test]
    fn every_frame_round_trips() {
        for (i, req) in (0u32..).zip(requests()) {
            let (h, body) = split(&req.to_frame(i));
            assert_eq!(h.request, i);
            assert_eq!(Request::decode(h.kind, body).unwrap(), req);
        }
        for rep in replies() {
            let (h, body) = split(&rep.to_frame(5));
            assert_eq!(Reply::decode(h.kind, body).unwrap(), rep);
        }
    }

    fn receipt(key: &ed25519_consensus::SigningKey) -> ProxyReceipt {
        ProxyReceipt::sign(
            key,
            &proto::receipt::Relayed {
                chain_id: 1,
                proxy: proto::tx::AccountId([4; 32]),
                session: [3; 16],
                up_bytes: 10,
                down_bytes: 20,
                price_per_gib: 5,
                expiry_unix_secs: 1000,
            },
        )
    }

    #[test]
    fn receipts_verify_only_as_signed() {
        let key = ed25519_consensus::SigningKey::from([7u8; 32]);
        let r = receipt(&key);
        assert!(r.verify());
        let mut more = r.clone();
        more.up_bytes += 1;
        assert!(
            !more.verify(),
            "a receipt claiming more bytes must not verify"
        );
        // A receipt frame cut short names the field.
        let frame = Request::ProxyReceipt(r).to_frame(1);
        let (h, body) = split(&frame);
        let err = Request::decode(h.kind, body[..body.len() - 1].to_vec()).unwrap_err();
        assert!(err.to_string().contains("signature"), "{err}");
    }

    #[test]
    fn malformed_frames_are_refused_with_the_field_named() {
        let good = Request::Get { id: id(1) }.to_frame(1);
        let mut h: [u8; HEADER_BYTES] = good[..HEADER_BYTES].try_into().unwrap();
        h[1] = 3;
        assert!(Header::decode(&h, FRAME_BODY_MAX)
            .unwrap_err()
            .to_string()
            .contains("version"));
        let mut h: [u8; HEADER_BYTES] = good[..HEADER_BYTES].try_into().unwrap();
        h[2] = 1;
        assert!(Header::decode(&h, FRAME_BODY_MAX).is_err());
        let h = Header {
            kind: kind::PUT,
            request: 0,
            body_len: FRAME_BODY_MAX + 1,
        }
        .encode();
        assert!(Header::decode(&h, FRAME_BODY_MAX)
            .unwrap_err()
            .to_string()
            .contains("over the limit"));

        // Truncated and overlong bodies of every request kind.
        for req in requests() {
            let body = req.encode_body();
            if !body.is_empty() && !matches!(req, Request::Put { .. } | Request::PutObject { .. }) {
                assert!(
                    Request::decode(req.kind(), body[..body.len() - 1].to_vec()).is_err(),
                    "{req:?} truncated"
                );
            }
            let mut long = body.clone();
            long.push(0);
            if !matches!(req, Request::Put { .. } | Request::PutObject { .. }) {
                assert!(
                    Request::decode(req.kind(), long).is_err(),
                    "{req:?} + 1 byte"
                );
            }
        }
        assert!(
            Request::decode(kind::PUT, vec![0; 36]).is_err(),
            "empty put"
        );
        assert!(Request::decode(0x30, vec![]).is_err(), "unknown kind");
        assert!(
            Request::decode(kind::WELCOME, vec![]).is_err(),
            "a reply is no request"
        );
        // An id count larger than the bytes that follow is refused before allocating.
        let mut have = u32::MAX.to_le_bytes().to_vec();
        have.extend_from_slice(&[0; 32]);
        assert!(Request::decode(kind::HAVE, have).is_err());
        let mut have = 2u32.to_le_bytes().to_vec();
        have.extend_from_slice(&[0; 32]);
        assert!(Request::decode(kind::HAVE, have).is_err());
        let mut obj = vec![0; 32];
        obj.extend_from_slice(&0u32.to_le_bytes());
        assert!(
            Request::decode(kind::PUT_OBJECT, obj).is_err(),
            "no envelope"
        );
        // Bad flags and addresses.
        let mut hello = 1u16.to_le_bytes().to_vec();
        hello.extend_from_slice(&[1, 2]);
        assert!(Request::decode(kind::HELLO, hello).is_err());
        assert!(Request::decode(kind::PROXY_CONNECT, vec![2, b' ', b'x']).is_err());
        assert!(Request::decode(kind::PROXY_CONNECT, vec![0]).is_err());

        for rep in replies() {
            let body = rep.encode_body();
            if !matches!(
                rep,
                Reply::Data(_) | Reply::HaveReply { .. } | Reply::Error { .. }
            ) && !body.is_empty()
            {
                assert!(Reply::decode(rep.kind(), body[..body.len() - 1].to_vec()).is_err());
            }
        }
        assert!(Reply::decode(kind::STORED, vec![2]).is_err());
        assert!(Reply::decode(kind::DELETED, vec![2]).is_err());
        assert!(Reply::decode(kind::DELETED, vec![]).is_err());
        assert!(
            Reply::decode(kind::ERROR, vec![99, 0]).is_err(),
            "unknown code"
        );
        assert!(
            Reply::decode(kind::ERROR, vec![1, 0, 0xff]).is_err(),
            "not UTF-8"
        );
        assert!(
            Reply::decode(kind::PUT, vec![]).is_err(),
            "a request is no reply"
        );
    }

    #[test]
    fn error_messages_are_cut_to_the_limit_on_a_character_boundary() {
        let Reply::Error { message, .. } = Reply::error(ErrorCode::Internal, "é".repeat(1000))
        else {
            unreachable!()
        };
        assert!(message.len() <= ERROR_MESSAGE_MAX);
        assert!(Reply::decode(
            kind::ERROR,
            Reply::error(ErrorCode::Internal, message).encode_body()
        )
        .is_ok());
    }

    #[test]
    fn object_chunk_lists_decode_and_ragged_or_huge_ones_are_refused() {
        let ids = [id(1), id(2), id(3)];
        let bytes: Vec<u8> = ids.iter().flat_map(|i| i.0).collect();
        assert_eq!(decode_object_chunks(&bytes).unwrap(), ids);
        assert_eq!(decode_object_chunks(&[]).unwrap(), Vec::<ChunkId>::new());
        let e = decode_object_chunks(&bytes[..95]).unwrap_err().to_string();
        assert!(e.contains("not a whole number"), "{e}");
        let huge = vec![0u8; (proto::CHUNKS_PER_FILE_MAX as usize + 1) * 32];
        let e = decode_object_chunks(&huge).unwrap_err().to_string();
        assert!(e.contains("over the"), "{e}");
    }
}
