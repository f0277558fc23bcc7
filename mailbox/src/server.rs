//! The tokio shell: listeners, the store writer, descriptor publishing.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bastet_directory::{
    ConsensusWatch, Descriptor, DirectoryClient, EpochKey, NodeKeys, Role, SphinxKeyRing,
    publish_rotating_forever, rotate_forever, unix_now,
};
use bastet_link::{
    ConnectionStats, Direction, Frame, IngressConfig, IngressLog, IngressStats, Outbound,
    OutboundConfig, PacketLog, TestLog, TlsIdentity, frame_id,
};
use bastet_sphinx::AckRequest;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::hop::{AckDropped, FinalHop, Opened, ack_packet};
use crate::http::{Api, router};
use crate::metrics::{Metrics, register_store};
use crate::store::{Delivery, Store, StoreLimits};
use crate::{Error, MailboxConfig, Result};

/// Packets waiting between the link and the store; more are dropped and
/// counted (`overload`).
const INGRESS_QUEUE: usize = 8192;
/// Most packets stored with one synced write.
const MAX_BATCH: usize = 256;
/// Signatures the API remembers to refuse replays.
const API_REPLAY_CAPACITY: usize = 100_000;

/// Runs the mailbox server until SIGTERM or SIGINT.
pub async fn run(config: MailboxConfig) -> Result<()> {
    // The signals are watched from the first poll, once the server runs.
    let shutdown = async {
        match bastet_link::shutdown_signal() {
            Ok(signal) => signal.await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    run_until(config, shutdown).await
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs the mailbox server until `shutdown` completes; packets already
/// taken off the link are stored before it returns.
pub async fn run_until(config: MailboxConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    config.validate()?;
    let keys = NodeKeys::load(&config.data_dir)?;
    let (keyring, in_force) = SphinxKeyRing::open_rotated(
        &config.data_dir,
        config.directory.epoch_secs,
        config.sphinx_key_grace_secs(),
        unix_now(),
    )?;
    let keyring = Arc::new(Mutex::new(keyring));
    let tls = TlsIdentity::load(&config.data_dir)?;
    let directory = Arc::new(DirectoryClient::new(&config.directory)?);
    let limits = StoreLimits {
        quota_messages: config.quota_messages,
        max_mailboxes: config.max_mailboxes,
    };
    let db_path = config.data_dir.join("db");
    let store = tokio::task::spawn_blocking(move || Store::open(&db_path, limits))
        .await
        .map_err(|_| Error::CorruptStore("opening the store panicked".into()))??;
    let store = Arc::new(store);
    let hop = FinalHop::new(in_force.clone(), config.replay_filter_capacity)
        .map_err(|why| Error::Config(format!("replay_filter_capacity: {why}")))?;
    let (keys_tx, keys_rx) = watch::channel(in_force);
    let packet_log = match &config.packet_log {
        Some(path) => Some(PacketLog::open(path).map_err(|e| Error::File {
            path: path.clone(),
            why: format!("packet_log: {e}"),
        })?),
        None => None,
    };
    let ingress_log = config
        .test_ingress_log
        .as_deref()
        .map(|path| {
            let log = IngressLog::open(path).map_err(|e| Error::File {
                path: path.to_path_buf(),
                why: format!("test_ingress_log: {e}"),
            })?;
            tracing::warn!(
                path = %path.display(),
                "TEST HOOK test_ingress_log is on: the time, sender address and length of \
                 every packet received are written to disk. Never run a real server like this."
            );
            Ok::<_, Error>(Arc::new(log))
        })
        .transpose()?;
    let store_log = config
        .test_store_log
        .as_deref()
        .map(|path| {
            let log = TestLog::open(path).map_err(|e| Error::File {
                path: path.to_path_buf(),
                why: format!("test_store_log: {e}"),
            })?;
            tracing::warn!(
                path = %path.display(),
                "TEST HOOK test_store_log is on: what every packet received was and whose \
                 mailbox it was for are written to disk. Never run a real server like this."
            );
            Ok::<_, Error>(Arc::new(log))
        })
        .transpose()?;

    let bind_err = |addr, what| move |source| Error::Bind { addr, what, source };
    let packet_listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(bind_err(config.listen, "listen"))?;
    let api_listener = std::net::TcpListener::bind(config.api_listen)
        .map_err(bind_err(config.api_listen, "api_listen"))?;
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .map_err(bind_err(config.metrics_listen, "metrics_listen"))?;

    let mut registry = Registry::with_prefix("bastet_mailbox");
    let metrics = Metrics::register(&mut registry);
    metrics
        .mailboxes
        .set(i64::try_from(store.mailboxes()).unwrap_or(i64::MAX));
    metrics
        .sphinx_keys
        .set(i64::try_from(hop.key_epochs().len()).unwrap_or(i64::MAX));
    metrics
        .sphinx_key_epoch
        .set(i64::try_from(hop.key_epochs().into_iter().max().unwrap_or(0)).unwrap_or(i64::MAX));
    metrics
        .replay_filter_capacity
        .set(i64::try_from(config.replay_filter_capacity).unwrap_or(i64::MAX));
    let stats = Arc::new(IngressStats::default());
    let outbound = Arc::new(Outbound::new(OutboundConfig {
        bind_addr: config.source_addr,
        ..OutboundConfig::default()
    }));
    let api_connections = Arc::new(ConnectionStats::default());
    bastet_link::register_peer_connections(
        &mut registry,
        [
            (Direction::Inbound, stats.connections.clone()),
            (Direction::Outbound, outbound.connections()),
            (Direction::Api, api_connections.clone()),
        ],
    );
    register_store(&mut registry, store.clone());
    let registry = Arc::new(registry);

    let mut tasks: JoinSet<Result<()>> = JoinSet::new();
    let (tx, rx) = mpsc::channel::<Frame>(INGRESS_QUEUE);
    {
        let (tls, stats) = (tls.clone(), stats.clone());
        let ingress = IngressConfig {
            log: ingress_log.clone(),
            ..IngressConfig::default()
        };
        tasks.spawn(async move {
            bastet_link::serve_packets(packet_listener, &tls, ingress, tx, stats).await?;
            Ok(())
        });
    }
    {
        let api = Arc::new(Api::new(
            store.clone(),
            API_REPLAY_CAPACITY,
            metrics.clone(),
            unix_now,
        ));
        let tls = tls.clone();
        tasks.spawn(async move {
            bastet_link::serve_https_counted(api_listener, &tls, router(api), api_connections)
                .await?;
            Ok(())
        });
    }
    // Acks go to layer-1 mixes of the current consensus; refreshed often
    // enough that an epoch change costs seconds of `no_consensus` at most.
    let refresh = Duration::from_secs((config.directory.epoch_secs / 12).clamp(2, 10));
    let consensus = ConsensusWatch::spawn(directory.clone(), refresh);
    {
        let ready = bastet_directory::relay_readiness(
            consensus.clone(),
            keyring.clone(),
            keys.node_id(),
            config.data_dir.clone(),
            config.min_free_bytes(),
        );
        tasks.spawn(async move {
            bastet_link::serve_metrics(metrics_listener, registry, ready).await?;
            Ok(())
        });
    }
    tasks.spawn(count_link_drops(
        stats,
        metrics.clone(),
        (ingress_log.clone(), store_log.clone()),
    ));
    tasks.spawn({
        let keyring = keyring.clone();
        async move {
            rotate_forever(keyring, keys_tx).await;
            Ok(())
        }
    });
    {
        let directory = directory.clone();
        let descriptor = Descriptor {
            identity_key: keys.identity.verifying_key().to_bytes(),
            // Both set per epoch by the publisher.
            epoch: 0,
            sphinx_key: [0; 32],
            tls_pin: tls.pin().0,
            addr: config.public_addr(),
            api_addr: Some(config.public_api_addr()),
            circuit_addr: None,
            role: Role::Mailbox,
            jurisdiction: config.jurisdiction.clone(),
            operator: config.operator.clone(),
        };
        let identity = keys.identity.clone();
        tasks.spawn(async move {
            publish_rotating_forever(directory, descriptor, identity, keyring).await;
            Ok(())
        });
    }
    let acks = Acks {
        consensus,
        outbound,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let disk = DiskGuard::new(config.data_dir.clone(), config.min_free_bytes());
    let mut pipeline = tokio::spawn(pipeline(
        rx,
        hop,
        keys_rx,
        store,
        disk,
        metrics,
        (packet_log, store_log.clone()),
        acks,
        stop_rx,
    ));

    tracing::info!(
        node = %keys.node_id().short(),
        listen = %config.listen,
        api_listen = %config.api_listen,
        metrics_listen = %config.metrics_listen,
        "mailbox server running"
    );
    let outcome = tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down");
            Ok(())
        }
        Some(ended) = tasks.join_next() => match ended {
            Ok(Ok(())) => Err(Error::Config("a server task ended unexpectedly".into())),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(Error::Config(format!("a server task failed: {e}"))),
        },
        // Without the pipeline the listener would accept packets and store
        // none: stop the whole server instead of serving a lie on /health.
        ended = &mut pipeline => {
            tasks.abort_all();
            return match ended {
                Ok(Ok(())) => Err(Error::Config("the packet pipeline ended unexpectedly".into())),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(Error::Config(format!("the packet pipeline failed: {e}"))),
            };
        }
    };
    tasks.abort_all();
    // The pipeline stores everything already read off the link, then ends.
    let _ = stop_tx.send(true);
    let ended = pipeline.await;
    if let Some(log) = &ingress_log {
        log.flush();
    }
    if let Some(log) = &store_log {
        log.flush();
    }
    match ended {
        Ok(Ok(())) => outcome,
        Ok(Err(e)) => Err(e),
        Err(e) => Err(Error::Config(format!("the packet pipeline failed: {e}"))),
    }
}

/// Moves the link's counts into the metrics: frames shed under load, and
/// frames cut short by a peer that hung up or stalled inside one (no
/// packet, so not counted received). Flushes the test logs, so that their
/// files are never more than a period behind.
async fn count_link_drops(
    stats: Arc<IngressStats>,
    metrics: Metrics,
    (ingress_log, store_log): (Option<Arc<IngressLog>>, Option<Arc<TestLog>>),
) -> Result<()> {
    let (mut shed, mut cut) = (0, 0);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(log) = &ingress_log {
            log.flush();
        }
        if let Some(log) = &store_log {
            log.flush();
        }
        let now = stats.dropped_overload.load(Ordering::Relaxed);
        if now > shed {
            metrics.packets_received.inc_by(now - shed);
            metrics.dropped("overload", now - shed);
            shed = now;
        }
        let now = stats.partial_frames.load(Ordering::Relaxed);
        if now > cut {
            metrics.dropped("wrong_length", now - cut);
            cut = now;
        }
    }
}

/// Where acks go: the consensus names the layer-1 mixes, the pool (one
/// bounded queue per mix) carries the packets.
struct Acks {
    consensus: ConsensusWatch,
    outbound: Arc<Outbound>,
}

impl Acks {
    /// Sends one ack per stored fragment that asked for one; an ack that
    /// cannot go is counted and dropped (the sender retransmits).
    fn send(&self, requests: &[AckRequest], metrics: &Metrics) {
        if requests.is_empty() {
            return;
        }
        let consensus = self.consensus.current();
        let mut stale = false;
        for ack in requests {
            let sent = ack_packet(ack, consensus.as_deref()).and_then(|(peer, packet)| {
                self.outbound
                    .send(&peer, packet)
                    .map_err(|_| AckDropped::QueueFull)
            });
            match sent {
                Ok(()) => {
                    metrics.acks_sent.inc();
                }
                Err(why) => {
                    stale |= matches!(why, AckDropped::NoConsensus | AckDropped::BadFirstHop);
                    tracing::debug!(reason = why.reason(), "ack dropped");
                    metrics.ack_dropped(why.reason());
                }
            }
        }
        if stale {
            self.consensus.nudge();
        }
    }
}

/// Takes packets off the link in batches, opens them, stores each batch
/// with one synced write on a blocking thread, and only then sends the acks
/// of what was stored. Takes the Sphinx keys in force from `keys` whenever
/// they change, packets or not, so that an expired key leaves memory on
/// time.
#[allow(clippy::too_many_arguments)]
async fn pipeline(
    mut rx: mpsc::Receiver<Frame>,
    mut hop: FinalHop,
    mut keys: watch::Receiver<Vec<EpochKey>>,
    store: Arc<Store>,
    mut disk: DiskGuard,
    metrics: Metrics,
    (mut packet_log, store_log): (Option<PacketLog>, Option<Arc<TestLog>>),
    acks: Acks,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let mut stopping = false;
    let mut rotating = true;
    loop {
        let first = tokio::select! {
            biased;
            // On stop, refuse new frames but store every frame already
            // queued: a packet read off the link is never silently lost.
            _ = stop.changed(), if !stopping => {
                stopping = true;
                rx.close();
                continue;
            }
            changed = keys.changed(), if rotating => {
                match changed {
                    Ok(()) => {
                        let in_force = keys.borrow_and_update().clone();
                        let epochs: Vec<u64> = in_force.iter().map(|k| k.epoch).collect();
                        hop.set_keys(in_force).map_err(|why| {
                            Error::Config(format!("replay_filter_capacity: {why}"))
                        })?;
                        tracing::info!(?epochs, "processing packets under the Sphinx keys of these epochs");
                        metrics
                            .sphinx_keys
                            .set(i64::try_from(epochs.len()).unwrap_or(i64::MAX));
                        metrics.sphinx_key_epoch.set(
                            i64::try_from(epochs.iter().copied().max().unwrap_or(0))
                                .unwrap_or(i64::MAX),
                        );
                    }
                    // Rotation stopped with the server; drain with the keys held.
                    Err(_) => rotating = false,
                }
                continue;
            }
            frame = rx.recv() => match frame {
                Some(f) => f,
                None => return Ok(()),
            },
        };
        let mut frames = vec![first];
        while frames.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(f) => frames.push(f),
                Err(_) => break,
            }
        }
        let (store, batch_metrics, store_log) = (store.clone(), metrics.clone(), store_log.clone());
        let done = tokio::task::spawn_blocking(move || {
            let stored = store_batch(
                &mut hop,
                &store,
                &mut disk,
                &batch_metrics,
                (packet_log.as_mut(), store_log.as_deref()),
                &frames,
            );
            (hop, disk, packet_log, stored)
        })
        .await;
        let ack_requests;
        (hop, disk, packet_log, ack_requests) =
            done.map_err(|e| Error::Config(format!("storing packets failed: {e}")))?;
        metrics
            .replay_filter_entries
            .set(i64::try_from(hop.replay_entries()).unwrap_or(i64::MAX));
        // The batch is durable now: only what was stored is acknowledged.
        acks.send(&ack_requests, &metrics);
    }
}

/// How often [`DiskGuard`] asks the file system.
const DISK_CHECK_EVERY: Duration = Duration::from_millis(500);

/// Refuses new packets while the data directory's file system has less
/// than `min_free` bytes free (`min_free_mib`), asking it at most every
/// [`DISK_CHECK_EVERY`]; logs when it starts and stops refusing.
pub(crate) struct DiskGuard {
    path: PathBuf,
    min_free: u64,
    checked: Option<Instant>,
    full: bool,
}

impl DiskGuard {
    pub(crate) fn new(path: PathBuf, min_free: u64) -> Self {
        DiskGuard {
            path,
            min_free,
            checked: None,
            full: false,
        }
    }

    /// Whether new packets must be refused now.
    pub(crate) fn too_full(&mut self) -> bool {
        if self.checked.is_some_and(|t| t.elapsed() < DISK_CHECK_EVERY) {
            return self.full;
        }
        self.checked = Some(Instant::now());
        let full = match bastet_link::free_bytes(&self.path) {
            Ok(free) => free < self.min_free,
            Err(e) => {
                // Storing will say whether the disk works; the packets
                // are dropped (store_error) and not acked if it does not.
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the free space of the data directory");
                false
            }
        };
        if full != self.full {
            if full {
                tracing::error!(
                    path = %self.path.display(),
                    min_free_mib = self.min_free >> 20,
                    "the data directory's file system is nearly full: refusing new packets \
                     (not acknowledged, their senders retransmit) until space is freed; polls are still served"
                );
            } else {
                tracing::warn!("free space is back above min_free_mib: storing packets again");
            }
        }
        self.full = full;
        full
    }
}

/// Opens and stores one batch; returns the ack requests of the fragments
/// it stored and of the cover in it that asked for one (mixnode cover
/// loops). Cover is counted and discarded here, before the store; its acks
/// need no durability, but leave with the batch's others, so that their
/// timing is a stored fragment's.
fn store_batch(
    hop: &mut FinalHop,
    store: &Store,
    disk: &mut DiskGuard,
    metrics: &Metrics,
    (mut packet_log, store_log): (Option<&mut PacketLog>, Option<&TestLog>),
    frames: &[Frame],
) -> Vec<AckRequest> {
    let mut opened = Vec::with_capacity(frames.len());
    let mut items = Vec::with_capacity(frames.len());
    let mut acks = Vec::new();
    for frame in frames {
        metrics.packets_received.inc();
        let opened_now = hop.open(&frame[..]);
        if let (Some(log), Ok(item)) = (store_log, &opened_now) {
            let (kind, mailbox) = match item {
                Opened::Message { mailbox, .. } => ("message", mailbox.to_hex()),
                Opened::Reply { mailbox, .. } => ("reply", mailbox.to_hex()),
                Opened::Cover { .. } => ("cover", "-".to_string()),
            };
            log.line(format_args!("{} {kind} {mailbox}", frame_id(&frame[..])));
        }
        match opened_now {
            Ok(Opened::Cover { ack }) => {
                metrics.cover_received.inc();
                acks.extend(ack);
            }
            Ok(item) => {
                if let Some(to_store) = item.to_store().map(|(m, bytes)| (m, bytes.to_vec())) {
                    items.push(to_store);
                    opened.push(item);
                }
            }
            Err(why) => metrics.dropped(why.reason(), 1),
        }
    }
    if items.is_empty() {
        return acks;
    }
    if disk.too_full() {
        // Not stored, so not acknowledged: the senders retransmit.
        metrics.dropped("disk_full", items.len() as u64);
        return acks;
    }
    match store.deliver(&items, now_ms()) {
        Ok(outcomes) => {
            for ((outcome, (_, bytes)), item) in outcomes.iter().zip(&items).zip(opened) {
                match outcome {
                    Delivery::Stored { .. } => {
                        metrics.messages_stored.inc();
                        if let Some(log) = packet_log.as_deref_mut() {
                            log.append(bytes);
                        }
                        if let Opened::Message { ack: Some(ack), .. } = item {
                            acks.push(ack);
                        }
                    }
                    Delivery::UnknownMailbox => metrics.dropped("unknown_mailbox", 1),
                    Delivery::OverQuota => metrics.dropped("quota", 1),
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, packets = items.len(), "storing packets failed; dropped");
            metrics.dropped("store_error", items.len() as u64);
        }
    }
    acks
}

#[cfg(test)]
mod tests {
    use super::*;
    use bastet_sphinx::{
        AckId, FinalPayload, Hop, MAX_MESSAGE_LEN, MailboxId, NodeId, Packet, SphinxPublicKey,
        SphinxSecretKey, Surb, build, fragment,
    };

    use crate::metrics::{DROP_REASONS, Reason};

    fn frame_of(packet: &Packet) -> Frame {
        let mut frame: Frame = Box::new([0; bastet_link::FRAME_LEN]);
        frame.copy_from_slice(packet.as_bytes());
        frame
    }

    #[test]
    fn cover_is_counted_and_not_stored_only_loops_are_acked_and_a_replay_is_a_replay() {
        use rand::RngExt;
        let dir = tempfile::tempdir().unwrap();
        let limits = StoreLimits {
            quota_messages: 1000,
            max_mailboxes: 10,
        };
        let store = Store::open(&dir.path().join("db"), limits).unwrap();
        let (mailbox, _) = store.register(&[4; 32]).unwrap();
        let key = SphinxSecretKey::from([3; 32]);
        let me = Hop {
            node: NodeId([3; 32]),
            sphinx_key: SphinxPublicKey::from(&key),
            delay: Duration::ZERO,
        };
        let mut hop = FinalHop::new(
            vec![EpochKey {
                epoch: 0,
                secret: key,
            }],
            1000,
        )
        .unwrap();
        let metrics = Metrics::register(&mut Registry::default());

        // Drop cover as clients send it: random bytes.
        let mut random = vec![0u8; MAX_MESSAGE_LEN];
        rand::rng().fill(&mut random[..]);
        let cover = build(std::slice::from_ref(&me), &MailboxId::DROP, &random).unwrap();
        // A final payload asking for an ack, addressed to DROP, as a
        // mixnode's cover loop is: cover, but acked.
        let (surb, _) = Surb::build(std::slice::from_ref(&me), &mailbox).unwrap();
        let ack = AckRequest {
            id: AckId([9; 16]),
            surb,
        };
        let f = fragment(b"for nobody", &mut rand::rng()).unwrap().remove(0);
        let payload = FinalPayload::new(Some(ack.clone()), &f).to_bytes();
        let asking = build(std::slice::from_ref(&me), &MailboxId::DROP, &payload).unwrap();
        let frames = [
            frame_of(&cover),
            frame_of(&asking),
            frame_of(&cover),
            frame_of(&asking),
        ];

        let mut disk = DiskGuard::new(dir.path().to_path_buf(), 1);
        let acks = store_batch(&mut hop, &store, &mut disk, &metrics, (None, None), &frames);
        // The loop's ack, once: not the drop cover's, not the replay's.
        assert_eq!(acks, [ack]);
        assert_eq!(metrics.packets_received.get(), 4);
        assert_eq!(metrics.cover_received.get(), 2);
        assert_eq!(metrics.messages_stored.get(), 0);
        for reason in DROP_REASONS {
            let dropped = metrics
                .packets_dropped
                .get_or_create(&Reason {
                    reason: reason.to_string(),
                })
                .get();
            // The two replayed cover packets, and nothing else.
            assert_eq!(dropped, 2 * u64::from(reason == "replay"), "{reason}");
        }
        assert!(store.list(&mailbox, None, 10).unwrap().0.is_empty());
    }

    #[tokio::test]
    async fn on_stop_every_frame_already_read_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let limits = StoreLimits {
            quota_messages: 1000,
            max_mailboxes: 10,
        };
        let store = Arc::new(Store::open(&dir.path().join("db"), limits).unwrap());
        let (mailbox, _) = store.register(&[4; 32]).unwrap();
        let key = SphinxSecretKey::from([3; 32]);
        let me = Hop {
            node: NodeId([3; 32]),
            sphinx_key: SphinxPublicKey::from(&key),
            delay: Duration::ZERO,
        };
        let in_force = vec![EpochKey {
            epoch: 0,
            secret: key,
        }];
        let hop = FinalHop::new(in_force.clone(), 1000).unwrap();
        let (_keys_tx, keys_rx) = watch::channel(in_force);
        let metrics = Metrics::register(&mut Registry::default());

        // Frames queued before the stop, more than one batch of them.
        let count = MAX_BATCH + 44;
        let (tx, rx) = mpsc::channel::<Frame>(count);
        for i in 0..count {
            let f = fragment(&i.to_be_bytes(), &mut rand::rng())
                .unwrap()
                .remove(0);
            let payload = FinalPayload::new(None, &f).to_bytes();
            let packet = build(std::slice::from_ref(&me), &mailbox, &payload).unwrap();
            let mut frame: Frame = Box::new([0; bastet_link::FRAME_LEN]);
            frame.copy_from_slice(packet.as_bytes());
            tx.try_send(frame).unwrap();
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        stop_tx.send(true).unwrap();
        // The sender stays open, as the link's connections do at shutdown.
        let _tx = tx;
        tokio::time::timeout(
            Duration::from_secs(30),
            pipeline(
                rx,
                hop,
                keys_rx,
                store.clone(),
                DiskGuard::new(dir.path().to_path_buf(), 1),
                metrics,
                (None, None),
                Acks {
                    consensus: ConsensusWatch::fixed(None),
                    outbound: Arc::new(Outbound::new(OutboundConfig::default())),
                },
                stop_rx,
            ),
        )
        .await
        .unwrap()
        .unwrap();
        let (stored, _) = store.list(&mailbox, None, 1000).unwrap();
        assert_eq!(stored.len(), count);
    }

    #[test]
    fn a_full_disk_refuses_messages_without_acks_until_space_returns() {
        let dir = tempfile::tempdir().unwrap();
        let limits = StoreLimits {
            quota_messages: 1000,
            max_mailboxes: 10,
        };
        let store = Store::open(&dir.path().join("db"), limits).unwrap();
        let (mailbox, _) = store.register(&[4; 32]).unwrap();
        let key = SphinxSecretKey::from([3; 32]);
        let me = Hop {
            node: NodeId([3; 32]),
            sphinx_key: SphinxPublicKey::from(&key),
            delay: Duration::ZERO,
        };
        let mut hop = FinalHop::new(
            vec![EpochKey {
                epoch: 0,
                secret: key,
            }],
            1000,
        )
        .unwrap();
        let metrics = Metrics::register(&mut Registry::default());
        let message = |text: &[u8]| {
            let (surb, _) = Surb::build(std::slice::from_ref(&me), &mailbox).unwrap();
            let ack = AckRequest {
                id: AckId([7; 16]),
                surb,
            };
            let f = fragment(text, &mut rand::rng()).unwrap().remove(0);
            let payload = FinalPayload::new(Some(ack), &f).to_bytes();
            frame_of(&build(std::slice::from_ref(&me), &mailbox, &payload).unwrap())
        };
        let dropped = |reason: &str| {
            metrics
                .packets_dropped
                .get_or_create(&Reason {
                    reason: reason.to_string(),
                })
                .get()
        };

        // More free space wanted than any disk has: refused, not acked.
        let mut full = DiskGuard::new(dir.path().to_path_buf(), u64::MAX);
        let acks = store_batch(
            &mut hop,
            &store,
            &mut full,
            &metrics,
            (None, None),
            &[message(b"one")],
        );
        assert!(acks.is_empty(), "a refused packet is not acknowledged");
        assert_eq!(dropped("disk_full"), 1);
        assert_eq!(metrics.messages_stored.get(), 0);
        assert!(store.list(&mailbox, None, 10).unwrap().0.is_empty());

        // Space back: the next packet (its sender's retransmission) is stored.
        // With the store log on, it names the frame, its kind and mailbox.
        let mut roomy = DiskGuard::new(dir.path().to_path_buf(), 1);
        let log_path = dir.path().join("store.log");
        let log = TestLog::open(&log_path).unwrap();
        let two = message(b"two");
        let acks = store_batch(
            &mut hop,
            &store,
            &mut roomy,
            &metrics,
            (None, Some(&log)),
            std::slice::from_ref(&two),
        );
        log.flush();
        assert_eq!(
            std::fs::read_to_string(&log_path).unwrap(),
            format!("{} message {}\n", frame_id(&two[..]), mailbox.to_hex())
        );
        assert_eq!(acks.len(), 1);
        assert_eq!(metrics.messages_stored.get(), 1);
        assert_eq!(dropped("disk_full"), 1);
        assert_eq!(store.list(&mailbox, None, 10).unwrap().0.len(), 1);
    }

    #[test]
    fn the_disk_guard_asks_the_file_system_at_most_every_half_second() {
        let dir = tempfile::tempdir().unwrap();
        let mut guard = DiskGuard::new(dir.path().to_path_buf(), u64::MAX);
        assert!(guard.too_full());
        // Within the interval the answer is remembered...
        guard.min_free = 1;
        assert!(guard.too_full());
        // ...and asked again after it.
        guard.checked = Some(Instant::now() - DISK_CHECK_EVERY);
        assert!(!guard.too_full());
    }
}
