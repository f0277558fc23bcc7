//! A small network on 127.0.0.1 with real TLS: an in-process directory
//! authority, a mixnode run through its library, and a "next hop" sink whose
//! listener the test controls.

#![allow(dead_code)] // each test binary uses part of it

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bastet_directory::server::{self, AuthorityConfig};
use bastet_directory::{
    AuthorityRef, Descriptor, DirectoryClient, DirectoryConfig, NodeKeys, Role, epoch_of,
    publish_forever, read_key_file, sphinx_key_path, unix_now,
};
use bastet_link::{CertPin, Frame, IngressConfig, IngressStats, TlsIdentity, serve_packets};
use bastet_mixnode::{InitOptions, Mixnode, MixnodeConfig};
use bastet_sphinx::{
    Hop, MailboxId, NodeId, PACKET_LEN, Packet, Prepared, Processed, SphinxPublicKey,
    SphinxSecretKey, build,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Long epochs, so that a test does not straddle an epoch boundary (where
/// the consensus changes hands); see `avoid_epoch_boundary`.
pub const EPOCH_SECS: u64 = 3600;

/// A bound-then-released port on loopback, for servers that bind by address.
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Waits out the last seconds of an epoch, so the consensus a test relies
/// on stays current while it runs.
pub async fn avoid_epoch_boundary() {
    let into = unix_now() % EPOCH_SECS;
    if into > EPOCH_SECS - 30 {
        tokio::time::sleep(Duration::from_secs(EPOCH_SECS - into + 1)).await;
    }
    assert_eq!(
        epoch_of(unix_now() + 25, EPOCH_SECS),
        epoch_of(unix_now(), EPOCH_SECS)
    );
}

/// Starts a directory authority in this process; returns its directory
/// config (as nodes pin it) and a client of it.
pub async fn authority(dir: &Path) -> (DirectoryConfig, Arc<DirectoryClient>) {
    authority_with_epochs(dir, EPOCH_SECS).await
}

/// [`authority`] with epochs of `epoch_secs`.
pub async fn authority_with_epochs(
    dir: &Path,
    epoch_secs: u64,
) -> (DirectoryConfig, Arc<DirectoryClient>) {
    let listen = free_port();
    let data_dir = dir.join("authority");
    let info = server::init(&data_dir, listen, None, epoch_secs, &[]).unwrap();
    let config = AuthorityConfig {
        data_dir,
        listen,
        metrics_listen: None,
        epoch_secs,
        allowed_nodes: Vec::new(),
        open_admission: true,
        max_nodes: 100,
        peers: Vec::new(),
        threshold: None,
    };
    tokio::spawn(server::run(config));
    let directory = DirectoryConfig {
        authorities: vec![AuthorityRef {
            url: info.url,
            identity_key: info.identity_key,
            tls_pin: info.tls_pin,
        }],
        threshold: None,
        epoch_secs,
    };
    let client = Arc::new(DirectoryClient::new(&directory).unwrap());
    (directory, client)
}

/// A directory config naming an authority that is not running: nodes using
/// it never hold a consensus.
pub fn unreachable_directory() -> DirectoryConfig {
    DirectoryConfig {
        authorities: vec![AuthorityRef {
            url: format!("https://{}", free_port()),
            identity_key: hex_of(
                bastet_directory::SigningKey::from_bytes(&[9; 32])
                    .verifying_key()
                    .as_bytes(),
            ),
            tls_pin: hex_of(&[0; 32]),
        }],
        threshold: None,
        epoch_secs: EPOCH_SECS,
    }
}

fn hex_of(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Publishes `d` for the current and next epoch, retrying while the
/// authority starts.
pub async fn publish(client: &DirectoryClient, keys: &NodeKeys, d: &Descriptor) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let epoch = epoch_of(unix_now(), client.epoch_secs());
    for e in [epoch, epoch + 1] {
        let signed = Descriptor {
            epoch: e,
            ..d.clone()
        }
        .sign(&keys.identity)
        .unwrap();
        loop {
            match client.publish(&signed).await {
                Ok(_) => break,
                Err(err) if Instant::now() < deadline => {
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("authority refused the sink's descriptor: {err}"),
            }
        }
    }
}

/// A next hop the test controls: a real TLS packet listener whose frames
/// come out of `frames`. Its one Sphinx key never rotates.
pub struct Sink {
    pub keys: NodeKeys,
    pub sphinx: SphinxSecretKey,
    pub id: NodeId,
    pub frames: mpsc::Receiver<Frame>,
}

impl Sink {
    /// Starts the listener and publishes the sink as a mix, for the current
    /// and the next epoch now and in the background from then on.
    pub async fn start(client: &Arc<DirectoryClient>) -> Sink {
        Sink::start_as(client, Role::Mix).await
    }

    /// [`Sink::start`], published in `role` (a mailbox server publishes an
    /// API address nobody serves).
    pub async fn start_as(client: &Arc<DirectoryClient>, role: Role) -> Sink {
        let keys = NodeKeys::generate();
        let sphinx = SphinxSecretKey::random();
        let tls = TlsIdentity::generate().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Room for a whole burst (`a_burst_is_forwarded_whole`): a full
        // channel drops frames, as a full ingress queue does.
        let (tx, frames) = mpsc::channel(1024);
        let pin = tls.pin();
        tokio::spawn(async move {
            let stats = Arc::new(IngressStats::default());
            serve_packets(listener, &tls, IngressConfig::default(), tx, stats).await
        });
        let d = Descriptor {
            identity_key: *keys.identity.verifying_key().as_bytes(),
            epoch: 0,
            sphinx_key: SphinxPublicKey::from(&sphinx).to_bytes(),
            tls_pin: pin.0,
            addr: addr.to_string(),
            api_addr: (role == Role::Mailbox).then(|| free_port().to_string()),
            circuit_addr: None,
            role,
            jurisdiction: "CH".into(),
            operator: "Sink Org".into(),
        };
        publish(client, &keys, &d).await;
        let identity = keys.identity.clone();
        tokio::spawn(publish_forever(client.clone(), move |epoch| {
            Descriptor { epoch, ..d.clone() }.sign(&identity)
        }));
        Sink {
            id: keys.node_id(),
            keys,
            sphinx,
            frames,
        }
    }

    /// The sink as the hop after the mix.
    pub fn hop(&self) -> Hop {
        Hop {
            node: self.id,
            sphinx_key: SphinxPublicKey::from(&self.sphinx),
            delay: Duration::ZERO,
        }
    }

    /// The next frame, if one arrives within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Frame> {
        tokio::time::timeout(within, self.frames.recv())
            .await
            .ok()
            .flatten()
    }

    /// Removes the sink's layer: the message the sender put in.
    pub fn open(&self, frame: &[u8]) -> (MailboxId, Vec<u8>) {
        match Prepared::new(frame, &self.sphinx)
            .unwrap()
            .process()
            .unwrap()
        {
            Processed::Deliver { mailbox, message } => (mailbox, message),
            other => panic!("sink expected a final-hop packet, got {other:?}"),
        }
    }
}

/// A mixnode started through the library, and what a sender needs of it.
pub struct Mix {
    pub node: Mixnode,
    pub config: MixnodeConfig,
    pub pin: CertPin,
}

impl Mix {
    /// `init`s a layer-1 mixnode in `dir` on ephemeral ports, lets `adjust`
    /// change its config, and starts it.
    pub async fn start(
        dir: &Path,
        directory: &DirectoryConfig,
        adjust: impl FnOnce(&mut MixnodeConfig),
    ) -> Mix {
        let directory_file = dir.join("directory.toml");
        std::fs::write(&directory_file, toml_of(directory)).unwrap();
        let report = bastet_mixnode::init(&InitOptions {
            dir: dir.join("mix"),
            listen: "127.0.0.1:0".parse().unwrap(),
            public_addr: None,
            metrics_listen: "127.0.0.1:0".parse().unwrap(),
            jurisdiction: "DE".into(),
            operator: "Mix Org".into(),
            directory_file,
        })
        .unwrap();
        let mut config = MixnodeConfig::load(&report.config).unwrap();
        adjust(&mut config);
        let node = Mixnode::start(config.clone()).await.unwrap();
        Mix {
            node,
            config,
            pin: CertPin::from_hex(&report.tls_pin).unwrap(),
        }
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        epoch_of(unix_now(), self.config.directory.epoch_secs)
    }

    /// The mix's Sphinx public key for `epoch`, read from its data
    /// directory (as an operator could): the key it publishes for `epoch`.
    pub fn sphinx_key(&self, epoch: u64) -> SphinxPublicKey {
        SphinxPublicKey::from(&self.sphinx_secret(epoch))
    }

    /// The mix's Sphinx secret key for `epoch`, read from its data
    /// directory: to see what the mix sees of a packet.
    pub fn sphinx_secret(&self, epoch: u64) -> SphinxSecretKey {
        let path = sphinx_key_path(&self.config.data_dir, epoch);
        let secret =
            read_key_file(&path).unwrap_or_else(|e| panic!("no Sphinx key for epoch {epoch}: {e}"));
        SphinxSecretKey::from(*secret)
    }

    /// The mix as the first hop, holding packets for `delay`, under the
    /// current epoch's key.
    pub fn hop(&self, delay: Duration) -> Hop {
        self.hop_for_epoch(self.epoch(), delay)
    }

    /// The mix as the first hop under its key for `epoch`.
    pub fn hop_for_epoch(&self, epoch: u64, delay: Duration) -> Hop {
        Hop {
            node: self.node.node_id(),
            sphinx_key: self.sphinx_key(epoch),
            delay,
        }
    }

    /// Waits (at most 10 s) for the mix to hold a consensus.
    pub async fn wait_for_consensus(&self) {
        tokio::time::timeout(Duration::from_secs(10), self.node.consensus())
            .await
            .expect("mixnode got no consensus within 10 s");
    }

    /// Sends raw bytes to the mix over a fresh pinned TLS connection and
    /// closes it at once, as a writer does when it is done. Whatever the
    /// mix has not read yet must still reach it (a_burst_is_forwarded_whole
    /// checks it: with TLS session tickets left unread here, the close was
    /// a reset and the mix lost two thirds of a burst).
    pub async fn send_raw(&self, bytes: &[u8]) {
        let mut tls = bastet_link::connect(&self.node.listen_addr().to_string(), self.pin)
            .await
            .unwrap();
        tls.write_all(bytes).await.unwrap();
        tls.flush().await.unwrap();
        tls.shutdown().await.unwrap();
    }

    /// Sends one packet.
    pub async fn send(&self, packet: &Packet) {
        assert_eq!(packet.as_bytes().len(), PACKET_LEN);
        self.send_raw(packet.as_bytes()).await;
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        http_get(self.node.metrics_addr(), "/metrics").await
    }

    /// Waits (at most 10 s) until `metric` (name with labels, as exported)
    /// satisfies `ok`, and returns its value.
    pub async fn wait_metric(&self, metric: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.metrics().await;
            let value = metric_value(&text, metric);
            if let Some(v) = value.filter(|v| ok(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{metric} is {value:?} after 10 s; metrics:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A packet through the mix (held `delay`) to `last`, carrying `message`.
pub fn packet(mix: &Mix, delay: Duration, last: Hop, message: &[u8]) -> Packet {
    build(&[mix.hop(delay), last], &MailboxId([7; 32]), message).unwrap()
}

/// A hop no consensus lists.
pub fn stranger() -> Hop {
    let keys = NodeKeys::generate();
    Hop {
        node: keys.node_id(),
        sphinx_key: SphinxPublicKey::from(&SphinxSecretKey::random()),
        delay: Duration::ZERO,
    }
}

/// `GET path` over plain HTTP/1.1.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let response = http_get_any(addr, path).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The whole response, whatever its status.
pub async fn http_get_any(addr: SocketAddr, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    response
}

/// The value of one exported series, e.g.
/// `bastet_mixnode_packets_dropped_total{reason="replay"}`.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The series of a drop reason.
pub fn dropped(reason: &str) -> String {
    format!("bastet_mixnode_packets_dropped_total{{reason=\"{reason}\"}}")
}

/// Series names.
pub const RECEIVED: &str = "bastet_mixnode_packets_received_total";
pub const FORWARDED: &str = "bastet_mixnode_packets_forwarded_total";

fn toml_of(directory: &DirectoryConfig) -> String {
    let a = &directory.authorities[0];
    format!(
        "epoch_secs = {}\n[[authorities]]\nurl = \"{}\"\nidentity_key = \"{}\"\ntls_pin = \"{}\"\n",
        directory.epoch_secs, a.url, a.identity_key, a.tls_pin
    )
}
