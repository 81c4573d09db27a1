//! Crash recovery reads whatever a segment file holds: `scan` and the record-header decoder
//! may never panic, must stop on sector boundaries, and every record they accept must
//! re-encode to the bytes it was read from.
#![no_main]

use engine::store::record::{scan, RecordHeader, HEADER_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (found, end) = scan(data, 7, 0, true);
    assert_eq!(end.offset() % 4096, 0);
    let mut at = 0;
    for located in &found {
        assert_eq!(located.offset, at, "records are contiguous");
        let start = usize::try_from(located.offset).expect("an offset inside the input");
        let head: &[u8; HEADER_BYTES] = data[start..start + HEADER_BYTES]
            .try_into()
            .expect("HEADER_BYTES long");
        assert_eq!(RecordHeader::decode(head, 7).as_ref(), Ok(&located.header));
        assert_eq!(&located.header.encode(), head);
        at += located.header.layout.span(located.header.payload_bytes);
    }
});
