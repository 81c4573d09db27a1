//! What a host and a client read back from their own disks: the grants and uploads logs, object records,
//! deal and claim records and the upload journal. None may panic on damaged bytes; what decodes encodes back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use net::{journal, state};

fuzz_target!(|data: &[u8]| {
    if let Ok((grants, keep)) = state::decode_grants(data) {
        assert!(keep <= data.len());
        for (link, reserved) in grants {
            let _ = state::encode_grant(&link, reserved);
        }
    }
    if let Ok((uploads, keep)) = state::decode_uploads(data) {
        assert!(keep <= data.len());
        let records: usize = uploads.values().map(|s| s.len()).sum();
        assert!(records * 56 <= keep);
    }
    if let Ok(sender) = state::decode_deal_record(data) {
        assert_eq!(sender.map_or(0, |_| 32), data.len());
    }
    if let Ok(deadline) = state::decode_claim_record(data) {
        assert_eq!(deadline.to_le_bytes(), data);
    }
    if let Ok((manifest, chunks)) = state::decode_object(data) {
        assert_eq!(state::encode_object(&manifest, &chunks), data);
    }
    if let Ok((header, ids)) = journal::decode(data) {
        let mut again = header.encode().to_vec();
        for (i, id) in (0u32..).zip(&ids) {
            again.extend_from_slice(&journal::encode_entry(i, id));
        }
        assert_eq!(again[..], data[..again.len()]);
    }
});
