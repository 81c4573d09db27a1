//! Criterion benches of one chunk's codec work beside the primitives it is made of, at the
//! chunk sizes the engine bench uses. `engine-bench codec` measures the whole parallel
//! pipeline; this isolates the per-chunk cost so a regression in one step shows here.
//!
//!     cargo bench -p benches --bench codec

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::codec::{checksums, crc32c, verify_and_open, FileCipher};
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

criterion_group!(benches, codec);
criterion_main!(benches);
