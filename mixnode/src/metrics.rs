//! The Prometheus metrics of a mixnode (prefix `bastet_mixnode`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::{CoverSkipped, DropReason};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

pub(crate) struct Metrics {
    pub(crate) received: Counter,
    pub(crate) forwarded: Counter,
    dropped: Family<Reason, Counter>,
    pub(crate) delay_queue_depth: Gauge,
    pub(crate) outbound_queued: Gauge,
    pub(crate) sphinx_keys: Gauge,
    pub(crate) sphinx_key_epoch: Gauge,
    pub(crate) replay_filter_entries: Gauge,
    pub(crate) replay_filter_capacity: Gauge,
    pub(crate) replay_filter_turnovers: Counter,
    pub(crate) cover_sent: Counter,
    cover_skipped: Family<Reason, Counter>,
    pub(crate) cover_loops_returned: Counter,
    pub(crate) cover_loops_lost: Counter,
    pub(crate) cover_loops_pending: Gauge,
}

impl Metrics {
    /// Registers every metric in `registry`, with every drop reason at zero
    /// so that dashboards and alerts see the series before the first drop.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            received: Counter::default(),
            forwarded: Counter::default(),
            dropped: Family::default(),
            delay_queue_depth: Gauge::default(),
            outbound_queued: Gauge::default(),
            sphinx_keys: Gauge::default(),
            sphinx_key_epoch: Gauge::default(),
            replay_filter_entries: Gauge::default(),
            replay_filter_capacity: Gauge::default(),
            replay_filter_turnovers: Counter::default(),
            cover_sent: Counter::default(),
            cover_skipped: Family::default(),
            cover_loops_returned: Counter::default(),
            cover_loops_lost: Counter::default(),
            cover_loops_pending: Gauge::default(),
        };
        registry.register(
            "packets_received",
            "Whole packets read from peers (including those then dropped)",
            m.received.clone(),
        );
        registry.register(
            "packets_forwarded",
            "Packets handed to the link to their next hop",
            m.forwarded.clone(),
        );
        registry.register(
            "packets_dropped",
            "Packets dropped, by reason",
            m.dropped.clone(),
        );
        registry.register(
            "delay_queue_depth",
            "Packets held for their delay now",
            m.delay_queue_depth.clone(),
        );
        registry.register(
            "outbound_queued",
            "Packets queued to next hops, not yet written",
            m.outbound_queued.clone(),
        );
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
            "replay_filter_turnovers",
            "Replay filter generations started while their key was in force: more packets \
             came than max_packet_rate sized the filter for, and the oldest tags were forgotten",
            m.replay_filter_turnovers.clone(),
        );
        registry.register(
            "cover_sent",
            "This node's own cover packets handed to the link (not counted as forwarded)",
            m.cover_sent.clone(),
        );
        registry.register(
            "cover_skipped",
            "Cover ticks that sent nothing, by reason",
            m.cover_skipped.clone(),
        );
        registry.register(
            "cover_loops_returned",
            "Own cover loops back through their SURB with the right ack id, in time",
            m.cover_loops_returned.clone(),
        );
        registry.register(
            "cover_loops_lost",
            "Own cover loops not back by their deadline (or given up with the tracker full)",
            m.cover_loops_lost.clone(),
        );
        registry.register(
            "cover_loops_pending",
            "Own cover loops out and waited for now",
            m.cover_loops_pending.clone(),
        );
        for reason in DropReason::ALL {
            m.drops(reason, 0);
        }
        for reason in CoverSkipped::ALL {
            m.cover_skips(reason, 0);
        }
        m
    }

    pub(crate) fn cover_skips(&self, reason: CoverSkipped, n: u64) {
        self.cover_skipped
            .get_or_create(&Reason {
                reason: reason.as_str(),
            })
            .inc_by(n);
    }

    pub(crate) fn drops(&self, reason: DropReason, n: u64) {
        self.dropped
            .get_or_create(&Reason {
                reason: reason.as_str(),
            })
            .inc_by(n);
    }
}

/// Saturating conversion for gauges.
pub(crate) fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
