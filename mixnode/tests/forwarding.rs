//! The mixnode over real TLS on 127.0.0.1, with a real directory authority.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code may panic

mod common;

use std::time::{Duration, Instant};

use bastet_link::frame_id;
use bastet_mixnode::PacketWork;
use bastet_sphinx::PACKET_LEN;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_is_forwarded_after_its_delay_and_its_replay_is_dropped() {
    avoid_epoch_boundary().await;
    let tmp = tempfile::tempdir().unwrap();
    let (directory, client) = authority(tmp.path()).await;
    let mut sink = Sink::start(&client).await;
    let log = tmp.path().join("packets.bin");
    let (ingress_log, hop_log) = (tmp.path().join("ingress.log"), tmp.path().join("hop.log"));
    let mix = Mix::start(tmp.path(), &directory, |c| {
        c.packet_log = Some(log.clone());
        c.test_hooks = true;
        c.test_ingress_log = Some(ingress_log.clone());
        c.test_hop_log = Some(hop_log.clone());
    })
    .await;
    mix.wait_for_consensus().await;

    let delay = Duration::from_millis(400);
    let p = packet(&mix, delay, sink.hop(), b"hello through one mix");
    let sent = Instant::now();
    mix.send(&p).await;
    let frame = sink
        .next(Duration::from_secs(10))
        .await
        .expect("the sink got nothing");
    let took = sent.elapsed();
    assert!(
        took >= delay,
        "forwarded after {took:?}, before the {delay:?} delay"
    );
    assert_ne!(
        &frame[..],
        p.as_bytes(),
        "forwarded without removing a layer"
    );
    let (_, message) = sink.open(&frame[..]);
    assert_eq!(message, b"hello through one mix");
    mix.wait_metric(FORWARDED, |v| v == 1.0).await;
    mix.wait_metric(RECEIVED, |v| v == 1.0).await;
    // One tag recorded; the filter's capacity and key epoch are exported.
    mix.wait_metric("bastet_mixnode_replay_filter_entries", |v| v == 1.0)
        .await;
    let text = mix.metrics().await;
    assert!(
        metric_value(&text, "bastet_mixnode_replay_filter_capacity").unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        metric_value(&text, "bastet_mixnode_sphinx_key_epoch").unwrap() >= mix.epoch() as f64,
        "{text}"
    );
    assert_eq!(std::fs::read(&log).unwrap(), frame.to_vec(), "packet_log");

    // The very same bytes again: dropped as a replay, never forwarded.
    mix.send(&p).await;
    mix.wait_metric(&dropped("replay"), |v| v == 1.0).await;
    assert!(
        sink.next(delay + Duration::from_millis(600))
            .await
            .is_none(),
        "a replayed packet was forwarded"
    );
    let text = mix.metrics().await;
    assert_eq!(metric_value(&text, FORWARDED), Some(1.0), "{text}");
    assert_eq!(metric_value(&text, RECEIVED), Some(2.0), "{text}");
    assert_eq!(
        metric_value(&text, "bastet_mixnode_delay_queue_depth"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(std::fs::read(&log).unwrap().len(), PACKET_LEN);
    mix.node.stop().await;

    // The test hooks: the ingress log names both arrivals by frame id, the
    // hop log the one packet held, and which packet left for it.
    let (in_id, out_id) = (frame_id(p.as_bytes()), frame_id(&frame[..]));
    let ingress = std::fs::read_to_string(&ingress_log).unwrap();
    let suffix = format!(" 127.0.0.1 {PACKET_LEN} {in_id}");
    assert_eq!(
        ingress.lines().filter(|l| l.ends_with(&suffix)).count(),
        2,
        "{ingress}"
    );
    assert_eq!(
        std::fs::read_to_string(&hop_log).unwrap(),
        format!("{in_id} {out_id}\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_garbage_frames_are_dropped_and_the_node_keeps_serving() {
    avoid_epoch_boundary().await;
    let tmp = tempfile::tempdir().unwrap();
    let (directory, client) = authority(tmp.path()).await;
    let mut sink = Sink::start(&client).await;
    let mix = Mix::start(tmp.path(), &directory, |_| {}).await;
    mix.wait_for_consensus().await;
    let inbound_closed = |reason: &str| {
        format!(
            "bastet_mixnode_peer_connections_closed_total{{direction=\"inbound\",reason=\"{reason}\"}}"
        )
    };

    // Not TLS at all: a failed handshake, which is no packet.
    let mut junk = tokio::net::TcpStream::connect(mix.node.listen_addr())
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut junk, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    mix.wait_metric(&inbound_closed("handshake"), |v| v == 1.0)
        .await;

    let valid = packet(&mix, Duration::ZERO, sink.hop(), b"first");
    // Half a frame, then a clean TLS close: the connection ends mid-frame.
    mix.send_raw(&valid.as_bytes()[..PACKET_LEN / 2]).await;
    mix.wait_metric(&dropped("wrong_length"), |v| v == 1.0)
        .await;

    // A whole frame of bytes that authenticate under no key: as far as the
    // mix can tell, a packet for a key it does not hold.
    let garbage: Vec<u8> = (0..PACKET_LEN).map(|i| (i * 7 + 3) as u8).collect();
    mix.send_raw(&garbage).await;
    mix.wait_metric(&dropped("unknown_key"), |v| v == 1.0).await;
    assert!(sink.next(Duration::from_millis(300)).await.is_none());

    // Still serving: a valid packet goes through.
    mix.send(&valid).await;
    let frame = sink
        .next(Duration::from_secs(10))
        .await
        .expect("a valid packet after bad ones was not forwarded");
    assert_eq!(sink.open(&frame[..]).1, b"first");
    mix.wait_metric(FORWARDED, |v| v == 1.0).await;
    // Half a frame is no packet; the garbage frame and the valid one are.
    mix.wait_metric(RECEIVED, |v| v == 2.0).await;
    mix.wait_metric("bastet_mixnode_outbound_queued", |v| v == 0.0)
        .await;
    let text = mix.metrics().await;
    assert_eq!(metric_value(&text, &dropped("replay")), Some(0.0), "{text}");

    // Every sender has hung up, the first inside a frame; the link to the
    // sink stays open for the next packet.
    mix.wait_metric(&inbound_closed("broken"), |v| v == 1.0)
        .await;
    mix.wait_metric(&inbound_closed("closed"), |v| v == 2.0)
        .await;
    mix.wait_metric(
        "bastet_mixnode_peer_connections{direction=\"inbound\"}",
        |v| v == 0.0,
    )
    .await;
    mix.wait_metric(
        "bastet_mixnode_peer_connections{direction=\"outbound\"}",
        |v| v == 1.0,
    )
    .await;
    let text = mix.metrics().await;
    // Of the three bad connections only the half frame was a packet cut short.
    assert_eq!(
        metric_value(&text, &dropped("wrong_length")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, &inbound_closed("limit")),
        Some(0.0),
        "{text}"
    );
    mix.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_next_hops_and_overlong_delays_are_dropped_by_reason() {
    avoid_epoch_boundary().await;
    let tmp = tempfile::tempdir().unwrap();
    let (directory, client) = authority(tmp.path()).await;
    let mut sink = Sink::start(&client).await;
    let mix = Mix::start(tmp.path(), &directory, |c| c.max_delay_ms = 1000).await;
    mix.wait_for_consensus().await;

    mix.send(&packet(
        &mix,
        Duration::from_millis(1001),
        sink.hop(),
        b"slow",
    ))
    .await;
    mix.wait_metric(&dropped("delay_too_long"), |v| v == 1.0)
        .await;

    mix.send(&packet(&mix, Duration::ZERO, stranger(), b"lost"))
        .await;
    mix.wait_metric(&dropped("unknown_next_hop"), |v| v == 1.0)
        .await;

    assert!(sink.next(Duration::from_millis(300)).await.is_none());
    let text = mix.metrics().await;
    assert_eq!(metric_value(&text, FORWARDED), Some(0.0), "{text}");
    mix.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_consensus_released_packets_are_dropped_and_health_is_served() {
    let tmp = tempfile::tempdir().unwrap();
    let mix = Mix::start(tmp.path(), &unreachable_directory(), |_| {}).await;
    // /health is served, and says the node is not ready, and why. The
    // first readiness check runs off the request path, so until it has
    // returned /health says "starting"; wait for it (5 s at most).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let health = loop {
        let health = http_get_any(mix.node.metrics_addr(), "/health").await;
        if !health.contains("readiness not checked yet") || std::time::Instant::now() > deadline {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    assert!(health.contains("not ready: no consensus"), "{health}");

    mix.send(&packet(&mix, Duration::from_millis(50), stranger(), b"x"))
        .await;
    mix.wait_metric(&dropped("no_consensus"), |v| v == 1.0)
        .await;
    let text = mix.metrics().await;
    // Every reason is exported from the start.
    for reason in [
        "replay",
        "malformed",
        "wrong_length",
        "unknown_next_hop",
        "queue_full",
        "overload",
        "delay_too_long",
        "no_consensus",
        "unknown_key",
    ] {
        assert!(
            metric_value(&text, &dropped(reason)).is_some(),
            "{reason}: {text}"
        );
    }
    assert!(
        metric_value(&text, "bastet_mixnode_outbound_queued").is_some(),
        "{text}"
    );
    mix.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_releases_what_it_holds_within_the_drain_bound() {
    avoid_epoch_boundary().await;
    let tmp = tempfile::tempdir().unwrap();
    let (directory, client) = authority(tmp.path()).await;
    let mut sink = Sink::start(&client).await;
    let mix = Mix::start(tmp.path(), &directory, |_| {}).await;
    mix.wait_for_consensus().await;

    let delay = Duration::from_millis(1500);
    let p = packet(&mix, delay, sink.hop(), b"held while the node stops");
    let sent = Instant::now();
    mix.send(&p).await;
    mix.wait_metric("bastet_mixnode_delay_queue_depth", |v| v == 1.0)
        .await;
    // SIGTERM's path: the node stops while the packet is held.
    let stopping = tokio::spawn(mix.node.stop());
    let frame = sink
        .next(Duration::from_secs(5))
        .await
        .expect("the held packet was dropped at stop");
    assert!(sent.elapsed() >= delay, "released before its delay");
    let (_, message) = sink.open(&frame[..]);
    assert_eq!(message, b"held while the node stops");
    tokio::time::timeout(
        bastet_mixnode::DRAIN_BOUND + Duration::from_secs(4),
        stopping,
    )
    .await
    .expect("stop took longer than the drain bound")
    .unwrap();
}

/// A burst of packets on one connection, far more than the packet workers
/// take in one run, under each `packet_work`: every packet is forwarded
/// once, with its layer removed, and none is dropped.
async fn a_burst_is_forwarded_whole(work: PacketWork) {
    const BURST: usize = 120;
    avoid_epoch_boundary().await;
    let tmp = tempfile::tempdir().unwrap();
    let (directory, client) = authority(tmp.path()).await;
    let mut sink = Sink::start(&client).await;
    // A debug build under a parallel test run can take longer than the
    // default 100 ms wait bound for the whole burst; this test is about
    // the backlog being worked through, not shed.
    let mix = Mix::start(tmp.path(), &directory, |c| {
        c.packet_work = work;
        c.ingress_max_wait_ms = 10_000;
    })
    .await;
    mix.wait_for_consensus().await;
    let mut wire = Vec::with_capacity(BURST * PACKET_LEN);
    for i in 0..BURST {
        let p = packet(
            &mix,
            Duration::ZERO,
            sink.hop(),
            format!("burst {i}").as_bytes(),
        );
        wire.extend_from_slice(p.as_bytes());
    }
    mix.send_raw(&wire).await;
    // Take them all first, then open them (slow in a debug build).
    let mut frames = Vec::with_capacity(BURST);
    while frames.len() < BURST {
        let frame = sink
            .next(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("{work:?}: {} of {BURST} forwarded", frames.len()));
        frames.push(frame);
    }
    let mut got = std::collections::BTreeSet::new();
    for frame in &frames {
        let (_, message) = sink.open(&frame[..]);
        let message = String::from_utf8(message).unwrap();
        assert!(got.insert(message.clone()), "{work:?}: {message} twice");
    }
    let want: std::collections::BTreeSet<String> =
        (0..BURST).map(|i| format!("burst {i}")).collect();
    assert_eq!(got, want, "{work:?}");
    mix.wait_metric(FORWARDED, |v| v == BURST as f64).await;
    let text = mix.metrics().await;
    assert_eq!(metric_value(&text, RECEIVED), Some(BURST as f64), "{text}");
    assert_eq!(
        metric_value(&text, &dropped("overload")),
        Some(0.0),
        "{text}"
    );
    mix.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_forwarded_whole_by_packet_tasks() {
    a_burst_is_forwarded_whole(PacketWork::Runtime).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_forwarded_whole_by_packet_threads() {
    a_burst_is_forwarded_whole(PacketWork::Threads).await;
}
