//! Contact cards as a user pastes or loads them: `Card::parse` on any
//! UTF-8, `Card::from_bytes` on any bytes, and a card with fuzzer-chosen
//! fields signed by fixed keys, then one byte changed. Checks: an accepted
//! card's fields are within bounds and its text form parses to the same
//! card (in any case, wrapped); a well-signed card round trips; any changed
//! byte is refused.
#![no_main]

use bastet_client::{CARD_PREFIX, Card, Error, MAX_CARD_LEN};
use bastet_sphinx::{MailboxId, NodeId};
use data_encoding::BASE32_NOPAD;
use libfuzzer_sys::fuzz_target;

#[path = "common/keys.rs"]
mod keys;
use keys::fixed_keys as keys;

fn accepted(card: &Card) {
    assert!(card.nickname.len() <= 64);
    let bytes_len = card.nickname.len() + MAX_CARD_LEN - 64;
    assert!(bytes_len <= MAX_CARD_LEN);
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
    let Some((f, rest)) = data.split_first_chunk::<{ 16 + 8 + 32 * 5 + 1 + 16 + 3 }>() else {
        return;
    };
    let k = keys();
    let take = |at: usize| -> [u8; 32] { f[at..at + 32].try_into().expect("32 bytes") };
    let mut nickname = String::from_utf8_lossy(rest).into_owned();
    while nickname.len() > 64 {
        nickname.pop();
    }
    let card = Card {
        card_id: f[..16].try_into().expect("16 bytes"),
        created_at_ms: u64::from_be_bytes(f[16..24].try_into().expect("8 bytes")),
        identity: k.identity_public(),
        device: k.device_public(),
        content: k.content_public(),
        kem: Box::new(k.kem_public()),
        envelope: take(24),
        ratchet_identity: take(56),
        one_time_key: take(88),
        mailbox_server: NodeId(take(120)),
        mailbox: MailboxId(take(152)),
        secret: zeroize::Zeroizing::new(take(24)),
        reply_to: (f[184] & 1 == 1).then(|| f[185..201].try_into().expect("16 bytes")),
        nickname,
    };
    let bytes = card.to_bytes(k).expect("a card encodes");
    assert_eq!(Card::from_bytes(&bytes).expect("a card decodes"), card);
    let text = card.to_text(k).expect("text");
    let wrapped: String = text
        .to_lowercase()
        .as_bytes()
        // At most one line break per two characters: a text more than
        // twice a card's length is refused before it is parsed.
        .chunks(usize::from(f[201] % 80) + 2)
        .map(|l| format!("{}\n ", String::from_utf8_lossy(l)))
        .collect();
    assert_eq!(Card::parse(&wrapped).expect("wrapped text parses"), card);
    let mut bad = bytes.clone();
    let at = usize::from(u16::from_le_bytes([f[202], f[203]])) % bad.len();
    bad[at] ^= f[201] | 1;
    refused(Card::from_bytes(&bad));
    refused(Card::from_bytes(&bytes[..at]));
});
