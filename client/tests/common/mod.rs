//! Fixtures shared by the integration tests: an in-process directory
//! authority and relays that publish descriptors to it.

#![allow(dead_code)]

use std::time::Duration;

use bastet_directory::server::{self, AuthorityConfig};
use bastet_directory::{
    AuthorityRef, Descriptor, DirectoryClient, DirectoryConfig, NodeKeys, Role, epoch_of, unix_now,
};
use bastet_sphinx::{NodeId, SphinxPublicKey, SphinxSecretKey};

pub const EPOCH_SECS: u64 = 3600;

pub fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub struct Relay {
    pub keys: NodeKeys,
    /// The relay's one Sphinx key: tests run within one epoch.
    pub sphinx: SphinxSecretKey,
    pub role: Role,
}

pub async fn start_authority(dir: &std::path::Path) -> DirectoryConfig {
    let listen = free_port();
    let info = server::init(dir, listen, None, EPOCH_SECS, &[]).unwrap();
    tokio::spawn(server::run(AuthorityConfig {
        data_dir: dir.to_path_buf(),
        listen,
        metrics_listen: None,
        epoch_secs: EPOCH_SECS,
        allowed_nodes: Vec::new(),
        open_admission: true,
        max_nodes: 100,
        peers: Vec::new(),
        threshold: None,
    }));
    DirectoryConfig {
        authorities: vec![AuthorityRef {
            url: info.url,
            identity_key: info.identity_key,
            tls_pin: info.tls_pin,
        }],
        threshold: None,
        epoch_secs: EPOCH_SECS,
    }
}

pub async fn publish(
    directory: &DirectoryConfig,
    relay: &Relay,
    addr: String,
    api_addr: Option<String>,
    pin: [u8; 32],
) {
    let descriptor = Descriptor {
        identity_key: relay.keys.identity.verifying_key().to_bytes(),
        epoch: epoch_of(unix_now(), EPOCH_SECS),
        sphinx_key: SphinxPublicKey::from(&relay.sphinx).to_bytes(),
        tls_pin: pin,
        addr,
        api_addr,
        circuit_addr: None,
        role: relay.role,
        jurisdiction: if relay.role == Role::Mailbox {
            "CH"
        } else {
            "DE"
        }
        .into(),
        // Each relay its own operator, as the default route policy
        // (distinct operators) requires.
        operator: format!("Test operator {}", relay.keys.node_id().short()),
    }
    .sign(&relay.keys.identity)
    .unwrap();
    let client = DirectoryClient::new(directory).unwrap();
    for _ in 0..100 {
        if client.publish(&descriptor).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("authority never accepted the descriptor");
}

/// Waits until the authority's consensus lists all of `relays`: a lone
/// authority votes once descriptors stop arriving for a second.
pub async fn await_consensus(directory: &DirectoryConfig, relays: &[Relay]) {
    let client = DirectoryClient::new(directory).unwrap();
    let mut last = String::new();
    for _ in 0..200 {
        match client.fetch_consensus().await {
            Ok(c) if relays.iter().all(|r| c.node(&r.keys.node_id()).is_some()) => return,
            Ok(c) => last = format!("consensus lists {} nodes", c.nodes.len()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no consensus with every relay: {last}");
}

/// Three mixes (one per layer) and a mailbox server, with fresh keys.
pub fn relays() -> Vec<Relay> {
    [Role::Mix, Role::Mix, Role::Mix, Role::Mailbox]
        .into_iter()
        .map(|role| Relay {
            keys: NodeKeys::generate(),
            sphinx: SphinxSecretKey::random(),
            role,
        })
        .collect()
}

/// Two people exchange contact cards, as `bastet contact export` and
/// `import` would (the second card answers the first): afterwards `a` knows
/// `b` as `b_name` and `b` knows `a` as `a_name`.
pub fn befriend(
    a: (
        &bastet_client::DataDir,
        &bastet_client::ClientKeys,
        NodeId,
        &str,
    ),
    b: (
        &bastet_client::DataDir,
        &bastet_client::ClientKeys,
        NodeId,
        &str,
    ),
) {
    use bastet_client::Contacts;
    let (a_dir, a_keys, a_server, a_name) = a;
    let (b_dir, b_keys, b_server, b_name) = b;
    let mut a_book = Contacts::load(a_dir, a_keys, a_server).unwrap();
    let mut b_book = Contacts::load(b_dir, b_keys, b_server).unwrap();
    let card = a_book
        .export_card(a_keys, a_name, None, 1)
        .unwrap()
        .to_text(a_keys)
        .unwrap();
    b_book.import_card(b_keys, &card, a_name, 1).unwrap();
    let reply = b_book
        .export_card(b_keys, b_name, Some(a_name), 2)
        .unwrap()
        .to_text(b_keys)
        .unwrap();
    let info = a_book.import_card(a_keys, &reply, b_name, 2).unwrap();
    assert!(info.complete);
}
