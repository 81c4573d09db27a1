//! The data plane's frame decoders (header, every request and reply body). None may panic;
//! a body that decodes encodes back to the same bytes (the encoding is canonical).
#![no_main]

use libfuzzer_sys::fuzz_target;
use net::wire::{Header, Reply, Request, FRAME_BODY_MAX, HEADER_BYTES};

fuzz_target!(|data: &[u8]| {
    if let Some(head) = data.get(..HEADER_BYTES) {
        let head: [u8; HEADER_BYTES] = head.try_into().expect("12 bytes");
        if let Ok(h) = Header::decode(&head, FRAME_BODY_MAX) {
            assert_eq!(h.encode(), head);
        }
    }
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    if let Ok(req) = Request::decode(kind, body.to_vec()) {
        assert_eq!(req.kind(), kind);
        assert_eq!(req.encode_body(), body);
    }
    if let Ok(rep) = Reply::decode(kind, body.to_vec()) {
        assert_eq!(rep.kind(), kind);
        assert_eq!(rep.encode_body(), body);
    }
});
