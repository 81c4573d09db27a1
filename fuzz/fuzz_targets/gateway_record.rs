//! The S3 gateway's index records (`gateway::record`: objects, multipart uploads, parts),
//! read back from its redb file. They may not panic; one that decodes encodes back to a
//! record that decodes the same (`decode_any` asserts it).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gateway::record::decode_any(data);
});
