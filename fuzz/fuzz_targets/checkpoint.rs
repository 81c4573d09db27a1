//! The index checkpoint decoder (read at every restart): no panics, and what decodes
//! re-encodes to the same bytes.
#![no_main]

use engine::store::checkpoint::Checkpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cp) = Checkpoint::decode(data) {
        assert_eq!(cp.encode(), data);
    }
});
