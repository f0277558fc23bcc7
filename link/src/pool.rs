//! Outbound connections to next hops: one pinned TLS connection per peer, fed
//! by a bounded queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bastet_sphinx::{NodeId, Packet};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::{CertPin, connect, write_frame};

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
    /// Pause between failed connection attempts.
    pub retry_delay: Duration,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            queue_len: 4096,
            max_peers: 1024,
            idle_timeout: Duration::from_secs(300),
            retry_delay: Duration::from_millis(500),
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
    peers: Mutex<HashMap<NodeId, Handle>>,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Stats {
    queued: AtomicUsize,
    written: AtomicU64,
    lost: AtomicU64,
}

impl Outbound {
    /// An empty pool. Must be used inside a tokio runtime.
    pub fn new(config: OutboundConfig) -> Self {
        Outbound {
            config,
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
            tokio::spawn(writer(
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
        match handle.tx.try_send(packet) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(_) => Err(SendError::QueueFull),
        }
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
}

/// Most frames written before one flush.
const BATCH: usize = 64;

async fn writer(
    peer: Peer,
    mut rx: mpsc::Receiver<Packet>,
    config: OutboundConfig,
    stats: Arc<Stats>,
) {
    let mut first = None;
    loop {
        // Wait for something to send before opening a connection.
        let packet = match first.take() {
            Some(p) => p,
            None => match tokio::time::timeout(config.idle_timeout, rx.recv()).await {
                Ok(Some(p)) => p,
                Ok(None) | Err(_) => return,
            },
        };
        let mut stream = match connect(&peer.addr, peer.pin).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(node = %peer.node.short(), error = %e, "next hop unreachable");
                // Keep the packet for the next attempt; the queue bounds the backlog.
                first = Some(packet);
                tokio::time::sleep(config.retry_delay).await;
                continue;
            }
        };
        let mut pending = Some(packet);
        loop {
            let mut batch = Vec::with_capacity(BATCH);
            if let Some(p) = pending.take() {
                batch.push(p);
            } else {
                match tokio::time::timeout(config.idle_timeout, rx.recv()).await {
                    Ok(Some(p)) => batch.push(p),
                    Ok(None) | Err(_) => {
                        let _ = stream.shutdown().await;
                        return;
                    }
                }
            }
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let n = batch.len();
            stats.queued.fetch_sub(n, Ordering::Relaxed);
            let mut result = Ok(());
            for p in &batch {
                result = write_frame(&mut stream, p.as_bytes()).await;
                if result.is_err() {
                    break;
                }
            }
            if result.is_ok() {
                result = stream.flush().await;
            }
            match result {
                Ok(()) => {
                    stats.written.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    // Whether the peer got these is unknown; end-to-end acks
                    // and retransmission recover them.
                    stats.lost.fetch_add(n as u64, Ordering::Relaxed);
                    tracing::warn!(node = %peer.node.short(), error = %e, "link to next hop failed");
                    break;
                }
            }
        }
    }
}
