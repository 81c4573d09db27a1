//! The block decoder (bytes from other validators' proposals, sync responses and the block
//! store). It may not panic, and what decodes must re-encode to the same bytes: a block's
//! id is the hash of its bytes, so two encodings of one block would be two blocks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::block::EncodedBlock;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = EncodedBlock::decode(data) {
        assert_eq!(b.bytes(), data);
        let again = EncodedBlock::new(b.header.clone(), b.txs.clone());
        assert_eq!(again.bytes(), data, "the encoding is not canonical");
        assert_eq!(again.id(), b.id());
    }
});
