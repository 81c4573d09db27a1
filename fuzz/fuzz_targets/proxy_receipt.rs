//! Proxy receipts (`proto::receipt::ProxyReceipt`: a frame's body and a proxy's receipt
//! files): the decoder may not panic, a receipt it accepts encodes back to the same bytes,
//! and checking its signature or pricing it may not panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::receipt::ProxyReceipt;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = ProxyReceipt::from_bytes(data) {
        assert_eq!(r.to_bytes(), data, "one encoding per receipt");
        let _ = r.verify();
        let _ = r.amount();
    }
});
