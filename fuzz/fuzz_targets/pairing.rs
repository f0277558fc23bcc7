//! Device pairing as a peer or a user can reach it: `PairCode::parse` on
//! any text (a code typed or pasted), `pairing::parse_plaintext` on any
//! decrypted message (what a holder of a code's secret can make the admin
//! or the joining device parse), and `pairing::open` on any bytes under a
//! fixed secret. Checks: an accepted code prints back to itself; an
//! accepted request's certificate re-encodes to the bytes it came from;
//! nothing random decrypts.
#![no_main]

use bastet_client::pairing::{self, Message, PairCode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(code) = PairCode::parse(text)
    {
        assert_eq!(PairCode::parse(&code.to_text()).expect("reparses"), code);
    }
    if let Ok(message) = pairing::parse_plaintext(data) {
        match message {
            Message::Request { cert, .. } => {
                let bytes = cert.to_bytes();
                assert!(
                    data.windows(bytes.len()).any(|w| w == bytes.as_slice()),
                    "the certificate came from the input"
                );
                assert!(cert.check().is_ok());
            }
            Message::Reply(bundle) => assert_eq!(&bundle[..], &data[1..]),
            Message::Refusal(why) => assert!(why.len() <= 4 * 500),
        }
    }
    assert!(
        !matches!(pairing::open(&[7; 32], data), Ok(Some(_))),
        "random bytes decrypted"
    );
});
