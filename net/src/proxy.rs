//! The proxy relay (`mspace proxy`): a client names a host (or the next proxy) in a
//! `ProxyConnect` frame, the proxy connects to it from its own address and then relays bytes
//! both ways unchanged, counting them. The host sees only the proxy's address. When the
//! session ends, the client sends a `ProxyReceipt` on a new connection: its signed statement
//! of the bytes relayed, at the price and to the key the proxy stated in its `ProxyReady`,
//! which the proxy accepts only if it matches its own count and statement. With a store,
//! an accepted receipt is on disk before it is acknowledged, and `crate::redeem` has the
//! chain pay it from the client's allowance.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand_core::RngCore;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info};

use crate::config::Limits;
use crate::io::{read_header, read_request_body, write_reply, Counted, Counters};
use crate::redeem::ReceiptStore;
use crate::wire::{kind, ErrorCode, ProxyReceipt, Reply, Request};
use crate::NetError;
use std::sync::atomic::Ordering::Relaxed;

/// Time to reach the target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a receipt waits for its session's relay to finish.
const RECEIPT_WAIT: Duration = Duration::from_secs(30);
/// Sessions whose receipts are kept in memory.
const SESSIONS_MAX: usize = 100_000;

/// A relayed session: the byte counts once the relay has ended.
#[derive(Debug)]
struct Session {
    counts: watch::Receiver<Option<(u64, u64)>>,
}

/// Who a proxy is to its clients: the key its receipts pay, the chain they are paid on
/// and its price, MASPC per GiB relayed (both ways).
#[derive(Clone, Debug)]
pub struct Identity {
    pub key: ed25519_consensus::SigningKey,
    pub chain_id: u64,
    pub price_per_gib: u64,
}

impl Identity {
    /// A new key, no chain, free: receipts are checked and kept but not paid.
    pub fn unpaid() -> Identity {
        Identity {
            key: ed25519_consensus::SigningKey::new(rand_core::OsRng),
            chain_id: 0,
            price_per_gib: 0,
        }
    }
}

/// A proxy's sessions and the receipts clients signed.
#[derive(Debug)]
pub struct Proxy {
    sessions: Mutex<HashMap<[u8; 16], Session>>,
    receipts: Mutex<Vec<ProxyReceipt>>,
    limits: Limits,
    allow_private: bool,
    identity: Identity,
    store: Option<ReceiptStore>,
}

/// Whether `ip` is one a public relay must not reach for strangers: loopback, private,
/// link-local, unspecified or broadcast (the relay would otherwise open the proxy's own
/// network, its metrics port say, to anyone).
fn private(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || a == 0
                || (a == 100 && (b & 0xc0) == 64) // shared address space (cloud metadata too)
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (b & 0xfe) == 18) // benchmarking
                || a >= 224 // multicast and reserved
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local
                || (s[0] & 0xff00) == 0xff00 // multicast
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64
                || v6.to_ipv4_mapped().is_some_and(|v4| private(v4.into()))
                || (s[..6] == [0; 6]) // IPv4-compatible ::a.b.c.d
        }
    }
}

impl Proxy {
    /// A proxy with `limits`; `allow_private` lets it relay to loopback and private
    /// addresses (a local test network), which a public proxy refuses.
    /// Its receipts are checked and kept in memory, not paid ([`Identity::unpaid`]).
    pub fn new(limits: Limits, allow_private: bool) -> Proxy {
        Proxy::paid(limits, allow_private, Identity::unpaid(), None)
    }

    /// A proxy that states `identity` to its clients and, with a `store`, keeps each
    /// receipt on disk before it acknowledges it.
    pub fn paid(
        limits: Limits,
        allow_private: bool,
        identity: Identity,
        store: Option<ReceiptStore>,
    ) -> Proxy {
        Proxy {
            sessions: Mutex::default(),
            receipts: Mutex::default(),
            limits,
            allow_private,
            identity,
            store,
        }
    }

    /// Receipts accepted since it started.
    pub fn receipts(&self) -> Vec<ProxyReceipt> {
        self.receipts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Serves until `shutdown` turns true.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(proxy.limits.max_connections));
    let local_ip = listener.local_addr().ok().map(|a| a.ip());
    loop {
        let accepted = tokio::select! {
            a = async {
                let slot = Arc::clone(&slots).acquire_owned().await;
                (slot, listener.accept().await)
            } => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (Ok(slot), Ok((stream, peer))) = accepted else {
            continue;
        };
        let proxy = Arc::clone(&proxy);
        tokio::spawn(async move {
            match connection(&proxy, stream, local_ip).await {
                Ok(()) => debug!(%peer, "proxy connection done"),
                Err(e) => info!(%peer, reason = %e, "proxy connection closed"),
            }
            drop(slot);
        });
    }
}

async fn connection(
    proxy: &Arc<Proxy>,
    mut client: TcpStream,
    local_ip: Option<std::net::IpAddr>,
) -> Result<(), NetError> {
    let first = tokio::time::timeout(proxy.limits.hello(), async {
        let h = read_header(&mut client, 1024)
            .await?
            .ok_or(NetError::Closed)?;
        if h.kind != kind::PROXY_CONNECT && h.kind != kind::PROXY_RECEIPT {
            return Err(NetError::Protocol(format!(
                "a proxy takes a connect or a receipt first, not kind {:#04x}",
                h.kind
            )));
        }
        Ok((h.request, read_request_body(&mut client, &h).await?))
    })
    .await
    .map_err(|_| NetError::Timeout("proxy hello"))?;
    let (request, req) = match first {
        Ok(r) => r,
        Err(e) => {
            let _ = write_reply(
                &mut client,
                0,
                &Reply::error(ErrorCode::Malformed, e.to_string()),
            )
            .await;
            return Err(e);
        }
    };
    match req {
        Request::ProxyConnect { target } => relay(proxy, client, request, &target, local_ip).await,
        Request::ProxyReceipt(r) => {
            let reply = check_receipt(proxy, r).await;
            write_reply(&mut client, request, &reply).await?;
            client.shutdown().await?;
            Ok(())
        }
        _ => Err(NetError::Protocol("unreachable: kind checked".into())),
    }
}

async fn connect_from(
    target: &str,
    local_ip: Option<std::net::IpAddr>,
    allow_private: bool,
) -> std::io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target).await?.collect();
    // Never itself: a pipe into its own listener loops, and its own address may reach
    // services bound to every interface.
    if addrs
        .iter()
        .any(|a| Some(a.ip()) == local_ip && !a.ip().is_unspecified())
        && !allow_private
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "this proxy does not relay to its own address",
        ));
    }
    if !allow_private && addrs.iter().any(|a| private(a.ip())) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "this proxy does not relay to loopback or private addresses",
        ));
    }
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // Connect from the address the proxy listens on, when it is a specific one, so the
        // host sees the proxy's public face.
        if let Some(ip) =
            local_ip.filter(|ip| !ip.is_unspecified() && ip.is_ipv4() == addr.is_ipv4())
        {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        match socket.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn relay(
    proxy: &Arc<Proxy>,
    mut client: TcpStream,
    request: u32,
    target: &str,
    local_ip: Option<std::net::IpAddr>,
) -> Result<(), NetError> {
    let upstream = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        connect_from(target, local_ip, proxy.allow_private),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let msg = format!("cannot reach {target}: {e}");
            let _ = write_reply(
                &mut client,
                request,
                &Reply::error(ErrorCode::Unreachable, msg.clone()),
            )
            .await;
            return Err(NetError::Protocol(msg));
        }
        Err(_) => {
            let msg = format!("connecting to {target} timed out");
            let _ = write_reply(
                &mut client,
                request,
                &Reply::error(ErrorCode::Unreachable, msg.clone()),
            )
            .await;
            return Err(NetError::Timeout("proxy connect"));
        }
    };
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let mut session = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut session);
    let (done, counts) = watch::channel(None);
    {
        let mut s = proxy.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() >= SESSIONS_MAX {
            // Oldest first would need an order; sessions without a receipt are dropped.
            s.retain(|_, v| v.counts.borrow().is_none());
        }
        s.insert(session, Session { counts });
    }
    let ready = Reply::ProxyReady {
        session,
        proxy: proxy.identity.key.verification_key().to_bytes(),
        chain_id: proxy.identity.chain_id,
        price_per_gib: proxy.identity.price_per_gib,
    };
    if let Err(e) = write_reply(&mut client, request, &ready).await {
        let _ = done.send(Some((0, 0)));
        return Err(e);
    }
    // Counted as the bytes pass, so an error on either side still leaves the true count.
    let counters = Arc::new(Counters::default());
    let mut client = Counted::new(client, Arc::clone(&counters));
    let mut upstream = upstream;
    let idle = proxy.limits.idle();
    let result = {
        let relay = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(relay);
        let mut seen = 0;
        loop {
            tokio::select! {
                r = &mut relay => break r.map(|_| ()).map_err(NetError::Io),
                () = tokio::time::sleep(idle) => {
                    let now = counters.up.load(Relaxed) + counters.down.load(Relaxed);
                    if now == seen {
                        break Err(NetError::Timeout("relay idle"));
                    }
                    seen = now;
                }
            }
        }
    };
    // From the client's side: bytes read from it went up, bytes written to it came down.
    let (up, down) = (counters.down.load(Relaxed), counters.up.load(Relaxed));
    let _ = done.send(Some((up, down)));
    info!(target, up, down, "relayed");
    result
}

async fn check_receipt(proxy: &Proxy, r: ProxyReceipt) -> Reply {
    if !r.verify() {
        return Reply::error(
            ErrorCode::BadReceipt,
            "the receipt's signature does not verify",
        );
    }
    let me = &proxy.identity;
    if r.proxy.0 != me.key.verification_key().to_bytes()
        || r.chain_id != me.chain_id
        || r.price_per_gib != me.price_per_gib
    {
        return Reply::error(
            ErrorCode::BadReceipt,
            format!(
                "the receipt names another proxy, chain or price than this proxy's (chain {}, {} MASPC per GiB)",
                me.chain_id, me.price_per_gib
            ),
        );
    }
    let life = proto::receipt::RECEIPT_LIFE_SECS;
    let now = crate::now_secs();
    if r.expiry_unix_secs < now + life / 2 || r.expiry_unix_secs > now + 2 * life {
        return Reply::error(
            ErrorCode::BadReceipt,
            format!(
                "the receipt expires at {}: redeemable for about {life} s from now, please",
                r.expiry_unix_secs
            ),
        );
    }
    let counts = {
        let s = proxy.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.get(&r.session).map(|s| s.counts.clone())
    };
    let Some(mut counts) = counts else {
        return Reply::error(ErrorCode::BadReceipt, "no such session here");
    };
    // The client may finish before this proxy has seen both directions close.
    let ended = tokio::time::timeout(RECEIPT_WAIT, counts.wait_for(Option::is_some)).await;
    let Ok(Ok(c)) = ended else {
        return Reply::error(ErrorCode::BadReceipt, "the session has not ended");
    };
    let Some((up, down)) = *c else {
        return Reply::error(ErrorCode::BadReceipt, "the session has not ended");
    };
    drop(c);
    if (up, down) != (r.up_bytes, r.down_bytes) {
        return Reply::error(
            ErrorCode::BadReceipt,
            format!(
                "the receipt says {} up and {} down, this proxy relayed {up} and {down}",
                r.up_bytes, r.down_bytes
            ),
        );
    }
    if let Some(store) = &proxy.store {
        if let Err(e) = store.keep(&r) {
            tracing::warn!(reason = %e, "cannot keep a receipt");
            return Reply::error(ErrorCode::Internal, "the proxy cannot keep the receipt now");
        }
    }
    proxy
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&r.session);
    proxy
        .receipts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(r);
    Reply::ReceiptOk
}

#[cfg(test)]
mod tests {
    use super::private;

    #[test]
    fn private_and_special_addresses_are_recognized() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.100.100.200",
            "192.0.0.1",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "64:ff9b::a00:1",
            "::ffff:10.0.0.1",
            "::10.0.0.1",
        ] {
            assert!(private(a.parse().expect("an address")), "{a}");
        }
        for a in [
            "8.8.8.8",
            "203.0.113.5",
            "100.128.0.1",
            "2001:db8::1",
            "2606:4700::1",
        ] {
            assert!(!private(a.parse().expect("an address")), "{a}");
        }
    }
}
