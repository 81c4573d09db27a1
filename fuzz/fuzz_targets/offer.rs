//! The storage offer decoder (`proto::offer`). It may not panic; an offer that decodes
//! encodes back to the same bytes, and checking it (against its own host and chain, so the
//! signature is what decides) never panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::offer::SignedOffer;

fuzz_target!(|data: &[u8]| {
    if let Ok(offer) = SignedOffer::from_bytes(data) {
        assert_eq!(offer.to_bytes(), data);
        let o = offer.offer;
        let _ = offer.check(&o.host, o.chain_id, 0, 0, 0);
    }
});
