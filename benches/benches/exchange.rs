//! An exchange's work per request, without the chain: the signed request decoded and its
//! signature checked (`SignedRequest::open`), the key's flood window, the usage profile,
//! and the match taken from a book of 1,000 or 10,000 asks (`Book::take`), beside the
//! signature check alone (the baseline, in the same run). The server adds its chain
//! lookups (the sender's account, and its deals when an answer is outstanding) to this.
//!
//!     cargo bench -p benches --bench exchange

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ed25519_consensus::{Signature, SigningKey, VerificationKey};
use market::book::Book;
use market::flood::{Flood, FloodPolicy};
use proto::market::{Ask, Request, Signed, SignedRequest};

const SENDERS: u64 = 1000;

fn book(asks: u64) -> Book {
    let mut b = Book::new();
    for i in 0..asks {
        let mut host = [0u8; 32];
        host[..8].copy_from_slice(&i.to_le_bytes());
        host[31] = 0xAA;
        let ask = Ask {
            chain_id: 1,
            host,
            seq: 1,
            price_per_gib_day: 5 + (i * 7919) % 50,
            free_bytes: u64::MAX,
            min_days: 1,
            max_days: 3650,
            deposit: 10_000,
            expiry_unix_secs: u64::MAX,
            region: String::new(),
            addr: format!("10.{}.{}.1:7401", (i >> 8) & 255, i & 255),
        };
        let rating = 500 + u32::try_from(i % 400).unwrap();
        b.post(ask, rating, 0).unwrap();
    }
    b
}

fn requests() -> Vec<Vec<u8>> {
    (0..SENDERS)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i + 1).to_le_bytes());
            let key = SigningKey::from(seed);
            let req = Request {
                chain_id: 1,
                sender: key.verification_key().to_bytes(),
                nonce: [u8::try_from(i % 256).unwrap(); 16],
                bytes: 1 << 30,
                days: 30,
                copies: 3,
                max_price_per_gib_day: 20,
                download_fee: 0,
                min_rating: 0,
                expiry_unix_secs: 1_500,
                region: String::new(),
                spread: None,
            };
            Signed::sign(req, &key).to_bytes()
        })
        .collect()
}

fn exchange(c: &mut Criterion) {
    let reqs = requests();
    let mut group = c.benchmark_group("exchange");
    group.throughput(Throughput::Elements(SENDERS));
    group.sample_size(10);
    // The baseline: each request's signature, checked alone.
    let parsed: Vec<(VerificationKey, Signature, Vec<u8>)> = reqs
        .iter()
        .map(|bytes| {
            let s = SignedRequest::from_bytes(bytes).unwrap();
            let body_len = bytes.len() - 64;
            let msg = [
                &b"market.space 2026-12 storage request v1\0"[..],
                &bytes[..body_len],
            ]
            .concat();
            let sig: [u8; 64] = bytes[body_len..].try_into().unwrap();
            (
                VerificationKey::try_from(s.msg.sender).unwrap(),
                Signature::from(sig),
                msg,
            )
        })
        .collect();
    for (k, sig, msg) in &parsed {
        k.verify(sig, msg)
            .expect("the baseline checks what the exchange checks");
    }
    group.bench_function("ed25519 verify alone", |b| {
        b.iter(|| {
            for (k, sig, msg) in &parsed {
                k.verify(sig, msg).unwrap();
            }
        })
    });
    let profile = exchange::Profile::default();
    for asks in [1000u64, 10_000] {
        group.bench_with_input(
            BenchmarkId::new("admit and match", asks),
            &asks,
            |b, &asks| {
                b.iter_batched(
                    || (book(asks), Flood::new(FloodPolicy::default())),
                    |(mut book, mut flood)| {
                        for bytes in &reqs {
                            let req = SignedRequest::open(bytes, 1, 1_000, 600).unwrap().msg;
                            flood.admit_key(req.sender, 1_000).unwrap();
                            assert!(exchange::profile_refusal(&profile, &req).is_none());
                            let got = book.take(&req, 1_000);
                            assert_eq!(got.len(), 3);
                        }
                    },
                    criterion::BatchSize::LargeInput,
                )
            },
        );
    }
    group.finish();
}

criterion_group!(benches, exchange);
criterion_main!(benches);
