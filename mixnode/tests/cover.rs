//! The mixnode's own cover traffic (λ_M) over real TLS on 127.0.0.1, with a
//! real directory authority: sent at about the configured rate, on the
//! links packets are forwarded on, taken as cover by a mailbox server's
//! final hop, and acked through a SURB that crosses the earlier layers back
//! to the mix, which counts the loop returned.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code may panic

mod common;

use std::time::{Duration, Instant};

use bastet_directory::{EpochKey, MIX_LAYERS, Role};
use bastet_mailbox::{FinalHop, Opened, ack_packet};
use bastet_mixnode::{MAX_COVER_HOP_DELAY, loop_id};
use bastet_sphinx::{PACKET_LEN, Prepared, Processed};
use common::*;

const COVER_SENT: &str = "bastet_mixnode_cover_sent_total";
const LOOPS_RETURNED: &str = "bastet_mixnode_cover_loops_returned_total";

fn skipped(reason: &str) -> String {
    format!("bastet_mixnode_cover_skipped_total{{reason=\"{reason}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cover_leaves_at_about_the_configured_rate_and_loops_back_through_a_mailbox_servers_ack() {
    const RATE: f64 = 20.0;
    const COUNTED: f64 = 40.0;
    avoid_epoch_boundary().await;
    let tmp = tempfile::tempdir().unwrap();
    let (directory, client) = authority(tmp.path()).await;
    // The mix first, so that the sinks' descriptors follow its own into
    // the same vote: three mixes, one a layer, and a mailbox server.
    let mix = Mix::start(tmp.path(), &directory, |c| {
        c.cover_rate = RATE;
        c.cover_mix_delay_ms = 5;
    })
    .await;
    let mut sinks = vec![
        Sink::start(&client).await,
        Sink::start(&client).await,
        Sink::start_as(&client, Role::Mailbox).await,
    ];
    mix.wait_for_consensus().await;
    let consensus = mix.node.consensus().await;
    let layer = consensus
        .layer_of(&mix.node.node_id())
        .expect("the mix is not in the consensus");
    for sink in &sinks {
        assert!(consensus.node(&sink.id).is_some(), "a sink is not listed");
    }
    // The rest of a route after the mix: the sink of each later layer, then
    // the mailbox server.
    let path: Vec<usize> = (layer + 1..=MIX_LAYERS)
        .map(|l| {
            sinks
                .iter()
                .position(|s| consensus.layer_of(&s.id) == Some(l))
                .unwrap()
        })
        .chain([2])
        .collect();

    // Count-based: the time COUNTED packets take, with bounds a Poisson
    // process of RATE misses with negligible probability (expected 2 s).
    let before = metric_value(&mix.metrics().await, COVER_SENT).unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    loop {
        let sent = metric_value(&mix.metrics().await, COVER_SENT).unwrap();
        if sent >= before + COUNTED {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} cover packets in 60 s at {RATE}/s",
            sent - before
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "{COUNTED} cover packets in {took:?}: far above {RATE}/s"
    );
    let text = mix.metrics().await;
    for reason in ["not_listed", "no_next_hop", "build_failed", "queue_full"] {
        assert_eq!(metric_value(&text, &skipped(reason)), Some(0.0), "{text}");
    }
    // Cover is the node's own, not forwarded traffic.
    assert_eq!(metric_value(&text, FORWARDED), Some(0.0), "{text}");
    assert_eq!(metric_value(&text, RECEIVED), Some(0.0), "{text}");

    // The way back: the sink of each layer before the mix's, then the mix.
    let back: Vec<usize> = (1..layer)
        .map(|l| {
            sinks
                .iter()
                .position(|s| consensus.layer_of(&s.id) == Some(l))
                .unwrap()
        })
        .collect();
    assert_eq!(metric_value(&text, LOOPS_RETURNED), Some(0.0), "{text}");

    // What the next hop gets: whole packets that each later hop peels, and
    // that the mailbox server's real final hop takes as cover with an ack
    // request; the ack, sent as the server sends acks, crosses the earlier
    // layers and comes back to the mix as a reply to its loop id.
    let server_key = sinks[2].sphinx.clone();
    let mut final_hop = FinalHop::new(
        vec![EpochKey {
            epoch: 0,
            secret: server_key,
        }],
        1000,
    )
    .unwrap();
    // Fresh loops only: the older ones may be near their deadline.
    while sinks[path[0]].frames.try_recv().is_ok() {}
    const LOOPS: usize = 5;
    for _ in 0..LOOPS {
        let frame = sinks[path[0]]
            .next(Duration::from_secs(10))
            .await
            .expect("the first hop after the mix got no cover");
        assert_eq!(frame.len(), PACKET_LEN);
        let mut bytes = frame.to_vec();
        for (k, &at) in path.iter().enumerate() {
            if at == 2 {
                break;
            }
            match Prepared::new(&bytes, &sinks[at].sphinx)
                .unwrap()
                .process()
                .unwrap()
            {
                Processed::Forward {
                    next_hop,
                    delay,
                    packet,
                } => {
                    assert_eq!(next_hop, sinks[path[k + 1]].id);
                    assert!(delay <= MAX_COVER_HOP_DELAY);
                    bytes = packet.as_bytes().to_vec();
                }
                other => panic!("a mix was the last hop of cover: {other:?}"),
            }
        }
        let Ok(Opened::Cover { ack: Some(ack) }) = final_hop.open(&bytes) else {
            panic!("the mailbox server did not take cover with an ack request");
        };
        let (peer, mut reply) = ack_packet(&ack, Some(&consensus)).unwrap();
        assert_eq!(consensus.layer_of(&peer.node), Some(1));
        let expected_first = back.first().map_or(mix.node.node_id(), |&i| sinks[i].id);
        assert_eq!(peer.node, expected_first);
        for (k, &at) in back.iter().enumerate() {
            match Prepared::new(reply.as_bytes(), &sinks[at].sphinx)
                .unwrap()
                .process()
                .unwrap()
            {
                Processed::Forward {
                    next_hop, packet, ..
                } => {
                    let next = back.get(k + 1).map_or(mix.node.node_id(), |&i| sinks[i].id);
                    assert_eq!(next_hop, next);
                    reply = packet;
                }
                other => panic!("an earlier mix was the last hop of the ack: {other:?}"),
            }
        }
        // What only the mix can see: a reply to its loop id.
        let epoch = mix.epoch();
        let at_mix = Prepared::new(reply.as_bytes(), &mix.sphinx_secret(epoch))
            .unwrap()
            .process()
            .unwrap();
        let Processed::Reply { mailbox, .. } = at_mix else {
            panic!("the ack did not end at the mix as a reply");
        };
        assert_eq!(mailbox, loop_id(&mix.node.node_id()));
        mix.send(&reply).await;
    }
    mix.wait_metric(LOOPS_RETURNED, |v| v >= LOOPS as f64).await;
    let text = mix.metrics().await;
    assert_eq!(
        metric_value(&text, LOOPS_RETURNED),
        Some(LOOPS as f64),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, &dropped("malformed")),
        Some(0.0),
        "{text}"
    );
    assert_eq!(metric_value(&text, &dropped("replay")), Some(0.0), "{text}");
    // The replies ended at the mix: none was forwarded.
    assert_eq!(metric_value(&text, FORWARDED), Some(0.0), "{text}");
    mix.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_consensus_cover_ticks_are_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let mix = Mix::start(tmp.path(), &unreachable_directory(), |c| {
        c.cover_rate = 10.0;
    })
    .await;
    mix.wait_metric(&skipped("no_consensus"), |v| v >= 3.0)
        .await;
    let text = mix.metrics().await;
    assert_eq!(metric_value(&text, COVER_SENT), Some(0.0), "{text}");
    mix.node.stop().await;
}
