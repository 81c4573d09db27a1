//! Invoices (`proto::invoice::SignedInvoice`, opened by `mspace invoice show|pay`): the
//! decoder may not panic, and an invoice it accepts is a prefix of the input, re-decodes to
//! itself, and carries a valid signature of its issuer (fuzzed input rarely gets that far).
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::invoice::SignedInvoice;

fuzz_target!(|data: &[u8]| {
    if let Ok((inv, rest)) = SignedInvoice::decode(data) {
        assert_eq!(inv.as_bytes().len() + rest.len(), data.len());
        let (again, none) = SignedInvoice::decode(inv.as_bytes()).expect("its own bytes");
        assert!(none.is_empty());
        assert_eq!(again, inv);
    }
});
