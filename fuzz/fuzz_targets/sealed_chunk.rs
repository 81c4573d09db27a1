//! Opening a chunk from untrusted bytes (a disk or a host): `verify_and_open` must reject
//! anything but the exact sealed chunk its manifest entry names, and never panic.
#![no_main]

use engine::codec::{checksums, verify_and_open, FileCipher};
use libfuzzer_sys::fuzz_target;
use proto::{ChunkEntry, FileId, FileKey};

fuzz_target!(|data: &[u8]| {
    let cipher = FileCipher::new(&FileKey([1; 32]), FileId([2; 16]));
    let mut genuine = b"a genuine chunk".to_vec();
    cipher.seal_chunk(0, &mut genuine);
    let (crc32c, id) = checksums(&genuine);
    let sealed_bytes = u32::try_from(genuine.len()).expect("a short chunk");
    let entry = ChunkEntry {
        id,
        sealed_bytes,
        crc32c,
    };
    let mut buf = data.to_vec();
    let opened = verify_and_open(&cipher, 0, &entry, &mut buf);
    assert_eq!(opened.is_ok(), data == genuine.as_slice());
});
