//! What to show and what to delete after listing the mailbox. Pure: the
//! stored payloads and what was shown before in, a plan out.

use std::collections::BTreeSet;

use bastet_mailbox::StoredMessage;

use crate::crypto::ClientKeys;
use crate::{Error, ReceivedMessage, open_message};

/// A message decrypted from the mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxMessage {
    /// Its position in the mailbox.
    pub seq: u64,
    /// When the mailbox server stored it.
    pub received_at_ms: u64,
    /// The message.
    pub message: ReceivedMessage,
}

/// A stored payload that could not be read. It stays on the server.
#[derive(Debug)]
pub struct UnreadablePayload {
    /// Its position in the mailbox.
    pub seq: u64,
    /// Why it could not be read.
    pub error: Error,
}

/// The outcome of reading a listing.
#[derive(Debug, Default)]
pub struct InboxPlan {
    /// Messages not shown before, in mailbox order.
    pub new: Vec<InboxMessage>,
    /// Payloads that did not decrypt (or did not parse).
    pub unreadable: Vec<UnreadablePayload>,
    /// Delete every stored payload up to and including this seq: the longest
    /// run from the start of the listing that was read (now or before).
    /// Nothing at or after the first unreadable payload is deleted.
    pub delete_upto: Option<u64>,
    /// Seqs of the listing shown to the user, now or before.
    pub shown: BTreeSet<u64>,
}

impl InboxPlan {
    /// The seqs to remember as shown for the next call: those still on the
    /// server after the delete (all of them if `deleted` is false), so that
    /// nothing is shown twice.
    pub fn still_stored_shown(&self, deleted: bool) -> BTreeSet<u64> {
        match self.delete_upto {
            Some(upto) if deleted => self.shown.iter().copied().filter(|&s| s > upto).collect(),
            _ => self.shown.clone(),
        }
    }
}

/// Decrypts every payload of `listing` not already in `shown` (seqs shown
/// by an earlier call and still on the server) and decides what to delete.
pub fn plan_inbox(
    keys: &ClientKeys,
    listing: &[StoredMessage],
    shown: &BTreeSet<u64>,
) -> InboxPlan {
    let mut sorted: Vec<&StoredMessage> = listing.iter().collect();
    sorted.sort_by_key(|p| p.seq);
    sorted.dedup_by_key(|p| p.seq);

    let mut plan = InboxPlan::default();
    let mut blocked = false;
    for stored in sorted {
        if shown.contains(&stored.seq) {
            plan.shown.insert(stored.seq);
        } else {
            match open_message(keys, &stored.payload) {
                Ok(message) => {
                    plan.shown.insert(stored.seq);
                    plan.new.push(InboxMessage {
                        seq: stored.seq,
                        received_at_ms: stored.received_at_ms,
                        message,
                    });
                }
                Err(error) => {
                    blocked = true;
                    plan.unreadable.push(UnreadablePayload {
                        seq: stored.seq,
                        error,
                    });
                    continue;
                }
            }
        }
        if !blocked {
            plan.delete_upto = Some(stored.seq);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Address, seal_message};
    use bastet_sphinx::NodeId;

    fn setup() -> (ClientKeys, ClientKeys, Address) {
        let mut rng = rand::rng();
        let alice = ClientKeys::generate(&mut rng);
        let bob = ClientKeys::generate(&mut rng);
        let to = Address {
            identity_key: bob.identity_public(),
            encryption_key: bob.encryption_public(),
            mailbox_server: NodeId([1; 32]),
            mailbox: bob.mailbox_id(),
        };
        (alice, bob, to)
    }

    fn stored(seq: u64, payload: Vec<u8>) -> StoredMessage {
        StoredMessage {
            seq,
            received_at_ms: 1000 + seq,
            payload,
        }
    }

    fn good(alice: &ClientKeys, to: &Address, seq: u64) -> StoredMessage {
        let text = format!("message {seq}");
        stored(
            seq,
            seal_message(alice, to, &text, seq, &mut rand::rng())
                .unwrap()
                .payload,
        )
    }

    #[test]
    fn all_readable_messages_are_shown_and_deleted() {
        let (alice, bob, to) = setup();
        let listing = vec![
            good(&alice, &to, 3),
            good(&alice, &to, 1),
            good(&alice, &to, 2),
        ];
        let plan = plan_inbox(&bob, &listing, &BTreeSet::new());
        let texts: Vec<&str> = plan.new.iter().map(|m| m.message.text.as_str()).collect();
        assert_eq!(texts, ["message 1", "message 2", "message 3"]);
        assert!(plan.new.iter().all(|m| m.message.verified));
        assert_eq!(plan.new[0].received_at_ms, 1001);
        assert_eq!(plan.delete_upto, Some(3));
        assert!(plan.unreadable.is_empty());
        assert!(plan.still_stored_shown(true).is_empty());
        assert_eq!(plan.still_stored_shown(false), BTreeSet::from([1, 2, 3]));
    }

    #[test]
    fn nothing_from_an_unreadable_payload_on_is_deleted_and_nothing_is_shown_twice() {
        let (alice, bob, to) = setup();
        let listing = vec![
            good(&alice, &to, 1),
            stored(2, vec![1; 100]),
            good(&alice, &to, 3),
        ];
        let plan = plan_inbox(&bob, &listing, &BTreeSet::new());
        assert_eq!(plan.new.len(), 2);
        assert_eq!(plan.unreadable.len(), 1);
        assert_eq!(plan.unreadable[0].seq, 2);
        assert!(matches!(plan.unreadable[0].error, Error::Undecryptable));
        assert_eq!(plan.delete_upto, Some(1));
        let remembered = plan.still_stored_shown(true);
        assert_eq!(remembered, BTreeSet::from([3]));

        // Next poll: seq 1 is gone, 2 still fails, 3 is not shown again.
        let again = plan_inbox(&bob, &listing[1..], &remembered);
        assert!(again.new.is_empty());
        assert_eq!(again.unreadable.len(), 1);
        assert_eq!(again.delete_upto, None);
        assert_eq!(again.still_stored_shown(true), BTreeSet::from([3]));
    }

    #[test]
    fn a_message_for_someone_else_is_unreadable_first_in_line() {
        let (alice, bob, _) = setup();
        let to_alice = Address {
            identity_key: alice.identity_public(),
            encryption_key: alice.encryption_public(),
            mailbox_server: NodeId([1; 32]),
            mailbox: alice.mailbox_id(),
        };
        let listing = vec![good(&bob, &to_alice, 7)];
        let plan = plan_inbox(&bob, &listing, &BTreeSet::new());
        assert!(plan.new.is_empty());
        assert_eq!(plan.delete_upto, None);
    }

    #[test]
    fn shown_messages_are_deleted_once_nothing_blocks_them() {
        let (alice, bob, to) = setup();
        let listing = vec![good(&alice, &to, 4), good(&alice, &to, 5)];
        let plan = plan_inbox(&bob, &listing, &BTreeSet::from([4]));
        assert_eq!(plan.new.len(), 1);
        assert_eq!(plan.new[0].seq, 5);
        assert_eq!(plan.delete_upto, Some(5));
        assert!(plan.still_stored_shown(true).is_empty());
    }
}
