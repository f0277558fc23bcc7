//! Peer connections open now and how past ones ended, kept by the listener
//! or pool that owns them and read by `/metrics` at every scrape.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Which connections a [`ConnectionStats`] counts: the `direction` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Direction {
    /// Packet links peers opened to this node ([`serve_packets`](crate::serve_packets)).
    Inbound,
    /// Packet links this node opened to next hops ([`Outbound`](crate::Outbound)).
    Outbound,
    /// HTTPS connections to this node's API ([`serve_https_counted`](crate::serve_https_counted)).
    Api,
}

impl Direction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
            Direction::Api => "api",
        }
    }

    /// The ways a connection in this direction can end, each exported from
    /// the start so that alerts see the series before the first one.
    pub fn ends(self) -> &'static [ConnectionEnd] {
        use ConnectionEnd::*;
        match self {
            Direction::Inbound => &[Limit, Handshake, Idle, Broken, Closed],
            Direction::Outbound => &[Handshake, Idle, Broken, Closed],
            Direction::Api => &[Limit, Handshake, Idle, Closed],
        }
    }
}

/// Why a connection ended, or never opened: the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionEnd {
    /// Refused at accept: the listener's most connections were open already.
    Limit,
    /// The TLS handshake (outbound: the TCP connect too) failed or timed out.
    Handshake,
    /// Nothing to read (inbound) or to send (outbound) for the idle timeout;
    /// on the API, ended before this node wrote any response (no whole
    /// request came in time).
    Idle,
    /// Cut off inside a frame, or a read or write failed or timed out (also
    /// a connection whose task ended without saying why).
    Broken,
    /// Closed in good order, by the peer between frames or by this node.
    // Stays the last variant: `COUNT` is counted from it.
    Closed,
}

impl ConnectionEnd {
    /// Variants; the last one's discriminant plus one.
    const COUNT: usize = ConnectionEnd::Closed as usize + 1;

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionEnd::Limit => "limit",
            ConnectionEnd::Handshake => "handshake",
            ConnectionEnd::Idle => "idle",
            ConnectionEnd::Broken => "broken",
            ConnectionEnd::Closed => "closed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Connections open now in one direction, and how many ended for each
/// [`ConnectionEnd`]. Shared (behind an `Arc`) by whatever owns the
/// connections and the metrics that read it.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    open: AtomicU64,
    ended: [AtomicU64; ConnectionEnd::COUNT],
}

impl ConnectionStats {
    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections that ended (or never opened) for `why` so far.
    pub fn ended(&self, why: ConnectionEnd) -> u64 {
        self.ended[why.index()].load(Ordering::Relaxed)
    }

    /// Counts a connection that ended before it was counted open.
    pub(crate) fn not_opened(&self, why: ConnectionEnd) {
        self.ended[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection open until the guard is dropped, whatever path
    /// (error, cancellation, panic) drops it.
    pub(crate) fn opened(self: &Arc<Self>) -> OpenConnection {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection {
            stats: self.clone(),
            end: ConnectionEnd::Broken,
        }
    }
}

/// One open connection; counted ended, with the last reason set, on drop.
#[derive(Debug)]
pub(crate) struct OpenConnection {
    stats: Arc<ConnectionStats>,
    end: ConnectionEnd,
}

impl OpenConnection {
    /// Sets the reason the connection will be counted as ended for
    /// ([`ConnectionEnd::Broken`] until told otherwise).
    pub(crate) fn ends(&mut self, why: ConnectionEnd) {
        self.end = why;
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
        self.stats.not_opened(self.end);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabel {
    direction: &'static str,
    reason: &'static str,
}

#[derive(Debug)]
struct PeerConnections(Vec<(Direction, Arc<ConnectionStats>)>);

impl Collector for PeerConnections {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut open = encoder.encode_descriptor(
            "peer_connections",
            "Peer connections open now, by direction (inbound and api counted from the TCP accept, outbound once the TLS handshake is done)",
            None,
            MetricType::Gauge,
        )?;
        for (direction, stats) in &self.0 {
            let label = DirectionLabel {
                direction: direction.as_str(),
            };
            let value = i64::try_from(stats.open()).unwrap_or(i64::MAX);
            ConstGauge::new(value).encode(open.encode_family(&label)?)?;
        }
        let mut ended = encoder.encode_descriptor(
            "peer_connections_closed",
            "Peer connections closed, or refused or failed before they opened, by direction and reason",
            None,
            MetricType::Counter,
        )?;
        for (direction, stats) in &self.0 {
            for why in direction.ends() {
                let label = EndLabel {
                    direction: direction.as_str(),
                    reason: why.as_str(),
                };
                ConstCounter::new(stats.ended(*why)).encode(ended.encode_family(&label)?)?;
            }
        }
        Ok(())
    }
}

/// Exports `stats` in `registry` (under its prefix) as the gauge
/// `peer_connections{direction}` and the counter
/// `peer_connections_closed{direction, reason}`, read at every scrape.
pub fn register_peer_connections(
    registry: &mut Registry,
    stats: impl IntoIterator<Item = (Direction, Arc<ConnectionStats>)>,
) {
    registry.register_collector(Box::new(PeerConnections(stats.into_iter().collect())));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_counts_open_until_dropped_and_then_its_reason() {
        let stats = Arc::new(ConnectionStats::default());
        let mut a = stats.opened();
        let b = stats.opened();
        assert_eq!(stats.open(), 2);
        a.ends(ConnectionEnd::Idle);
        drop(a);
        // A connection whose task panics is counted broken, and closed.
        let panicked = std::thread::spawn(move || {
            let _b = b;
            panic!("connection task failed");
        })
        .join();
        assert!(panicked.is_err());
        stats.not_opened(ConnectionEnd::Limit);
        assert_eq!(stats.open(), 0);
        assert_eq!(stats.ended(ConnectionEnd::Idle), 1);
        assert_eq!(stats.ended(ConnectionEnd::Broken), 1);
        assert_eq!(stats.ended(ConnectionEnd::Limit), 1);
        assert_eq!(stats.ended(ConnectionEnd::Closed), 0);
    }

    #[test]
    fn the_collector_exports_every_direction_and_reason_under_the_prefix() {
        let inbound = Arc::new(ConnectionStats::default());
        let outbound = Arc::new(ConnectionStats::default());
        let mut registry = Registry::with_prefix("bastet_test");
        register_peer_connections(
            &mut registry,
            [
                (Direction::Inbound, inbound.clone()),
                (Direction::Outbound, outbound.clone()),
            ],
        );
        let _open = [inbound.opened(), inbound.opened()];
        outbound.not_opened(ConnectionEnd::Handshake);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "# TYPE bastet_test_peer_connections gauge",
            "bastet_test_peer_connections{direction=\"inbound\"} 2",
            "bastet_test_peer_connections{direction=\"outbound\"} 0",
            "# TYPE bastet_test_peer_connections_closed counter",
            "bastet_test_peer_connections_closed_total{direction=\"outbound\",reason=\"handshake\"} 1",
            "bastet_test_peer_connections_closed_total{direction=\"inbound\",reason=\"limit\"} 0",
            "bastet_test_peer_connections_closed_total{direction=\"inbound\",reason=\"closed\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        // Reasons that cannot happen in a direction are not exported.
        assert!(
            !text.contains("direction=\"outbound\",reason=\"limit\""),
            "{text}"
        );
    }
}
