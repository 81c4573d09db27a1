//! What an exchange replica reads from its raft file and from the other replicas
//! (`exchange::codec`, `docs/formats.md` section 25): a log entry, a state snapshot, a
//! proposal. None may panic or allocate without bound on arbitrary bytes; what
//! decodes encodes back to the same bytes (the encoding is canonical: fixed-width integers,
//! no trailing bytes).
#![no_main]

use exchange::codec;
use exchange::state::{Proposal, State};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = exchange::replica::decode_entry(data) {
        assert_eq!(codec::encode(&e), data);
    }
    if let Ok(s) = State::from_bytes(data) {
        assert_eq!(s.to_bytes(), data);
    }
    if let Ok(p) = codec::decode::<Proposal>("a proposal", data) {
        assert_eq!(codec::encode(&p), data);
        // Applying what decodes never panics.
        let _ = State::default().apply_proposal(p);
    }
});
