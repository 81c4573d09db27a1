//! Erasure shares from untrusted hosts: the header decoder never panics and what it accepts
//! re-encodes to the same header; rebuilding from genuine shares with one replaced by the
//! fuzzer's bytes either refuses or gives exactly the genuine chunk, never another.
#![no_main]

use engine::erasure::{rebuild, Encoder};
use libfuzzer_sys::fuzz_target;
use proto::erasure::{Scheme, ShareHeader, SHARE_HEADER_BYTES};
use proto::ChunkId;

fuzz_target!(|data: &[u8]| {
    if let Ok((h, shard)) = ShareHeader::split(data) {
        assert_eq!(&h.encode()[..], &data[..SHARE_HEADER_BYTES]);
        assert_eq!(shard.len(), h.scheme.shard_bytes(h.sealed_bytes) as usize);
    }
    if let Ok(h) = ShareHeader::head(data) {
        assert_eq!(&h.encode()[..], data);
    }
    let Some((&pick, forged)) = data.split_first() else {
        return;
    };
    let genuine: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let id = ChunkId::of(&genuine);
    let scheme = Scheme::new(3, 5).expect("a valid scheme");
    let shares = Encoder::new(scheme)
        .shares(id, &genuine)
        .expect("a codable chunk");
    // Low 5 bits: which shares are given; high 3: which one the fuzzer's bytes replace.
    let replaced = usize::from(pick >> 5) % 5;
    let given: Vec<&[u8]> = (0..5)
        .filter(|i| pick & (1 << i) != 0)
        .map(|i| {
            if i == replaced {
                forged
            } else {
                shares[i].as_slice()
            }
        })
        .collect();
    if let Ok((got_id, got)) = rebuild(&given) {
        assert_eq!(got_id, id);
        assert_eq!(got, genuine);
    }
});
