//! The data plane over loopback: a real host (engine on a temporary directory, glommio
//! shards, tokio listener), real clients and proxies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_consensus::SigningKey;
use engine::store::{Engine, EngineConfig};
use net::client::{get_file, plan_deal, put_file, Conn, GetJob, Key, Preset, PutJob};
use net::config::Limits;
use net::host::Host;
use net::proxy::Proxy;
use net::state::HostState;
use net::wire::{ErrorCode, Request};
use net::NetError;
use proto::link::{Grant, Link};
use proto::{ChunkId, KdfParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Cheap key derivation: these tests are about the network, not Argon2.
const KDF: KdfParams = KdfParams {
    m_kib: 64,
    t: 1,
    p: 1,
};
const CHUNK: u32 = 64 << 10;

struct TestHost {
    _dir: tempfile::TempDir,
    host: Arc<Host>,
    key: SigningKey,
    addr: SocketAddr,
    _stop: watch::Sender<bool>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn start_host(limits: Limits) -> TestHost {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let engine = Engine::open(&EngineConfig::new(vec![data.clone()], 1)).unwrap();
    let key = SigningKey::from([42u8; 32]);
    let state = HostState::open(&dir.path().join("state")).unwrap();
    let host = Arc::new(Host::new(Arc::new(engine), &key, state, limits, 3600));
    // As `mspace host` runs it: an acceptor per core, each listening on the same port.
    let (stop, rx) = watch::channel(false);
    let (addr, _threads) =
        net::host::serve_on_cores(&host, "127.0.0.1:0".parse().unwrap(), 2, false, &rx).unwrap();
    TestHost {
        _dir: dir,
        host,
        key,
        addr,
        _stop: stop,
    }
}

impl TestHost {
    fn link(&self, grant: Grant, bearer: Option<[u8; 32]>, ttl: i64) -> Link {
        let expiry = now().saturating_add_signed(ttl);
        Link::sign(
            &self.key,
            &self.addr.to_string(),
            grant,
            bearer,
            expiry,
            rand_id(),
        )
        .unwrap()
    }

    fn chunks(&self) -> u64 {
        self.host.engine().stats().unwrap().chunks
    }
}

/// A loopback port nobody listens on right now.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rand_id() -> [u8; 16] {
    use rand_core::RngCore;
    let mut id = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut id);
    id
}

fn random_file(dir: &Path, name: &str, len: usize, seed: u64) -> PathBuf {
    let mut x = seed | 1;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[3]
        })
        .collect();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn put_job(file: &Path, link: &Link, via: &[String], journal: &Path) -> PutJob {
    PutJob {
        file: file.to_owned(),
        link: link.clone(),
        via: via.to_vec(),
        max_proxy_price: net::client::PROXY_PRICE_MAX_DEFAULT,
        key: SigningKey::from([7u8; 32]),
        passphrase: zeroize::Zeroizing::new(b"correct horse".to_vec()),
        chunk_bytes: CHUNK,
        workers: 2,
        kdf: KDF,
        journal_dir: journal.to_owned(),
        preset: None,
    }
}

fn get_job(link: &Link, via: &[String], unlock: Key, out: &Path) -> GetJob {
    GetJob {
        links: vec![link.clone()],
        via: via.to_vec(),
        max_proxy_price: net::client::PROXY_PRICE_MAX_DEFAULT,
        key: SigningKey::from([7u8; 32]),
        unlock,
        out: out.to_owned(),
        overwrite: false,
        workers: 2,
    }
}

/// The passphrase every test file is sealed with.
fn pass() -> Key {
    Key::Passphrase(zeroize::Zeroizing::new(b"correct horse".to_vec()))
}

/// Downloads the file `manifest` names, through a fresh download link, into `out`.
async fn download(
    h: &TestHost,
    manifest: ChunkId,
    via: &[String],
    unlock: Key,
    out: &Path,
) -> net::client::GetDone {
    let link = h.link(Grant::Download { manifest }, None, 600);
    get_file(&get_job(&link, via, unlock, out), quiet())
        .await
        .unwrap()
}

fn quiet() -> Arc<dyn Fn(u64, u64) + Send + Sync> {
    Arc::new(|_, _| {})
}

fn code_of(e: &NetError) -> Option<ErrorCode> {
    match e {
        NetError::Remote { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_on_the_same_port_is_refused() {
    let h = start_host(Limits::default()).await;
    let (_stop, rx) = watch::channel(false);
    let e = net::host::serve_on_cores(&h.host, h.addr, 2, false, &rx).unwrap_err();
    assert!(e.to_string().contains("another host"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_goes_to_the_host_and_back_byte_identical() {
    let h = start_host(Limits::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let file = random_file(tmp.path(), "data.bin", 1_300_000, 1);
    let up = h.link(
        Grant::Upload {
            bytes_max: 10 << 20,
        },
        None,
        600,
    );
    let done = put_file(&put_job(&file, &up, &[], tmp.path()), quiet())
        .await
        .unwrap();
    assert_eq!(done.manifest.chunks.len(), 20);
    assert_eq!(done.sent_chunks, 20);
    assert!(done.peer_seen.starts_with("127.0.0.1:"));
    assert_eq!(h.chunks(), 21, "20 chunks and the manifest");

    let down = h.link(
        Grant::Download {
            manifest: done.manifest_id,
        },
        None,
        600,
    );
    let out = tmp.path().join("back.bin");
    let pass = Key::Passphrase(zeroize::Zeroizing::new(b"correct horse".to_vec()));
    get_file(&get_job(&down, &[], pass, &out), quiet())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&file).unwrap());

    let out2 = tmp.path().join("shared.bin");
    let share = Key::Share(Box::new(done.share_key.clone()));
    get_file(&get_job(&down, &[], share, &out2), quiet())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out2).unwrap(), std::fs::read(&file).unwrap());

    // A wrong passphrase opens nothing and leaves no file.
    let out3 = tmp.path().join("wrong.bin");
    let wrong = Key::Passphrase(zeroize::Zeroizing::new(b"wrong".to_vec()));
    let e = get_file(&get_job(&down, &[], wrong, &out3), quiet())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("passphrase"), "{e}");
    assert!(!out3.exists());
    // 20 chunk puts; the manifest came as an object.
    assert_eq!(h.host.metrics().puts.load(Relaxed), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_link_is_refused_and_changes_nothing() {
    let h = start_host(Limits::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let file = random_file(tmp.path(), "f", 200_000, 2);
    let client = SigningKey::from([7u8; 32]);
    let good = h.link(Grant::Upload { bytes_max: 1 << 20 }, None, 600);
    let done = put_file(&put_job(&file, &good, &[], tmp.path()), quiet())
        .await
        .unwrap();
    let before = h.chunks();

    let refused = |r: Result<Conn, NetError>| match r {
        Ok(_) => panic!("a bad link was accepted"),
        Err(e) => (code_of(&e), e.to_string()),
    };
    // Expired.
    let expired = h.link(Grant::Upload { bytes_max: 1 << 20 }, None, -1);
    let (code, msg) = refused(Conn::open(&expired, &[], &client, 0).await);
    assert_eq!(code, Some(ErrorCode::LinkRefused));
    assert!(msg.contains("expired"), "{msg}");
    // Forged: the grant raised after signing.
    let mut bytes = good.to_bytes();
    let off = bytes.len() - 64 - 8;
    bytes[off..off + 8].copy_from_slice(&(u64::MAX).to_le_bytes());
    let forged = Link::from_bytes(&bytes).unwrap();
    let (code, msg) = refused(Conn::open(&forged, &[], &client, 0).await);
    assert_eq!(code, Some(ErrorCode::LinkRefused));
    assert!(msg.contains("signature"), "{msg}");
    // Signed by another host.
    let other = Link::sign(
        &SigningKey::from([1u8; 32]),
        &h.addr.to_string(),
        Grant::Upload { bytes_max: 1 },
        None,
        now() + 60,
        rand_id(),
    )
    .unwrap();
    let (code, msg) = refused(Conn::open(&other, &[], &client, 0).await);
    assert_eq!(code, Some(ErrorCode::LinkRefused));
    assert!(msg.contains("another host"), "{msg}");
    // For another bearer: our key is not the one named.
    let theirs = h.link(
        Grant::Upload { bytes_max: 1 << 20 },
        Some(SigningKey::from([9u8; 32]).verification_key().to_bytes()),
        600,
    );
    let (code, msg) = refused(Conn::open(&theirs, &[], &client, 0).await);
    assert_eq!(code, Some(ErrorCode::LinkRefused));
    assert!(msg.contains("bearer"), "{msg}");
    // ... but the named bearer gets in.
    let ours = h.link(
        Grant::Upload { bytes_max: 1 << 20 },
        Some(client.verification_key().to_bytes()),
        600,
    );
    Conn::open(&ours, &[], &client, 0).await.unwrap();
    // A download link for a file this host never received.
    let unknown = h.link(
        Grant::Download {
            manifest: ChunkId([5; 32]),
        },
        None,
        600,
    );
    let (code, _) = refused(Conn::open(&unknown, &[], &client, 0).await);
    assert_eq!(code, Some(ErrorCode::NotFound));

    // Wrong operation: uploading with a download link, reading with an upload link, and
    // reading a chunk outside the download link's file.
    let down = h.link(
        Grant::Download {
            manifest: done.manifest_id,
        },
        None,
        600,
    );
    // A put on a download link is refused before its body is read, and ends the connection.
    let mut c = Conn::open(&down, &[], &client, 0).await.unwrap();
    let bytes = vec![1u8; 4096];
    let e = c
        .call(Request::Put {
            id: ChunkId::of(&bytes),
            crc32c: engine::codec::crc32c(&bytes),
            bytes,
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::NotGranted));
    assert!(
        c.call(Request::GetObject).await.is_err(),
        "the connection was closed"
    );
    let mut c = Conn::open(&down, &[], &client, 0).await.unwrap();
    let e = c
        .call(Request::Get {
            id: ChunkId([6; 32]),
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::NotGranted));
    // A range longer than the chunk is refused without holding the host's memory for it.
    let first = done.manifest.chunks[0];
    let e = c
        .call(Request::GetRange {
            id: first.id,
            start: 0,
            len: u32::MAX,
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::Range), "{e}");
    // The connection stays usable after a refused request.
    c.call(Request::Get { id: first.id }).await.unwrap();
    c.call(Request::Prove {
        id: first.id,
        leaf: 3,
    })
    .await
    .unwrap();

    let mut u = Conn::open(&good, &[], &client, 0).await.unwrap();
    let e = u.call(Request::Get { id: first.id }).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::NotGranted));
    // Other bytes under the id of a chunk already stored are refused, not taken as "existing".
    let stored = done.manifest.chunks[1].id;
    let junk = vec![9u8; 1000];
    let e = u
        .call(Request::Put {
            id: stored,
            crc32c: engine::codec::crc32c(&junk),
            bytes: junk,
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::IdMismatch), "{e}");
    // A put whose bytes do not match its id or CRC is refused and stores nothing.
    let bytes = vec![3u8; 4096];
    let e = u
        .call(Request::Put {
            id: ChunkId([0; 32]),
            crc32c: engine::codec::crc32c(&bytes),
            bytes: bytes.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::IdMismatch));
    let e = u
        .call(Request::Put {
            id: ChunkId::of(&bytes),
            crc32c: 1,
            bytes,
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::CrcMismatch));
    // Over the link's allowance: refused before anything is written.
    let small = h.link(Grant::Upload { bytes_max: 5000 }, None, 600);
    let mut s = Conn::open(&small, &[], &client, 0).await.unwrap();
    assert_eq!(s.upload_bytes_left, 5000);
    let big = vec![4u8; 8192];
    let e = s
        .call(Request::Put {
            id: ChunkId::of(&big),
            crc32c: engine::codec::crc32c(&big),
            bytes: big,
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::QuotaExceeded));
    assert_eq!(h.chunks(), before, "refused requests stored nothing");
    // The allowance holds across connections.
    let used = vec![5u8; 4096];
    s.call(Request::Put {
        id: ChunkId::of(&used),
        crc32c: engine::codec::crc32c(&used),
        bytes: used,
    })
    .await
    .unwrap();
    let s2 = Conn::open(&small, &[], &client, 0).await.unwrap();
    assert_eq!(s2.upload_bytes_left, 5000 - 4096);

    // A file may list only chunks sent with the same link: another link's chunk (known by
    // its id, as ids become public) is refused, and so is a second, different list for a
    // manifest already recorded.
    let envelope = b"a stand-in envelope".to_vec();
    let manifest = ChunkId::of(&envelope);
    let mut u = Conn::open(&good, &[], &client, 0).await.unwrap();
    let e = u
        .call(Request::PutObject {
            manifest,
            chunks: vec![done.manifest.chunks[0].id, ChunkId::of(&vec![5u8; 4096])],
            envelope: envelope.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::NotGranted), "{e}");
    let mut s = Conn::open(&small, &[], &client, 0).await.unwrap();
    let e = s
        .call(Request::PutObject {
            manifest,
            chunks: vec![done.manifest.chunks[0].id],
            envelope: envelope.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        code_of(&e),
        Some(ErrorCode::NotGranted),
        "another link's chunk: {e}"
    );
    let e = u
        .call(Request::PutObject {
            manifest: done.manifest_id,
            chunks: vec![done.manifest.chunks[0].id],
            envelope: envelope.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::IdMismatch), "{e}");
    assert!(h.host.state().object(&manifest).unwrap().is_none());
}

/// Binds a listener on a loopback address of its own (127.0.0.x), so that who connects
/// from where is visible.
async fn listen_on(ip: &str) -> TcpListener {
    TcpListener::bind(format!("{ip}:0")).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_proxies_the_host_sees_only_the_last_proxy() {
    let h = start_host(Limits::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let file = random_file(tmp.path(), "p", 700_000, 3);
    let mut proxies = Vec::new();
    let mut addrs = Vec::new();
    let (_stop, rx) = watch::channel(false);
    for ip in ["127.0.0.2", "127.0.0.3"] {
        let l = listen_on(ip).await;
        addrs.push(l.local_addr().unwrap().to_string());
        let p = Arc::new(Proxy::new(Limits::default(), true));
        tokio::spawn(net::proxy::serve(Arc::clone(&p), l, rx.clone()));
        proxies.push(p);
    }
    let up = h.link(
        Grant::Upload {
            bytes_max: 10 << 20,
        },
        None,
        600,
    );
    // One proxy.
    let done = put_file(&put_job(&file, &up, &addrs[..1], tmp.path()), quiet())
        .await
        .unwrap();
    assert!(
        done.peer_seen.starts_with("127.0.0.2:"),
        "{}",
        done.peer_seen
    );
    assert_eq!(done.receipts.accepted.len(), 1);
    assert_eq!(proxies[0].receipts(), done.receipts.accepted);
    assert!(done.receipts.accepted[0].up_bytes > 700_000);

    // Two proxies, for the download.
    let down = h.link(
        Grant::Download {
            manifest: done.manifest_id,
        },
        None,
        600,
    );
    let out = tmp.path().join("out");
    let pass = Key::Passphrase(zeroize::Zeroizing::new(b"correct horse".to_vec()));
    let got = get_file(&get_job(&down, &addrs, pass, &out), quiet())
        .await
        .unwrap();
    assert!(got.peer_seen.starts_with("127.0.0.3:"), "{}", got.peer_seen);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&file).unwrap());
    assert_eq!(got.receipts.accepted.len(), 2);
    assert!(
        got.receipts.accepted[0].down_bytes > got.receipts.accepted[1].down_bytes,
        "the first hop relays the second's handshake too"
    );
    assert_eq!(proxies[1].receipts(), got.receipts.accepted[1..].to_vec());

    // A receipt for more than was relayed is refused; the true one is then accepted.
    let client = SigningKey::from([7u8; 32]);
    let mut s = TcpStream::connect(&addrs[0]).await.unwrap();
    s.write_all(
        &Request::ProxyConnect {
            target: h.addr.to_string(),
        }
        .to_frame(1),
    )
    .await
    .unwrap();
    let (_, ready) = net::io::read_reply(&mut s, 4096).await.unwrap();
    let net::wire::Reply::ProxyReady {
        session,
        proxy,
        chain_id,
        price_per_gib,
    } = ready
    else {
        panic!("{ready:?}")
    };
    let receipt = |up_bytes, down_bytes| {
        net::wire::ProxyReceipt::sign(
            &client,
            &proto::receipt::Relayed {
                chain_id,
                proxy: proto::tx::AccountId(proxy),
                session,
                up_bytes,
                down_bytes,
                price_per_gib,
                expiry_unix_secs: net::now_secs() + proto::receipt::RECEIPT_LIFE_SECS,
            },
        )
    };
    // The host's welcome comes through the pipe; then the client leaves.
    let mut welcome = Vec::new();
    s.shutdown().await.unwrap();
    s.read_to_end(&mut welcome).await.unwrap();
    let down = welcome.len() as u64;
    assert!(down > 12);
    let send = |r: net::wire::ProxyReceipt| {
        let addr = addrs[0].clone();
        async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&Request::ProxyReceipt(r).to_frame(1))
                .await
                .unwrap();
            net::io::read_reply(&mut s, 4096).await.unwrap().1
        }
    };
    let reply = send(receipt(1, down)).await;
    match reply {
        net::wire::Reply::Error {
            code: ErrorCode::BadReceipt,
            message,
        } => {
            assert!(message.contains("relayed 0"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // One naming another price, or expiring too soon for the proxy to be paid, is refused.
    let mut dearer = receipt(0, down);
    dearer.price_per_gib += 1;
    let dearer = net::wire::ProxyReceipt::sign(
        &client,
        &proto::receipt::Relayed {
            chain_id,
            proxy: dearer.proxy,
            session,
            up_bytes: 0,
            down_bytes: down,
            price_per_gib: dearer.price_per_gib,
            expiry_unix_secs: dearer.expiry_unix_secs,
        },
    );
    let reply = send(dearer).await;
    assert!(
        matches!(&reply, net::wire::Reply::Error { code: ErrorCode::BadReceipt, message } if message.contains("price")),
        "{reply:?}"
    );
    let reply = send(receipt(0, down)).await;
    assert_eq!(reply, net::wire::Reply::ReceiptOk);

    // A proxy dearer than the client accepts is refused before anything is relayed.
    let priced_listener = listen_on("127.0.0.5").await;
    let priced = priced_listener.local_addr().unwrap().to_string();
    tokio::spawn(net::proxy::serve(
        Arc::new(Proxy::paid(
            Limits::default(),
            true,
            net::proxy::Identity {
                key: SigningKey::from([9u8; 32]),
                chain_id: 1,
                price_per_gib: 11,
            },
            None,
        )),
        priced_listener,
        rx.clone(),
    ));
    let e = Conn::open(&up, std::slice::from_ref(&priced), &client, 10)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("asks 11 MASPC per GiB"), "{e}");
    assert!(Conn::open(&up, &[priced], &client, 11).await.is_ok());

    // A public proxy (the default) refuses loopback and private targets.
    let strict_listener = listen_on("127.0.0.4").await;
    let strict = strict_listener.local_addr().unwrap().to_string();
    tokio::spawn(net::proxy::serve(
        Arc::new(Proxy::new(Limits::default(), false)),
        strict_listener,
        rx.clone(),
    ));
    let e = Conn::open(&up, &[strict], &client, 0).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::Unreachable), "{e}");
    assert!(e.to_string().contains("private"), "{e}");
    // A proxy told to reach nothing says so.
    let nowhere = Link::sign(
        &h.key,
        "127.0.0.1:1",
        Grant::Upload { bytes_max: 1 },
        None,
        now() + 60,
        rand_id(),
    )
    .unwrap();
    let e = Conn::open(&nowhere, &addrs[..1], &client, 0)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::Unreachable), "{e}");
}

/// Starts an upload and kills it at the first acknowledgement that brings the bytes
/// acknowledged to `at` or more: the progress callback unwinds the upload's task right
/// there (as a crash would), so no acknowledgement read after that point is counted and
/// the connection is dropped. Returns the chunks acknowledged by then.
async fn cut_upload(file: &Path, link: &Link, journal: &Path, at: u64) -> u64 {
    let acked = Arc::new(AtomicU64::new(0));
    let a = Arc::clone(&acked);
    let progress: Arc<dyn Fn(u64, u64) + Send + Sync> = Arc::new(move |done, _| {
        a.store(done, Relaxed);
        if done >= at {
            // resume_unwind skips the panic hook: a deliberate stop, not a reported panic.
            std::panic::resume_unwind(Box::new("cut"));
        }
    });
    let job = put_job(file, link, &[], journal);
    let first = tokio::spawn(async move { put_file(&job, progress).await });
    let end = first.await;
    assert!(
        end.as_ref().is_err_and(|e| e.is_panic()),
        "the upload was cut before it finished: {:?}",
        end.map(|r| r.map(|d| d.sent_chunks))
    );
    acked.load(Relaxed) / u64::from(CHUNK)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_resumes_without_resending_what_was_acknowledged() {
    // A small in-flight limit keeps the client's window at 8 chunks, so acknowledgements
    // come back while most of the file is still unsent.
    let h = start_host(Limits {
        inflight_bytes: 1 << 20,
        ..Limits::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let file = random_file(tmp.path(), "big", 3_000_000, 4);
    let up = h.link(
        Grant::Upload {
            bytes_max: 20 << 20,
        },
        None,
        600,
    );
    let total_chunks = 3_000_000u64.div_ceil(u64::from(CHUNK));

    let acked_chunks = cut_upload(&file, &up, tmp.path(), 1_000_000).await;
    assert!((15..30).contains(&acked_chunks), "{acked_chunks}");
    // The host finishes what the dead connection had started (stored and recorded) before
    // it counts the connection closed; resuming after that, nothing it read is sent again.
    tokio::time::timeout(std::time::Duration::from_secs(30), h.host.until_idle())
        .await
        .expect("the dead connection stayed open");
    let requests_before = h.host.metrics().put_requests.load(Relaxed);
    let done = put_file(&put_job(&file, &up, &[], tmp.path()), quiet())
        .await
        .unwrap();
    assert!(
        done.skipped_chunks >= acked_chunks,
        "{} skipped, {acked_chunks} were acknowledged",
        done.skipped_chunks
    );
    assert_eq!(done.sent_chunks + done.skipped_chunks, total_chunks);
    // Every chunk reached the host exactly once over both runs.
    assert_eq!(
        h.host.metrics().put_requests.load(Relaxed),
        total_chunks,
        "{requests_before} put frames in the first run, {} sent in the second",
        done.sent_chunks
    );
    let out = tmp.path().join("out");
    download(&h, done.manifest_id, &[], pass(), &out).await;
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&file).unwrap());
    assert!(
        !net::client::journal_path(tmp.path(), &up, &file).exists(),
        "a finished upload leaves no journal"
    );

    // A file changed behind an interrupted upload, with its size and time stamp kept (so
    // its journal still matches), is caught by the first re-sealed chunk: the upload starts
    // over under a fresh key and nothing is sent under the old one.
    let other = random_file(tmp.path(), "other", 3_000_000, 5);
    let journal = tempfile::tempdir().unwrap();
    cut_upload(&other, &up, journal.path(), 1_000_000).await;
    let stamp = std::fs::metadata(&other).unwrap().modified().unwrap();
    let mut changed = std::fs::read(&other).unwrap();
    changed[10] ^= 1;
    std::fs::write(&other, &changed).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&other)
        .unwrap()
        .set_modified(stamp)
        .unwrap();
    let again = put_file(&put_job(&other, &up, &[], journal.path()), quiet())
        .await
        .unwrap();
    assert_eq!(
        again.skipped_chunks, 0,
        "nothing of the old seal was reused"
    );
    let out = tmp.path().join("changed");
    download(&h, again.manifest_id, &[], pass(), &out).await;
    assert_eq!(std::fs::read(&out).unwrap(), changed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_slow_peers_are_cut_off_while_a_good_client_uploads() {
    let limits = Limits {
        hello_secs: 1,
        body_base_secs: 1,
        min_body_rate: 1 << 20,
        ..Limits::default()
    };
    let h = start_host(limits).await;
    let tmp = tempfile::tempdir().unwrap();
    let file = random_file(tmp.path(), "g", 2_000_000, 5);
    let up = h.link(
        Grant::Upload {
            bytes_max: 10 << 20,
        },
        None,
        600,
    );
    let addr = h.addr;

    // Garbage: the host answers with a malformed-frame error after its welcome, and closes.
    let garbage = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&[0xAB; 64]).await.unwrap();
        let (_, welcome) = net::io::read_reply(&mut s, 4096).await.unwrap();
        assert!(matches!(welcome, net::wire::Reply::Welcome { .. }));
        let (_, error) = net::io::read_reply(&mut s, 4096).await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        (error, rest)
    });
    // Silent: never presents a link.
    let silent = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        all
    });
    // Slow-loris: a valid hello, then a put of 1 MiB trickled 16 bytes at a time; the host
    // must cut it within its body deadline (1 s + 1 MiB at 1 MiB/s), long before the 30 s
    // this test allows.
    let slow_link = up.clone();
    let slow = tokio::spawn(tokio::time::timeout(
        std::time::Duration::from_secs(30),
        async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut welcome = [0u8; 12];
            s.read_exact(&mut welcome).await.unwrap();
            let len = u32::from_le_bytes(welcome[8..12].try_into().unwrap());
            let mut rest = vec![0u8; len as usize];
            s.read_exact(&mut rest).await.unwrap();
            s.write_all(
                &Request::Hello {
                    link: slow_link.to_bytes(),
                    bearer: None,
                }
                .to_frame(1),
            )
            .await
            .unwrap();
            let head = net::wire::Header {
                kind: net::wire::kind::PUT,
                request: 2,
                body_len: 1 << 20,
            }
            .encode();
            s.write_all(&head).await.unwrap();
            let mut sent = 0u64;
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
            loop {
                tick.tick().await;
                if s.write_all(&[0u8; 16]).await.is_err() {
                    break;
                }
                sent += 16;
                assert!(sent < 1 << 20, "the host kept reading a slow-loris body");
            }
        },
    ));
    let done = put_file(&put_job(&file, &up, &[], tmp.path()), quiet())
        .await
        .unwrap();
    assert_eq!(done.sent_chunks, 31);

    let (error, rest) = garbage.await.unwrap();
    assert!(
        matches!(
            error,
            net::wire::Reply::Error {
                code: ErrorCode::Malformed,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        rest.is_empty(),
        "nothing after the error: the connection closed"
    );
    silent.await.unwrap();
    slow.await
        .unwrap()
        .expect("the slow peer was cut off in time");
    let m = h.host.metrics();
    assert!(m.refused(ErrorCode::Malformed) >= 1);
    assert!(
        m.refused(ErrorCode::Timeout) >= 2,
        "{}",
        m.refused(ErrorCode::Timeout)
    );
    // The host still serves.
    let out = tmp.path().join("out");
    download(&h, done.manifest_id, &[], pass(), &out).await;
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&file).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_answers_and_mints_links_only_for_the_token() {
    use api::{host_client, HostApi, LinkGrant, LinkRequest, OfferRefusal, StorageRequest};
    use net::control::HostControl;
    let h = start_host(Limits::default()).await;
    let control = HostControl {
        host: Arc::clone(&h.host),
        key: h.key.clone(),
        link_addr: h.addr.to_string(),
        token: Some("s3cret".into()),
        pricing: market::pricing::Pricing::flat(7),
        max_days: 90,
        proof_period_blocks: 100,
        chain: Vec::new(),
        deposit_for: |bytes| 1_000 + bytes / 1000,
        brokers: net::control::Brokers::new(100),
        egress_price_per_gib: 1,
    };
    // A host on a chain no miner of which answers refuses to offer, saying so; the chain
    // is asked only for a request the host could otherwise take.
    let off_chain = HostControl {
        chain: vec![format!("127.0.0.1:{}", free_tcp_port())],
        ..control.clone()
    };
    let ask = |bytes, days| StorageRequest {
        bytes,
        days,
        via: None,
    };
    let refused = |o: api::StorageOffer| {
        assert!(o.signed.is_none());
        o.refusal.unwrap()
    };
    let ctx0 = tarpc::context::current;
    assert!(matches!(
        refused(HostApi::offer(off_chain.clone(), ctx0(), ask(1 << 20, 30)).await),
        OfferRefusal::ChainUnreachable(_)
    ));
    assert!(matches!(
        refused(HostApi::offer(off_chain, ctx0(), ask(1 << 20, 0)).await),
        OfferRefusal::BadTerms(_)
    ));
    let brokers = control.brokers.clone();
    let (bound_tx, bound) = tokio::sync::oneshot::channel();
    tokio::spawn(net::control::serve_host_control(
        control,
        "127.0.0.1:0",
        bound_tx,
    ));
    let addr = bound.await.unwrap().to_string();
    let c = host_client(&addr).await.unwrap();
    let ctx = tarpc::context::current;

    let status = c.status(ctx()).await.unwrap();
    assert_eq!(status.data_addr, h.addr.to_string());
    assert_eq!(status.chunks, 0);
    let offer = c.offer(ctx(), ask(1 << 30, 30)).await.unwrap();
    assert_eq!(offer.refusal, None);
    // Signed by the host, for no chain (this host is off the chain), with its terms.
    let signed = proto::offer::SignedOffer::from_bytes(&offer.signed.unwrap()).unwrap();
    let host_key = h.key.verification_key().to_bytes();
    let terms = signed.check(&host_key, 0, now(), 1 << 30, 30).unwrap();
    assert_eq!(
        (terms.price_per_gib_day, terms.max_days, terms.deposit),
        (7, 90, 0)
    );
    // A base price set from the dashboard is what the next offer asks.
    h.host.set_price_override(Some(25));
    let dearer = c.offer(ctx(), ask(1 << 30, 30)).await.unwrap();
    let dearer = proto::offer::SignedOffer::from_bytes(&dearer.signed.unwrap()).unwrap();
    let dearer = dearer.check(&host_key, 0, now(), 1 << 30, 30).unwrap();
    assert_eq!(dearer.price_per_gib_day, 25);
    h.host.set_price_override(None);
    assert!(
        signed.check(&host_key, 0, now(), 1 << 30, 91).is_err(),
        "past max_days"
    );
    assert_eq!(terms.broker, None, "asked directly: no exchange named");
    // Through an exchange: only one this host asks at (the bidder records each, with the
    // commission it charges), named in the offer with that commission.
    let through = |via| StorageRequest {
        bytes: 1 << 30,
        days: 30,
        via: Some(via),
    };
    let unknown = c.offer(ctx(), through([9; 32])).await.unwrap();
    assert!(
        matches!(&unknown.refusal, Some(OfferRefusal::BadTerms(why)) if why.contains("does not ask at exchange 0909")),
        "{unknown:?}"
    );
    brokers.accept([9; 32], 30).unwrap();
    let brokered = c.offer(ctx(), through([9; 32])).await.unwrap();
    let brokered = proto::offer::SignedOffer::from_bytes(&brokered.signed.unwrap()).unwrap();
    let b = brokered.offer.broker.unwrap();
    assert_eq!((b.exchange.0, b.commission_permille), ([9; 32], 30));
    let long = c
        .offer(
            ctx(),
            StorageRequest {
                bytes: 1,
                days: 91,
                via: None,
            },
        )
        .await
        .unwrap();
    assert!(matches!(long.refusal, Some(OfferRefusal::BadTerms(_))));

    let mut ask = LinkRequest {
        token: "wrong".into(),
        grant: LinkGrant::Upload {
            bytes_max: 10 << 20,
        },
        ttl_secs: 600,
        bearer: None,
    };
    let e = c.mint_link(ctx(), ask.clone()).await.unwrap().unwrap_err();
    assert!(e.to_string().contains("token"), "{e}");
    ask.token = "s3cret".into();
    ask.ttl_secs = 0;
    assert!(c.mint_link(ctx(), ask.clone()).await.unwrap().is_err());
    ask.ttl_secs = 600;
    let text = c.mint_link(ctx(), ask).await.unwrap().unwrap();
    let up = Link::parse(&text).unwrap();

    // The minted link works on the data plane; the file is then offered for download.
    let tmp = tempfile::tempdir().unwrap();
    let file = random_file(tmp.path(), "c", 300_000, 9);
    let done = put_file(&put_job(&file, &up, &[], tmp.path()), quiet())
        .await
        .unwrap();
    let offer = c.download_offer(ctx(), done.manifest_id.0).await.unwrap();
    assert!(offer.available);
    assert_eq!(offer.chunks as usize, done.manifest.chunks.len());
    let none = c.download_offer(ctx(), [1; 32]).await.unwrap();
    assert!(!none.available);
    assert_eq!(
        c.status(ctx()).await.unwrap().chunks,
        done.manifest.chunks.len() as u64 + 1
    );
}

/// A raw chunk put through `c`: the chunk's id and the host's reply.
async fn put_raw(c: &mut Conn, bytes: &[u8]) -> (ChunkId, net::wire::Reply) {
    let id = ChunkId::of(bytes);
    let reply = c
        .call(Request::Put {
            id,
            crc32c: engine::codec::crc32c(bytes),
            bytes: bytes.to_vec(),
        })
        .await
        .unwrap();
    (id, reply)
}

fn refusal(r: Result<net::wire::Reply, NetError>) -> (ErrorCode, String) {
    match r {
        Err(e) => (code_of(&e).unwrap_or_else(|| panic!("{e}")), e.to_string()),
        Ok(other) => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_withdraw_only_what_the_link_sent_and_no_file_lists() {
    use net::wire::Reply;
    let h = start_host(Limits::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let client = SigningKey::from([7u8; 32]);
    let a = h.link(Grant::Upload { bytes_max: 1 << 20 }, None, 600);
    let b = h.link(Grant::Upload { bytes_max: 1 << 20 }, None, 600);
    let mut ca = Conn::open(&a, &[], &client, 0).await.unwrap();
    let mut cb = Conn::open(&b, &[], &client, 0).await.unwrap();

    // Only A sent x: A's delete removes its bytes, once.
    let (x, r) = put_raw(&mut ca, &[1; 5000]).await;
    assert_eq!(r, Reply::Stored { existing: false });
    assert_eq!(
        ca.call(Request::Delete { id: x }).await.unwrap(),
        Reply::Deleted { removed: true }
    );
    assert_eq!(h.host.engine().stat(x).wait().unwrap(), None);
    assert!(ca.have(&[x]).await.unwrap().is_empty());
    let (code, msg) = refusal(ca.call(Request::Delete { id: x }).await);
    assert_eq!(code, ErrorCode::NotGranted, "{msg}");
    assert!(msg.contains("not uploaded with this link"), "{msg}");
    // After the delete the chunk can be sent again, and is stored anew.
    assert_eq!(
        put_raw(&mut ca, &[1; 5000]).await.1,
        Reply::Stored { existing: false }
    );

    // y sent by both links: A withdraws it, the bytes stay for B.
    let (y, _) = put_raw(&mut ca, &[2; 7000]).await;
    assert_eq!(
        put_raw(&mut cb, &[2; 7000]).await.1,
        Reply::Stored { existing: true }
    );
    assert_eq!(
        ca.call(Request::Delete { id: y }).await.unwrap(),
        Reply::Deleted { removed: false }
    );
    assert_eq!(cb.have(&[y]).await.unwrap().len(), 1, "B still holds y");
    // B cannot delete what only A sent.
    let (z, _) = put_raw(&mut ca, &[3; 3000]).await;
    let (code, _) = refusal(cb.call(Request::Delete { id: z }).await);
    assert_eq!(code, ErrorCode::NotGranted);
    assert!(h.host.engine().stat(z).wait().unwrap().is_some());

    // A chunk of a recorded file cannot be deleted on its own.
    let file = random_file(tmp.path(), "f", 150_000, 9);
    let c = h.link(Grant::Upload { bytes_max: 1 << 20 }, None, 600);
    let done = put_file(&put_job(&file, &c, &[], tmp.path()), quiet())
        .await
        .unwrap();
    let first = done.manifest.chunks[0].id;
    let mut cc = Conn::open(&c, &[], &client, 0).await.unwrap();
    let (code, msg) = refusal(cc.call(Request::Delete { id: first }).await);
    assert_eq!(code, ErrorCode::NotGranted, "{msg}");
    assert!(msg.contains("part of a file"), "{msg}");
    assert!(h.host.engine().stat(first).wait().unwrap().is_some());

    // A download link deletes nothing.
    let down = h.link(
        Grant::Download {
            manifest: done.manifest_id,
        },
        None,
        600,
    );
    let mut cd = Conn::open(&down, &[], &client, 0).await.unwrap();
    let (code, _) = refusal(cd.call(Request::Delete { id: first }).await);
    assert_eq!(code, ErrorCode::NotGranted);
    assert!(h.host.engine().stat(first).wait().unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deals_link_takes_exactly_the_deals_chunks_uncharged() {
    use net::wire::Reply;
    let h = start_host(Limits::default()).await;
    let client = SigningKey::from([7u8; 32]);
    let (x, y) = (vec![1u8; 5000], vec![2u8; 5000]);
    let deal = [0xD1; 32];
    h.host
        .hold_deal(&deal, &client.verification_key().to_bytes())
        .unwrap();
    // A budget of one byte: a deal's link is bounded by the deal's chunks, not by bytes.
    let link = Link::sign(
        &h.key,
        &h.addr.to_string(),
        Grant::Upload { bytes_max: 1 },
        None,
        now() + 600,
        deal[..16].try_into().unwrap(),
    )
    .unwrap();
    // The chunk list is not known (the host restarted since it granted the link).
    let e = Conn::open(&link, &[], &client, 0).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::LinkRefused), "{e}");
    assert!(e.to_string().contains("ask the host"), "{e}");

    h.host
        .allow_deal_chunks(&deal, [ChunkId::of(&x)].into_iter().collect());
    let mut c = Conn::open(&link, &[], &client, 0).await.unwrap();
    assert_eq!(c.upload_bytes_left, 1);
    assert_eq!(
        put_raw(&mut c, &x).await.1,
        Reply::Stored { existing: false }
    );
    let refused = c
        .call(Request::Put {
            id: ChunkId::of(&y),
            crc32c: engine::codec::crc32c(&y),
            bytes: y.clone(),
        })
        .await;
    let (code, msg) = refusal(refused);
    assert_eq!(code, ErrorCode::NotGranted, "{msg}");
    assert!(msg.contains("not one of the deal's chunks"), "{msg}");
    assert_eq!(h.host.engine().stat(ChunkId::of(&y)).wait().unwrap(), None);
    // Nor may it record a file whose manifest is not the deal's.
    let envelope = vec![3u8; 300];
    let refused = c
        .call(Request::PutObject {
            manifest: ChunkId::of(&envelope),
            chunks: vec![ChunkId::of(&x)],
            envelope,
        })
        .await;
    let (code, msg) = refusal(refused);
    assert_eq!(code, ErrorCode::NotGranted, "{msg}");
    assert!(msg.contains("not one of the deal's chunks"), "{msg}");
}

/// A relay in front of a host that passes at most `limit` bytes from the host, then cuts
/// the connection both ways: a host dying in the middle of sending, at a byte count the
/// test names.
async fn cutting_relay(host: SocketAddr, limit: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(upstream) = TcpStream::connect(host).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut hr, mut hw) = upstream.into_split();
                let up = tokio::io::copy(&mut cr, &mut hw);
                let down = async {
                    let mut buf = [0u8; 16 << 10];
                    let mut sent = 0;
                    while sent < limit {
                        let n = hr.read(&mut buf).await?;
                        if n == 0 {
                            break;
                        }
                        let n = n.min(limit - sent);
                        cw.write_all(&buf[..n]).await?;
                        sent += n;
                    }
                    Ok::<(), std::io::Error>(())
                };
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
                // Both streams drop here: the client sees the connection end.
            });
        }
    });
    addr
}

/// A deal's plan of `file` (its sealing, thrown away), as `net::deal::store` makes it.
fn plan_of(file: &Path, erasure: Option<proto::erasure::Scheme>) -> net::client::DealPlan {
    plan_deal(
        file,
        b"correct horse",
        CHUNK,
        KDF,
        2,
        &|_, _| {},
        None,
        erasure,
    )
    .unwrap()
}

/// Uploads `preset`'s part of `file` to `h` through an upload link, as a paid part is.
async fn put_preset(h: &TestHost, file: &Path, journal: &Path, preset: Preset) {
    let up = h.link(
        Grant::Upload {
            bytes_max: 64 << 20,
        },
        None,
        600,
    );
    let mut job = put_job(file, &up, &[], journal);
    job.preset = Some(preset);
    put_file(&job, quiet()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_shares_on_three_hosts_rebuild_the_file_from_any_two() {
    let hosts = [
        start_host(Limits::default()).await,
        start_host(Limits::default()).await,
        start_host(Limits::default()).await,
    ];
    let dir = tempfile::tempdir().unwrap();
    let chunks = 30usize;
    // The last chunk short, so a share's padding is exercised.
    let file = random_file(dir.path(), "shares.bin", chunks * CHUNK as usize - 1000, 12);
    let scheme: proto::erasure::Scheme = "2/3".parse().unwrap();
    let plan = plan_of(&file, Some(scheme));
    let all = 0..plan.chunks.len() + 1;
    for (i, h) in hosts.iter().enumerate() {
        let preset = Preset {
            plan: plan.clone(),
            entries: all.clone(),
            share: Some(u8::try_from(i).unwrap()),
            batch: None,
        };
        put_preset(h, &file, &dir.path().join(format!("j{i}")), preset).await;
        // Its share of every chunk and the manifest; about half the sealed file.
        let stats = h.host.engine().stats().unwrap();
        assert_eq!(stats.chunks, chunks as u64 + 1);
        let sealed: u64 = plan.chunks.iter().map(|c| u64::from(c.sealed_bytes)).sum();
        let payload: u64 = plan
            .stored_by(Some(u8::try_from(i).unwrap()))
            .iter()
            .map(|c| u64::from(c.sealed_bytes))
            .sum();
        assert!(
            payload < sealed / 2 + sealed / 50,
            "host {i} stores {payload} of {sealed} sealed bytes"
        );
    }
    let manifest = plan.manifest.id;
    let original = std::fs::read(&file).unwrap();
    let download = |h: &TestHost| h.link(Grant::Download { manifest }, None, 600);
    let get = |links: Vec<Link>, name: &str| {
        let mut job = get_job(&links[0], &[], pass(), &dir.path().join(name));
        job.links = links;
        job
    };

    // All three: rebuilt from data shares, byte-identical.
    let job = get(hosts.iter().map(download).collect(), "all.out");
    let got = get_file(&job, quiet()).await.unwrap();
    assert_eq!(std::fs::read(&job.out).unwrap(), original);
    let served: u64 = got.served.iter().map(|s| s.1).sum();
    assert!(
        served >= 2 * chunks as u64,
        "two shares a chunk at least: {:?}",
        got.served
    );
    assert!(got.lost.is_empty(), "{:?}", got.lost);

    // Any two, so every pair of shares: the recovery share rebuilds a data share.
    for pair in [[0, 1], [0, 2], [1, 2]] {
        let job = get(
            pair.iter().map(|&i| download(&hosts[i])).collect(),
            &format!("pair{}{}.out", pair[0], pair[1]),
        );
        get_file(&job, quiet()).await.unwrap();
        assert_eq!(std::fs::read(&job.out).unwrap(), original, "{pair:?}");
    }

    // Host 0 reached through a relay that cuts it off after 8,000 bytes: past its welcome,
    // the manifest, its share list and a share header, inside its first share (33 KB).
    // Host 1 and 2 alone cannot keep the lookahead's shares in flight (16 requests each
    // for 2 x 24), so host 0 is asked, cut off mid-download, and the others go on.
    let relay = cutting_relay(hosts[0].addr, 8_000).await;
    let cut = Link::sign(
        &hosts[0].key,
        &relay.to_string(),
        Grant::Download { manifest },
        None,
        now() + 600,
        rand_id(),
    )
    .unwrap();
    let job = get(
        vec![cut, download(&hosts[1]), download(&hosts[2])],
        "cut.out",
    );
    let got = get_file(&job, quiet()).await.unwrap();
    assert_eq!(std::fs::read(&job.out).unwrap(), original);
    assert_eq!(got.lost.len(), 1, "{:?}", got.lost);
    assert!(
        got.lost[0].starts_with(&relay.to_string()),
        "{:?}",
        got.lost
    );

    // One host alone cannot rebuild anything; nothing is written.
    let job = get(vec![download(&hosts[2])], "one.out");
    let e = get_file(&job, quiet()).await.unwrap_err().to_string();
    assert!(e.contains("of the 2 erasure shares"), "{e}");
    assert!(!job.out.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_in_batches_on_two_hosts_comes_back_each_chunk_from_its_batch() {
    let (a, b, c) = (
        start_host(Limits::default()).await,
        start_host(Limits::default()).await,
        start_host(Limits::default()).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), "spread.bin", 50 * CHUNK as usize + 77, 12);
    let plan = plan_of(&file, None);
    let n = plan.chunks.len();
    // Host a holds chunks 0..20, host b 20..n, each with the manifest; host c a full copy.
    for (h, batch, journal) in [(&a, 0..20, "ja"), (&b, 20..n, "jb"), (&c, 0..n, "jc")] {
        let whole = 0..batch.len() + 1;
        let preset = Preset::of_batch(plan.clone(), batch, whole, None);
        put_preset(h, &file, &dir.path().join(journal), preset).await;
    }
    assert_eq!((a.chunks(), b.chunks()), (20 + 1, n as u64 - 20 + 1));
    let manifest = plan.manifest.id;
    let link = |h: &TestHost| h.link(Grant::Download { manifest }, None, 600);
    let get = |links: Vec<Link>, out: &str| {
        let mut job = get_job(&links[0], &[], pass(), &dir.path().join(out));
        job.links = links;
        job
    };
    // The two batches make the file; each host is asked only for its own chunks.
    let job = get(vec![link(&b), link(&a)], "ab.out");
    let got = get_file(&job, quiet()).await.unwrap();
    assert_eq!(
        std::fs::read(&job.out).unwrap(),
        std::fs::read(&file).unwrap()
    );
    let served: Vec<u64> = got.served.iter().map(|s| s.1).collect();
    assert_eq!(served, vec![n as u64 - 20, 20], "{:?}", got.served);
    assert!(got.lost.is_empty(), "{:?}", got.lost);
    // A batch and a full copy: the full copy fills in whatever the batch lacks.
    let job = get(vec![link(&a), link(&c)], "ac.out");
    get_file(&job, quiet()).await.unwrap();
    assert_eq!(
        std::fs::read(&job.out).unwrap(),
        std::fs::read(&file).unwrap()
    );
    // One batch alone: the first chunk outside it is named, nothing is written.
    let job = get(vec![link(&a)], "a.out");
    let e = get_file(&job, quiet()).await.unwrap_err().to_string();
    assert!(
        e.contains("chunk 20 (id") && e.contains("is missing"),
        "{e}"
    );
    assert!(!job.out.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_from_two_hosts_goes_on_when_one_dies_midway() {
    let (a, b) = (
        start_host(Limits::default()).await,
        start_host(Limits::default()).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), "two.bin", 100 * CHUNK as usize, 11);
    // The same sealed file on both hosts, as a deal's copies are: one plan, uploaded twice.
    let plan = plan_of(&file, None);
    let all = 0..plan.chunks.len() + 1;
    for (h, journal) in [(&a, "ja"), (&b, "jb")] {
        let preset = Preset {
            plan: plan.clone(),
            entries: all.clone(),
            share: None,
            batch: None,
        };
        put_preset(h, &file, &dir.path().join(journal), preset).await;
    }
    let manifest = plan.manifest.id;
    assert_eq!(a.chunks(), b.chunks());
    // Host b is reached through a relay that cuts it off after about four chunks.
    let relay = cutting_relay(b.addr, 300_000).await;
    let expiry = now() + 600;
    let to_b = Link::sign(
        &b.key,
        &relay.to_string(),
        Grant::Download { manifest },
        None,
        expiry,
        rand_id(),
    )
    .unwrap();
    let to_a = a.link(Grant::Download { manifest }, None, 600);
    let out = dir.path().join("two.out");
    let mut job = get_job(&to_a, &[], pass(), &out);
    job.links.push(to_b);
    let got = get_file(&job, quiet()).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&file).unwrap());
    let (from_a, from_b) = (got.served[0].1, got.served[1].1);
    assert_eq!(got.served[1].0, relay.to_string());
    assert_eq!(from_a + from_b, 100, "{:?}", got.served);
    assert!(
        from_b > 0 && from_b < 5,
        "host b sent {from_b} chunks before the cut"
    );
    assert_eq!(got.lost.len(), 1, "{:?}", got.lost);
    assert!(
        got.lost[0].starts_with(&relay.to_string()),
        "{:?}",
        got.lost
    );

    // Both hosts unreachable: the error names each.
    let dead = format!("127.0.0.1:{}", free_tcp_port());
    let gone = |addr: &str| {
        Link::sign(
            &a.key,
            addr,
            Grant::Download { manifest },
            None,
            expiry,
            rand_id(),
        )
        .unwrap()
    };
    let mut job = get_job(&gone(&dead), &[], pass(), &dir.path().join("none.out"));
    job.links.push(gone(&dead));
    let e = get_file(&job, quiet()).await.unwrap_err().to_string();
    assert!(e.contains("no host holding the file answers"), "{e}");
    // Links to two files are refused before anything is fetched.
    let mut job = get_job(&to_a, &[], pass(), &dir.path().join("mixed.out"));
    job.links.push(a.link(
        Grant::Download {
            manifest: ChunkId([9; 32]),
        },
        None,
        600,
    ));
    let e = get_file(&job, quiet()).await.unwrap_err().to_string();
    assert!(e.contains("not for one file"), "{e}");
}
