//! The JSON bodies of the mailbox API, decoded the way each side does: the
//! server a registration request (then its `owner_key`), the client the
//! registration, list and delete answers (then each message's base64
//! payload). Checks: whatever decodes re-encodes to a value that decodes
//! to the same thing, and a decoded payload re-encodes to the same base64.
#![no_main]

use bastet_directory::VerifyingKey;
use bastet_mailbox::StoredMessage;
use bastet_mailbox::api::{
    DeleteResponse, ListResponse, MAX_REQUEST_BODY, MessageJson, RegisterRequest, RegisterResponse,
};
use bastet_sphinx::MailboxId;
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn decode<T>(data: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let value: T = serde_json::from_slice(data).ok()?;
    let again = serde_json::to_vec(&value).expect("a decoded value encodes");
    assert_eq!(
        serde_json::from_slice::<T>(&again).expect("re-encoded value decodes"),
        value
    );
    Some(value)
}

fn check_message(m: &MessageJson) {
    if let Ok(stored) = StoredMessage::from_json(m) {
        assert_eq!(&stored.to_json(), m, "base64 payload is not canonical");
    }
}

fuzz_target!(|data: &[u8]| {
    // Server: POST /v1/mailboxes (axum refuses larger bodies first).
    if data.len() <= MAX_REQUEST_BODY
        && let Some(r) = decode::<RegisterRequest>(data)
    {
        let mut owner = [0u8; 32];
        if hex::decode_to_slice(r.owner_key.trim(), &mut owner).is_ok() {
            let _ = VerifyingKey::from_bytes(&owner);
        }
    }
    // Client: the answers.
    if let Some(r) = decode::<RegisterResponse>(data)
        && let Some(id) = MailboxId::from_hex(&r.mailbox_id)
    {
        assert!(id.to_hex().eq_ignore_ascii_case(&r.mailbox_id));
    }
    if let Some(page) = decode::<ListResponse>(data) {
        page.messages.iter().for_each(check_message);
    }
    if let Some(m) = decode::<MessageJson>(data) {
        check_message(&m);
    }
    let _ = decode::<DeleteResponse>(data);
});
