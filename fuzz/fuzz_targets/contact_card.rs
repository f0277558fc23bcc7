//! Contact cards as a user pastes or loads them: `Card::parse` on any
//! UTF-8, `Card::from_bytes` on any bytes, and a card of the fixed keys'
//! identity (made by `Contacts::export_card`, so with its one-device
//! chain) with fuzzer-chosen fields, signed by the fixed keys, then one byte
//! changed. Checks: an accepted card's fields are within bounds, its device
//! is a current sending device of its chain as certified, and its text form
//! parses to the same card (in any case, wrapped); a well-signed card round
//! trips; any changed byte is refused.
#![no_main]

use bastet_client::identity::CAP_SEND;
use bastet_client::{CARD_PREFIX, Card, Error};
use data_encoding::BASE32_NOPAD;
use libfuzzer_sys::fuzz_target;

#[path = "common/keys.rs"]
mod keys;
use keys::{fixed_identity, fixed_keys as keys};

fn accepted(card: &Card) {
    assert!(card.nickname.len() <= 64);
    let device = card
        .chain
        .device(&card.cert.device)
        .expect("the card's device is in its chain");
    assert_eq!(
        device.cert, card.cert,
        "the card's certificate is the chain's"
    );
    assert!(device.is_current() && device.cert.caps & CAP_SEND != 0);
}

fn refused<T: std::fmt::Debug>(r: Result<T, Error>) {
    match r {
        Err(Error::Card(_)) => {}
        other => panic!("{other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match Card::parse(text) {
            Ok(card) => accepted(&card),
            Err(e) => assert!(matches!(e, Error::Card(_)), "{e}"),
        }
    }
    match Card::from_bytes(data) {
        Ok(card) => {
            accepted(&card);
            let text = format!("{CARD_PREFIX}{}", BASE32_NOPAD.encode(data));
            assert_eq!(
                Card::parse(&text.to_lowercase()).expect("its text parses"),
                card
            );
        }
        Err(e) => assert!(matches!(e, Error::Card(_)), "{e}"),
    }

    // A well-signed card with fuzzer-chosen fields.
    let Some((f, rest)) = data.split_first_chunk::<{ 16 + 8 + 32 * 2 + 1 + 16 + 3 }>() else {
        return;
    };
    let k = keys();
    let take = |at: usize| -> [u8; 32] { f[at..at + 32].try_into().expect("32 bytes") };
    let mut nickname = String::from_utf8_lossy(rest).into_owned();
    while nickname.len() > 64 {
        nickname.pop();
    }
    let mut card = fixed_identity().card.clone();
    card.card_id = f[..16].try_into().expect("16 bytes");
    card.created_at_ms = u64::from_be_bytes(f[16..24].try_into().expect("8 bytes"));
    card.one_time_key = take(24);
    card.secret = zeroize::Zeroizing::new(take(56));
    card.reply_to = (f[88] & 1 == 1).then(|| f[89..105].try_into().expect("16 bytes"));
    card.nickname = nickname;
    let bytes = card.to_bytes(k).expect("a card encodes");
    assert_eq!(Card::from_bytes(&bytes).expect("a card decodes"), card);
    let text = card.to_text(k).expect("text");
    let wrapped: String = text
        .to_lowercase()
        .as_bytes()
        // At most one line break per two characters: a text more than
        // twice a card's length is refused before it is parsed.
        .chunks(usize::from(f[105] % 80) + 2)
        .map(|l| format!("{}\n ", String::from_utf8_lossy(l)))
        .collect();
    assert_eq!(Card::parse(&wrapped).expect("wrapped text parses"), card);
    let mut bad = bytes.clone();
    let at = usize::from(u16::from_le_bytes([f[106], f[107]])) % bad.len();
    bad[at] ^= f[105] | 1;
    refused(Card::from_bytes(&bad));
    refused(Card::from_bytes(&bytes[..at]));
});
