//! `chain-bench`: committed transactions per second and finality latency (submit to
//! commit) of a local network of validators on loopback (`tools::chainbench`), or, with
//! `--workload proofs`, what a proof period costs one miner (`tools::proofbench`).

use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use tools::chainbench::{run, ChainBenchArgs};
use tools::proofbench::ProofBenchArgs;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "chain-bench",
    version,
    about = "Throughput and finality of a local Market.space chain (validators on loopback)"
)]
struct Cli {
    /// transfers: signed transfers through validators on loopback. proofs: storage proofs
    /// of --hosts hosts with --chunks-per-host chunks each, applied by one miner's ledger.
    /// exchange: signed storage requests admitted and matched by one exchange on loopback
    /// (--hosts standing asks, --clients connections).
    #[arg(long, default_value = "transfers", value_parser = ["transfers", "proofs", "exchange"])]
    workload: String,
    /// (exchange) Connections sending requests, one in flight each (an exchange serves at
    /// most 32 connections from one address).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=31))]
    clients: u64,
    /// (exchange) 1: one exchange alone; 3 or 5: the exchange as that many replicas (Raft
    /// on loopback, raft files on this disk), the connections spread over them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=5))]
    replicas: u64,
    /// (exchange) Requests signed before the run (it stops early if it uses them all).
    #[arg(long, default_value_t = 200_000)]
    requests: usize,
    /// (proofs) Hosts with deals under proof.
    #[arg(long, default_value_t = 10)]
    hosts: usize,
    /// (proofs) Chunks each host holds under active deals.
    #[arg(long, default_value_t = 100_000)]
    chunks_per_host: u64,
    /// (proofs) Sealed bytes of each chunk (8 MiB + 16: the default chunk size).
    #[arg(long, default_value_t = 8 * 1024 * 1024 + 16)]
    chunk_bytes: u32,
    /// (proofs) Proof periods measured; the figures are medians.
    #[arg(long, default_value_t = 5)]
    periods: usize,
    /// Validators (each a full node: malachite, libp2p on loopback, WAL, block store).
    #[arg(long, default_value_t = 4)]
    validators: usize,
    /// Length of the measured window.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Offered load, transactions per second.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Funded accounts sending transfers (each sends its nonces in order).
    #[arg(long, default_value_t = 5_000)]
    accounts: usize,
    /// The chain's target block time when idle, milliseconds.
    #[arg(long, default_value_t = 50)]
    block_time_ms: u64,
    /// First p2p port (validator i listens on base+i, 127.0.0.1).
    #[arg(long, default_value_t = 28_000)]
    base_port: u16,
    /// Print one JSON object: validators, tps, p50_ms, p99_ms, blocks, and more.
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.workload == "exchange" {
        let r = tools::exchangebench::run(&tools::exchangebench::ExchangeBenchArgs {
            hosts: cli.hosts,
            clients: usize::try_from(cli.clients)?,
            senders: cli.accounts,
            requests: cli.requests,
            seconds: cli.seconds,
            replicas: usize::try_from(cli.replicas)?,
        })?;
        if cli.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "one exchange ({} replica(s)), {} asks, {} connections, {} senders: {} requests matched in {:.1} s ({:.0}/s, {} refused), p50 {:.2} ms, p99 {:.2} ms; one core checking their signatures alone: {:.0}/s (ratio {:.2})",
                r.replicas, r.hosts, r.clients, r.senders, r.matched, r.seconds, r.per_sec, r.refused, r.p50_ms, r.p99_ms, r.verify_per_sec, r.ratio_to_one_core_verify
            );
        }
        return Ok(());
    }
    if cli.workload == "proofs" {
        let r = tools::proofbench::run(&ProofBenchArgs {
            hosts: cli.hosts,
            chunks_per_host: cli.chunks_per_host,
            chunk_bytes: cli.chunk_bytes,
            periods: cli.periods,
        })?;
        if cli.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "{} hosts x {} chunks ({} deals): one proof transaction per host of {} bytes ({} samples), {} hosts per block; checking them {:.2} ms ({:.0} us per host, {:.1} us per sample); apply: proofs block {:.2} ms, period's last block {:.2} ms, empty block {:.2} ms",
                r.hosts, r.chunks_per_host, r.deals, r.proof_tx_bytes, r.samples_per_host, r.hosts_per_block, r.verify_ms, r.us_per_host, r.us_per_sample, r.proofs_block_ms, r.boundary_block_ms, r.empty_block_ms
            );
        }
        return Ok(());
    }
    let r = run(&ChainBenchArgs {
        validators: cli.validators,
        seconds: cli.seconds,
        rate: cli.rate,
        accounts: cli.accounts,
        block_time: Duration::from_millis(cli.block_time_ms),
        base_port: cli.base_port,
    })?;
    if cli.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "validators {}  offered {} tx/s  committed {:.0} tx/s  finality p50 {:.1} ms  p99 {:.1} ms (round-0 blocks only: {:.1} ms)  blocks {} ({} past round 0; {:.0} tx/block, {:.1} CPU-us/tx on {} cores, {} refused)",
            r.validators, r.offered_tps, r.tps, r.p50_ms, r.p99_ms, r.p99_ms_round_0, r.blocks, r.blocks_past_round_0, r.mean_block_txs, r.cpu_us_per_tx, r.cores, r.refused
        );
    }
    Ok(())
}
