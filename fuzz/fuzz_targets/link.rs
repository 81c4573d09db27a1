//! The link decoders, from text and from bytes. Neither may panic; a link that decodes
//! encodes back to the same bytes, and its text form parses back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::link::Link;

fuzz_target!(|data: &[u8]| {
    if let Ok(link) = Link::from_bytes(data) {
        assert_eq!(link.to_bytes(), data);
        assert_eq!(Link::parse(&link.to_string()).ok(), Some(link));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(link) = Link::parse(text) {
            assert_eq!(Link::parse(&link.to_string()).ok(), Some(link));
        }
    }
});
