//! Signature checks, the chain's largest cost: the ledger's checks (`proto::sig`, on
//! curve25519-dalek 4) against ed25519-consensus's (what the ledger used before, on
//! curve25519-dalek-ng's serial backend) on the same signatures in the same run, in batches
//! and one by one, with every signer distinct and with 100 signers sharing the load (a
//! batch coalesces a key's terms). Messages are 150 bytes, about a transfer's. Both are
//! also run on ed25519-zebra (what `proto::sig` ran on before it took signers' keys
//! decompressed from its table of known keys): the same equations, each key decompressed at
//! every check.
//!
//!     cargo bench -p benches --bench signatures

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ed25519_consensus::SigningKey;

struct Signed {
    key: [u8; 32],
    signature: [u8; 64],
    message: Vec<u8>,
}

fn setup(n: usize, signers: usize) -> Vec<Signed> {
    let keys: Vec<SigningKey> = (0..signers)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            SigningKey::from(seed)
        })
        .collect();
    (0..n)
        .map(|i| {
            let k = &keys[i % signers];
            let mut message = vec![0x5A; 150];
            message[..8].copy_from_slice(&(i as u64).to_le_bytes());
            Signed {
                key: k.verification_key().to_bytes(),
                signature: k.sign(&message).to_bytes(),
                message,
            }
        })
        .collect()
}

fn consensus_batch(set: &[Signed]) -> bool {
    let mut batch = ed25519_consensus::batch::Verifier::new();
    for s in set {
        batch.queue((
            ed25519_consensus::VerificationKeyBytes::from(s.key),
            ed25519_consensus::Signature::from(s.signature),
            s.message.as_slice(),
        ));
    }
    batch.verify(rand_core::OsRng).is_ok()
}

fn sig_batch(set: &[Signed]) -> bool {
    let mut batch = proto::sig::Batch::new();
    for s in set {
        batch.queue(&s.key, &s.signature, &s.message);
    }
    batch.verify()
}

fn zebra_batch(set: &[Signed]) -> bool {
    use rand_core::SeedableRng;
    let mut batch = ed25519_zebra::batch::Verifier::new();
    for s in set {
        batch.queue((
            ed25519_zebra::VerificationKeyBytes::from(s.key),
            ed25519_zebra::Signature::from_bytes(&s.signature),
            s.message.as_slice(),
        ));
    }
    batch
        .verify(rand_chacha::ChaCha20Rng::from_entropy())
        .is_ok()
}

fn consensus_one(s: &Signed) -> bool {
    ed25519_consensus::VerificationKey::try_from(s.key).is_ok_and(|vk| {
        vk.verify(&ed25519_consensus::Signature::from(s.signature), &s.message)
            .is_ok()
    })
}

fn zebra_one(s: &Signed) -> bool {
    ed25519_zebra::VerificationKey::try_from(s.key).is_ok_and(|vk| {
        vk.verify(
            &ed25519_zebra::Signature::from_bytes(&s.signature),
            &s.message,
        )
        .is_ok()
    })
}

fn sig_one(s: &Signed) -> bool {
    proto::sig::verify(&s.key, &s.signature, &s.message)
}

/// A way of checking a whole set at once, and one signature at a time, each by its name.
type BatchCheck = (&'static str, fn(&[Signed]) -> bool);
type OneCheck = (&'static str, fn(&Signed) -> bool);

fn signatures(c: &mut Criterion) {
    let mut group = c.benchmark_group("signatures");
    group.sample_size(10);
    let batches: [BatchCheck; 3] = [
        ("ed25519-consensus batch (baseline)", consensus_batch),
        (
            "ed25519-zebra batch (keys decompressed each batch)",
            zebra_batch,
        ),
        ("proto::sig batch", sig_batch),
    ];
    let singles: [OneCheck; 3] = [
        ("ed25519-consensus one by one", consensus_one),
        (
            "ed25519-zebra one by one (keys decompressed each time)",
            zebra_one,
        ),
        ("proto::sig one by one", sig_one),
    ];
    for (n, signers) in [(1000usize, 1000usize), (1000, 100)] {
        let set = setup(n, signers);
        assert!(batches.iter().all(|(_, check)| check(&set)));
        group.throughput(Throughput::Elements(n as u64));
        let case = format!("{n} from {signers} keys");
        for (name, check) in batches {
            group.bench_with_input(BenchmarkId::new(name, &case), &set, |b, set| {
                b.iter(|| assert!(check(set)))
            });
        }
        if signers == n {
            for (name, check) in singles {
                group.bench_with_input(BenchmarkId::new(name, &case), &set, |b, set| {
                    b.iter(|| assert!(set.iter().all(check)))
                });
            }
            group.bench_with_input(
                BenchmarkId::new("signer key check, cached", &case),
                &set,
                |b, set| b.iter(|| assert!(set.iter().all(|s| proto::sig::usable_key(&s.key)))),
            );
            group.bench_with_input(
                BenchmarkId::new("signer key check, decompressed (before)", &case),
                &set,
                |b, set| {
                    b.iter(|| {
                        assert!(set.iter().all(|s| {
                            curve25519_dalek_ng::edwards::CompressedEdwardsY(s.key)
                                .decompress()
                                .is_some_and(|p| !p.is_small_order())
                        }))
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, signatures);
criterion_main!(benches);
