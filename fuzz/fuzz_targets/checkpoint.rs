//! The index checkpoint decoder (read at every restart): no panics; what decodes in the
//! current version re-encodes to the same bytes, and a version-1 checkpoint (every record
//! in layout 1) re-encodes to one that decodes to the same index.
#![no_main]

use engine::store::checkpoint::{Checkpoint, CHECKPOINT_VERSION};
use engine::store::Layout;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cp) = Checkpoint::decode(data) {
        let again = cp.encode();
        if data[4] == CHECKPOINT_VERSION {
            assert_eq!(again, data);
        } else {
            assert!(cp.entries.iter().all(|e| e.layout == Layout::V1));
            assert_eq!(Checkpoint::decode(&again).as_ref(), Ok(&cp));
        }
    }
});
