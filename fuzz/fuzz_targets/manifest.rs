//! The manifest decoders: envelope header and body. Neither may panic, and whatever decodes
//! must re-encode to the same bytes (the encoding is canonical).
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::{EnvelopeHeader, Manifest};

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::decode(data) {
        assert_eq!(
            manifest.encode(),
            data,
            "the body encoding is not canonical"
        );
    }
    if let Ok((header, aad, body)) = EnvelopeHeader::split(data) {
        assert_eq!(&header.encode()[..], aad);
        assert_eq!(body.len(), header.sealed_body_bytes as usize);
    }
});
