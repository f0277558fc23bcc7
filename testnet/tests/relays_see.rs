//! What relays see: packets from several senders to several recipients,
//! routed by the seed policy (domestic DE → neutral CH/IS → external NL)
//! over a consensus of twelve mixes and two mailbox servers, are handled by
//! the relays' own code (the mixnode's `Mixer`, the mailbox server's
//! `FinalHop`), in-process. Each relay records, for every packet it
//! handled, the previous hop (who handed it the packet: a sender's address
//! or a relay) and the next hop it learned from its Sphinx layer (a relay,
//! or for the mailbox server the mailbox). No relay may learn both the
//! sender and the recipient's mailbox (server), and no relay but the
//! first may see the sender's address.

// This whole file is test code; its helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bastet_client::{RoutePolicy, choose_policy_route, parse_classes};
use bastet_directory::{Descriptor, EpochKey, Role, VerifiedConsensus};
use bastet_mailbox::{FinalHop, Opened};
use bastet_mixnode::{Mixer, MixerConfig, Outcome};
use bastet_sphinx::{FinalPayload, MailboxId, NodeId, SphinxPublicKey, SphinxSecretKey};

const EPOCH: u64 = 42;

/// Who is on the other side of a hop, as a relay sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Peer {
    /// A client's network address (it connects to the first mix).
    Sender(String),
    /// Another relay.
    Relay(NodeId),
    /// The mailbox a payload is stored in.
    Mailbox(MailboxId),
}

enum Relay {
    Mix(Mixer),
    MailboxServer(FinalHop),
}

struct Network {
    consensus: VerifiedConsensus,
    relays: HashMap<NodeId, Relay>,
}

fn network() -> Network {
    let mut nodes = Vec::new();
    let mut relays = HashMap::new();
    let plan = [
        ("DE", Role::Mix),
        ("DE", Role::Mix),
        ("DE", Role::Mix),
        ("CH", Role::Mix),
        ("CH", Role::Mix),
        ("CH", Role::Mix),
        ("IS", Role::Mix),
        ("IS", Role::Mix),
        ("IS", Role::Mix),
        ("NL", Role::Mix),
        ("NL", Role::Mix),
        ("NL", Role::Mix),
        ("CH", Role::Mailbox),
        ("IS", Role::Mailbox),
    ];
    for (i, (jurisdiction, role)) in plan.into_iter().enumerate() {
        let mut secret = [0u8; 32];
        rand::fill(&mut secret[..]);
        let secret = SphinxSecretKey::from(secret);
        let identity = [u8::try_from(i + 1).unwrap(); 32];
        let d = Descriptor {
            identity_key: identity,
            epoch: EPOCH,
            sphinx_key: SphinxPublicKey::from(&secret).to_bytes(),
            tls_pin: [0; 32],
            addr: format!("127.0.0.1:{}", 7000 + i),
            api_addr: (role == Role::Mailbox).then(|| format!("127.0.0.1:{}", 8000 + i)),
            circuit_addr: None,
            role,
            jurisdiction: jurisdiction.into(),
            operator: format!("operator {i}"),
        };
        let keys = vec![EpochKey {
            epoch: EPOCH,
            secret,
        }];
        let relay = match role {
            Role::Mix => Relay::Mix(
                Mixer::new(
                    MixerConfig {
                        max_delay: Duration::from_secs(30),
                        max_delayed_packets: 1000,
                        replay_filter_capacity: 1000,
                    },
                    keys,
                )
                .unwrap(),
            ),
            Role::Mailbox => Relay::MailboxServer(FinalHop::new(keys, 1000).unwrap()),
        };
        relays.insert(d.node_id(), relay);
        nodes.push(d);
    }
    Network {
        consensus: VerifiedConsensus::assume_verified(EPOCH, 0, u64::MAX, nodes, 1),
        relays,
    }
}

#[test]
fn no_relay_learns_both_the_sender_and_the_recipients_mailbox() {
    let mut net = network();
    let policy = RoutePolicy::default().with_overrides(
        Some(parse_classes("domestic=DE,neutral=CH+IS,external=NL").unwrap()),
        None,
        None,
    );
    policy.validate("").unwrap();
    let servers: Vec<NodeId> = net.consensus.mailboxes().map(|d| d.node_id()).collect();
    // (sender address, recipient mailbox server, recipient mailbox)
    let senders = ["10.0.0.1:50000", "10.0.0.2:50001", "10.0.0.3:50002"];
    let recipients: Vec<(NodeId, MailboxId)> = (0..4u8)
        .map(|i| (servers[usize::from(i) % 2], MailboxId([i + 100; 32])))
        .collect();

    // Every relay's record: (previous hop, next hop) per packet handled.
    let mut seen: HashMap<NodeId, Vec<(Peer, Peer)>> = HashMap::new();
    let mut delivered = 0;
    let now = Instant::now();
    for round in 0..30 {
        let sender = senders[round % senders.len()];
        let (server, mailbox) = recipients[round % recipients.len()];
        let route = choose_policy_route(
            &net.consensus,
            &policy,
            &server,
            Duration::from_millis(10),
            &mut rand::rng(),
        )
        .unwrap();
        let body = format!("message {round}");
        // What a client puts in a packet: one fragment, no ack requested.
        let fragment = bastet_sphinx::fragment(body.as_bytes(), &mut rand::rng())
            .unwrap()
            .remove(0);
        let final_payload = FinalPayload::new(None, &fragment).to_bytes();
        let packet = bastet_sphinx::build(&route.hops, &mailbox, &final_payload).unwrap();
        // The sender connects to the first hop of the route it chose.
        let mut at = route.hops[0].node;
        let mut prev = Peer::Sender(sender.to_string());
        let mut bytes = packet.as_bytes().to_vec();
        let mut hops = 0;
        loop {
            hops += 1;
            assert!(hops <= route.hops.len(), "the packet did not stop");
            match net.relays.get_mut(&at).unwrap() {
                Relay::Mix(mixer) => {
                    let outcome = mixer.handle(now, &bytes);
                    assert!(matches!(outcome, Outcome::Delayed { .. }), "{outcome:?}");
                    let out = mixer.poll_transmit(now + Duration::from_secs(60)).unwrap();
                    seen.entry(at)
                        .or_default()
                        .push((prev.clone(), Peer::Relay(out.next_hop)));
                    prev = Peer::Relay(at);
                    at = out.next_hop;
                    bytes = out.packet.as_bytes().to_vec();
                }
                Relay::MailboxServer(hop) => {
                    let Opened::Message {
                        mailbox: to,
                        fragment: payload,
                        ack: None,
                    } = hop.open(&bytes).unwrap()
                    else {
                        panic!("not the forward message sent");
                    };
                    seen.entry(at)
                        .or_default()
                        .push((prev.clone(), Peer::Mailbox(to)));
                    assert_eq!((at, to), (server, mailbox), "delivered elsewhere");
                    assert_eq!(payload, fragment.to_bytes());
                    delivered += 1;
                    break;
                }
            }
        }
        assert_eq!(hops, route.hops.len(), "the packet crossed every hop");
    }
    assert_eq!(delivered, 30);

    let is_sender = |p: &Peer| matches!(p, Peer::Sender(_));
    let is_recipient_side = |p: &Peer| match p {
        Peer::Mailbox(_) => true,
        Peer::Relay(n) => servers.contains(n),
        Peer::Sender(_) => false,
    };
    let mut firsts = 0;
    for (relay, records) in &seen {
        let layer = net.consensus.layer_of(relay);
        for (prev, next) in records {
            assert!(
                !(is_sender(prev) && is_recipient_side(next)),
                "relay {} (layer {layer:?}) saw {prev:?} and {next:?}",
                relay.short()
            );
            if is_sender(prev) {
                firsts += 1;
                assert_eq!(layer, Some(1), "only a first-layer mix sees a sender");
            }
        }
    }
    assert_eq!(firsts, 30, "each packet's first relay saw its sender");
    // The relays that saw senders never saw a mailbox, and the mailbox
    // servers, which saw the mailboxes, never saw a sender.
    for server in &servers {
        for (prev, _) in seen.get(server).into_iter().flatten() {
            assert!(matches!(prev, Peer::Relay(n) if net.consensus.layer_of(n) == Some(3)));
        }
    }
}
