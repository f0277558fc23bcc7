//! Real relays on loopback (TLS, pinned certificates, the Sphinx setup
//! packet, the splice), two endpoints, cells both ways.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code may panic

use std::sync::Arc;
use std::time::Duration;

use bastet_circuit::{
    CircuitHop, CircuitMetrics, Cookie, Error, Incoming, Message, PAYLOAD_LEN, Reason, RelayConfig,
    build_setup, hops_from_consensus, open_circuit, read_message, serve_circuits, write_message,
};
use bastet_directory::{ConsensusWatch, Descriptor, EpochKey, Role, VerifiedConsensus};
use bastet_link::{TlsIdentity, connect};
use bastet_sphinx::{NodeId, SphinxSecretKey};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

const SETUP: Duration = Duration::from_secs(10);

struct Net {
    nodes: Vec<NodeId>,
    consensus: Arc<VerifiedConsensus>,
    registries: Vec<Registry>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// `configs.len()` relays, each with its own TLS identity, Sphinx key and
/// circuit listener, and a consensus naming them all.
async fn network(configs: Vec<RelayConfig>) -> Net {
    let mut listeners = Vec::new();
    let mut descriptors = Vec::new();
    let mut secrets = Vec::new();
    let mut identities = Vec::new();
    for i in 0..configs.len() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let identity = TlsIdentity::generate().unwrap();
        let secret = SphinxSecretKey::random();
        let identity_key = *blake3::hash(&[i as u8, 7]).as_bytes();
        descriptors.push(Descriptor {
            identity_key,
            epoch: 1,
            sphinx_key: bastet_sphinx::SphinxPublicKey::from(&secret).to_bytes(),
            tls_pin: identity.pin().0,
            addr: "127.0.0.1:9".into(),
            api_addr: None,
            circuit_addr: Some(listener.local_addr().unwrap().to_string()),
            role: Role::Mix,
            jurisdiction: "DE".into(),
            operator: format!("op{i}"),
        });
        listeners.push(listener);
        secrets.push(secret);
        identities.push(identity);
    }
    let nodes: Vec<NodeId> = descriptors.iter().map(Descriptor::node_id).collect();
    let consensus = Arc::new(VerifiedConsensus::assume_verified(
        1,
        0,
        u64::MAX,
        descriptors,
        1,
    ));
    let watch = ConsensusWatch::fixed(Some((*consensus).clone()));
    let mut tasks = Vec::new();
    let mut registries = Vec::new();
    for (((listener, identity), secret), config) in listeners
        .into_iter()
        .zip(identities)
        .zip(secrets)
        .zip(configs)
    {
        let (_keep, keys) = tokio::sync::watch::channel(vec![EpochKey { epoch: 1, secret }]);
        let mut registry = Registry::default();
        let m = CircuitMetrics::register(&mut registry);
        registries.push(registry);
        let watch = watch.clone();
        tasks.push(tokio::spawn(async move {
            let _keep = _keep;
            serve_circuits(listener, &identity, config, keys, watch, m)
                .await
                .unwrap();
        }));
    }
    Net {
        nodes,
        consensus,
        registries,
        tasks,
    }
}

fn hops(net: &Net, idx: &[usize]) -> Vec<CircuitHop> {
    let nodes: Vec<NodeId> = idx.iter().map(|&i| net.nodes[i]).collect();
    hops_from_consensus(&net.consensus, &nodes).unwrap()
}

fn payload(i: u32) -> [u8; PAYLOAD_LEN] {
    let mut p = [0u8; PAYLOAD_LEN];
    p[..4].copy_from_slice(&i.to_be_bytes());
    p[4..].fill((i % 251) as u8);
    p
}

fn config() -> RelayConfig {
    RelayConfig::default()
}

#[tokio::test]
async fn two_circuits_meet_at_the_rendezvous_and_carry_cells_both_ways_in_order() {
    let net = network((0..5).map(|_| config()).collect()).await;
    let cookie = Cookie::random();
    let a = open_circuit(&hops(&net, &[0, 1, 4]), &cookie, None, SETUP)
        .await
        .unwrap();
    let b = open_circuit(&hops(&net, &[2, 3, 4]), &cookie, None, SETUP)
        .await
        .unwrap();
    let (a, b) = tokio::join!(a.joined(SETUP), b.joined(SETUP));
    let ((mut a_tx, mut a_rx), (mut b_tx, mut b_rx)) = (a.unwrap(), b.unwrap());
    // Both ends send and receive at once, as a call does.
    let send = async {
        for i in 0..200u32 {
            a_tx.send(&payload(i)).await.unwrap();
            b_tx.send(&payload(i + 1000)).await.unwrap();
        }
    };
    let receive = async {
        for i in 0..200u32 {
            match b_rx.recv().await.unwrap() {
                Incoming::Cell(p) => assert_eq!(*p, payload(i)),
                other => panic!("cell {i} at b: {other:?}"),
            }
            match a_rx.recv().await.unwrap() {
                Incoming::Cell(p) => assert_eq!(*p, payload(i + 1000)),
                other => panic!("cell {i} at a: {other:?}"),
            }
        }
    };
    tokio::join!(send, receive);
    a_tx.hang_up().await.unwrap();
    assert!(matches!(
        b_rx.recv().await.unwrap(),
        Incoming::Ended(Reason::Hangup)
    ));
    // Every relay on the way relayed every cell; the rendezvous counts
    // both directions once.
    // Each relay counts the cells it moved, both ways.
    assert_eq!(metric(&net, 0, "cells_total"), 400);
    assert_eq!(metric(&net, 1, "cells_total"), 400);
    assert_eq!(metric(&net, 4, "cells_total"), 400);
    assert_eq!(metric(&net, 4, "opened_total"), 2);
}

fn metric(net: &Net, relay: usize, name: &str) -> u64 {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &net.registries[relay]).unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {out}"))
}

/// A data cell corrupted at a middle relay is dropped at the next hop that
/// authenticates (the rendezvous, or the endpoint), and the circuit goes
/// on: later cells still arrive.
#[tokio::test]
async fn cells_lost_at_a_relay_are_dropped_and_the_call_goes_on() {
    let mut configs: Vec<RelayConfig> = (0..5).map(|_| config()).collect();
    configs[1].test_cell_loss = 0.1;
    let net = network(configs).await;
    let cookie = Cookie::random();
    let a = open_circuit(&hops(&net, &[0, 1, 4]), &cookie, None, SETUP)
        .await
        .unwrap();
    let b = open_circuit(&hops(&net, &[2, 3, 4]), &cookie, None, SETUP)
        .await
        .unwrap();
    let (a, b) = tokio::join!(a.joined(SETUP), b.joined(SETUP));
    let ((mut a_tx, mut a_rx), (mut b_tx, mut b_rx)) = (a.unwrap(), b.unwrap());
    const N: u32 = 1000;
    let (a_done, a_finished) = tokio::sync::oneshot::channel::<()>();
    let send = async move {
        for i in 0..N {
            a_tx.send(&payload(i)).await.unwrap();
            b_tx.send(&payload(i)).await.unwrap();
        }
        // Once a has read everything b sent, it hangs up: b reads until
        // then.
        a_finished.await.unwrap();
        a_tx.hang_up().await.unwrap();
    };
    // B to A: corrupted on the way back, caught by a's own check.
    let at_a = async {
        let (mut ok, mut corrupt) = (0, 0);
        for _ in 0..N {
            match a_rx.recv().await.unwrap() {
                Incoming::Cell(_) => ok += 1,
                Incoming::Corrupt => corrupt += 1,
                Incoming::Ended(r) => panic!("ended early: {r}"),
            }
        }
        a_done.send(()).unwrap();
        (ok, corrupt)
    };
    // A to B: what the rendezvous dropped never reaches b; the rest does,
    // in order. Cells lost show up as gaps in the sequence.
    let at_b = async {
        let mut got = Vec::new();
        loop {
            match b_rx.recv().await.unwrap() {
                Incoming::Cell(p) => got.push(u32::from_be_bytes(p[..4].try_into().unwrap())),
                Incoming::Corrupt => panic!("the rendezvous authenticates: b sees no corrupt cell"),
                Incoming::Ended(reason) => {
                    assert_eq!(reason, Reason::Hangup);
                    return got;
                }
            }
        }
    };
    let ((), (ok, corrupt), got) = tokio::join!(send, at_a, at_b);
    assert_eq!(ok + corrupt, N);
    assert!((50..=160).contains(&corrupt), "corrupt {corrupt} of {N}");
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    let lost = N as usize - got.len();
    assert!((50..=160).contains(&lost), "lost {lost} of {N}");
    assert_eq!(metric(&net, 4, "cells_refused_total") as usize, lost);
}

#[tokio::test]
async fn a_circuit_without_a_peer_ends_with_a_clear_reason() {
    let mut configs: Vec<RelayConfig> = (0..3).map(|_| config()).collect();
    configs[2].rendezvous_wait = Duration::from_millis(300);
    let net = network(configs).await;
    let a = open_circuit(&hops(&net, &[0, 1, 2]), &Cookie::random(), None, SETUP)
        .await
        .unwrap();
    let err = a.joined(SETUP).await.unwrap_err();
    assert!(matches!(err, Error::Destroyed(Reason::NoPeer)), "{err}");
    assert!(
        err.to_string().contains("did not reach the rendezvous"),
        "{err}"
    );
    // Nothing is left waiting.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(metric(&net, 2, "waiting"), 0);
}

/// A setup packet replayed to the first relay, or built for keys it does
/// not hold, is refused there; a third circuit with a cookie already
/// joined does not get in.
#[tokio::test]
async fn replays_unknown_keys_and_a_third_circuit_are_refused() {
    let net = network((0..3).map(|_| config()).collect()).await;
    let route = hops(&net, &[0, 1, 2]);
    let (packet, _) = build_setup(&route, &Cookie::random()).unwrap();
    let mut first = connect(&route[0].addr, route[0].pin).await.unwrap();
    write_message(&mut first, &Message::Create(packet.clone()))
        .await
        .unwrap();
    assert_eq!(
        read_message(&mut first).await.unwrap(),
        Some(Message::Ready)
    );
    let mut again = connect(&route[0].addr, route[0].pin).await.unwrap();
    write_message(&mut again, &Message::Create(packet))
        .await
        .unwrap();
    assert_eq!(
        read_message(&mut again).await.unwrap(),
        Some(Message::Destroy(Reason::Refused))
    );

    let mut stale = route.clone();
    stale[0].sphinx_key = bastet_sphinx::SphinxPublicKey::from(&SphinxSecretKey::random());
    let err = open_circuit(&stale, &Cookie::random(), None, SETUP)
        .await
        .unwrap()
        .joined(SETUP)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Destroyed(Reason::Refused)), "{err}");

    let cookie = Cookie::random();
    let a = open_circuit(&hops(&net, &[0, 2]), &cookie, None, SETUP)
        .await
        .unwrap();
    let b = open_circuit(&hops(&net, &[1, 2]), &cookie, None, SETUP)
        .await
        .unwrap();
    let (a, b) = tokio::join!(a.joined(SETUP), b.joined(SETUP));
    let (_a, _b) = (a.unwrap(), b.unwrap());
    let c = open_circuit(&hops(&net, &[0, 2]), &cookie, None, SETUP)
        .await
        .unwrap();
    // A third circuit with the cookie of a spliced pair is refused.
    let err = c.joined(SETUP).await.unwrap_err();
    assert!(
        matches!(err, Error::Destroyed(Reason::RendezvousTaken)),
        "{err}"
    );
}

/// A circuit whose cells stop authenticating at the rendezvous (its
/// counters out of step with its endpoint's) is ended, and its peer told,
/// instead of being kept open carrying nothing.
#[tokio::test]
async fn a_circuit_out_of_step_is_ended() {
    let net = network((0..1).map(|_| config()).collect()).await;
    let route = hops(&net, &[0]);
    let cookie = Cookie::random();
    // One end speaks the link protocol by hand: its setup is genuine, its
    // cells are not sealed for the circuit.
    let (packet, _) = build_setup(&route, &cookie).unwrap();
    let mut raw = connect(&route[0].addr, route[0].pin).await.unwrap();
    write_message(&mut raw, &Message::Create(packet))
        .await
        .unwrap();
    let peer = open_circuit(&route, &cookie, None, SETUP).await.unwrap();
    let (_peer_tx, mut peer_rx) = peer.joined(SETUP).await.unwrap();
    loop {
        match read_message(&mut raw).await.unwrap() {
            Some(Message::Ready) => continue,
            Some(Message::Joined) => break,
            other => panic!("{other:?}"),
        }
    }
    for i in 0..60u8 {
        let body = Box::new([i; bastet_circuit::BODY_LEN]);
        if write_message(&mut raw, &Message::Data(body)).await.is_err() {
            break;
        }
    }
    match peer_rx.recv().await.unwrap() {
        Incoming::Ended(reason) => assert_eq!(reason, Reason::Protocol),
        other => panic!("the peer got {other:?}"),
    }
    assert_eq!(metric(&net, 0, "cells_refused_total"), 50);
}

/// At its circuit limit a relay says so instead of hanging up silently.
#[tokio::test]
async fn a_relay_at_its_circuit_limit_answers_overload() {
    let mut configs: Vec<RelayConfig> = (0..2).map(|_| config()).collect();
    configs[0].max_circuits = 1;
    let net = network(configs).await;
    let _held = open_circuit(&hops(&net, &[0, 1]), &Cookie::random(), None, SETUP)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = open_circuit(&hops(&net, &[0, 1]), &Cookie::random(), None, SETUP)
        .await
        .unwrap()
        .joined(SETUP)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Destroyed(Reason::Overload)), "{err}");
}

/// Bytes that are not a circuit message end the circuit with a protocol
/// error; the relay keeps serving others.
#[tokio::test]
async fn garbage_is_refused_and_the_relay_keeps_serving() {
    use tokio::io::AsyncWriteExt;
    let net = network((0..2).map(|_| config()).collect()).await;
    let route = hops(&net, &[0, 1]);
    let mut bad = connect(&route[0].addr, route[0].pin).await.unwrap();
    bad.write_all(&[0x77; 600]).await.unwrap();
    bad.flush().await.unwrap();
    let answer = read_message(&mut bad).await;
    assert!(
        matches!(
            answer,
            Ok(Some(Message::Destroy(Reason::Protocol))) | Ok(None) | Err(_)
        ),
        "{answer:?}"
    );
    let cookie = Cookie::random();
    let a = open_circuit(&route, &cookie, None, SETUP).await.unwrap();
    let b = open_circuit(&hops(&net, &[1]), &cookie, None, SETUP)
        .await
        .unwrap();
    let (a, b) = tokio::join!(a.joined(SETUP), b.joined(SETUP));
    assert!(a.is_ok() && b.is_ok());
}
