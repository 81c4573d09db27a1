//! File shares (`proto::fileshare::FileShare`, the string a receiver pastes into
//! `mspace get`): the decoder may not panic, and a share it accepts encodes back to the
//! same bytes and text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::fileshare::FileShare;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = FileShare::from_bytes(data) {
        assert_eq!(
            s.to_bytes(),
            data,
            "a share decodes from its one encoding only"
        );
        let text = s.to_string();
        assert_eq!(text.parse::<FileShare>().expect("its own text"), s);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(s) = text.parse::<FileShare>() {
            assert_eq!(s.to_string().parse::<FileShare>().expect("its own text"), s);
        }
    }
});
