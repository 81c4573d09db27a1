//! `chain-bench`: committed transfers per second and finality latency of a local network
//! of validators, each a full `consensus::node` (malachite, libp2p TCP on loopback, WAL,
//! redb block store), all in this process.
//!
//! Load: `accounts` funded accounts send signed MASPC transfers, each account its nonces in
//! order. Every `tick` a batch is handed to every validator's mempool, as the miners' relay
//! would (each validator checks each signature once, in batches). Latency is from the
//! moment a transaction is submitted to the moment the first validator commits the block
//! holding it. Only transactions submitted inside the measured window count.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use consensus::mempool::MempoolLimits;
use consensus::node::ChainParams;
use ed25519_consensus::SigningKey;
use proto::tx::{AccountId, Asset, SignedTx, Tx, TxBody, TxId};
use serde::Serialize;

use crate::chaincli::{local_genesis, start_local};
use crate::diskbench::cpu_seconds;

#[derive(Clone, Debug)]
pub struct ChainBenchArgs {
    pub validators: usize,
    pub seconds: f64,
    /// Offered load in transactions per second.
    pub rate: u64,
    pub accounts: usize,
    pub block_time: Duration,
    pub base_port: u16,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChainBenchReport {
    pub validators: usize,
    /// Transactions committed during the window, per second of it.
    pub tps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Blocks committed during the window.
    pub blocks: u64,
    /// Of those, decided in a round after the first (a proposal missed or was refused, so
    /// the height waited for a timeout): latencies near the propose timeout come from them.
    pub blocks_past_round_0: u64,
    /// The p99 over transactions whose block was decided in round 0 only.
    pub p99_ms_round_0: f64,
    pub offered_tps: u64,
    pub submitted: u64,
    /// Of those submitted, committed by the end (the window plus up to 5 s of draining);
    /// the latency percentiles are over these.
    pub committed: u64,
    pub refused: u64,
    pub seconds: f64,
    /// CPU seconds of the whole process (every validator and the load) per committed
    /// transaction, in microseconds.
    pub cpu_us_per_tx: f64,
    pub mean_block_txs: f64,
    pub cores: usize,
}

pub(crate) fn key(i: u64, tag: u8) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[0] = tag;
    seed[8..16].copy_from_slice(&i.to_le_bytes());
    SigningKey::from(*blake3::hash(&seed).as_bytes())
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub fn run(a: &ChainBenchArgs) -> Result<ChainBenchReport> {
    if a.validators == 0 || a.accounts == 0 || a.rate == 0 || a.seconds <= 0.0 {
        bail!("--validators, --accounts, --rate and --seconds must be positive");
    }
    let dir = tempfile::tempdir().context("temporary directory")?;
    let chain_id = 0xbe9c;
    let vkeys: Vec<SigningKey> = (0..a.validators as u64).map(|i| key(i, 1)).collect();
    let ckeys: Vec<SigningKey> = (0..a.accounts as u64).map(|i| key(i, 2)).collect();
    let accounts = ckeys
        .iter()
        .map(|k| (AccountId(k.verification_key().to_bytes()), 0, 1 << 40))
        .collect();
    let mut params = ChainParams::new(local_genesis(chain_id, &vkeys, accounts));
    params.block_time = a.block_time;
    params.mempool = MempoolLimits {
        max_txs: 200_000,
        ..MempoolLimits::default()
    };
    let ports = (0..a.validators)
        .map(|i| u16::try_from(usize::from(a.base_port) + i).context("ports past 65535"))
        .collect::<Result<Vec<u16>>>()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (nodes, engines) = start_local(dir.path(), &vkeys, &ports, &params).await?;
        // Wait for the network to decide its first block before loading it.
        let mut committed = nodes[0].subscribe();
        tokio::time::timeout(Duration::from_secs(60), committed.recv())
            .await
            .context("the validators decided no block within 60 s")?
            .map_err(|e| anyhow!("{e}"))?;

        let per_tick = Duration::from_millis(10);
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let batch = ((a.rate as f64) * per_tick.as_secs_f64()).ceil() as usize;
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let total = ((a.rate as f64) * a.seconds).ceil() as usize;
        // Every transaction is signed before the window opens: the load generator's signing
        // is neither in the window's CPU figure nor pacing the submissions.
        let mut nonces = vec![0u64; a.accounts];
        let presigned: Vec<SignedTx> = (0..total)
            .map(|n| {
                let i = n % a.accounts;
                let k = &ckeys[i];
                let tx = Tx {
                    chain_id,
                    signer: AccountId(k.verification_key().to_bytes()),
                    nonce: nonces[i],
                    fee: 1,
                    body: TxBody::Transfer {
                        to: AccountId(ckeys[(i + 1) % a.accounts].verification_key().to_bytes()),
                        asset: Asset::Maspc,
                        amount: 1,
                    },
                }
                .sign(k);
                nonces[i] += 1;
                tx
            })
            .collect();
        let mut pending = presigned.chunks(batch);
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut submitted_at: HashMap<TxId, Instant> = HashMap::new();
        let mut submitted = 0u64;
        // Committed before the window closed: what the throughput counts.
        let mut in_window = 0u64;
        let mut latencies: Vec<f64> = Vec::new();
        let mut latencies_round_0: Vec<f64> = Vec::new();
        let (mut blocks, mut block_txs, mut late_blocks) = (0u64, 0u64, 0u64);
        let window = Duration::from_secs_f64(a.seconds);
        let cpu0 = cpu_seconds();
        let start = Instant::now();
        let mut tick = tokio::time::interval(per_tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let drain_until = start + window + Duration::from_secs(5);
        let mut offered_done = false;
        loop {
            tokio::select! {
                _ = tick.tick(), if !offered_done => {
                    let Some(txs) = pending.next().filter(|_| start.elapsed() < window) else {
                        offered_done = true;
                        continue;
                    };
                    let now = Instant::now();
                    for t in txs {
                        submitted_at.insert(t.id(), now);
                    }
                    submitted += txs.len() as u64;
                    // Every validator gets the batch, as the miners' relay would deliver it;
                    // the submissions run concurrently and the loop does not wait for them.
                    for (i, n) in nodes.iter().enumerate() {
                        let (n, txs, refused) = (n.clone(), txs.to_vec(), std::sync::Arc::clone(&refused));
                        tokio::spawn(async move {
                            if let Ok(r) = n.submit(txs).await {
                                if i == 0 {
                                    let bad = r.iter().filter(|x| x.is_err()).count() as u64;
                                    refused.fetch_add(bad, std::sync::atomic::Ordering::Relaxed);
                                }
                            }
                        });
                    }
                }
                c = committed.recv() => {
                    let c = c.map_err(|e| anyhow!("committed blocks: {e}"))?;
                    let now = Instant::now();
                    if now <= start + window {
                        blocks += 1;
                        block_txs += c.txs.len() as u64;
                        late_blocks += u64::from(c.round > 0);
                    }
                    for id in &c.txs {
                        if let Some(t) = submitted_at.remove(id) {
                            let ms = now.duration_since(t).as_secs_f64() * 1000.0;
                            latencies.push(ms);
                            if c.round == 0 {
                                latencies_round_0.push(ms);
                            }
                            if now <= start + window {
                                in_window += 1;
                            }
                        }
                    }
                    if offered_done && (submitted_at.is_empty() || now > drain_until) {
                        break;
                    }
                }
                () = tokio::time::sleep_until((drain_until + Duration::from_secs(1)).into()) => break,
            }
        }
        let cpu = cpu_seconds() - cpu0;
        for e in engines {
            e.actor.stop(None);
        }
        latencies.sort_by(f64::total_cmp);
        latencies_round_0.sort_by(f64::total_cmp);
        let committed_n = latencies.len() as u64;
        #[allow(clippy::cast_precision_loss)]
        let report = ChainBenchReport {
            validators: a.validators,
            tps: in_window as f64 / a.seconds,
            p50_ms: percentile(&latencies, 0.5),
            p99_ms: percentile(&latencies, 0.99),
            blocks,
            blocks_past_round_0: late_blocks,
            p99_ms_round_0: percentile(&latencies_round_0, 0.99),
            offered_tps: a.rate,
            submitted,
            committed: committed_n,
            refused: refused.load(std::sync::atomic::Ordering::Relaxed),
            seconds: a.seconds,
            cpu_us_per_tx: if committed_n > 0 { cpu * 1e6 / committed_n as f64 } else { f64::NAN },
            mean_block_txs: if blocks > 0 { block_txs as f64 / blocks as f64 } else { 0.0 },
            cores: std::thread::available_parallelism().map_or(1, usize::from),
        };
        drop(dir);
        Ok(report)
    })
}
