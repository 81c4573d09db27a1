//! `engine-bench`: measurements of the engine against the baselines that bound it, taken in
//! the same run so that the ratios hold whatever machine it runs on.
//!
//! `engine-bench codec` times sealing and opening in memory (no disk) against the raw
//! primitives they are made of: ring's AES-256-GCM, crc-fast's CRC32C and BLAKE3, each on
//! one thread over the same chunk buffers. The compute bound for `w` workers on `c` cores is
//! `min(w, c) / (1/aes + 1/crc + 1/blake3)`: the three passes back to back, on every core.

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use engine::buf::ChunkBuf;
use engine::codec::{crc32c, FileCipher};
use engine::plain::{PlainFile, ReadAt, ReadStats};
use engine::seal::{open_stream, seal_at, seal_stream, ChunkSource, SealStream};
use engine::CodecError;
use proto::{ChunkEntry, FileId, FileKey, Manifest};
use serde::Serialize;
use tools::diskbench::print_table;
use tools::storebench::StoreBench;
use tools::{format_bytes, parse_bytes, parse_chunk_size};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "engine-bench",
    version,
    about = "Benchmarks of the Market.space engine against its physical baselines"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    store: StoreArgs,
}

/// With no subcommand: the chunk store against fio and a naive store on the same disk.
#[derive(Args, Debug)]
struct StoreArgs {
    /// Directory on the disk to measure (created; everything written is removed after)
    /// [default: ./engine-bench.tmp].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Bytes written per chunk size and by fio's sequential jobs.
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    size: u64,
    /// Chunk sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64KiB,1MiB,8MiB", value_parser = parse_bytes)]
    chunk_sizes: Vec<u64>,
    /// Engine shards, and fio jobs [default: the core count].
    #[arg(long)]
    shards: Option<usize>,
    /// Client threads.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Requests each client keeps in flight (×4 for challenges, ×8 for the restart's puts).
    #[arg(long, default_value_t = 8)]
    depth: usize,
    /// Seconds of random 4 KiB reads (fio) and of challenges (engine), per chunk size.
    #[arg(long, default_value_t = 5)]
    random_secs: u32,
    /// Tiny chunks put before timing a restart (from the checkpoint, and by full scan);
    /// 0 skips it.
    #[arg(long, default_value_t = 1_000_000)]
    restart_chunks: u64,
    /// Only the engine's rows: no fio, no naive store, no ratios.
    #[arg(long)]
    engine_only: bool,
    /// Requests each shard's queue holds before callers wait [default: the engine's, 16].
    #[arg(long)]
    queue_depth: Option<usize>,
    /// Requests each shard works on at once [default: the engine's, 256].
    #[arg(long)]
    in_flight: Option<usize>,
    /// Put payload bytes each shard holds at once [default: the engine's, 256MiB].
    #[arg(long, value_parser = parse_bytes)]
    put_bytes_in_flight: Option<u64>,
    /// Bytes of chunk outboards each shard keeps in memory, so a challenge reads only its
    /// leaf's group (0: every challenge also reads the outboard) [default: the engine's,
    /// 64MiB].
    #[arg(long, value_parser = parse_bytes)]
    outboard_cache: Option<u64>,
    /// The record layout chunks are written in: 2 (the payload on its own sectors, 4 KiB
    /// groups: a challenge reads one sector) or 1 (the layout before it: 16 KiB groups
    /// after a 64-byte header, a challenge reads 20 KiB), to compare the two.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    record_layout: u8,
    /// Do not reserve each new segment's blocks when it is created (fallocate), to measure
    /// what the reservation saves.
    #[arg(long)]
    no_preallocate: bool,
    /// Print the rows as a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Seal and open throughput in memory against the raw AES-256-GCM, CRC32C and BLAKE3.
    Codec(CodecArgs),
    /// The data plane over loopback (a host in this process, its clients on connections)
    /// against the engine's local put and get on the same store, in the same run.
    Net(NetArgs),
}

#[derive(Args, Debug)]
struct NetArgs {
    /// Directory for the store (created; removed after).
    #[arg(long, default_value = "engine-bench.tmp")]
    dir: PathBuf,
    /// Bytes put (and then got) each way per chunk size.
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    size: u64,
    #[arg(long, value_delimiter = ',', default_value = "1MiB,8MiB", value_parser = parse_bytes)]
    chunk_sizes: Vec<u64>,
    /// Engine shards [default: the core count].
    #[arg(long)]
    shards: Option<usize>,
    /// Client threads locally, connections over the network.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Requests each keeps in flight.
    #[arg(long, default_value_t = 8)]
    depth: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct CodecArgs {
    /// Bytes sealed per round (held in memory, twice: plaintext and sealed chunks).
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    size: u64,
    /// Chunk size.
    #[arg(long, default_value = "8MiB", value_parser = parse_chunk_size)]
    chunk_size: u32,
    /// Worker counts to measure, comma-separated [default: 1 and every power of two up to the
    /// core count, and the core count].
    #[arg(long, value_delimiter = ',')]
    workers: Vec<usize>,
    /// Rounds per measurement; the best is reported.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Also seal this file from disk (chunks discarded) against `dd` reading it, both from a
    /// cold page cache, in the same run: the check where the disk, not the CPU, is the bound.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Print the rows as a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Row {
    workload: &'static str,
    workers: usize,
    chunk_bytes: u32,
    gbps: f64,
    bound_gbps: Option<f64>,
    ratio_bound: Option<f64>,
    /// CPU seconds of this process per GB, in the best round (rows from a file).
    cpu_s_per_gb: Option<f64>,
}

impl Row {
    fn new(workload: &'static str, workers: usize, chunk_bytes: u32, gbps: f64) -> Row {
        Row {
            workload,
            workers,
            chunk_bytes,
            gbps,
            bound_gbps: None,
            ratio_bound: None,
            cpu_s_per_gb: None,
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Codec(args)) => codec(args),
        Some(Command::Net(args)) => net_bench(args),
        None => store(cli.store),
    }
}

/// Best wall time of `rounds` runs of `f`, in GB/s for `bytes`.
fn best_gbps(bytes: u64, rounds: u32, f: impl FnMut() -> Result<()>) -> Result<f64> {
    Ok(best_of(bytes, rounds, f)?.0)
}

/// GB/s for `bytes` in the fastest of `rounds` runs of `f`, and this process's CPU seconds
/// per GB in that run.
fn best_of(bytes: u64, rounds: u32, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    let mut best = (f64::INFINITY, 0.0);
    for _ in 0..rounds.max(1) {
        let (t, cpu) = (Instant::now(), tools::diskbench::cpu_seconds());
        f()?;
        let (secs, cpu) = (
            t.elapsed().as_secs_f64(),
            tools::diskbench::cpu_seconds() - cpu,
        );
        if secs < best.0 {
            best = (secs, cpu);
        }
    }
    let gb = bytes as f64 / 1e9;
    Ok((gb / best.0, best.1 / gb))
}

/// Sealed chunks in memory, fetched by position: each opening worker copies its own.
struct Memory(Arc<Vec<Vec<u8>>>);

impl ChunkSource for Memory {
    fn by_position(&self) -> bool {
        true
    }

    fn fetch(&self, index: u64, _: &ChunkEntry, buf: &mut ChunkBuf) -> Result<(), CodecError> {
        // A copy, as a read from the page cache or a socket would be.
        buf.extend_from_slice(&self.0[usize::try_from(index).expect("index fits usize")]);
        Ok(())
    }
}

/// The same chunks fetched in order by one feeder thread, as a download's come.
struct InOrder(Memory);

impl ChunkSource for InOrder {
    fn fetch(&self, index: u64, e: &ChunkEntry, buf: &mut ChunkBuf) -> Result<(), CodecError> {
        self.0.fetch(index, e, buf)
    }
}

/// Drains a seal, failing on its first error.
fn drain(stream: SealStream) -> Result<()> {
    for chunk in stream {
        chunk?;
    }
    Ok(())
}

/// Drops `path` from the page cache (GNU dd's `iflag=nocache` with `count=0` advises the
/// kernel to evict the whole file), so the next read comes from the disk.
fn evict(path: &Path) -> Result<()> {
    let status = std::process::Command::new("dd")
        .arg(format!("if={}", path.display()))
        .args(["iflag=nocache", "count=0", "status=none"])
        .status()?;
    if !status.success() {
        bail!("dd could not evict {} from the page cache", path.display());
    }
    Ok(())
}

/// Seal from a cold file against dd reading the same cold file, best of `rounds` each:
/// read by position with O_DIRECT (what `mspace seal` and `mspace put` do), by position
/// through the page cache, and as one stream through the page cache (before O_DIRECT).
fn disk_rows(path: &Path, cb: u32, workers: usize, rounds: u32) -> Result<Vec<Row>> {
    let bytes = std::fs::metadata(path)?.len();
    let dd = best_gbps(bytes, rounds, || {
        evict(path)?;
        let t = std::process::Command::new("dd")
            .arg(format!("if={}", path.display()))
            .args(["of=/dev/null", "bs=8M", "status=none"])
            .status()?;
        if !t.success() {
            bail!("dd failed to read {}", path.display());
        }
        Ok(())
    })?;
    let cipher = || FileCipher::new(&FileKey([9; 32]), FileId([9; 16]));
    let mut direct_stats = ReadStats::default();
    // best_of times the eviction too; it is a single fadvise call, negligible beside GBs.
    let mut by_position = |direct: bool| {
        best_of(bytes, rounds, || {
            evict(path)?;
            let file = std::fs::File::open(path)?;
            let plain = Arc::new(if direct {
                PlainFile::new(file)
            } else {
                PlainFile::buffered(file)
            });
            drain(seal_at(
                plain.clone(),
                bytes,
                cipher(),
                cb,
                workers,
                0..u64::MAX,
            )?)?;
            if direct {
                direct_stats = plain.stats();
            }
            Ok(())
        })
    };
    let direct = by_position(true)?;
    let buffered = by_position(false)?;
    // The last round's: a filesystem that refuses O_DIRECT shows 0 GB direct here.
    eprintln!(
        "seal-from-disk read {:.2} GB with O_DIRECT, {:.2} GB through the page cache where a chunk's first page was cached, {:.2} GB buffered",
        direct_stats.direct as f64 / 1e9,
        direct_stats.cached as f64 / 1e9,
        direct_stats.buffered as f64 / 1e9
    );
    let stream = best_of(bytes, rounds, || {
        evict(path)?;
        drain(seal_stream(
            std::fs::File::open(path)?,
            cipher(),
            cb,
            workers,
        )?)
    })?;
    let row = |workload, (gbps, cpu): (f64, f64)| Row {
        bound_gbps: Some(dd),
        ratio_bound: Some(gbps / dd),
        cpu_s_per_gb: Some(cpu),
        ..Row::new(workload, workers, cb, gbps)
    };
    Ok(vec![
        Row::new("disk-read-dd", 1, cb, dd),
        row("seal-from-disk", direct),
        row("seal-disk-cached", buffered),
        row("seal-disk-stream", stream),
    ])
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn codec(args: CodecArgs) -> Result<()> {
    let cores = engine::seal::default_workers();
    let size = usize::try_from(args.size)?;
    if size < args.chunk_size as usize {
        bail!("--size must be at least one chunk");
    }
    let mut workers = args.workers.clone();
    if workers.is_empty() {
        let mut w = 1;
        while w < cores {
            workers.push(w);
            w *= 2;
        }
        workers.push(cores);
    }
    if workers.contains(&0) {
        bail!("--workers must be at least 1");
    }
    let cb = args.chunk_size;
    let mut input = vec![0u8; size];
    blake3::Hasher::new_derive_key("engine-bench codec input")
        .finalize_xof()
        .read_exact(&mut input)?;
    let input: Arc<[u8]> = input.into();
    // A benchmark re-seals the same bytes with one key each round; real seals never reuse
    // a key (FileCipher::fresh), which is why seal_stream takes its cipher by value.
    let new_cipher = || FileCipher::new(&FileKey([7; 32]), FileId([3; 16]));
    let cipher = Arc::new(new_cipher());

    // One untimed seal keeps the sealed chunks for the open rounds and checks the round trip.
    let mut sealed = Vec::new();
    let mut entries = Vec::new();
    let memory = || Arc::new(Arc::clone(&input)) as Arc<dyn ReadAt>;
    for chunk in seal_at(memory(), args.size, new_cipher(), cb, cores, 0..u64::MAX)? {
        let chunk = chunk?;
        sealed.push(chunk.bytes().to_vec());
        entries.push(chunk.entry);
    }
    let manifest = Arc::new(Manifest {
        chunk_bytes: cb,
        file_bytes: args.size,
        name: String::new(),
        chunks: entries,
    });
    let sealed = Arc::new(sealed);
    let mut check = blake3::Hasher::new();
    for chunk in open_stream(
        Arc::clone(&manifest),
        Arc::clone(&cipher),
        Memory(Arc::clone(&sealed)),
        cores,
    )? {
        check.update(chunk?.plaintext());
    }
    if check.finalize() != blake3::hash(&input) {
        bail!("the opened bytes differ from the input: the codec is broken");
    }

    let mut rows = Vec::new();
    for &w in &workers {
        // Each worker copies its own chunks in (as from a file read by position), and one
        // feeder thread copies for all (as from a pipe): the same bytes, two shapes.
        let seal = best_gbps(args.size, args.rounds, || {
            drain(seal_at(
                memory(),
                args.size,
                new_cipher(),
                cb,
                w,
                0..u64::MAX,
            )?)
        })?;
        let stream = best_gbps(args.size, args.rounds, || {
            drain(seal_stream(
                Cursor::new(Arc::clone(&input)),
                new_cipher(),
                cb,
                w,
            )?)
        })?;
        let open = |in_order: bool| {
            best_gbps(args.size, args.rounds, || {
                let memory = Memory(Arc::clone(&sealed));
                let (manifest, cipher) = (Arc::clone(&manifest), Arc::clone(&cipher));
                let chunks = if in_order {
                    open_stream(manifest, cipher, InOrder(memory), w)?
                } else {
                    open_stream(manifest, cipher, memory, w)?
                };
                for chunk in chunks {
                    chunk?;
                }
                Ok(())
            })
        };
        rows.push(Row::new("seal", w, cb, seal));
        rows.push(Row::new("seal-stream", w, cb, stream));
        rows.push(Row::new("open", w, cb, open(false)?));
        rows.push(Row::new("open-in-order", w, cb, open(true)?));
    }
    drop(sealed);

    // The primitives alone, one thread, over the same chunk-sized buffers.
    let mut work: Vec<u8> = input.to_vec();
    let key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &[7; 32]).expect("32-byte key"),
    );
    let aes = best_gbps(args.size, args.rounds, || {
        for (i, chunk) in (0u64..).zip(work.chunks_mut(cb as usize)) {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&i.to_le_bytes());
            let tag = key
                .seal_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key(nonce),
                    ring::aead::Aad::empty(),
                    chunk,
                )
                .map_err(|_| anyhow::anyhow!("ring refused to seal"))?;
            let _ = std::hint::black_box(tag);
        }
        Ok(())
    })?;
    let crc = best_gbps(args.size, args.rounds, || {
        for chunk in input.chunks(cb as usize) {
            std::hint::black_box(crc32c(chunk));
        }
        Ok(())
    })?;
    let b3 = best_gbps(args.size, args.rounds, || {
        for chunk in input.chunks(cb as usize) {
            std::hint::black_box(blake3::hash(chunk));
        }
        Ok(())
    })?;
    let per_core = 1.0 / (1.0 / aes + 1.0 / crc + 1.0 / b3);
    for row in &mut rows {
        let bound = per_core * row.workers.min(cores) as f64;
        row.bound_gbps = Some(bound);
        row.ratio_bound = Some(row.gbps / bound);
    }
    if let Some(path) = &args.file {
        rows.extend(disk_rows(path, cb, cores, args.rounds)?);
    }
    for (workload, gbps) in [
        ("aes-256-gcm", aes),
        ("crc32c", crc),
        ("blake3", b3),
        ("bound-1-core", per_core),
    ] {
        rows.push(Row::new(workload, 1, cb, gbps));
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "engine-bench codec: {} in memory, {} chunks, best of {} rounds",
        format_bytes(args.size),
        format_bytes(cb.into()),
        args.rounds
    );
    println!("machine: {} cores, {}", cores, cpu_model());
    println!();
    println!(
        "{:<17} {:>7} {:>8} {:>11} {:>8} {:>9}",
        "workload", "workers", "GB/s", "bound GB/s", "ratio", "CPU s/GB"
    );
    for r in &rows {
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        println!(
            "{:<17} {:>7} {:>8.2} {:>11} {:>8} {:>9}",
            r.workload,
            r.workers,
            r.gbps,
            or_dash(r.bound_gbps.map(|b| format!("{b:.2}"))),
            or_dash(r.ratio_bound.map(|q| format!("{:.0}%", q * 100.0))),
            or_dash(r.cpu_s_per_gb.map(|c| format!("{c:.2}"))),
        );
    }
    println!();
    println!("bound = min(workers, cores) / (1/aes + 1/crc32c + 1/blake3), the primitives measured above on one thread");
    println!("seal and open: each worker reads its own chunks; seal-stream and open-in-order: one feeder thread reads for all");
    if args.file.is_some() {
        println!("seal-from-disk (O_DIRECT where uncached), seal-disk-cached (through the page cache) and seal-disk-stream (one reader, through the page cache) against disk-read-dd: dd reading the same file, all from a cold page cache");
    }
    Ok(())
}

fn net_bench(args: NetArgs) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bench = tools::netbench::NetBench {
        dir: args.dir.clone(),
        size: args.size,
        chunk_sizes: args.chunk_sizes,
        shards: args.shards.unwrap_or(cores),
        clients: args.clients.max(1),
        depth: args.depth.max(1),
    };
    std::fs::create_dir_all(&bench.dir)?;
    let started = Instant::now();
    let progress = |what: &str| eprintln!("[{:6.1}s] {what}", started.elapsed().as_secs_f64());
    let result = bench.run(&progress);
    let _ = std::fs::remove_dir(&bench.dir);
    let rows = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "machine: {} cores, {}; {} shards, {} clients × {} in flight, {} per chunk size, dir {}",
            cores,
            cpu_model(),
            bench.shards,
            bench.clients,
            bench.depth,
            tools::format_bytes(bench.size),
            bench.dir.display()
        );
        tools::netbench::print_rows(&rows);
    }
    Ok(())
}

fn store(args: StoreArgs) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bench = StoreBench {
        dir: args
            .dir
            .unwrap_or_else(|| PathBuf::from("engine-bench.tmp")),
        size: args.size,
        chunk_sizes: args.chunk_sizes,
        shards: args.shards.unwrap_or(cores),
        clients: args.clients.max(1),
        depth: args.depth.max(1),
        random_secs: args.random_secs.max(1),
        restart_chunks: args.restart_chunks,
        engine_only: args.engine_only,
        limits: (args.queue_depth, args.in_flight, args.put_bytes_in_flight),
        outboard_cache: args.outboard_cache,
        record_layout: engine::store::Layout::of_version(args.record_layout)
            .context("record layout 1 or 2")?,
        preallocate: !args.no_preallocate,
    };
    let started = Instant::now();
    let progress = |what: &str| eprintln!("[{:6.1}s] {what}", started.elapsed().as_secs_f64());
    let (rows, restart) = bench.run(&progress)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        if let Some(r) = &restart {
            eprintln!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    println!(
        "machine: {} cores, {}; {} shards, {} clients × {} in flight, {} per chunk size, dir {}",
        cores,
        cpu_model(),
        bench.shards,
        bench.clients,
        bench.depth,
        format_bytes(bench.size),
        bench.dir.display()
    );
    println!();
    print_table(&rows);
    if let Some(r) = restart {
        println!();
        println!(
            "restart with {} chunks: from the checkpoint {:.2} s, scanning every segment {:.2} s; index {:.1} bytes per chunk (puts took {:.1} s)",
            r.chunks, r.open_from_checkpoint_s, r.open_full_scan_s, r.index_bytes_per_chunk, r.put_seconds
        );
    }
    Ok(())
}
