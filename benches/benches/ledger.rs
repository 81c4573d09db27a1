//! The ledger's cost per transaction: applying a block of signed transfers (batch signature
//! verification included) beside verifying the same signatures alone, one by one and in a
//! batch. It bounds what a validator can commit per second on one core before consensus
//! and networking take their share (issue 5's chain-bench measures the whole chain).
//!
//!     cargo bench -p benches --bench ledger

use consensus::ledger::{apply, Block, Genesis, State};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ed25519_consensus::SigningKey;
use proto::tx::{verify_batch, AccountId, Asset, SignedTx, Tx, TxBody};

const SENDERS: u8 = 100;

fn setup(n: usize) -> (State, Vec<SignedTx>) {
    let keys: Vec<SigningKey> = (0..SENDERS)
        .map(|i| SigningKey::from([i + 1; 32]))
        .collect();
    let ids: Vec<AccountId> = keys
        .iter()
        .map(|k| AccountId(k.verification_key().to_bytes()))
        .collect();
    let genesis = Genesis {
        chain_id: 1,
        params: Default::default(),
        accounts: ids.iter().map(|id| (*id, 1 << 40, 1 << 40)).collect(),
        validators: vec![(AccountId([7; 32]), 20_000, "v".into())],
    };
    let mut nonces = vec![0u64; keys.len()];
    let txs = (0..n)
        .map(|i| {
            let from = i % keys.len();
            let to = ids[(i * 7 + 1) % ids.len()];
            let tx = Tx {
                chain_id: 1,
                signer: ids[from],
                nonce: nonces[from],
                fee: 1,
                body: TxBody::Transfer {
                    to,
                    asset: Asset::Maspc,
                    amount: 5,
                },
            };
            nonces[from] += 1;
            tx.sign(&keys[from])
        })
        .collect();
    (State::genesis(&genesis), txs)
}

fn ledger(c: &mut Criterion) {
    let mut group = c.benchmark_group("ledger");
    for n in [1000usize, 5000] {
        let (state, txs) = setup(n);
        let block = Block::build(&state, AccountId([7; 32]), &[0x5E; 32], 1, txs.clone());
        group.throughput(Throughput::Elements(n as u64));
        group.sample_size(10);
        group.bench_with_input(
            BenchmarkId::new("apply block of transfers", n),
            &block,
            |b, block| b.iter(|| apply(&state, block).expect("a valid block")),
        );
        group.bench_with_input(
            BenchmarkId::new("verify signatures, batch", n),
            &txs,
            |b, txs| b.iter(|| verify_batch(txs).expect("valid signatures")),
        );
        group.bench_with_input(
            BenchmarkId::new("verify signatures, one by one", n),
            &txs,
            |b, txs| {
                b.iter(|| {
                    txs.iter()
                        .try_for_each(SignedTx::verify)
                        .expect("valid signatures")
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, ledger);
criterion_main!(benches);
