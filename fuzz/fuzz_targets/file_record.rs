//! The sender's file record (`net::record::FileRecord`, read back from the state
//! directory): the decoder may not panic, and a record it accepts encodes and decodes back
//! to itself with every link usable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use net::record::FileRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = FileRecord::from_json(data) {
        let back = FileRecord::from_json(r.to_json().as_bytes()).expect("its own encoding");
        assert_eq!(back, r);
        assert_eq!(
            r.links().len(),
            r.copies.iter().filter(|c| c.link.is_some()).count()
        );
    }
});
