//! The market's message decoders (`proto::market`: a host's ask, a sender's request, an
//! exchange's listing, a host's bid on one request).
//! They may not panic; a message that decodes encodes back to the same bytes, and checking
//! it (for its own chain, so the signature is what decides) never panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::market::{Authored, SignedAsk, SignedBid, SignedListing, SignedRequest};

fuzz_target!(|data: &[u8]| {
    if let Ok(ask) = SignedAsk::from_bytes(data) {
        assert_eq!(ask.to_bytes(), data);
        let _ = ask.check(ask.msg.chain_id(), 0, u64::MAX);
    }
    if let Ok(req) = SignedRequest::from_bytes(data) {
        assert_eq!(req.to_bytes(), data);
        let _ = req.check(req.msg.chain_id(), 0, u64::MAX);
    }
    if let Ok(l) = SignedListing::from_bytes(data) {
        assert_eq!(l.to_bytes(), data);
        let _ = l.check(l.msg.chain_id(), 0, u64::MAX);
    }
    if let Ok(b) = SignedBid::from_bytes(data) {
        assert_eq!(b.to_bytes(), data);
        let _ = b.check(b.msg.chain_id(), 0, u64::MAX);
    }
});
