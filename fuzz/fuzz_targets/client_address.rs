//! `Address::parse` on text a user pastes: any string, and (so that the
//! fuzzer gets past the checksum) the text form of any 129 content bytes
//! with a correct checksum, then possibly one character changed. Checks: an
//! accepted address is the canonical text of what it parsed to; a correctly
//! checksummed one parses to its fields, or names its unknown version.
#![no_main]

use bastet_client::{ADDRESS_LEN, ADDRESS_PREFIX, ADDRESS_VERSION, Address, Error};
use data_encoding::BASE32_NOPAD;
use libfuzzer_sys::fuzz_target;

const CONTENT_LEN: usize = 1 + 4 * 32;

fn parse(text: &str) -> Result<Address, Error> {
    let parsed = Address::parse(text);
    if let Ok(a) = &parsed {
        assert_eq!(a.encode(), text.trim(), "accepted a non-canonical address");
        assert_eq!(a.encode().len(), ADDRESS_LEN);
    }
    parsed
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse(text);
    }

    // The documented text form: prefix, then lower-case base32 of
    // content || first 4 bytes of BLAKE3(content).
    let Some((content, rest)) = data.split_first_chunk::<CONTENT_LEN>() else {
        return;
    };
    let mut body = content.to_vec();
    body.extend_from_slice(&blake3::hash(content).as_bytes()[..4]);
    let text = format!(
        "{ADDRESS_PREFIX}{}",
        BASE32_NOPAD.encode(&body).to_ascii_lowercase()
    );
    match parse(&text) {
        Ok(a) => {
            assert_eq!(content[0], ADDRESS_VERSION);
            assert_eq!(a.identity_key[..], content[1..33]);
            assert_eq!(a.encryption_key[..], content[33..65]);
            assert_eq!(a.mailbox_server.0[..], content[65..97]);
            assert_eq!(a.mailbox.0[..], content[97..129]);
        }
        Err(Error::AddressVersion(v)) => {
            assert_eq!(v, content[0]);
            assert_ne!(v, ADDRESS_VERSION);
        }
        Err(e) => panic!("a well-formed address was refused: {e}"),
    }
    // One character replaced by any character.
    if let [p0, p1, c0, c1, c2, c3, ..] = *rest {
        let mut chars: Vec<char> = text.chars().collect();
        let at = usize::from(u16::from_le_bytes([p0, p1])) % chars.len();
        if let Some(c) = char::from_u32(u32::from_le_bytes([c0, c1, c2, c3]) % 0x11_0000) {
            chars[at] = c;
            let _ = parse(&chars.into_iter().collect::<String>());
        }
    }
});
