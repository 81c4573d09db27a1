//! A market put's kept match (`net::deal::SavedMatch`, JSON read back from the client's
//! state directory beside its pending journal): the reader may not panic, and a match it
//! accepts encodes and reads back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use net::deal::SavedMatch;

fuzz_target!(|data: &[u8]| {
    if let Some(m) = SavedMatch::from_json(data) {
        assert_eq!(SavedMatch::from_json(&m.to_json()), Some(m));
    }
});
