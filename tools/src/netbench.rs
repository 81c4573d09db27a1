//! `engine-bench net`: the data plane over loopback against the engine's local put and get,
//! in one run on one store. The same number of clients keep the same number of requests in
//! flight both ways: locally through the engine's API (threads), remotely through data-plane
//! connections to a host in this process (tokio). The ratio network / local is the figure.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ed25519_consensus::SigningKey;
use engine::store::{Engine, EngineConfig};
use net::client::Conn;
use net::config::Limits;
use net::host::Host;
use net::state::HostState;
use net::wire::{Reply, Request};
use proto::link::{Grant, Link};
use proto::ChunkId;
use serde::Serialize;

use crate::diskbench::{self, Timed};
use crate::storebench::{chunks, timed};

#[derive(Debug, Clone)]
pub struct NetBench {
    pub dir: PathBuf,
    pub size: u64,
    pub chunk_sizes: Vec<u64>,
    pub shards: usize,
    /// Client threads (local) and connections (network).
    pub clients: usize,
    /// Requests each keeps in flight.
    pub depth: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetRow {
    pub workload: String,
    pub chunk_bytes: u64,
    pub gbps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_s_per_gb: f64,
    /// Network throughput as a multiple of the local one measured just before.
    pub ratio_local: Option<f64>,
}

fn row(workload: &str, chunk: u64, t: &Timed, local: Option<&Timed>) -> NetRow {
    NetRow {
        workload: workload.into(),
        chunk_bytes: chunk,
        gbps: t.gbps(),
        p50_us: t.p50(),
        p99_us: t.p99(),
        cpu_s_per_gb: t.cpu_s_per_gb(),
        ratio_local: local.map(|l| t.gbps() / l.gbps()),
    }
}

pub fn print_rows(rows: &[NetRow]) {
    println!(
        "{:<22} {:>8} {:>8} {:>10} {:>10} {:>9} {:>8}",
        "workload", "chunk", "GB/s", "p50 µs", "p99 µs", "CPU s/GB", "×local"
    );
    for r in rows {
        println!(
            "{:<22} {:>8} {:>8.3} {:>10.0} {:>10.0} {:>9.2} {:>8}",
            r.workload,
            crate::format_bytes(r.chunk_bytes).replace(".00 ", " "),
            r.gbps,
            r.p50_us,
            r.p99_us,
            r.cpu_s_per_gb,
            r.ratio_local.map_or("-".into(), |v| format!("{v:.2}"))
        );
    }
}

type Chunks = Arc<Vec<(ChunkId, u32, Vec<u8>)>>;

/// Runs `conns` connections, each keeping `depth` requests in flight; `make(i)` is the
/// request for item `i` (items dealt round-robin), `bytes_each` what each moves.
async fn over_network(
    link: &Link,
    conns: usize,
    depth: usize,
    n: u64,
    bytes_each: u64,
    data: Option<Chunks>,
    ids: Arc<Vec<ChunkId>>,
) -> Result<Timed> {
    let key = SigningKey::from([1u8; 32]);
    let mut opened = Vec::new();
    for _ in 0..conns {
        opened.push(Conn::open(link, &[], &key, 0).await?);
    }
    let cpu0 = diskbench::cpu_seconds();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (t, mut conn) in opened.into_iter().enumerate() {
        let (data, ids) = (data.clone(), Arc::clone(&ids));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut inflight: VecDeque<(u32, Instant)> = VecDeque::new();
            let mut i = t as u64;
            loop {
                while inflight.len() < depth.max(1) && i < n {
                    let k = usize::try_from(i).expect("fits");
                    let req = match &data {
                        Some(d) => conn.send_put(&d[k].0, d[k].1, &d[k].2).await?,
                        None => conn.send(&Request::Get { id: ids[k] }).await?,
                    };
                    inflight.push_back((req, Instant::now()));
                    i += conns as u64;
                }
                let Some((want, t0)) = inflight.pop_front() else {
                    break;
                };
                let (got, reply) = conn.recv().await?;
                if got != want {
                    bail!("reply {got} for request {want}");
                }
                match reply {
                    Reply::Stored { .. } => {}
                    Reply::Data(b) if b.len() as u64 == bytes_each => {}
                    other => bail!("unexpected reply {other:?}"),
                }
                lat.push(t0.elapsed().as_secs_f64() * 1e6);
            }
            Ok(lat)
        }));
    }
    let mut latencies_us = Vec::new();
    for t in tasks {
        latencies_us.extend(t.await.context("bench task")??);
    }
    Ok(Timed::of_run(n, bytes_each, start, cpu0, latencies_us))
}

/// The floor under both network rows: `conns` connections each writing its share of `n`
/// buffers of `bytes_each` to a reader that discards them, no protocol, no store.
async fn raw_loopback(conns: usize, n: u64, bytes_each: u64) -> Result<Timed> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let sink = tokio::spawn(async move {
        let mut readers = Vec::new();
        for _ in 0..conns {
            let (mut s, _) = l.accept().await?;
            readers.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 20];
                while s.read(&mut buf).await? > 0 {}
                anyhow::Ok(())
            }));
        }
        for r in readers {
            r.await??;
        }
        anyhow::Ok(())
    });
    let buf = Arc::new(vec![7u8; usize::try_from(bytes_each)?]);
    let cpu0 = diskbench::cpu_seconds();
    let start = Instant::now();
    let mut writers = Vec::new();
    for t in 0..conns as u64 {
        let buf = Arc::clone(&buf);
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        writers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = t;
            while i < n {
                let t0 = Instant::now();
                s.write_all(&buf).await?;
                lat.push(t0.elapsed().as_secs_f64() * 1e6);
                i += conns as u64;
            }
            s.shutdown().await?;
            anyhow::Ok(lat)
        }));
    }
    let mut latencies_us = Vec::new();
    for w in writers {
        latencies_us.extend(w.await??);
    }
    sink.await??;
    Ok(Timed::of_run(n, bytes_each, start, cpu0, latencies_us))
}

fn config(dir: &Path, shards: usize) -> EngineConfig {
    let mut c = EngineConfig::new(vec![dir.to_path_buf()], shards);
    c.maintenance_every = None;
    c.pin = true;
    c
}

impl NetBench {
    pub fn run(&self, progress: &dyn Fn(&str)) -> Result<Vec<NetRow>> {
        let mut rows = Vec::new();
        for &cs in &self.chunk_sizes {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let n = (self.size / cs).max(1);
            let dir = self.dir.join(format!("net-{cs}"));
            // A store left by an interrupted run would answer every put with "existing".
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("remove {}", dir.display()))?;
            }
            std::fs::create_dir_all(&dir)?;
            progress(&format!(
                "{n} chunks of {}: generating",
                crate::format_bytes(cs)
            ));
            let local: Chunks = Arc::new(chunks(1, n, cs));
            let remote: Chunks = Arc::new(chunks(2, n, cs));
            let engine = Arc::new(Engine::open(&config(&dir.join("data"), self.shards))?);
            let key = SigningKey::from([9u8; 32]);
            let state = HostState::open(&dir.join("state"))?;
            let limits = Limits::default();
            let host = Arc::new(Host::new(Arc::clone(&engine), &key, state, limits, 3600));
            let (stop, stopped) = tokio::sync::watch::channel(false);
            // As `mspace host` runs it: one acceptor per shard, on the shard's core.
            let (addr, acceptors) = net::host::serve_on_cores(
                &host,
                "127.0.0.1:0".parse()?,
                self.shards,
                true,
                &stopped,
            )?;
            drop(stopped);
            let expiry = u64::MAX / 2;
            let up = Link::sign(
                &key,
                &addr.to_string(),
                Grant::Upload {
                    bytes_max: u64::MAX,
                },
                None,
                expiry,
                [1; 16],
            )?;

            progress("local put");
            let lp = timed(
                n,
                self.clients,
                self.depth,
                cs,
                |i| {
                    let (id, crc, d) = &local[usize::try_from(i)?];
                    Ok(engine.put(*id, *crc, d.clone(), 0))
                },
                |_| Ok(()),
            )?;
            let st = engine.stats()?;
            progress(&format!(
                "local put stored {} chunks, {} bytes live, {} syncs",
                st.chunks, st.live_bytes, st.syncs
            ));
            progress("network put");
            let ids: Arc<Vec<ChunkId>> = Arc::new(remote.iter().map(|c| c.0).collect());
            let np = rt.block_on(over_network(
                &up,
                self.clients,
                self.depth,
                n,
                cs,
                Some(Arc::clone(&remote)),
                Arc::clone(&ids),
            ))?;
            rows.push(row("local put (durable)", cs, &lp, None));
            rows.push(row("network put (durable)", cs, &np, Some(&lp)));

            // The download link needs the chunks recorded as one file.
            let envelope = b"engine-bench net: a stand-in manifest envelope".to_vec();
            let manifest = ChunkId::of(&envelope);
            rt.block_on(async {
                let mut c = Conn::open(&up, &[], &key, 0).await?;
                c.call(Request::PutObject {
                    manifest,
                    chunks: ids.to_vec(),
                    envelope,
                })
                .await?;
                anyhow::Ok(())
            })?;
            let down = Link::sign(
                &key,
                &addr.to_string(),
                Grant::Download { manifest },
                None,
                expiry,
                [2; 16],
            )?;
            progress("local get");
            let lg = timed(
                n,
                self.clients,
                self.depth,
                cs,
                |i| Ok(engine.get(local[usize::try_from(i)?].0)),
                |b| {
                    if b.len() as u64 == cs {
                        Ok(())
                    } else {
                        bail!("short get")
                    }
                },
            )?;
            progress("network get");
            let ng = rt.block_on(over_network(
                &down,
                self.clients,
                self.depth,
                n,
                cs,
                None,
                ids,
            ))?;
            rows.push(row("local get (verified)", cs, &lg, None));
            rows.push(row("network get (verified)", cs, &ng, Some(&lg)));
            progress("raw loopback TCP");
            let raw = rt.block_on(raw_loopback(self.clients, n, cs))?;
            rows.push(row("raw loopback TCP", cs, &raw, None));
            let _ = stop.send(true);
            drop(rt);
            for a in acceptors {
                let _ = a.join();
            }
            drop(host);
            match Arc::try_unwrap(engine) {
                Ok(e) => e.shutdown()?,
                Err(_) => bail!("the store is still in use after the runtime stopped"),
            }
            std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
        }
        Ok(rows)
    }
}
