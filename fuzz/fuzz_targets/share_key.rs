//! The share-key decoders, from text and from bytes. Neither may panic, and a key that
//! decodes must print back to the same canonical form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::ShareKey;

fuzz_target!(|data: &[u8]| {
    if let Ok(key) = ShareKey::from_bytes(data) {
        assert_eq!(&key.to_bytes()[..], data);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(key) = text.parse::<ShareKey>() {
            assert_eq!(key.to_string().parse::<ShareKey>().ok(), Some(key));
        }
    }
});
