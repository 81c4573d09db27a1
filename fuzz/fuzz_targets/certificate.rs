//! Proof-of-existence certificates (`api::certificate::Certificate`, a file a user hands
//! to `mspace certify --verify`): the decoder may not panic, and a certificate it accepts
//! encodes and decodes back to itself.
#![no_main]

use api::certificate::Certificate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Certificate::from_json(data) {
        let back = Certificate::from_json(c.to_json().as_bytes()).expect("its own encoding");
        assert_eq!(back, c);
        let _ = c.to_text();
    }
});
