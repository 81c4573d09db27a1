//! Messages sealed to a key (`engine::sealed_to`: bound shares and invoices, files a user
//! is handed): reading the recipient and opening with a key may not panic, and whatever
//! opens was sealed to that key.
#![no_main]

use libfuzzer_sys::fuzz_target;

const SEED: [u8; 32] = [7; 32];

fuzz_target!(|data: &[u8]| {
    let recipient = engine::sealed_to::sealed_recipient(data);
    if let Ok(plain) = engine::sealed_to::open_from(&SEED, data) {
        let me = ed25519_consensus::SigningKey::from(SEED)
            .verification_key()
            .to_bytes();
        assert_eq!(
            recipient.expect("an opened message names its recipient"),
            me
        );
        assert_eq!(
            plain.len() + engine::sealed_to::SEALED_TO_OVERHEAD,
            data.len()
        );
    }
});
