//! What to show and what to delete after listing the mailbox. Pure: the
//! stored payloads, what was shown and completed before, and `now` in; a
//! plan out.
//!
//! A mailbox holds three kinds of payload: fragments of sealed envelopes
//! (reassembled here; a message is shown only once complete), SURB replies
//! (acks for this client's own outgoing fragments, told apart by their
//! length, handed to the outbox), and whole sealed messages stored by
//! mailbox servers before fragmentation (shown as before).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Instant;

use bastet_mailbox::StoredMessage;
use bastet_sphinx::{
    EnvelopeId, Fragment, Reassembler, Reassembly, ReassemblyLimits, SEALED_REPLY_LEN, SealedReply,
};

use crate::message::MAX_SEALED_LEN;
use crate::{Error, ReceivedMessage, Result};

/// A message decrypted from the mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxMessage {
    /// Its position in the mailbox (of its last fragment).
    pub seq: u64,
    /// When the mailbox server stored it (its last fragment).
    pub received_at_ms: u64,
    /// Fragments it arrived in.
    pub fragments: u32,
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
    /// Payloads that did not decrypt (or did not parse or reassemble).
    pub unreadable: Vec<UnreadablePayload>,
    /// Delete every stored payload up to and including this seq: the longest
    /// run from the start of the listing that was read (now or before), or
    /// is a fragment of a completed envelope, or a reply taken. Nothing at
    /// or after the first unreadable payload or the first fragment of an
    /// incomplete envelope is deleted.
    pub delete_upto: Option<u64>,
    /// Seqs of whole (unfragmented) messages shown to the user, now or
    /// before.
    pub shown: BTreeSet<u64>,
    /// Envelopes completed by this listing, to remember so that their
    /// retransmitted fragments are not shown again.
    pub completed: Vec<EnvelopeId>,
    /// SURB replies found (acks for this client's outgoing fragments).
    pub replies: Vec<SealedReply>,
    /// Fragments that duplicate one already held or of an envelope already
    /// complete.
    pub duplicates: usize,
    /// Envelopes still incomplete; their fragments stay on the server.
    pub partial_envelopes: usize,
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

/// Limits on reassembling one listing: an envelope as long as the longest
/// message, and the library defaults otherwise.
pub fn reassembly_limits() -> ReassemblyLimits {
    let defaults = ReassemblyLimits::default();
    ReassemblyLimits {
        max_envelope_len: MAX_SEALED_LEN,
        max_buffered_bytes: defaults.max_buffered_bytes.max(MAX_SEALED_LEN),
        ..defaults
    }
}

/// Reads `listing` with `open` (which decrypts a payload): reassembles fragments (envelopes in `completed` were
/// shown before: their fragments are duplicates), decrypts what completes
/// and every whole message not in `shown`, collects replies, and decides
/// what to delete. Replies count as read only if `take_replies` (the
/// caller holds the outbox to apply them to).
pub fn plan_inbox(
    open: &mut dyn FnMut(&[u8]) -> Result<Option<ReceivedMessage>>,
    listing: &[StoredMessage],
    shown: &BTreeSet<u64>,
    completed: &HashSet<EnvelopeId>,
    take_replies: bool,
    now: Instant,
) -> InboxPlan {
    let mut sorted: Vec<&StoredMessage> = listing.iter().collect();
    sorted.sort_by_key(|p| p.seq);
    sorted.dedup_by_key(|p| p.seq);

    let mut plan = InboxPlan::default();
    // The listing's own limits are validated in a test; fall back to the
    // defaults rather than fail the whole inbox.
    let mut reassembler = Reassembler::new(reassembly_limits())
        .or_else(|_| Reassembler::new(ReassemblyLimits::default()))
        .ok();
    // Per seq: whether it may be deleted. Fragments of an envelope become
    // deletable when it completes.
    let mut deletable: Vec<(u64, bool)> = Vec::with_capacity(sorted.len());
    let mut envelope_of: HashMap<u64, EnvelopeId> = HashMap::new();
    let mut done: HashSet<EnvelopeId> = HashSet::new();
    let mut blocked_at: Option<u64> = None;
    for stored in sorted {
        let seq = stored.seq;
        if stored.payload.len() == SEALED_REPLY_LEN {
            if let Ok(reply) = SealedReply::from_bytes(&stored.payload) {
                plan.replies.push(reply);
            }
            deletable.push((seq, take_replies));
            continue;
        }
        if let Ok(fragment) = Fragment::from_bytes(&stored.payload) {
            let envelope = fragment.envelope();
            envelope_of.insert(seq, envelope);
            if completed.contains(&envelope) || done.contains(&envelope) {
                plan.duplicates += 1;
                deletable.push((seq, true));
                continue;
            }
            let count = fragment.count();
            let outcome = match &mut reassembler {
                Some(r) => r.insert(fragment, now).map_err(Error::Sphinx),
                None => Err(Error::MalformedMessage("no reassembly possible")),
            };
            match outcome {
                Ok(Reassembly::Complete { envelope, bytes }) => {
                    done.insert(envelope);
                    plan.completed.push(envelope);
                    deletable.push((seq, true));
                    match open(&bytes) {
                        Ok(Some(message)) => plan.new.push(InboxMessage {
                            seq,
                            received_at_ms: stored.received_at_ms,
                            fragments: count,
                            message,
                        }),
                        Ok(None) => {}
                        Err(error) => {
                            blocked_at.get_or_insert(seq);
                            plan.unreadable.push(UnreadablePayload { seq, error });
                        }
                    }
                }
                Ok(Reassembly::Incomplete { .. }) => deletable.push((seq, false)),
                Ok(Reassembly::Duplicate { .. }) => {
                    plan.duplicates += 1;
                    deletable.push((seq, false));
                }
                Err(error) => {
                    blocked_at.get_or_insert(seq);
                    plan.unreadable.push(UnreadablePayload { seq, error });
                    deletable.push((seq, false));
                }
            }
            continue;
        }
        if shown.contains(&seq) {
            plan.shown.insert(seq);
            deletable.push((seq, true));
            continue;
        }
        match open(&stored.payload) {
            Ok(message) => {
                plan.shown.insert(seq);
                plan.new.extend(message.map(|message| InboxMessage {
                    seq,
                    received_at_ms: stored.received_at_ms,
                    fragments: 1,
                    message,
                }));
                deletable.push((seq, true));
            }
            Err(error) => {
                blocked_at.get_or_insert(seq);
                plan.unreadable.push(UnreadablePayload { seq, error });
                deletable.push((seq, false));
            }
        }
    }
    for (seq, ok) in deletable {
        // Fragments of an envelope completed later in the listing.
        let ok = ok || envelope_of.get(&seq).is_some_and(|e| done.contains(e));
        if !ok || blocked_at.is_some_and(|b| seq >= b) {
            break;
        }
        plan.delete_upto = Some(seq);
    }
    plan.partial_envelopes = reassembler.map_or(0, |r| r.partial_envelopes());
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MessageId;

    // The plan does not depend on the layers (the contact book opens each
    // payload; see `contacts`): these tests open with a stand-in that
    // accepts `ok:TEXT` and fails on anything else.
    struct Alice;
    struct Bob;

    fn open_stub(bytes: &[u8]) -> Result<Option<ReceivedMessage>> {
        let text = bytes.strip_prefix(b"ok:").ok_or(Error::Layer {
            layer: "sealed envelope",
            why: "does not open".into(),
        })?;
        let mut id = [0u8; 16];
        id.copy_from_slice(&blake3::hash(bytes).as_bytes()[..16]);
        Ok(Some(ReceivedMessage {
            message_id: MessageId(id),
            sent_at_ms: 1,
            from: [7; 32],
            contact: Some("alice".into()),
            verified: true,
            text: String::from_utf8(text.to_vec()).unwrap(),
            file: None,
            rejected: None,
            notice: false,
            outgoing: false,
        }))
    }

    fn setup() -> (Alice, Bob, ()) {
        (Alice, Bob, ())
    }

    /// Plans with nothing completed before and replies taken.
    fn plan_of(_: &Bob, listing: &[StoredMessage], shown: &BTreeSet<u64>) -> InboxPlan {
        plan_inbox(
            &mut open_stub,
            listing,
            shown,
            &HashSet::new(),
            true,
            Instant::now(),
        )
    }

    fn stored(seq: u64, payload: Vec<u8>) -> StoredMessage {
        StoredMessage {
            seq,
            received_at_ms: 1000 + seq,
            payload,
        }
    }

    fn good(_: &Alice, _: &(), seq: u64) -> StoredMessage {
        stored(seq, format!("ok:message {seq}").into_bytes())
    }

    #[test]
    fn all_readable_messages_are_shown_and_deleted() {
        let (alice, bob, to) = setup();
        let listing = vec![
            good(&alice, &to, 3),
            good(&alice, &to, 1),
            good(&alice, &to, 2),
        ];
        let plan = plan_of(&bob, &listing, &BTreeSet::new());
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
        let plan = plan_of(&bob, &listing, &BTreeSet::new());
        assert_eq!(plan.new.len(), 2);
        assert_eq!(plan.unreadable.len(), 1);
        assert_eq!(plan.unreadable[0].seq, 2);
        assert!(matches!(plan.unreadable[0].error, Error::Layer { .. }));
        assert_eq!(plan.delete_upto, Some(1));
        let remembered = plan.still_stored_shown(true);
        assert_eq!(remembered, BTreeSet::from([3]));

        // Next poll: seq 1 is gone, 2 still fails, 3 is not shown again.
        let again = plan_of(&bob, &listing[1..], &remembered);
        assert!(again.new.is_empty());
        assert_eq!(again.unreadable.len(), 1);
        assert_eq!(again.delete_upto, None);
        assert_eq!(again.still_stored_shown(true), BTreeSet::from([3]));
    }

    #[test]
    fn shown_messages_are_deleted_once_nothing_blocks_them() {
        let (alice, bob, to) = setup();
        let listing = vec![good(&alice, &to, 4), good(&alice, &to, 5)];
        let plan = plan_of(&bob, &listing, &BTreeSet::from([4]));
        assert_eq!(plan.new.len(), 1);
        assert_eq!(plan.new[0].seq, 5);
        assert_eq!(plan.delete_upto, Some(5));
        assert!(plan.still_stored_shown(true).is_empty());
    }

    /// A message of `len` bytes cut into fragments, stored from `first_seq`
    /// on in the given order of fragment indexes.
    fn fragmented(_: &Alice, _: &(), len: usize, first_seq: u64) -> (Vec<StoredMessage>, Vec<u8>) {
        let mut text = vec![b'a'; len];
        rand::fill(&mut text[..]);
        let text = hex::encode(&text)[..len].to_string();
        let payload = format!("ok:{text}");
        let stored_fragments = bastet_sphinx::fragment(payload.as_bytes(), &mut rand::rng())
            .unwrap()
            .iter()
            .zip(first_seq..)
            .map(|(f, seq)| stored(seq, f.to_bytes()))
            .collect();
        (stored_fragments, text.into_bytes())
    }

    #[test]
    fn a_fragmented_message_is_shown_once_complete_and_only_then_deleted() {
        let (alice, bob, to) = setup();
        let (mut frags, text) = fragmented(&alice, &to, 10_000, 1);
        assert_eq!(frags.len(), 7);
        let last = frags.pop().unwrap();
        // Six of seven: nothing shown, nothing deleted.
        let p = plan_of(&bob, &frags, &BTreeSet::new());
        assert!(p.new.is_empty() && p.unreadable.is_empty());
        assert_eq!(p.delete_upto, None);
        assert_eq!(p.partial_envelopes, 1);
        // All seven, in any order: shown once, all deleted.
        frags.insert(2, last);
        frags.reverse();
        let p = plan_of(&bob, &frags, &BTreeSet::new());
        assert_eq!(p.new.len(), 1);
        assert_eq!(p.new[0].message.text.as_bytes(), &text[..]);
        assert_eq!(p.new[0].fragments, 7);
        assert_eq!(p.delete_upto, Some(7));
        assert_eq!(p.completed.len(), 1);
    }

    #[test]
    fn retransmitted_fragments_are_not_shown_twice() {
        let (alice, bob, to) = setup();
        let (frags, _) = fragmented(&alice, &to, 4000, 1);
        assert_eq!(frags.len(), 3);
        // Fragment 1 arrived twice (its first ack was lost).
        let mut listing = frags.clone();
        listing.push(stored(4, frags[1].payload.clone()));
        let p = plan_of(&bob, &listing, &BTreeSet::new());
        assert_eq!(p.new.len(), 1);
        assert_eq!(p.duplicates, 1);
        assert_eq!(p.delete_upto, Some(4));
        // A copy arriving after the message was completed and deleted.
        let completed: HashSet<_> = p.completed.iter().copied().collect();
        let late = vec![stored(9, frags[0].payload.clone())];
        let p = plan_inbox(
            &mut open_stub,
            &late,
            &BTreeSet::new(),
            &completed,
            true,
            Instant::now(),
        );
        assert!(p.new.is_empty());
        assert_eq!(p.duplicates, 1);
        assert_eq!(p.delete_upto, Some(9));
    }

    #[test]
    fn an_incomplete_envelope_holds_back_deletion_but_not_later_messages() {
        let (alice, bob, to) = setup();
        let (a, _) = fragmented(&alice, &to, 4000, 1);
        let (b, _) = fragmented(&alice, &to, 4000, 10);
        // Envelope a misses its last fragment; b is complete after it.
        let listing: Vec<_> = a[..2].iter().chain(&b).cloned().collect();
        let p = plan_of(&bob, &listing, &BTreeSet::new());
        assert_eq!(p.new.len(), 1);
        assert_eq!(p.delete_upto, None);
        // Replies are deletable only when taken.
        let reply = stored(0, vec![0; SEALED_REPLY_LEN]);
        let p = plan_of(&bob, std::slice::from_ref(&reply), &BTreeSet::new());
        assert_eq!((p.replies.len(), p.delete_upto), (1, Some(0)));
        let p = plan_inbox(
            &mut open_stub,
            &[reply],
            &BTreeSet::new(),
            &HashSet::new(),
            false,
            Instant::now(),
        );
        assert_eq!((p.replies.len(), p.delete_upto), (1, None));
        assert!(p.new.is_empty());
    }
}
