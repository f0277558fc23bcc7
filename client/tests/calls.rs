//! Call setup between two befriended clients, through every end-to-end
//! layer, with the public API the CLI uses: Alice's offer opens at Bob as a
//! call signal from her identity and device, Bob's answer opens at Alice,
//! and both ends hold matching call keys; a key swapped on the way stops
//! the call with a clear error.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bastet_client::calls::{self, CallSignal, Hangup, HangupReason, Peer};
use bastet_client::{ClientKeys, Contacts, DataDir, Error, Opened, ReceivedCall, now_ms};
use bastet_sphinx::NodeId;

mod common;
use common::befriend;

struct Device {
    keys: ClientKeys,
    book: Contacts,
    _tmp: tempfile::TempDir,
}

/// Alice and Bob, each the other's contact ("bob" in Alice's book,
/// "alice" in Bob's).
fn alice_and_bob() -> (Device, Device) {
    let server = NodeId([7; 32]);
    let (a_tmp, b_tmp) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a_dir, b_dir) = (
        DataDir::new(a_tmp.path().join("alice")),
        DataDir::new(b_tmp.path().join("bob")),
    );
    a_dir.create().unwrap();
    b_dir.create().unwrap();
    let (a_keys, b_keys) = (
        ClientKeys::generate(&mut rand::rng()),
        ClientKeys::generate(&mut rand::rng()),
    );
    befriend(
        (&a_dir, &a_keys, server, "alice"),
        (&b_dir, &b_keys, server, "bob"),
    );
    let a_book = Contacts::load(&a_dir, &a_keys, server).unwrap();
    let b_book = Contacts::load(&b_dir, &b_keys, server).unwrap();
    let alice = Device {
        keys: a_keys,
        book: a_book,
        _tmp: a_tmp,
    };
    let bob = Device {
        keys: b_keys,
        book: b_book,
        _tmp: b_tmp,
    };
    (alice, bob)
}

impl Device {
    fn me(&self) -> Peer {
        Peer {
            identity: self.keys.identity_public(),
            device: self.keys.device_public(),
        }
    }

    /// Seals `signal` to contact `to` (device `device`, or all): payloads.
    fn send(&mut self, to: &str, device: Option<[u8; 32]>, signal: &CallSignal) -> Vec<Vec<u8>> {
        self.book
            .seal_call(&self.keys, to, device, signal, now_ms(), &mut rand::rng())
            .unwrap()
            .into_iter()
            .map(|s| s.payload)
            .collect()
    }

    /// Receives `payload` as the daemon does: no inbox message, one call
    /// signal.
    fn receive(&mut self, payload: &[u8]) -> ReceivedCall {
        assert!(self.book.receive(&self.keys, payload).is_none());
        let mut calls = self.book.take_calls();
        assert_eq!(calls.len(), 1);
        calls.remove(0)
    }
}

#[test]
fn a_call_is_set_up_through_every_layer() {
    let (mut alice, mut bob) = alice_and_bob();
    let now = now_ms() / 1000;
    let (offer, secrets) = calls::new_offer(
        &mut rand::rng(),
        "normal",
        [9; 32],
        now,
        Duration::from_secs(60),
    )
    .unwrap();
    let payloads = alice.send("bob", None, &CallSignal::Offer(offer.clone()));
    assert_eq!(payloads.len(), 1, "Bob has one device");

    let rang = bob.receive(&payloads[0]);
    assert_eq!(rang.contact, "alice");
    assert_eq!(rang.peer(), alice.me());
    let CallSignal::Offer(received) = &rang.signal else {
        panic!("{rang:?}");
    };
    assert_eq!(received, &offer);
    let (answer, bob_keys) =
        calls::answer(&mut rand::rng(), received, &rang.peer(), &bob.me(), now).unwrap();
    let payloads = bob.send(
        "alice",
        Some(rang.device),
        &CallSignal::Answer(answer.clone()),
    );
    assert_eq!(payloads.len(), 1);

    let answered = alice.receive(&payloads[0]);
    assert_eq!(answered.contact, "bob");
    assert_eq!(answered.peer(), bob.me());
    let CallSignal::Answer(received) = &answered.signal else {
        panic!("{answered:?}");
    };
    let alice_keys =
        calls::finish(&secrets, &offer, received, &alice.me(), &answered.peer()).unwrap();
    assert_eq!(alice_keys.confirmation(), bob_keys.confirmation());

    // A man in the middle who swapped the offer's ephemeral key: Bob
    // answers the swapped offer, and Alice refuses the call.
    let mallory = bastet_call::EphemeralKey::generate(&mut rand::rng());
    let mut swapped = offer.clone();
    swapped.x25519 = mallory.public();
    let (answer, _) =
        calls::answer(&mut rand::rng(), &swapped, &alice.me(), &bob.me(), now).unwrap();
    match calls::finish(&secrets, &offer, &answer, &alice.me(), &bob.me()) {
        Err(e @ Error::CallKeyMismatch { .. }) => {
            let text = e.to_string();
            assert!(text.contains("call keys do not match"), "{text}");
            assert!(text.contains("man-in-the-middle"), "{text}");
        }
        other => panic!("{other:?}"),
    }

    // Alice hangs up.
    let hangup = CallSignal::Hangup(Hangup {
        call_id: offer.call_id,
        reason: HangupReason::Normal,
    });
    let payloads = alice.send("bob", Some(answered.device), &hangup);
    let ended = bob.receive(&payloads[0]);
    assert_eq!(ended.signal, hangup);
}

#[test]
fn an_expired_offer_cannot_be_answered() {
    let (mut alice, mut bob) = alice_and_bob();
    let then = now_ms() / 1000 - 300;
    let (offer, _) = calls::new_offer(
        &mut rand::rng(),
        "video",
        [9; 32],
        then,
        Duration::from_secs(60),
    )
    .unwrap();
    let payloads = alice.send("bob", None, &CallSignal::Offer(offer));
    let rang = bob.receive(&payloads[0]);
    let CallSignal::Offer(offer) = &rang.signal else {
        panic!("{rang:?}");
    };
    match calls::answer(
        &mut rand::rng(),
        offer,
        &rang.peer(),
        &bob.me(),
        now_ms() / 1000,
    ) {
        Err(e @ Error::CallOfferExpired { .. }) => {
            assert!(e.to_string().contains("expired"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // Opened through `open_message`, a signal is a call, never a message.
    let payloads = alice.send(
        "bob",
        None,
        &CallSignal::Hangup(Hangup {
            call_id: rang.signal.call_id(),
            reason: HangupReason::Failed,
        }),
    );
    assert!(matches!(
        bob.book.open_message(&bob.keys, &payloads[0]).unwrap(),
        Opened::Call(_)
    ));
}
