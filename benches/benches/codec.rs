//! Criterion benches of one chunk's codec work beside the primitives it is made of, at the
//! chunk sizes the engine bench uses. `engine-bench codec` measures the whole parallel
//! pipeline; this isolates the per-chunk cost so a regression in one step shows here.
//!
//!     cargo bench -p benches --bench codec
//!
//! The `erasure` group codes a sealed chunk into shares (`engine::erasure`) and rebuilds it
//! from the worst-case K (the recovery shares and the fewest data shares), beside "seal
//! chunk" in the same run: what an erasure upload adds to the sealing it already does.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::codec::{checksums, crc32c, verify_and_open, FileCipher};
use engine::erasure::{rebuild, Encoder};
use proto::erasure::Scheme;
use proto::{ChunkEntry, FileId, FileKey};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

fn codec(c: &mut Criterion) {
    let cipher = FileCipher::new(&FileKey([1; 32]), FileId([2; 16]));
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[1; 32]).expect("32-byte key"));
    let mut group = c.benchmark_group("chunk");
    for size in [64usize << 10, 1 << 20, 8 << 20] {
        let plain = vec![0x5au8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.sample_size(20);
        group.bench_with_input(
            BenchmarkId::new("aes-256-gcm (ring)", size),
            &plain,
            |b, p| {
                let mut buf = p.clone();
                b.iter(|| {
                    key.seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key([0; 12]),
                        Aad::empty(),
                        &mut buf,
                    )
                    .map(|t| t.as_ref()[0])
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("crc32c (crc-fast)", size),
            &plain,
            |b, p| b.iter(|| crc32c(p)),
        );
        group.bench_with_input(BenchmarkId::new("blake3", size), &plain, |b, p| {
            b.iter(|| blake3::hash(p))
        });
        group.bench_with_input(
            BenchmarkId::new("crc32c+blake3 fused", size),
            &plain,
            |b, p| b.iter(|| checksums(p)),
        );
        group.bench_with_input(BenchmarkId::new("seal chunk", size), &plain, |b, p| {
            let mut buf = Vec::with_capacity(size + 16);
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(p);
                cipher.seal_chunk(0, &mut buf);
                checksums(&buf)
            })
        });
        let mut sealed = plain.clone();
        cipher.seal_chunk(0, &mut sealed);
        let (crc, id) = checksums(&sealed);
        let entry = ChunkEntry {
            id,
            sealed_bytes: u32::try_from(sealed.len()).expect("small"),
            crc32c: crc,
        };
        group.bench_with_input(
            BenchmarkId::new("verify and open chunk", size),
            &sealed,
            |b, s| {
                let mut buf = Vec::with_capacity(size + 16);
                b.iter(|| {
                    buf.clear();
                    buf.extend_from_slice(s);
                    verify_and_open(&cipher, 0, &entry, &mut buf).expect("genuine chunk")
                })
            },
        );
    }
    group.finish();
}

fn erasure(c: &mut Criterion) {
    let cipher = FileCipher::new(&FileKey([1; 32]), FileId([2; 16]));
    let mut group = c.benchmark_group("erasure");
    group.sample_size(20);
    for size in [1usize << 20, 8 << 20] {
        let mut sealed = vec![0x5au8; size];
        cipher.seal_chunk(0, &mut sealed);
        let id = proto::ChunkId::of(&sealed);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("seal chunk", size), &size, |b, _| {
            let plain = vec![0x5au8; size];
            let mut buf = Vec::with_capacity(size + 16);
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(&plain);
                cipher.seal_chunk(0, &mut buf);
                checksums(&buf)
            })
        });
        for (k, n) in [(4u8, 6u8), (10, 16)] {
            let scheme = Scheme::new(k, n).expect("valid");
            let mut enc = Encoder::new(scheme);
            group.bench_with_input(
                BenchmarkId::new(format!("encode {scheme}"), size),
                &sealed,
                |b, s| b.iter(|| enc.shares(id, s).expect("codable")),
            );
            let shares = enc.shares(id, &sealed).expect("codable");
            // The worst case: every recovery share used, the rest data shares.
            let lost = usize::from(n - k);
            let pick: Vec<&[u8]> = shares[lost..].iter().map(Vec::as_slice).collect();
            group.bench_with_input(
                BenchmarkId::new(format!("rebuild {scheme}, {lost} data shares lost"), size),
                &pick,
                |b, p| b.iter(|| rebuild(p).expect("enough shares")),
            );
            let data: Vec<&[u8]> = shares[..usize::from(k)].iter().map(Vec::as_slice).collect();
            group.bench_with_input(
                BenchmarkId::new(format!("rebuild {scheme}, data shares"), size),
                &data,
                |b, p| b.iter(|| rebuild(p).expect("enough shares")),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, codec, erasure);
criterion_main!(benches);
