//! Reliable delivery, sans IO: the state of one outgoing message (which
//! fragments were acknowledged, when each is due again, the SURB keys that
//! open its acks), the retransmission schedule and the give-up. The shell
//! in `client.rs` sends what [`Outgoing::due`] names and feeds replies to
//! [`Outgoing::apply_reply`]; `datadir.rs` persists it as JSON.

use std::fmt;
use std::time::Duration;

use bastet_sphinx::{AckId, SealedReply, SurbKeys};
use serde::{Deserialize, Serialize};

/// Added to every ack timeout: the mailbox servers' batched synced writes
/// and the sender's own listing take time beyond the mixes' delays.
pub const ACK_SLACK: Duration = Duration::from_millis(500);
/// Each retransmission of a fragment waits this much longer than the last.
pub const BACKOFF_FACTOR: f64 = 1.5;
/// The longest wait between two transmissions of one fragment.
pub const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(20);
/// How long `send` keeps trying by default before a message fails.
pub const DEFAULT_GIVE_UP: Duration = Duration::from_secs(120);
/// SURB keys kept per fragment: an ack for an earlier transmission that
/// arrives late still counts, within this many.
pub const MAX_PENDING_SURBS: usize = 4;
/// Mix hops of a fragment's round trip: three forward, three back.
const ROUND_TRIP_MIXES: u32 = 6;
/// Most fragments sent and not yet acknowledged (nor overdue) at once,
/// over all messages: a 1 MiB message is not thrown at the network in one
/// burst that outlasts its own ack timeout and is then sent again whole.
pub const MAX_IN_FLIGHT: usize = 128;

/// Round-trip time estimate from acks (TCP's smoothed RTT, RFC 6298 gains):
/// the ack timeout is never less than twice it, so a loaded network slows
/// retransmission down instead of being flooded by it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundTrip {
    smoothed: Option<Duration>,
}

impl RoundTrip {
    /// Takes one measured round trip.
    pub fn sample(&mut self, rtt: Duration) {
        self.smoothed = Some(match self.smoothed {
            None => rtt,
            Some(s) => s.mul_f64(0.875) + rtt.mul_f64(0.125),
        });
    }

    /// The timeout to use: `base`, or twice the smoothed round trip if
    /// that is longer.
    pub fn timeout(&self, base: Duration) -> Duration {
        self.smoothed.map_or(base, |s| base.max(s * 2))
    }
}

/// A fragment acknowledged by a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acked {
    /// Its index in the message.
    pub index: usize,
    /// From sending the transmission acknowledged to applying its ack.
    pub round_trip: Duration,
}

/// How long to wait for a fragment's ack before sending it again: four
/// times the expected round trip (six mixes of mean delay `mean_hop_delay`,
/// plus one `poll` of the sender's mailbox), plus [`ACK_SLACK`].
pub fn ack_timeout(mean_hop_delay: Duration, poll: Duration) -> Duration {
    (mean_hop_delay * ROUND_TRIP_MIXES + poll) * 4 + ACK_SLACK
}

/// The wait after the `attempt`-th transmission (from 1):
/// `timeout × 1.5^(attempt-1)`, at most [`MAX_RETRY_INTERVAL`] (but never
/// less than `timeout`).
pub fn retry_interval(timeout: Duration, attempt: u32) -> Duration {
    let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
    let secs = timeout.as_secs_f64() * BACKOFF_FACTOR.powi(exponent);
    Duration::try_from_secs_f64(secs)
        .unwrap_or(MAX_RETRY_INTERVAL)
        .min(MAX_RETRY_INTERVAL.max(timeout))
}

/// Where a message is on its way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Saved, not every fragment sent yet.
    Queued,
    /// Every fragment sent at least once; not every one acknowledged.
    Sent,
    /// Every fragment acknowledged: stored by the recipient's mailbox server.
    Stored,
    /// Given up; see the reason.
    Failed,
}

impl DeliveryState {
    /// Stored or failed: nothing more will happen to it.
    pub fn is_final(&self) -> bool {
        matches!(self, DeliveryState::Stored | DeliveryState::Failed)
    }

    /// Lower-case name, as in JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeliveryState::Queued => "queued",
            DeliveryState::Sent => "sent",
            DeliveryState::Stored => "stored",
            DeliveryState::Failed => "failed",
        }
    }
}

/// One SURB sent with a fragment and the keys to read what comes back.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingSurb {
    /// The ack id expected back (hex).
    pub ack_id: String,
    /// [`SurbKeys::to_bytes`] (hex): the SURB id, then the payload key seeds.
    pub keys: String,
    /// When this transmission went out, unix ms.
    pub sent_at_ms: u64,
}

impl fmt::Debug for PendingSurb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PendingSurb({}, [redacted])",
            self.keys.get(..8).unwrap_or("")
        )
    }
}

/// One fragment's progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FragmentState {
    /// Whether its ack came back.
    pub acked: bool,
    /// Transmissions so far.
    pub attempts: u32,
    /// When it is due (again), unix ms; 0: now.
    pub retry_at_ms: u64,
    /// SURBs of the latest transmissions, newest last.
    pub surbs: Vec<PendingSurb>,
}

/// An outgoing message: what the outbox keeps on disk between calls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outgoing {
    /// The message id (hex).
    pub message_id: String,
    /// The recipient's address.
    pub to: String,
    /// When it was sealed, unix ms.
    pub created_at_ms: u64,
    /// When to give up, unix ms: the give-up time after queuing, moved on
    /// to the give-up time after each fragment's first transmission, so a
    /// large message waiting for payload ticks is not given up on before
    /// it was even sent.
    pub give_up_at_ms: u64,
    /// The give-up time asked for, ms (0 in files written before it was
    /// kept: then `give_up_at_ms − created_at_ms`).
    #[serde(default)]
    pub give_up_ms: u64,
    /// Where it is.
    pub state: DeliveryState,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Transmissions beyond the first of each fragment.
    pub retransmissions: u32,
    /// Each fragment's progress, by index.
    pub fragments: Vec<FragmentState>,
    /// The route policy given for this message, if not the configured one:
    /// kept so that a resumed message never falls back to a laxer policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<crate::RoutePolicy>,
    /// The contact it is for, as named when it was sent (`to` is where it
    /// goes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
    /// The contact's device this copy is sealed to (short id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

impl Outgoing {
    /// A queued message of `fragments` fragments, all due at once.
    pub fn new(
        message_id: String,
        to: String,
        fragments: usize,
        now_ms: u64,
        give_up: Duration,
    ) -> Self {
        let give_up_ms = u64::try_from(give_up.as_millis()).unwrap_or(u64::MAX);
        Outgoing {
            message_id,
            to,
            created_at_ms: now_ms,
            give_up_at_ms: now_ms.saturating_add(give_up_ms),
            give_up_ms,
            state: DeliveryState::Queued,
            reason: None,
            retransmissions: 0,
            fragments: vec![FragmentState::default(); fragments],
            route: None,
            contact: None,
            device: None,
        }
    }

    /// The give-up time asked for, ms.
    fn give_up_duration_ms(&self) -> u64 {
        if self.give_up_ms > 0 {
            self.give_up_ms
        } else {
            self.give_up_at_ms.saturating_sub(self.created_at_ms)
        }
    }

    /// Whether the message is stored or failed.
    pub fn is_final(&self) -> bool {
        matches!(self.state, DeliveryState::Stored | DeliveryState::Failed)
    }

    /// Fragments acknowledged so far.
    pub fn acked(&self) -> usize {
        self.fragments.iter().filter(|f| f.acked).count()
    }

    /// Indexes of the fragments to send now: never sent, or unacknowledged
    /// past their retry time. None once the message is final.
    pub fn due(&self, now_ms: u64) -> Vec<usize> {
        if self.is_final() {
            return Vec::new();
        }
        self.fragments
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.acked && f.retry_at_ms <= now_ms)
            .map(|(i, _)| i)
            .collect()
    }

    /// Fragments sent, not acknowledged and not yet due again at `now_ms`.
    pub fn in_flight(&self, now_ms: u64) -> usize {
        if self.is_final() {
            return 0;
        }
        self.fragments
            .iter()
            .filter(|f| !f.acked && f.attempts > 0 && f.retry_at_ms > now_ms)
            .count()
    }

    /// When the next fragment falls due, unix ms, if any is unacknowledged.
    pub fn next_due_ms(&self) -> Option<u64> {
        if self.is_final() {
            return None;
        }
        self.fragments
            .iter()
            .filter(|f| !f.acked)
            .map(|f| f.retry_at_ms)
            .min()
    }

    /// Records that fragment `index` went out at `now_ms` with a SURB whose
    /// ack carries `ack_id`, to be sent again after [`retry_interval`].
    pub fn record_send(
        &mut self,
        index: usize,
        ack_id: AckId,
        keys: &SurbKeys,
        now_ms: u64,
        timeout: Duration,
    ) {
        let Some(f) = self.fragments.get_mut(index) else {
            return;
        };
        f.attempts = f.attempts.saturating_add(1);
        if f.attempts > 1 {
            self.retransmissions = self.retransmissions.saturating_add(1);
        }
        if f.attempts == 1 {
            let give_up = self.give_up_duration_ms();
            self.give_up_at_ms = self.give_up_at_ms.max(now_ms.saturating_add(give_up));
        }
        let Some(f) = self.fragments.get_mut(index) else {
            return;
        };
        let wait = retry_interval(timeout, f.attempts);
        f.retry_at_ms = now_ms.saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        f.surbs.push(PendingSurb {
            ack_id: hex::encode(ack_id.0),
            keys: hex::encode(&*keys.to_bytes()),
            sent_at_ms: now_ms,
        });
        if f.surbs.len() > MAX_PENDING_SURBS {
            f.surbs.remove(0);
        }
    }

    /// Records that fragment `index` could not be handed to its first mix
    /// at `now_ms` (no route, queue full): due again after `wait`, without
    /// counting a transmission.
    pub fn record_unsent(&mut self, index: usize, now_ms: u64, wait: Duration) {
        if let Some(f) = self.fragments.get_mut(index) {
            f.retry_at_ms =
                now_ms.saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        }
    }

    /// Applies a reply from the sender's mailbox at `now_ms`: if it opens
    /// under the keys of one of this message's SURBs and carries the
    /// expected ack id, marks that fragment acknowledged and says which.
    pub fn apply_reply(&mut self, reply: &SealedReply, now_ms: u64) -> Option<Acked> {
        let id = hex::encode(reply.surb_id().0);
        let (index, surb) = self.fragments.iter().enumerate().find_map(|(i, f)| {
            f.surbs
                .iter()
                .find(|s| s.keys.starts_with(&id))
                .map(|s| (i, s.clone()))
        })?;
        let keys = hex::decode(&surb.keys).ok()?;
        let keys = SurbKeys::from_bytes(&keys).ok()?;
        let body = keys.open(reply).ok()?;
        let ack = AckId::from_ack_body(&body).ok()?;
        if hex::encode(ack.0) != surb.ack_id {
            return None;
        }
        let f = self.fragments.get_mut(index)?;
        f.acked = true;
        f.surbs.clear();
        Some(Acked {
            index,
            round_trip: Duration::from_millis(now_ms.saturating_sub(surb.sent_at_ms)),
        })
    }

    /// Moves the state on at `now_ms`: stored once every fragment is
    /// acknowledged, failed at the give-up time, sent once every fragment
    /// went out. Returns whether the state changed.
    pub fn advance(&mut self, now_ms: u64) -> bool {
        if self.is_final() {
            return false;
        }
        let before = self.state;
        let total = self.fragments.len();
        let acked = self.acked();
        if acked == total {
            self.state = DeliveryState::Stored;
        } else if now_ms >= self.give_up_at_ms {
            self.state = DeliveryState::Failed;
            self.reason = Some(format!(
                "no ack for {} of {total} fragments within {} s of sending",
                total - acked,
                self.give_up_duration_ms() / 1000
            ));
            for f in &mut self.fragments {
                f.surbs.clear();
            }
        } else if self.fragments.iter().all(|f| f.attempts > 0) {
            self.state = DeliveryState::Sent;
        }
        self.state != before
    }

    /// Fails the message at once with `reason` (e.g. the recipient's
    /// address no longer parses).
    pub fn fail(&mut self, reason: String) {
        self.state = DeliveryState::Failed;
        self.reason = Some(reason);
        for f in &mut self.fragments {
            f.surbs.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bastet_sphinx::{
        Hop, MailboxId, NodeId, Prepared, Processed, SphinxPublicKey, SphinxSecretKey, Surb,
    };

    use super::*;

    /// A one-hop SURB to the sender's own server, and that server's key.
    fn surb() -> (Surb, SurbKeys, SphinxSecretKey) {
        let key = SphinxSecretKey::from([5; 32]);
        let hop = Hop {
            node: NodeId([5; 32]),
            sphinx_key: SphinxPublicKey::from(&key),
            delay: Duration::ZERO,
        };
        let (surb, keys) = Surb::build(&[hop], &MailboxId([6; 32])).unwrap();
        (surb, keys, key)
    }

    /// What the sender's mailbox stores when `surb` carries `body` back.
    fn reply(surb: Surb, body: &[u8], server: &SphinxSecretKey) -> SealedReply {
        let (packet, _) = surb.use_surb(body).unwrap();
        match Prepared::new(packet.as_bytes(), server)
            .unwrap()
            .process()
            .unwrap()
        {
            Processed::Reply { reply, .. } => reply,
            other => panic!("{other:?}"),
        }
    }

    const T: Duration = Duration::from_secs(2);

    #[test]
    fn the_timeout_follows_the_route_and_backs_off_to_a_cap() {
        assert_eq!(
            ack_timeout(Duration::from_millis(50), Duration::from_millis(100)),
            Duration::from_millis(4 * 400 + 500)
        );
        assert_eq!(retry_interval(T, 1), T);
        assert_eq!(retry_interval(T, 2), Duration::from_secs(3));
        assert_eq!(retry_interval(T, 3), Duration::from_millis(4500));
        assert_eq!(retry_interval(T, 40), MAX_RETRY_INTERVAL);
        // A timeout beyond the cap is never shortened.
        let long = MAX_RETRY_INTERVAL * 2;
        assert_eq!(retry_interval(long, 5), long);
    }

    #[test]
    fn a_slow_network_lengthens_the_timeout_never_shortens_it() {
        let mut rtt = RoundTrip::default();
        assert_eq!(rtt.timeout(T), T);
        rtt.sample(Duration::from_millis(400));
        assert_eq!(rtt.timeout(T), T);
        for _ in 0..40 {
            rtt.sample(Duration::from_secs(4));
        }
        let t = rtt.timeout(T);
        assert!(
            t > Duration::from_millis(7900) && t <= Duration::from_secs(8),
            "{t:?}"
        );
    }

    #[test]
    fn fragments_go_sent_then_stored_as_acks_arrive() {
        let mut m = Outgoing::new("ab".into(), "to".into(), 2, 1000, DEFAULT_GIVE_UP);
        assert_eq!(m.state, DeliveryState::Queued);
        assert_eq!(m.due(1000), [0, 1]);
        let (s0, k0, server) = surb();
        let (s1, k1, _) = surb();
        m.record_send(0, AckId([1; 16]), &k0, 1000, T);
        assert!(!m.advance(1000));
        assert_eq!(m.state, DeliveryState::Queued);
        m.record_send(1, AckId([2; 16]), &k1, 1000, T);
        assert!(m.advance(1000));
        assert_eq!(m.state, DeliveryState::Sent);
        assert!(m.due(2999).is_empty());
        assert_eq!(m.next_due_ms(), Some(3000));

        // The ack for fragment 1 arrives; fragment 0's does not.
        assert_eq!(
            m.apply_reply(&reply(s1, &AckId([2; 16]).to_ack_body(), &server), 1700),
            Some(Acked {
                index: 1,
                round_trip: Duration::from_millis(700)
            })
        );
        assert_eq!(m.in_flight(2000), 1);
        assert_eq!(m.in_flight(3000), 0);
        assert_eq!(m.due(3000), [0]);
        // Retransmitted over a fresh SURB; the late ack of the first copy
        // still counts.
        let (_, k0b, _) = surb();
        m.record_send(0, AckId([3; 16]), &k0b, 3000, T);
        assert_eq!(m.retransmissions, 1);
        assert_eq!(m.fragments[0].retry_at_ms, 3000 + 3000);
        assert_eq!(
            m.apply_reply(&reply(s0, &AckId([1; 16]).to_ack_body(), &server), 3500)
                .map(|a| a.index),
            Some(0)
        );
        assert!(m.advance(3500));
        assert_eq!(m.state, DeliveryState::Stored);
        assert!(m.is_final());
        assert!(m.due(u64::MAX).is_empty());
        assert!(m.fragments.iter().all(|f| f.surbs.is_empty()));
    }

    #[test]
    fn a_wrong_ack_id_or_a_stranger_reply_acknowledges_nothing() {
        let mut m = Outgoing::new("ab".into(), "to".into(), 1, 0, DEFAULT_GIVE_UP);
        let (s, k, server) = surb();
        m.record_send(0, AckId([1; 16]), &k, 0, T);
        // Opens under our keys but names another ack.
        assert_eq!(
            m.apply_reply(&reply(s, &AckId([9; 16]).to_ack_body(), &server), 0),
            None
        );
        let (other, _, _) = surb();
        assert_eq!(
            m.apply_reply(&reply(other, &AckId([1; 16]).to_ack_body(), &server), 0),
            None
        );
        assert!(!m.fragments[0].acked);
    }

    #[test]
    fn an_unacknowledged_message_fails_at_the_give_up_time_with_a_reason() {
        let mut m = Outgoing::new("ab".into(), "to".into(), 3, 0, Duration::from_secs(10));
        let (_, k, _) = surb();
        for i in 0..3 {
            m.record_send(i, AckId([i as u8; 16]), &k, 0, T);
        }
        m.fragments[1].acked = true;
        assert!(m.advance(9_999));
        assert_eq!(m.state, DeliveryState::Sent);
        assert!(m.advance(10_000));
        assert_eq!(m.state, DeliveryState::Failed);
        assert_eq!(
            m.reason.as_deref(),
            Some("no ack for 2 of 3 fragments within 10 s of sending")
        );
        assert!(m.due(20_000).is_empty());
    }

    #[test]
    fn the_give_up_counts_from_each_fragments_first_transmission() {
        // A large message whose last fragment first leaves at 30 s (it
        // waited for payload ticks) is not failed at 10 s.
        let mut m = Outgoing::new("ab".into(), "to".into(), 2, 0, Duration::from_secs(10));
        let (_, k, _) = surb();
        m.record_send(0, AckId([0; 16]), &k, 0, T);
        assert!(!m.advance(9_000));
        m.record_send(1, AckId([1; 16]), &k, 30_000, T);
        assert!(m.advance(30_000), "sent");
        assert_eq!(m.state, DeliveryState::Sent);
        // A retransmission does not move it.
        m.record_send(1, AckId([2; 16]), &k, 35_000, T);
        assert!(!m.advance(39_999));
        assert!(m.advance(40_000));
        assert_eq!(m.state, DeliveryState::Failed);
    }

    #[test]
    fn only_the_latest_surbs_are_kept_and_the_state_survives_json() {
        let mut m = Outgoing::new("ab".into(), "to".into(), 1, 0, DEFAULT_GIVE_UP);
        for i in 0..(MAX_PENDING_SURBS + 2) {
            let (_, k, _) = surb();
            m.record_send(0, AckId([i as u8; 16]), &k, 0, T);
        }
        assert_eq!(m.fragments[0].surbs.len(), MAX_PENDING_SURBS);
        assert_eq!(m.fragments[0].surbs[0].ack_id, hex::encode([2u8; 16]));
        assert_eq!(m.retransmissions, MAX_PENDING_SURBS as u32 + 1);
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"state\":\"queued\""), "{json}");
        let back: Outgoing = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        assert!(!format!("{:?}", m.fragments[0].surbs[0]).contains(&m.fragments[0].surbs[0].keys));
    }
}
