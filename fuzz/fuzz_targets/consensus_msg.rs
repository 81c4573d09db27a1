//! The consensus message codec (`consensus::node::codec`): every gossip, sync and WAL
//! message a miner decodes from its peers or its disk. It may not panic, and what decodes
//! must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    consensus::node::codec::check_roundtrip(data);
});
