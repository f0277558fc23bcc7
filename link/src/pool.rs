//! Outbound connections to next hops: one pinned TLS connection per peer, fed
//! by a bounded queue.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bastet_sphinx::{NodeId, Packet};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::{CertPin, ConnectionEnd, ConnectionStats, FRAME_LEN, connect_from, write_frame};

/// Where a next hop listens and which certificate it must present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The node.
    pub node: NodeId,
    /// `host:port` of its packet link.
    pub addr: String,
    /// Pin of its TLS certificate, from its signed descriptor.
    pub pin: CertPin,
}

/// Limits of the outbound pool.
#[derive(Clone, Debug)]
pub struct OutboundConfig {
    /// Packets waiting per peer before new ones are refused.
    pub queue_len: usize,
    /// Most peers with an open queue at once.
    pub max_peers: usize,
    /// A connection with nothing to send for this long is closed.
    pub idle_timeout: Duration,
    /// First pause after a failed connection attempt; doubles up to
    /// `max_retry_delay`.
    pub retry_delay: Duration,
    /// Longest pause between connection attempts.
    pub max_retry_delay: Duration,
    /// After this many failed attempts in a row, what is queued for the
    /// peer is dropped (and counted lost) rather than held.
    pub give_up_after: u32,
    /// A TCP connect plus TLS handshake that takes longer fails.
    pub connect_timeout: Duration,
    /// Writing and flushing one batch that takes longer fails the connection.
    pub write_timeout: Duration,
    /// Connect from this local address (any port) instead of the one the
    /// system picks: on a host with several addresses, the one next hops see.
    pub bind_addr: Option<IpAddr>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            queue_len: 1024,
            max_peers: 1024,
            idle_timeout: Duration::from_secs(300),
            retry_delay: Duration::from_millis(250),
            max_retry_delay: Duration::from_secs(30),
            give_up_after: 6,
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            bind_addr: None,
        }
    }
}

/// Why a packet was not queued. The packet is dropped; the caller counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The peer's queue is full: it is slow or unreachable.
    #[error("queue to next hop is full")]
    QueueFull,
    /// The pool already has `max_peers` peers.
    #[error("too many next hops")]
    TooManyPeers,
}

struct Handle {
    peer: Peer,
    tx: mpsc::Sender<Packet>,
}

/// A pool of connections to next hops. Cheap to share behind an `Arc`.
pub struct Outbound {
    config: OutboundConfig,
    /// Where writers run, so that [`Outbound::send`] works from any thread.
    runtime: tokio::runtime::Handle,
    peers: Mutex<HashMap<NodeId, Handle>>,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Stats {
    queued: AtomicUsize,
    written: AtomicU64,
    lost: AtomicU64,
    connections: Arc<ConnectionStats>,
}

impl Outbound {
    /// An empty pool. Must be created inside a tokio runtime, whose tasks
    /// then write to the peers; [`Outbound::send`] may be called from any
    /// thread.
    pub fn new(config: OutboundConfig) -> Self {
        Outbound {
            config,
            runtime: tokio::runtime::Handle::current(),
            peers: Mutex::new(HashMap::new()),
            stats: Arc::default(),
        }
    }

    /// Queues `packet` for `peer` without waiting.
    pub fn send(&self, peer: &Peer, packet: Packet) -> Result<(), SendError> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let reusable = peers
            .get(&peer.node)
            .is_some_and(|h| h.peer == *peer && !h.tx.is_closed());
        if !reusable {
            if !peers.contains_key(&peer.node) && peers.len() >= self.config.max_peers {
                peers.retain(|_, h| !h.tx.is_closed());
                if peers.len() >= self.config.max_peers {
                    return Err(SendError::TooManyPeers);
                }
            }
            let (tx, rx) = mpsc::channel(self.config.queue_len.max(1));
            self.runtime.spawn(writer(
                peer.clone(),
                rx,
                self.config.clone(),
                self.stats.clone(),
            ));
            peers.insert(
                peer.node,
                Handle {
                    peer: peer.clone(),
                    tx,
                },
            );
        }
        let handle = peers.get(&peer.node).ok_or(SendError::QueueFull)?;
        // Counted before the writer can see it, so the gauge never wraps.
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        handle.tx.try_send(packet).map_err(|_| {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            SendError::QueueFull
        })
    }

    /// Packets queued across all peers, not yet written.
    pub fn queued(&self) -> usize {
        self.stats.queued.load(Ordering::Relaxed)
    }

    /// Packets written to a peer's TLS stream so far.
    pub fn written(&self) -> u64 {
        self.stats.written.load(Ordering::Relaxed)
    }

    /// Packets that were queued but lost because the connection failed.
    pub fn lost(&self) -> u64 {
        self.stats.lost.load(Ordering::Relaxed)
    }

    /// Connections to next hops open now (TLS established), and how past
    /// ones ended (failed connection attempts as `Handshake`).
    pub fn connections(&self) -> Arc<ConnectionStats> {
        self.stats.connections.clone()
    }
}

/// Most frames written before one flush.
const BATCH: usize = 64;

/// Feeds one peer's queue into a connection to it, reconnecting with
/// exponential backoff, until the queue has been idle for `idle_timeout`.
async fn writer(
    peer: Peer,
    mut rx: mpsc::Receiver<Packet>,
    config: OutboundConfig,
    stats: Arc<Stats>,
) {
    let mut pending: Vec<Packet> = Vec::new();
    let mut wire: Vec<u8> = Vec::new();
    let mut failures = 0u32;
    let mut backoff = config.retry_delay;
    loop {
        // Wait for something to send before opening a connection.
        if pending.is_empty() {
            match tokio::time::timeout(config.idle_timeout, rx.recv()).await {
                Ok(Some(p)) => take(&mut pending, p, &stats),
                Ok(None) | Err(_) => return close(rx, &stats),
            }
        }
        let connected = tokio::time::timeout(
            config.connect_timeout,
            connect_from(config.bind_addr, &peer.addr, peer.pin),
        )
        .await;
        let mut stream = match connected {
            Ok(Ok(s)) => s,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "connection timed out".into(),
                };
                failures += 1;
                stats.connections.not_opened(ConnectionEnd::Handshake);
                tracing::warn!(node = %peer.node.short(), attempt = failures, error = %why, "next hop unreachable");
                if failures >= config.give_up_after {
                    // Holding packets for a peer that stays away only delays
                    // them past usefulness; end-to-end retransmission covers them.
                    lose(&stats, pending.len());
                    pending.clear();
                    while let Ok(_dropped) = rx.try_recv() {
                        stats.queued.fetch_sub(1, Ordering::Relaxed);
                        lose(&stats, 1);
                    }
                    failures = 0;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.max_retry_delay);
                continue;
            }
        };
        failures = 0;
        backoff = config.retry_delay;
        // Counted ended `Broken` unless it ends in good order below.
        let mut open = stats.connections.opened();
        loop {
            if pending.is_empty() {
                match tokio::time::timeout(config.idle_timeout, rx.recv()).await {
                    Ok(Some(p)) => take(&mut pending, p, &stats),
                    ended => {
                        // Nothing sent for the idle timeout, or the pool
                        // dropped this peer's queue.
                        open.ends(match ended {
                            Err(_) => ConnectionEnd::Idle,
                            Ok(_) => ConnectionEnd::Closed,
                        });
                        let _ = tokio::time::timeout(config.write_timeout, stream.shutdown()).await;
                        return close(rx, &stats);
                    }
                }
            }
            while pending.len() < BATCH {
                match rx.try_recv() {
                    Ok(p) => take(&mut pending, p, &stats),
                    Err(_) => break,
                }
            }
            let n = pending.len();
            // One write for the batch: TLS then seals it in as few records
            // and system calls as it can, rather than one of each per frame.
            wire.clear();
            for p in pending.drain(..) {
                wire.extend_from_slice(p.as_bytes());
            }
            let written = tokio::time::timeout(config.write_timeout, async {
                write_frames(&mut stream, &wire).await?;
                stream.flush().await
            })
            .await;
            match written {
                Ok(Ok(())) => {
                    stats.written.fetch_add(n as u64, Ordering::Relaxed);
                }
                failed => {
                    // Whether the peer got these is unknown; end-to-end acks
                    // and retransmission recover them.
                    lose(&stats, n);
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "write timed out".into(),
                    };
                    tracing::warn!(node = %peer.node.short(), error = %why, "link to next hop failed");
                    break;
                }
            }
        }
    }
}

/// Writes whole frames laid end to end in `wire`, checking each one's length
/// as [`write_frame`] does.
async fn write_frames<W: tokio::io::AsyncWrite + Unpin>(
    stream: &mut W,
    wire: &[u8],
) -> std::io::Result<()> {
    if !wire.len().is_multiple_of(FRAME_LEN) {
        // Only whole packets are queued; check rather than trust.
        return write_frame(stream, wire).await;
    }
    stream.write_all(wire).await
}

/// Moves a packet from the queue into the writer's hands.
fn take(pending: &mut Vec<Packet>, p: Packet, stats: &Stats) {
    stats.queued.fetch_sub(1, Ordering::Relaxed);
    pending.push(p);
}

fn lose(stats: &Stats, n: usize) {
    stats.lost.fetch_add(n as u64, Ordering::Relaxed);
}

/// Closes the queue and counts what was still in it as lost.
fn close(mut rx: mpsc::Receiver<Packet>, stats: &Stats) {
    rx.close();
    while let Ok(_dropped) = rx.try_recv() {
        stats.queued.fetch_sub(1, Ordering::Relaxed);
        lose(stats, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IngressConfig, TlsIdentity, serve_packets};
    use bastet_sphinx::PACKET_LEN;

    fn packet(b: u8) -> Packet {
        Packet::from_bytes(&[b; PACKET_LEN]).unwrap()
    }

    #[tokio::test]
    async fn packets_reach_a_peer_and_an_unreachable_peer_is_given_up_on() {
        let identity = TlsIdentity::generate().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, mut rx) = mpsc::channel(16);
        let pin = identity.pin();
        tokio::spawn(async move {
            serve_packets(
                listener,
                &identity,
                IngressConfig::default(),
                tx,
                Arc::default(),
            )
            .await
        });
        let config = OutboundConfig {
            retry_delay: Duration::from_millis(10),
            give_up_after: 2,
            ..OutboundConfig::default()
        };
        let pool = Outbound::new(config);
        let good = Peer {
            node: bastet_sphinx::NodeId([1; 32]),
            addr,
            pin,
        };
        pool.send(&good, packet(1)).unwrap();
        pool.send(&good, packet(2)).unwrap();
        for want in [1u8, 2] {
            let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got[0], want);
        }

        // Nothing listens here: the packet is dropped and counted, not held.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let dead = Peer {
            node: bastet_sphinx::NodeId([2; 32]),
            addr: dead_addr,
            pin,
        };
        pool.send(&dead, packet(3)).unwrap();
        for _ in 0..200 {
            if pool.lost() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(pool.lost(), 1);
        assert_eq!(pool.queued(), 0);
        assert_eq!(pool.written(), 2);
    }

    #[tokio::test]
    async fn a_link_is_counted_open_on_both_sides_until_idle_and_failed_attempts_are_counted() {
        let identity = TlsIdentity::generate().unwrap();
        let pin = identity.pin();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, mut rx) = mpsc::channel(16);
        let ingress = Arc::new(crate::IngressStats::default());
        let stats = ingress.clone();
        tokio::spawn(async move {
            serve_packets(listener, &identity, IngressConfig::default(), tx, stats).await
        });
        let pool = Outbound::new(OutboundConfig {
            idle_timeout: Duration::from_millis(300),
            retry_delay: Duration::from_millis(10),
            ..OutboundConfig::default()
        });
        let (outbound, inbound) = (pool.connections(), ingress.connections.clone());
        let peer = Peer {
            node: bastet_sphinx::NodeId([1; 32]),
            addr,
            pin,
        };
        pool.send(&peer, packet(1)).unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outbound.open(), 1);
        assert_eq!(inbound.open(), 1);
        // Nothing more to send: the pool closes the link in good order.
        for _ in 0..500 {
            if outbound.open() == 0 && inbound.open() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!((outbound.open(), inbound.open()), (0, 0));
        assert_eq!(outbound.ended(ConnectionEnd::Idle), 1);
        assert_eq!(inbound.ended(ConnectionEnd::Closed), 1);

        // A peer nobody listens for: attempts fail and are counted, none open.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = Peer {
            node: bastet_sphinx::NodeId([2; 32]),
            addr: closed.local_addr().unwrap().to_string(),
            pin,
        };
        drop(closed);
        pool.send(&dead, packet(2)).unwrap();
        for _ in 0..500 {
            if outbound.ended(ConnectionEnd::Handshake) >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(outbound.ended(ConnectionEnd::Handshake) >= 2);
        assert_eq!(outbound.open(), 0);
        assert_eq!(outbound.ended(ConnectionEnd::Broken), 0);
    }

    #[tokio::test]
    async fn connections_leave_from_the_bind_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let from: IpAddr = "127.0.0.2".parse().unwrap();
        let pool = Outbound::new(OutboundConfig {
            bind_addr: Some(from),
            ..OutboundConfig::default()
        });
        let peer = Peer {
            node: bastet_sphinx::NodeId([1; 32]),
            addr: listener.local_addr().unwrap().to_string(),
            pin: CertPin([0; 32]),
        };
        pool.send(&peer, packet(1)).unwrap();
        let (_tcp, seen) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen.ip(), from);
    }
}
