//! `engine-bench` (no subcommand): the host chunk store against the disk it runs on, in one
//! run on one directory: fio's sequential write, sequential read and 4 KiB random read
//! (as many jobs as the store has shards), a naive one-file-per-chunk store, and the
//! engine's durable put, get and storage challenge at each chunk size; then a restart with a
//! large index. Every engine figure is quoted as a ratio to fio's and to the naive store's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use engine::codec::crc32c;
use engine::store::disk::Rng;
use engine::store::{Engine, EngineConfig, Pending};
use proto::ChunkId;

use crate::diskbench::{self, FioJob, Row, Timed};

/// What to run.
#[derive(Debug, Clone)]
pub struct StoreBench {
    pub dir: PathBuf,
    /// Bytes written per chunk size (and by each fio sequential job set).
    pub size: u64,
    pub chunk_sizes: Vec<u64>,
    pub shards: usize,
    /// Client threads issuing requests.
    pub clients: usize,
    /// Requests each client keeps in flight.
    pub depth: usize,
    /// Seconds of random reads (fio) and challenges (engine).
    pub random_secs: u32,
    /// Chunks in the restart measurement; 0 skips it.
    pub restart_chunks: u64,
    /// Skip fio and the naive store (engine rows only, no ratios).
    pub engine_only: bool,
    /// The engine's per-shard limits (`EngineConfig`): queue depth, requests in flight,
    /// put bytes in flight; `None` keeps the default.
    pub limits: (Option<usize>, Option<usize>, Option<u64>),
    /// Bytes of outboards each shard keeps in memory (`EngineConfig::outboard_cache_bytes`;
    /// `None`: the engine's default).
    pub outboard_cache: Option<u64>,
    /// The layout new records are written in (`EngineConfig::record_layout`).
    pub record_layout: engine::store::Layout,
    /// Reserve new segments' blocks (`EngineConfig::preallocate`).
    pub preallocate: bool,
}

/// The restart measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Restart {
    pub chunks: u64,
    pub put_seconds: f64,
    pub open_from_checkpoint_s: f64,
    pub open_full_scan_s: f64,
    pub index_bytes_per_chunk: f64,
}

/// fio's queue depth for its 4 KiB random reads (one job per shard); the engine's
/// challenge threads, one per shard, ask for batches of twice it (`challenges_for`).
const FIO_RANDREAD_DEPTH: u32 = 32;

/// fio's queue depth for 1 MiB sequential I/O: deep enough that fio, not the queue, is
/// the limit (the engine keeps clients × depth chunks in flight).
const FIO_SEQ_DEPTH: u32 = 32;

pub(crate) fn chunks(seed: u64, count: u64, bytes: u64) -> Vec<(ChunkId, u32, Vec<u8>)> {
    let len = usize::try_from(bytes).expect("chunk fits in memory");
    (0..count)
        .map(|i| {
            let mut rng = Rng(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut data = vec![0u8; len];
            for w in data.chunks_mut(8) {
                let x = rng.next_u64().to_le_bytes();
                w.copy_from_slice(&x[..w.len()]);
            }
            (ChunkId::of(&data), crc32c(&data), data)
        })
        .collect()
}

/// Runs requests `0..n` from `threads` client threads, each keeping `depth` requests in
/// flight (`submit` starts one, `check` looks at its answer); latency is from submission
/// until the client takes the answer, in submission order.
pub(crate) fn timed<T>(
    n: u64,
    threads: usize,
    depth: usize,
    bytes_each: u64,
    submit: impl Fn(u64) -> Result<Pending<T>> + Sync,
    check: impl Fn(T) -> Result<()> + Sync,
) -> Result<Timed> {
    let cpu0 = diskbench::cpu_seconds();
    let start = Instant::now();
    let latencies_us = per_thread(threads, |t| {
        let mut lat = Vec::new();
        let mut inflight = std::collections::VecDeque::new();
        let mut i = t;
        loop {
            while inflight.len() < depth.max(1) && i < n {
                inflight.push_back((Instant::now(), submit(i)?));
                i += threads as u64;
            }
            let Some((t0, p)) = inflight.pop_front() else {
                break;
            };
            check(p.wait()?)?;
            lat.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        Ok(lat)
    })?;
    Ok(Timed::of_run(n, bytes_each, start, cpu0, latencies_us))
}

/// Runs `client(t)` on threads `t = 0..threads` at once; their latencies, together.
fn per_thread(threads: usize, client: impl Fn(u64) -> Result<Vec<f64>> + Sync) -> Result<Vec<f64>> {
    let lats = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads as u64)
            .map(|t| {
                let client = &client;
                s.spawn(move || client(t))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .collect::<Result<Vec<_>>>()
    })?;
    Ok(lats.into_iter().flatten().collect())
}

/// Storage challenges for `seconds` from `threads` client threads (one per fio job), each
/// asking [`Engine::prove_many`] for batches of twice fio's per-job depth, as a host
/// answers a proof period's challenges. A thread has its whole batch in flight, then fewer
/// as its last proofs come back, then none until it asks its next batch: at most twice
/// fio's depth is in flight, less while threads wait on their batches' tails. Challenge
/// `i` is `challenge(i)`; latency is each proof's own time on its shard.
fn challenges_for(
    seconds: u32,
    threads: usize,
    challenge: impl Fn(u64) -> (ChunkId, u64) + Sync,
    engine: &Engine,
) -> Result<Timed> {
    let cpu0 = diskbench::cpu_seconds();
    let start = Instant::now();
    let until = start + Duration::from_secs(u64::from(seconds));
    let batch = 2 * FIO_RANDREAD_DEPTH as usize;
    let latencies_us = per_thread(threads, |t| {
        let mut lat = Vec::new();
        let mut i = t;
        while Instant::now() < until {
            let asked: Vec<(ChunkId, u64)> = (0..batch)
                .map(|_| {
                    i += threads as u64;
                    challenge(i)
                })
                .collect();
            for a in engine.prove_many(&asked)? {
                anyhow::ensure!(!a.proof?.is_empty(), "empty proof");
                lat.push(a.micros as f64);
            }
        }
        Ok(lat)
    })?;
    let ops = latencies_us.len() as u64;
    Ok(Timed::of_run(ops, 0, start, cpu0, latencies_us))
}

fn row(workload: &str, chunk: u64, t: &Timed, iops_only: bool) -> Row {
    Row {
        workload: workload.to_string(),
        chunk_bytes: Some(chunk),
        gbps: (!iops_only).then(|| t.gbps()),
        iops: Some(t.iops()),
        p50_us: Some(t.p50()),
        p99_us: Some(t.p99()),
        cpu_s_per_gb: (!iops_only).then(|| t.cpu_s_per_gb()),
        ratio_fio: None,
        ratio_naive: None,
    }
}

fn fio_row(workload: &str, block: u64, f: &diskbench::FioResult, iops_only: bool) -> Row {
    Row {
        workload: workload.to_string(),
        chunk_bytes: Some(block),
        gbps: (!iops_only).then_some(f.gbps),
        iops: Some(f.iops),
        p50_us: Some(f.p50_us),
        p99_us: Some(f.p99_us),
        cpu_s_per_gb: (!iops_only && f.bytes > 0).then(|| f.cpu_s / (f.bytes as f64 / 1e9)),
        ratio_fio: None,
        ratio_naive: None,
    }
}

impl StoreBench {
    fn config(&self, dir: &Path) -> EngineConfig {
        let mut c = EngineConfig::new(vec![dir.to_path_buf()], self.shards);
        c.maintenance_every = None;
        c.pin = true;
        let (queue, in_flight, put_bytes) = self.limits;
        c.queue_depth = queue.unwrap_or(c.queue_depth).max(1);
        c.in_flight_max = in_flight.unwrap_or(c.in_flight_max).max(1);
        c.put_bytes_in_flight = put_bytes.unwrap_or(c.put_bytes_in_flight).max(1);
        c.outboard_cache_bytes = self.outboard_cache.unwrap_or(c.outboard_cache_bytes);
        c.record_layout = self.record_layout;
        c.preallocate = self.preallocate;
        c
    }

    /// Runs everything; returns the table's rows and the restart figures.
    pub fn run(&self, progress: &dyn Fn(&str)) -> Result<(Vec<Row>, Option<Restart>)> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let mut rows = Vec::new();
        let (mut fio_w, mut fio_r, mut fio_rr) = (None, None, None);
        if !self.engine_only {
            let fio = diskbench::ensure_fio()?;
            let per_job = (self.size / self.shards as u64).max(1 << 20);
            progress("fio sequential write");
            let qd = FIO_SEQ_DEPTH;
            let w = diskbench::run_fio(
                &fio,
                &self.dir,
                FioJob::SeqWrite,
                self.shards,
                per_job,
                1 << 20,
                qd,
                0,
            )?;
            progress("fio sequential read");
            let r = diskbench::run_fio(
                &fio,
                &self.dir,
                FioJob::SeqRead,
                self.shards,
                per_job,
                1 << 20,
                qd,
                0,
            )?;
            progress("fio 4 KiB random read");
            let rr = diskbench::run_fio(
                &fio,
                &self.dir,
                FioJob::RandRead4k,
                self.shards,
                per_job,
                4096,
                FIO_RANDREAD_DEPTH,
                self.random_secs,
            )?;
            diskbench::cleanup_fio(&self.dir)?;
            rows.push(fio_row("fio seqwrite (end_fsync)", 1 << 20, &w, false));
            rows.push(fio_row("fio seqread", 1 << 20, &r, false));
            rows.push(fio_row("fio randread", 4096, &rr, true));
            (fio_w, fio_r, fio_rr) = (Some(w.gbps), Some(r.gbps), Some(rr.iops));
        }
        for &cb in &self.chunk_sizes {
            let n = (self.size / cb).max(16);
            progress(&format!("{} chunks of {}", n, crate::format_bytes(cb)));
            let data = chunks(cb, n, cb);
            let (mut naive_put, mut naive_get) = (None, None);
            if !self.engine_only {
                progress("naive store put/get");
                let bufs: Vec<Vec<u8>> = data.iter().map(|c| c.2.clone()).collect();
                let p = diskbench::naive_put(&self.dir, &bufs, self.shards)?;
                drop(bufs);
                let g =
                    diskbench::naive_get(&self.dir, data.len(), usize::try_from(cb)?, self.shards)?;
                diskbench::naive_cleanup(&self.dir)?;
                rows.push(row("naive put (file+fsync)", cb, &p, false));
                rows.push(row("naive get", cb, &g, false));
                (naive_put, naive_get) = (Some(p.gbps()), Some(g.gbps()));
            }
            let store_dir = self.dir.join("engine");
            let _ = std::fs::remove_dir_all(&store_dir);
            let cfg = self.config(&store_dir);
            let ids: Vec<(ChunkId, u32)> = data.iter().map(|c| (c.0, c.1)).collect();
            let slots: Vec<std::sync::Mutex<Option<Vec<u8>>>> = data
                .into_iter()
                .map(|c| std::sync::Mutex::new(Some(c.2)))
                .collect();
            progress("engine put");
            let engine = Arc::new(Engine::open(&cfg).map_err(anyhow::Error::msg)?);
            // As many bytes in flight as fio keeps (jobs × depth × 1 MiB), at least `depth`
            // requests per client.
            let fio_bytes = (self.shards as u64 * u64::from(FIO_SEQ_DEPTH)) << 20;
            let depth = usize::try_from(fio_bytes / cb / self.clients as u64)?.max(self.depth);
            let put = timed(
                n,
                self.clients,
                depth,
                cb,
                |i| {
                    let i = usize::try_from(i)?;
                    let bytes = slots[i]
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .take()
                        .context("taken")?;
                    Ok(engine.put(ids[i].0, ids[i].1, bytes, 0))
                },
                |_| Ok(()),
            )?;
            drop(slots);
            Arc::try_unwrap(engine)
                .map_err(|_| anyhow::anyhow!("engine still shared"))?
                .shutdown()?;
            let mut r = row("engine put (durable)", cb, &put, false);
            r.ratio_fio = fio_w.map(|f| put.gbps() / f);
            r.ratio_naive = naive_put.map(|f| put.gbps() / f);
            rows.push(r);
            progress("engine get");
            let engine = Engine::open(&cfg).map_err(anyhow::Error::msg)?;
            let order: Vec<usize> = {
                let mut rng = Rng(cb);
                let mut o: Vec<usize> = (0..ids.len()).collect();
                for k in (1..o.len()).rev() {
                    o.swap(k, usize::try_from(rng.below(k as u64 + 1))?);
                }
                o
            };
            let get = timed(
                n,
                self.clients,
                depth,
                cb,
                |i| Ok(engine.get(ids[order[usize::try_from(i)?]].0)),
                |got| {
                    anyhow::ensure!(got.len() as u64 == cb, "short read");
                    Ok(())
                },
            )?;
            let mut r = row("engine get (verified)", cb, &get, false);
            r.ratio_fio = fio_r.map(|f| get.gbps() / f);
            r.ratio_naive = naive_get.map(|f| get.gbps() / f);
            rows.push(r);
            progress("engine challenges");
            let leaves = proto::proof::leaf_count(cb);
            // Random (chunk, leaf) challenges in batches, one client thread per fio job
            // (`challenges_for`); latency is each proof's time on its shard.
            let all = challenges_for(
                self.random_secs,
                self.shards,
                |i| {
                    let mut rng = Rng(cb ^ 0xc4a1 ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                    let c = usize::try_from(rng.below(ids.len() as u64)).unwrap_or(0);
                    (ids[c].0, rng.below(leaves))
                },
                &engine,
            )?;
            let mut r = row("engine challenge (1 KiB leaf proof)", cb, &all, true);
            r.ratio_fio = fio_rr.map(|f| all.iops() / f);
            rows.push(r);
            // Gets while compaction runs: every other chunk deleted (so every segment falls
            // under the live threshold), then the rest read back while `compact` copies
            // them; the ratio is against the plain get above, same run.
            progress("engine get during compaction");
            for (id, _) in ids.iter().step_by(2) {
                engine.delete(*id).wait()?;
            }
            let kept: Vec<usize> = order.iter().copied().filter(|i| i % 2 == 1).collect();
            let (during, compacted) = std::thread::scope(|s| -> Result<(Timed, u64)> {
                let compactor = s.spawn(|| engine.compact());
                let t = timed(
                    kept.len() as u64,
                    self.clients,
                    depth,
                    cb,
                    |i| Ok(engine.get(ids[kept[usize::try_from(i)?]].0)),
                    |got| {
                        anyhow::ensure!(got.len() as u64 == cb, "short read");
                        Ok(())
                    },
                )?;
                let compacted = compactor
                    .join()
                    .map_err(|_| anyhow::anyhow!("compaction thread panicked"))??;
                Ok((t, compacted))
            })?;
            anyhow::ensure!(compacted > 0, "nothing was compacted");
            let mut r = row("engine get during compaction", cb, &during, false);
            r.ratio_naive = None;
            r.ratio_fio = fio_r.map(|f| during.gbps() / f);
            rows.push(r);
            progress(&format!(
                "  {compacted} segments compacted; gets ran at {:.2} of the plain get's rate",
                during.gbps() / get.gbps()
            ));
            engine.shutdown()?;
            let _ = std::fs::remove_dir_all(&store_dir);
        }
        let restart = if self.restart_chunks > 0 {
            Some(self.restart(progress)?)
        } else {
            None
        };
        // Everything written is gone; the directory too, if this run made it empty.
        let _ = std::fs::remove_dir(&self.dir);
        Ok((rows, restart))
    }

    /// Puts many tiny chunks, then times a restart from the checkpoint and one that scans
    /// every segment (checkpoints removed).
    fn restart(&self, progress: &dyn Fn(&str)) -> Result<Restart> {
        let n = self.restart_chunks;
        progress(&format!("restart: putting {n} chunks of 64 bytes"));
        let dir = self.dir.join("restart");
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = self.config(&dir);
        let engine = Engine::open(&cfg).map_err(anyhow::Error::msg)?;
        let t0 = Instant::now();
        timed(
            n,
            self.clients,
            self.depth * 8,
            64,
            |i| {
                let mut data = [0u8; 64];
                data[..8].copy_from_slice(&i.to_le_bytes());
                Ok(engine.put(ChunkId::of(&data), crc32c(&data), data.to_vec(), 0))
            },
            |_| Ok(()),
        )?;
        let put_seconds = t0.elapsed().as_secs_f64();
        let stats = engine.stats()?;
        engine.shutdown()?;
        // Seconds `Engine::open` takes, checking that every chunk came back.
        let timed_open = |what: &str| -> Result<f64> {
            progress(what);
            let t = Instant::now();
            let e = Engine::open(&cfg).map_err(anyhow::Error::msg)?;
            let secs = t.elapsed().as_secs_f64();
            anyhow::ensure!(e.stats()?.chunks == n, "chunks lost at restart");
            e.shutdown()?;
            Ok(secs)
        };
        let open_from_checkpoint_s = timed_open("restart: open from the checkpoint")?;
        for s in 0..self.shards {
            let _ = std::fs::remove_file(dir.join(format!("shard-{s}/index.msix")));
        }
        let open_full_scan_s = timed_open("restart: open by scanning every segment")?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(Restart {
            chunks: n,
            put_seconds,
            open_from_checkpoint_s,
            open_full_scan_s,
            index_bytes_per_chunk: stats.index_bytes as f64 / n as f64,
        })
    }
}
