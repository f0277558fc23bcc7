//! The mailbox server's Prometheus metrics (prefix `bastet_mailbox`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why.
    pub reason: String,
}

/// An `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// How the request ended.
    pub outcome: String,
}

/// Every reason a packet is dropped, listed so each series exists from the
/// start.
pub const DROP_REASONS: [&str; 9] = [
    "replay",
    "malformed",
    "wrong_length",
    "unknown_mailbox",
    "quota",
    "not_final_hop",
    "overload",
    "store_error",
    "unknown_key",
];

/// Handles to every metric; cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics {
    /// Packets taken off the link.
    pub packets_received: Counter,
    /// Payloads durably stored.
    pub messages_stored: Counter,
    /// Cover packets (addressed to the drop mailbox) discarded unstored.
    pub cover_received: Counter,
    /// Packets dropped, by reason.
    pub packets_dropped: Family<Reason, Counter>,
    /// API requests, by outcome.
    pub api_requests: Family<Outcome, Counter>,
    /// API authentication failures, by reason.
    pub auth_failures: Family<Reason, Counter>,
    /// Mailboxes registered.
    pub mailboxes: Gauge,
    /// Sphinx keys packets are processed under now.
    pub sphinx_keys: Gauge,
    /// The newest epoch whose key is in force.
    pub sphinx_key_epoch: Gauge,
    /// Replay tags in the fullest filter's current generation.
    pub replay_filter_entries: Gauge,
    /// Tags a replay filter generation holds.
    pub replay_filter_capacity: Gauge,
    /// Acks sent back into the mixnet for stored fragments.
    pub acks_sent: Counter,
    /// Acks not sent, by reason.
    pub acks_dropped: Family<Reason, Counter>,
}

/// Every reason an ack is not sent, listed so each series exists from the
/// start.
pub const ACK_DROP_REASONS: [&str; 4] = ["no_consensus", "bad_first_hop", "bad_surb", "queue_full"];

impl Metrics {
    /// Fresh metrics registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        registry.register(
            "packets_received",
            "Packets received on the packet link",
            m.packets_received.clone(),
        );
        registry.register(
            "messages_stored",
            "Payloads durably stored in a mailbox",
            m.messages_stored.clone(),
        );
        registry.register(
            "cover_received",
            "Cover packets (addressed to the drop mailbox) authenticated, replay-checked and discarded",
            m.cover_received.clone(),
        );
        registry.register(
            "packets_dropped",
            "Packets dropped, by reason",
            m.packets_dropped.clone(),
        );
        registry.register(
            "api_requests",
            "Mailbox API requests, by outcome",
            m.api_requests.clone(),
        );
        registry.register(
            "auth_failures",
            "Mailbox API authentication failures, by reason",
            m.auth_failures.clone(),
        );
        registry.register("mailboxes", "Mailboxes registered", m.mailboxes.clone());
        registry.register(
            "sphinx_keys",
            "Sphinx keys packets are processed under now (current, next, previous in grace)",
            m.sphinx_keys.clone(),
        );
        registry.register(
            "sphinx_key_epoch",
            "The newest epoch whose Sphinx key packets are processed under",
            m.sphinx_key_epoch.clone(),
        );
        registry.register(
            "replay_filter_entries",
            "Replay tags in the fullest filter's current generation (it turns over at replay_filter_capacity)",
            m.replay_filter_entries.clone(),
        );
        registry.register(
            "replay_filter_capacity",
            "Tags a replay filter generation holds (replay_filter_capacity)",
            m.replay_filter_capacity.clone(),
        );
        registry.register(
            "acks_sent",
            "Acks sent back through the sender's SURB once a fragment was stored",
            m.acks_sent.clone(),
        );
        registry.register(
            "acks_dropped",
            "Acks not sent (the fragment is stored all the same), by reason",
            m.acks_dropped.clone(),
        );
        for reason in ACK_DROP_REASONS {
            m.acks_dropped
                .get_or_create(&reason_label(reason))
                .inc_by(0);
        }
        for reason in DROP_REASONS {
            m.packets_dropped
                .get_or_create(&reason_label(reason))
                .inc_by(0);
        }
        m
    }

    /// Counts `n` packets dropped for `reason`.
    pub fn dropped(&self, reason: &str, n: u64) {
        self.packets_dropped
            .get_or_create(&reason_label(reason))
            .inc_by(n);
    }

    /// Counts one ack not sent.
    pub fn ack_dropped(&self, reason: &str) {
        self.acks_dropped.get_or_create(&reason_label(reason)).inc();
    }

    /// Counts one API request that ended with `outcome`.
    pub fn request(&self, outcome: &str) {
        self.api_requests
            .get_or_create(&Outcome {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Counts one authentication failure.
    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures
            .get_or_create(&reason_label(reason))
            .inc();
    }
}

fn reason_label(reason: &str) -> Reason {
    Reason {
        reason: reason.to_string(),
    }
}
