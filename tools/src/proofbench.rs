//! `chain-bench --workload proofs`: what storage proofs cost one miner, per proof period,
//! for `hosts` hosts holding `chunks_per_host` chunks each under active deals.
//!
//! The ledger is driven directly (no network): the deals are written into the state as a
//! chain that accepted them would hold them (the same chunk repeated, so that any sample
//! can be proved from one buffer), then measured:
//! - the period boundary: applying the empty block that closes a period (every covered
//!   deal paid) and issues the next challenges (16 samples per host);
//! - the proofs: one `StorageProofs` transaction per host, built from the samples; their
//!   signatures and proofs checked one transaction after another on a copy of the state
//!   (the miner's CPU for them), then applied as one block;
//! - an empty block that is not a period's last: what `apply` costs per block whatever it
//!   holds (today a copy of the whole state, chunk lists included).

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Result};
use consensus::ledger::{
    apply, host_deposit_min, Block, Deal, DealState, Genesis, Params, Registration, State,
};
use ed25519_consensus::SigningKey;
use proto::tx::{AccountId, Role, SignedTx, Tx, TxBody, TxId, DEAL_CHUNKS_MAX};
use proto::{ChunkEntry, ChunkId};
use serde::Serialize;

#[derive(Clone, Debug)]
pub struct ProofBenchArgs {
    pub hosts: usize,
    pub chunks_per_host: u64,
    /// Sealed bytes of each chunk (sets the proofs' depth).
    pub chunk_bytes: u32,
    /// Periods measured (the figures are medians).
    pub periods: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProofBenchReport {
    pub hosts: usize,
    pub chunks_per_host: u64,
    pub chunk_bytes: u32,
    pub deals: usize,
    pub samples_per_host: usize,
    /// Bytes of one host's `StorageProofs` transaction, signed.
    pub proof_tx_bytes: usize,
    /// Hosts whose proofs fit in one block of `BLOCK_BYTES_MAX`.
    pub hosts_per_block: usize,
    /// Checking every host's proof transaction (signature, then every proof, applied to a
    /// working state): in all, per host and per proved sample.
    pub verify_ms: f64,
    pub us_per_host: f64,
    pub us_per_sample: f64,
    /// `apply` of the block of every host's proofs, of the period's last (empty) block
    /// (it closes the period and issues the next challenges), and of an ordinary empty
    /// block: the difference between the last two is the period's own work.
    pub proofs_block_ms: f64,
    pub boundary_block_ms: f64,
    pub empty_block_ms: f64,
    pub cores: usize,
}

fn key(i: u64) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[0] = 3;
    seed[8..16].copy_from_slice(&i.to_le_bytes());
    SigningKey::from(*blake3::hash(&seed).as_bytes())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

pub fn run(a: &ProofBenchArgs) -> Result<ProofBenchReport> {
    if a.hosts == 0 || a.chunks_per_host == 0 || a.periods == 0 {
        bail!("--hosts, --chunks-per-host and --periods must be positive");
    }
    let p = 10u64;
    let mut data = vec![0u8; usize::try_from(a.chunk_bytes)?];
    blake3::Hasher::new()
        .update(b"proof bench chunk")
        .finalize_xof()
        .fill(&mut data);
    let entry = ChunkEntry {
        id: ChunkId::of(&data),
        sealed_bytes: a.chunk_bytes,
        crc32c: engine::codec::crc32c(&data),
    };
    let hosts: Vec<SigningKey> = (0..a.hosts as u64).map(key).collect();
    let sender = AccountId([0xee; 32]);
    let mut state = State::genesis(&Genesis {
        chain_id: 1,
        params: Params {
            proof_period_blocks: p,
            completion_timeout_blocks: p,
        },
        accounts: std::iter::once((sender, 0, 1 << 60))
            .chain(
                hosts
                    .iter()
                    .map(|k| (AccountId(k.verification_key().to_bytes()), 1 << 40, 1 << 40)),
            )
            .collect(),
        validators: vec![(AccountId([0x77; 32]), 100_000, "v".into())],
    });
    // The deals as the chain would hold them once completed: active, covered from period 1,
    // their fee escrowed out of the sender's balance.
    let parts = 1_000u32;
    let mut deals = 0usize;
    for (h, k) in hosts.iter().enumerate() {
        let host = AccountId(k.verification_key().to_bytes());
        let bytes = a.chunks_per_host * u64::from(a.chunk_bytes);
        let deposit = host_deposit_min(bytes);
        state.accounts.get_mut(&host).expect("funded").masp -= deposit;
        state.registrations.insert(
            (host, Role::Host),
            Registration {
                deposit,
                endpoint: format!("h{h}"),
                since_height: 0,
                unbonding_until: None,
                exposure: 0,
            },
        );
        let mut left = a.chunks_per_host;
        let mut n = 0u64;
        while left > 0 {
            let count = left.min(u64::from(DEAL_CHUNKS_MAX));
            left -= count;
            let fee = u64::from(parts);
            state.accounts.get_mut(&sender).expect("funded").maspc -= fee;
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&(h as u64).to_le_bytes());
            id[8..16].copy_from_slice(&n.to_le_bytes());
            n += 1;
            state.deals.insert(
                TxId(id),
                Deal {
                    sender,
                    host,
                    offer: id[..16].try_into()?,
                    storage_fee: fee,
                    download_fee: 0,
                    period_blocks: u64::from(parts) * p,
                    chunks: vec![entry; usize::try_from(count)?],
                    opened_height: 0,
                    escrow: fee,
                    state: DealState::Active { start_height: 0 },
                    parts,
                    first_period: 1,
                    proven: 0,
                    missed: 0,
                    paid: 0,
                    refunded: 0,
                    broker: None,
                    commission_paid: 0,
                    downloads: 0,
                    download_income: 0,
                    insurance: None,
                },
            );
            deals += 1;
        }
    }
    let block = |s: &State, txs: Vec<SignedTx>| {
        Block::build(
            s,
            AccountId([0x77; 32]),
            &[0x5E; 32],
            (s.height + 1) * 1000,
            txs,
        )
    };
    let mut nonces: BTreeMap<usize, u64> = BTreeMap::new();
    let (mut proofs_ms, mut boundary_ms, mut empty_ms, mut verify_ms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut proof_tx_bytes = 0;
    // The next block to apply is always a period's last: it closes the period and issues
    // the next challenges (the first ones at the end of period 0).
    let before_boundary = |s: &State| (s.height + 2).is_multiple_of(p);
    while !before_boundary(&state) {
        state = apply(&state, &block(&state, vec![]))?.0;
    }
    for _ in 0..a.periods {
        // The period's last block: close and issue.
        let t = Instant::now();
        state = apply(&state, &block(&state, vec![]))?.0;
        boundary_ms.push(ms(t));
        // Every host proves its samples, one transaction each, in the next block.
        debug_assert_eq!(state.challenges.len(), hosts.len());
        let mut txs = Vec::with_capacity(hosts.len());
        for (h, k) in hosts.iter().enumerate() {
            let me = AccountId(k.verification_key().to_bytes());
            let c = &state.challenges[&me];
            let proofs = c
                .samples
                .iter()
                .map(|s| proto::proof::prove(&data, s.leaf))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            let nonce = nonces.entry(h).or_default();
            let tx = Tx {
                chain_id: 1,
                signer: me,
                nonce: *nonce,
                fee: 1,
                body: TxBody::StorageProofs {
                    period: c.period,
                    proofs,
                },
            }
            .sign(k);
            *nonce += 1;
            proof_tx_bytes = tx.bytes().len();
            txs.push(tx);
        }
        let b = block(&state, txs);
        let mut working = state.clone();
        working.height = b.height;
        working.timestamp_ms = b.timestamp_ms;
        let t = Instant::now();
        for tx in &b.txs {
            tx.verify().map_err(anyhow::Error::msg)?;
            consensus::ledger::apply_tx(&mut working, tx).map_err(anyhow::Error::msg)?;
        }
        verify_ms.push(ms(t));
        drop(working);
        let t = Instant::now();
        state = apply(&state, &b)?.0;
        proofs_ms.push(ms(t));
        let t = Instant::now();
        state = apply(&state, &block(&state, vec![]))?.0;
        empty_ms.push(ms(t));
        // On to the period's last block.
        while !before_boundary(&state) {
            state = apply(&state, &block(&state, vec![]))?.0;
        }
    }
    let verify = median(verify_ms);
    #[allow(clippy::cast_precision_loss)]
    let (nh, ns) = (
        a.hosts as f64,
        (a.hosts * consensus::ledger::CHALLENGE_SAMPLES) as f64,
    );
    Ok(ProofBenchReport {
        hosts: a.hosts,
        chunks_per_host: a.chunks_per_host,
        chunk_bytes: a.chunk_bytes,
        deals,
        samples_per_host: consensus::ledger::CHALLENGE_SAMPLES,
        proof_tx_bytes,
        hosts_per_block: (proto::block::BLOCK_BYTES_MAX - proto::block::BLOCK_HEADER_BYTES)
            / (proof_tx_bytes + 4),
        verify_ms: verify,
        us_per_host: verify * 1e3 / nh,
        us_per_sample: verify * 1e3 / ns,
        proofs_block_ms: median(proofs_ms),
        boundary_block_ms: median(boundary_ms),
        empty_block_ms: median(empty_ms),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_small_run_applies_every_hosts_valid_proofs_each_period() {
        let r = run(&ProofBenchArgs {
            hosts: 3,
            chunks_per_host: 5000,
            chunk_bytes: 8192 + 16,
            periods: 2,
        })
        .unwrap();
        assert_eq!(r.deals, 6, "4096 + 904 chunks per host");
        assert_eq!(r.samples_per_host, consensus::ledger::CHALLENGE_SAMPLES);
        // 16 proofs of a 9-leaf chunk and the framing: at most 4 levels and a whole leaf
        // (4 x 64 + 1024 bytes) each, at least one level and the 16-byte last leaf.
        assert!(
            r.proof_tx_bytes > 16 * (64 + 16) && r.proof_tx_bytes < 16 * 1400,
            "{r:?}"
        );
        assert!(r.hosts_per_block > 100, "{r:?}");
    }
}
