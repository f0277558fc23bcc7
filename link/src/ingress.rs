//! Accepting packets: the listening half of a packet link.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;

use tokio::io::AsyncReadExt;

use crate::{
    ConnectionEnd, ConnectionStats, FRAME_LEN, IngressLog, Result, TlsIdentity, server_config,
};

/// Limits on what peers may hold open.
#[derive(Clone, Debug)]
pub struct IngressConfig {
    /// Most connections open at once; further ones are closed at accept.
    pub max_connections: usize,
    /// A TLS handshake that takes longer is abandoned.
    pub handshake_timeout: Duration,
    /// A connection that starts no frame for this long is closed.
    pub idle_timeout: Duration,
    /// A frame must be complete this long after its first byte arrived
    /// (slow senders hold a slot for at most this long per frame).
    pub frame_timeout: Duration,
    /// Test hook: record every frame received (time, peer address, length,
    /// frame id).
    pub log: Option<Arc<IngressLog>>,
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            frame_timeout: Duration::from_secs(10),
            log: None,
        }
    }
}

/// Counters of what the listener accepted and refused.
#[derive(Default, Debug)]
pub struct IngressStats {
    /// Frames read and handed on.
    pub frames: AtomicU64,
    /// Frames dropped because the processing queue was full (load shedding).
    pub dropped_overload: AtomicU64,
    /// Connections closed for a partial frame or a TLS failure.
    pub bad_connections: AtomicU64,
    /// Connections refused because `max_connections` were open.
    pub refused_connections: AtomicU64,
    /// Frames cut off: the connection ended, failed or stalled past
    /// `frame_timeout` inside one (a failed TLS handshake is no frame).
    pub partial_frames: AtomicU64,
    /// Connections open now (from the TCP accept, so the TLS handshake
    /// included) and how past ones ended.
    pub connections: Arc<ConnectionStats>,
}

/// A frame received from a peer, not yet checked.
pub type Frame = Box<[u8; FRAME_LEN]>;

/// What became of a frame offered to a [`FrameSink`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offered {
    /// Queued for processing.
    Taken,
    /// The queue is full: the frame is dropped and counted as overload.
    Full,
    /// Nothing processes frames any more: the connection is closed.
    Closed,
}

/// Where [`serve_packets`] hands whole frames: a bounded queue that never
/// makes a connection wait (a full queue drops the frame).
pub trait FrameSink: Clone + Send + Sync + 'static {
    /// Queues `frame` without waiting, or says why not.
    fn offer(&self, frame: Frame) -> Offered;
}

impl FrameSink for mpsc::Sender<Frame> {
    fn offer(&self, frame: Frame) -> Offered {
        match self.try_send(frame) {
            Ok(()) => Offered::Taken,
            Err(mpsc::error::TrySendError::Full(_)) => Offered::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Offered::Closed,
        }
    }
}

/// Accepts TLS connections on `listener` and hands every whole frame to `tx`
/// without waiting: when the queue is full the frame is dropped and counted,
/// so a flood cannot grow memory. Runs until the listener fails.
pub async fn serve_packets(
    listener: TcpListener,
    identity: &TlsIdentity,
    config: IngressConfig,
    tx: impl FrameSink,
    stats: Arc<IngressStats>,
) -> Result<()> {
    let acceptor = TlsAcceptor::from(server_config(identity)?);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            stats.refused_connections.fetch_add(1, Ordering::Relaxed);
            stats.connections.not_opened(ConnectionEnd::Limit);
            continue;
        };
        // Counted from here so that the gauge reads against `max_connections`;
        // dropped with the task however it ends.
        let open = stats.connections.opened();
        let _ = tcp.set_nodelay(true);
        let (acceptor, tx, stats, config) =
            (acceptor.clone(), tx.clone(), stats.clone(), config.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut open = open;
            match connection(tcp, peer, acceptor, &config, &tx, &stats).await {
                Ok(()) => open.ends(ConnectionEnd::Closed),
                Err((end, why)) => {
                    if matches!(end, ConnectionEnd::Handshake | ConnectionEnd::Broken) {
                        stats.bad_connections.fetch_add(1, Ordering::Relaxed);
                    }
                    open.ends(end);
                    tracing::debug!(%why, reason = end.as_str(), "closed packet connection");
                }
            }
        });
    }
}

/// Why a connection was closed, and the detail for the debug log.
type Closed = (ConnectionEnd, String);

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    config: &IngressConfig,
    tx: &impl FrameSink,
    stats: &IngressStats,
) -> std::result::Result<(), Closed> {
    use ConnectionEnd::{Broken, Handshake, Idle};
    let mut tls = tokio::time::timeout(config.handshake_timeout, acceptor.accept(tcp))
        .await
        .map_err(|_| (Handshake, "TLS handshake timed out".to_string()))?
        .map_err(|e| (Handshake, format!("TLS handshake failed: {e}")))?;
    loop {
        let mut frame: Frame = Box::new([0u8; FRAME_LEN]);
        let started = tokio::time::timeout(config.idle_timeout, tls.read(&mut frame[..]))
            .await
            .map_err(|_| (Idle, "idle".to_string()))?
            .map_err(|e| (Broken, e.to_string()))?;
        if started == 0 {
            return Ok(());
        }
        let rest =
            tokio::time::timeout(config.frame_timeout, tls.read_exact(&mut frame[started..]))
                .await
                .map_err(|_| "frame not completed in time".to_string())
                .and_then(|read| read.map_err(|e| format!("partial frame: {e}")));
        if let Err(why) = rest {
            stats.partial_frames.fetch_add(1, Ordering::Relaxed);
            return Err((Broken, why));
        }
        stats.frames.fetch_add(1, Ordering::Relaxed);
        if let Some(log) = &config.log {
            log.record(peer.ip(), &frame[..]);
        }
        match tx.offer(frame) {
            Offered::Taken => {}
            Offered::Full => {
                stats.dropped_overload.fetch_add(1, Ordering::Relaxed);
            }
            Offered::Closed => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_stalled_frame_is_cut_off_and_whole_frames_pass() {
        let identity = TlsIdentity::generate().unwrap();
        let pin = identity.pin();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, mut rx) = mpsc::channel(4);
        let stats = Arc::new(IngressStats::default());
        let config = IngressConfig {
            max_connections: 1,
            frame_timeout: Duration::from_millis(200),
            ..IngressConfig::default()
        };
        let s = stats.clone();
        tokio::spawn(async move { serve_packets(listener, &identity, config, tx, s).await });

        // Half a frame, then nothing: the only slot is freed after the timeout.
        let mut slow = connect(&addr, pin).await.unwrap();
        slow.write_all(&[1u8; FRAME_LEN / 2]).await.unwrap();
        slow.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(stats.bad_connections.load(Ordering::Relaxed), 1);
        assert_eq!(stats.partial_frames.load(Ordering::Relaxed), 1);

        let mut good = connect(&addr, pin).await.unwrap();
        good.write_all(&[2u8; FRAME_LEN]).await.unwrap();
        good.flush().await.unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(frame[FRAME_LEN - 1], 2);
    }

    /// Waits (at most 5 s) for `ok`.
    async fn until(what: &str, ok: impl Fn() -> bool) {
        for _ in 0..500 {
            if ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}: not after 5 s");
    }

    #[tokio::test]
    async fn open_connections_are_counted_until_closed_and_each_end_by_its_reason() {
        let identity = TlsIdentity::generate().unwrap();
        let pin = identity.pin();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, mut rx) = mpsc::channel(4);
        let stats = Arc::new(IngressStats::default());
        let config = IngressConfig {
            max_connections: 1,
            idle_timeout: Duration::from_millis(300),
            ..IngressConfig::default()
        };
        let s = stats.clone();
        tokio::spawn(async move { serve_packets(listener, &identity, config, tx, s).await });
        let c = stats.connections.clone();
        let ended = |why| c.ended(why);

        // One peer: open while it is connected, closed once it hangs up.
        let mut peer = connect(&addr, pin).await.unwrap();
        until("one open", || c.open() == 1).await;
        // The only slot is taken: a second peer is refused at accept.
        assert!(connect(&addr, pin).await.is_err());
        until("refused at the limit", || ended(ConnectionEnd::Limit) == 1).await;
        assert_eq!(c.open(), 1);
        peer.write_all(&[3u8; FRAME_LEN]).await.unwrap();
        peer.flush().await.unwrap();
        rx.recv().await.unwrap();
        peer.shutdown().await.unwrap();
        until("closed in good order", || ended(ConnectionEnd::Closed) == 1).await;
        assert_eq!(c.open(), 0);

        // Not TLS at all: a failed handshake.
        let mut junk = tokio::net::TcpStream::connect(&addr).await.unwrap();
        junk.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        until("a failed handshake", || {
            ended(ConnectionEnd::Handshake) == 1
        })
        .await;
        until("the junk connection gone", || c.open() == 0).await;

        // Silent past the idle timeout.
        let _silent = connect(&addr, pin).await.unwrap();
        until("closed when idle", || ended(ConnectionEnd::Idle) == 1).await;
        assert_eq!(c.open(), 0);

        // Half a frame, then gone.
        let mut half = connect(&addr, pin).await.unwrap();
        half.write_all(&[4u8; FRAME_LEN / 2]).await.unwrap();
        half.shutdown().await.unwrap();
        until("cut off in a frame", || ended(ConnectionEnd::Broken) == 1).await;
        assert_eq!(c.open(), 0);

        // An idle close is no bad connection; a failed handshake and a
        // partial frame are.
        assert_eq!(stats.bad_connections.load(Ordering::Relaxed), 2);
        // Only the half frame was a frame cut off.
        assert_eq!(stats.partial_frames.load(Ordering::Relaxed), 1);
        assert_eq!(stats.refused_connections.load(Ordering::Relaxed), 1);
        assert_eq!(ended(ConnectionEnd::Closed), 1);
    }

    #[tokio::test]
    async fn the_ingress_log_records_each_frame_with_its_peer_address() {
        let identity = TlsIdentity::generate().unwrap();
        let pin = identity.pin();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, mut rx) = mpsc::channel(4);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ingress.log");
        let log = Arc::new(IngressLog::open(&path).unwrap());
        let config = IngressConfig {
            log: Some(log.clone()),
            ..IngressConfig::default()
        };
        tokio::spawn(async move {
            serve_packets(listener, &identity, config, tx, Arc::default()).await
        });

        let from = "127.0.0.2".parse().unwrap();
        let mut link = crate::connect_from(Some(from), &addr, pin).await.unwrap();
        for b in [1u8, 2] {
            link.write_all(&[b; FRAME_LEN]).await.unwrap();
        }
        link.flush().await.unwrap();
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap();
        }
        log.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        for b in [1u8, 2] {
            let want = format!(
                " 127.0.0.2 {FRAME_LEN} {}",
                crate::frame_id(&[b; FRAME_LEN])
            );
            assert_eq!(
                text.lines().filter(|l| l.ends_with(&want)).count(),
                1,
                "{text}"
            );
        }
    }
}
