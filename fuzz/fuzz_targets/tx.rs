//! The signed-transaction decoder (bytes from the network and from blocks). It may not
//! panic, and what decodes must re-encode to the same bytes: ids are canonical.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::tx::SignedTx;

fuzz_target!(|data: &[u8]| {
    if let Ok(tx) = SignedTx::decode(data) {
        assert_eq!(tx.bytes(), data);
        let mut reencoded = tx.tx().encode();
        reencoded.extend_from_slice(tx.signature());
        assert_eq!(reencoded, data, "the encoding is not canonical");
        let _ = tx.verify();
    }
});
