//! Acceptance tests of the media pipeline over a simulated link (virtual
//! time, loss, delay, reordering; no sockets, no timing asserts).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code may panic

use std::time::Duration;

use bastet_call::{
    AudioDecoder, AudioEncoder, AudioSource, CELL_LEN, CallKeys, EncodedAudio, EphemeralKey, Error,
    FrameOpener, I420Frame, KEM_CIPHERTEXT_LEN, Party, Payload, Profile, Receiver, Role, Sender,
    SharedSecrets, Transcript, VideoDecoder, VideoEncoder, VideoSource, ks_two_sample,
    moving_pattern, speech_like,
};
use zeroize::Zeroizing;

const MS: Duration = Duration::from_millis(1);

/// SplitMix64: deterministic randomness for the simulated link.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn transcript(callee_ephemeral: [u8; 32], caller_ephemeral: [u8; 32]) -> Transcript {
    Transcript {
        call_id: [0x42; 16],
        caller: Party {
            identity: [1; 32],
            device: [2; 32],
            ephemeral: caller_ephemeral,
        },
        callee: Party {
            identity: [3; 32],
            device: [4; 32],
            ephemeral: callee_ephemeral,
        },
        kem_ciphertext: Box::new([5; KEM_CIPHERTEXT_LEN]),
    }
}

/// Caller and callee keys from a real X25519 exchange (the ML-KEM half
/// fixed: call setup is not this crate's job).
fn call_keys() -> (CallKeys, CallKeys) {
    let mut rng = rand::rng();
    let a = EphemeralKey::generate(&mut rng);
    let b = EphemeralKey::generate(&mut rng);
    let t = transcript(b.public(), a.public());
    let secrets = |x25519| SharedSecrets {
        x25519,
        ml_kem: Zeroizing::new([6; 32]),
    };
    (
        CallKeys::derive(Role::Caller, &secrets(a.agree(&b.public()).unwrap()), &t).unwrap(),
        CallKeys::derive(Role::Callee, &secrets(b.agree(&a.public()).unwrap()), &t).unwrap(),
    )
}

/// The video profile at a size rav1e encodes quickly in the test profile
/// (debug assertions on); the pipeline does not depend on the size.
fn small_video_profile() -> Profile {
    let mut profile = Profile::video();
    if let Some(v) = profile.video.as_mut() {
        v.width = 96;
        v.height = 64;
    }
    profile
}

struct Link {
    loss: f64,
    delay: Duration,
    jitter: Duration,
    seed: u64,
}

impl Link {
    fn clean() -> Link {
        Link {
            loss: 0.0,
            delay: 40 * MS,
            jitter: 15 * MS,
            seed: 1,
        }
    }
}

struct Call {
    audio: Vec<(u32, Vec<i16>, AudioSource)>,
    video: Vec<(u32, Option<I420Frame>, VideoSource)>,
    stats: bastet_call::Stats,
    cells_sent: usize,
}

/// Runs one direction of a call over `link`: captures `pcm` frame by frame
/// (and `pictures` at the profile's frame rate), collects playout until
/// every captured frame has played.
fn run_call(profile: &Profile, pcm: &[i16], pictures: &[I420Frame], link: &Link) -> Call {
    let (caller, callee) = call_keys();
    let mut sender = Sender::new(profile.clone(), caller.send, Duration::ZERO).unwrap();
    let mut receiver = Receiver::new(profile.clone(), callee.receive).unwrap();
    let mut rng = Rng(link.seed);
    let frame_samples = profile.audio_frame_samples();
    let frames: Vec<&[i16]> = pcm.chunks_exact(frame_samples).collect();
    let video_interval = profile.video_frame_interval();
    let mut in_flight: Vec<(Duration, [u8; CELL_LEN])> = Vec::new();
    let mut call = Call {
        audio: Vec::new(),
        video: Vec::new(),
        stats: receiver.stats(),
        cells_sent: 0,
    };
    let (mut next_audio, mut next_video, mut flushed) = (0usize, 0usize, false);
    let mut now = Duration::ZERO;
    while call.audio.len() < frames.len() || call.video.len() < pictures.len() {
        assert!(now < Duration::from_secs(120), "the call never finished");
        while next_audio < frames.len() && profile.audio.frame * next_audio as u32 <= now {
            sender.push_audio(now, frames[next_audio]).unwrap();
            next_audio += 1;
        }
        if let Some(interval) = video_interval {
            while next_video < pictures.len() && interval * next_video as u32 <= now {
                sender.push_video(now, &pictures[next_video]).unwrap();
                next_video += 1;
            }
            if next_video == pictures.len() && !flushed {
                sender.finish_video().unwrap();
                flushed = true;
            }
        }
        while let Some(cell) = sender.poll_transmit(now).unwrap() {
            call.cells_sent += 1;
            if rng.unit() >= link.loss {
                let delay = link.delay + link.jitter.mul_f64(rng.unit());
                in_flight.push((now + delay, cell));
            }
        }
        in_flight.sort_by_key(|(at, _)| *at);
        while in_flight.first().is_some_and(|(at, _)| *at <= now) {
            let (at, cell) = in_flight.remove(0);
            receiver.handle_cell(at, &cell).unwrap();
        }
        while let Some(out) = receiver.poll_audio(now).unwrap() {
            if call.audio.len() < frames.len() {
                call.audio.push((out.seq, out.pcm, out.source));
            }
        }
        while let Some(out) = receiver.poll_video(now).unwrap() {
            if call.video.len() < pictures.len() {
                call.video.push((out.frame, out.picture, out.source));
            }
        }
        now += MS;
    }
    call.stats = receiver.stats();
    call
}

/// What the same Opus encoder and decoder make of `pcm` locally.
fn local_audio(profile: &Profile, pcm: &[i16]) -> Vec<Vec<i16>> {
    let mut enc = AudioEncoder::new(&profile.audio).unwrap();
    let mut dec = AudioDecoder::new(&profile.audio).unwrap();
    pcm.chunks_exact(enc.frame_samples())
        .map(|frame| match enc.encode(frame).unwrap() {
            EncodedAudio::Packet(p) => dec.decode(&p).unwrap(),
            EncodedAudio::Silence => dec.silence(),
        })
        .collect()
}

#[test]
fn without_loss_audio_is_what_a_local_encode_and_decode_give() {
    for profile in [Profile::normal(), Profile::constrained()] {
        let pcm = speech_like(6 * 48_000, 5);
        let call = run_call(&profile, &pcm, &[], &Link::clean());
        let expected = local_audio(&profile, &pcm);
        assert_eq!(call.audio.len(), expected.len());
        let mut silent = 0;
        for (i, ((seq, pcm, source), want)) in call.audio.iter().zip(&expected).enumerate() {
            assert_eq!(*seq as usize, i);
            assert!(
                matches!(source, AudioSource::Decoded | AudioSource::Silence),
                "{}: frame {i} was {source:?}",
                profile.name
            );
            silent += usize::from(*source == AudioSource::Silence);
            assert!(pcm == want, "{}: frame {i} differs", profile.name);
        }
        assert!(silent > 0, "{}: the gate never closed", profile.name);
        assert!(
            silent < expected.len() / 2,
            "{}: mostly silence",
            profile.name
        );
        let s = &call.stats;
        assert_eq!(s.cells.lost, 0);
        assert_eq!(s.audio.concealed, 0);
        assert_eq!(s.audio.late, 0);
        assert!(s.audio.playout_latency.p50_ms >= profile.audio.jitter_depth.as_millis() as f64);
    }
}

#[test]
fn without_loss_video_is_what_a_local_encode_and_decode_give() {
    let profile = small_video_profile();
    let settings = profile.video.clone().unwrap();
    let pictures: Vec<I420Frame> = (0..12)
        .map(|i| moving_pattern(settings.width, settings.height, i).unwrap())
        .collect();
    let pcm = speech_like(48_000, 9);
    let call = run_call(&profile, &pcm, &pictures, &Link::clean());

    let mut enc = VideoEncoder::new(&settings).unwrap();
    let mut dec = VideoDecoder::new(&settings).unwrap();
    let mut encoded = Vec::new();
    for (i, p) in pictures.iter().enumerate() {
        encoded.extend(enc.encode(p, i == 0).unwrap());
    }
    encoded.extend(enc.finish().unwrap());
    assert_eq!(call.video.len(), pictures.len());
    for (i, ((frame, picture, source), e)) in call.video.iter().zip(&encoded).enumerate() {
        assert_eq!(*frame as usize, i);
        assert_eq!(*source, VideoSource::Decoded, "frame {i}");
        let local = dec.decode(&e.data).unwrap().unwrap();
        let received = picture.as_ref().unwrap();
        assert!(
            *received == local,
            "frame {i} differs from the local decode"
        );
        assert!(
            received.psnr_y(&pictures[i]) > 25.0,
            "frame {i} is not the input"
        );
    }
    assert_eq!(call.audio.len(), pcm.len() / profile.audio_frame_samples());
    eprintln!("{}", call.stats.to_json());
    let video = call.stats.video.unwrap();
    assert_eq!((video.decoded, video.frozen), (12, 0));
    assert!(video.network_latency.count == 12);
}

#[test]
fn with_ten_percent_loss_the_full_duration_plays_with_concealment() {
    let profile = Profile::normal();
    let pcm = speech_like(10 * 48_000, 21);
    let link = Link {
        loss: 0.10,
        seed: 7,
        ..Link::clean()
    };
    let call = run_call(&profile, &pcm, &[], &link);
    let frames = pcm.len() / profile.audio_frame_samples();
    assert_eq!(call.audio.len(), frames, "the full duration plays out");
    for (i, (seq, pcm, _)) in call.audio.iter().enumerate() {
        assert_eq!(*seq as usize, i);
        assert_eq!(pcm.len(), profile.audio_frame_samples());
    }
    let s = &call.stats;
    // Shown with --nocapture: the figures the README quotes.
    eprintln!("{}", s.to_json());
    assert!(
        (0.06..0.14).contains(&s.cells.loss_ratio),
        "loss {}",
        s.cells.loss_ratio
    );
    assert!(s.audio.concealed > 0, "{}", s.to_json());
    assert!(s.audio.redundant_recovered > 0, "{}", s.to_json());
    let json: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
    assert_eq!(json["audio"]["concealed"].as_u64(), Some(s.audio.concealed));
    assert_eq!(json["profile"], "normal");
    assert!(json["audio"]["network_latency"]["p99_ms"].as_f64().unwrap() >= 40.0);
    // Cells sent after the last one received are not yet counted lost.
    assert!(s.cells.received + s.cells.lost <= call.cells_sent as u64);
}

#[test]
fn with_loss_video_freezes_then_recovers_at_a_keyframe() {
    let mut profile = small_video_profile();
    if let Some(v) = profile.video.as_mut() {
        v.keyframe_interval = 6;
    }
    let settings = profile.video.clone().unwrap();
    let pictures: Vec<I420Frame> = (0..18)
        .map(|i| moving_pattern(settings.width, settings.height, i).unwrap())
        .collect();
    let pcm = speech_like(2 * 48_000, 4);
    let link = Link {
        loss: 0.10,
        seed: 3,
        ..Link::clean()
    };
    let call = run_call(&profile, &pcm, &pictures, &link);
    assert_eq!(call.video.len(), pictures.len());
    let video = call.stats.video.clone().unwrap();
    assert!(video.frozen > 0 && video.decoded > 0, "{video:?}");
    // After the first freeze, some later frame decodes again.
    let first_frozen = call
        .video
        .iter()
        .position(|(_, _, s)| *s == VideoSource::Frozen)
        .unwrap();
    assert!(
        call.video[first_frozen..]
            .iter()
            .any(|(_, _, s)| *s == VideoSource::Decoded),
        "video never recovered"
    );
}

/// The cells a sender emits for `pcm` when its caller wakes up with
/// random timer slop: (emission time, cell).
fn emissions(pcm: &[i16], seed: u64) -> (Vec<(f64, usize)>, Vec<bool>) {
    let profile = Profile::normal();
    let (caller, callee) = call_keys();
    let mut sender = Sender::new(profile.clone(), caller.send, Duration::ZERO).unwrap();
    let mut opener = FrameOpener::new(callee.receive);
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let mut is_media = Vec::new();
    for (k, frame) in pcm.chunks_exact(profile.audio_frame_samples()).enumerate() {
        let capture = profile.audio.frame * k as u32;
        sender.push_audio(capture, frame).unwrap();
        // The caller's timer fires up to 3 ms late.
        let wake = sender.poll_timeout() + MS.mul_f64(3.0 * rng.unit());
        while let Some(cell) = sender.poll_transmit(wake).unwrap() {
            out.push((wake.as_secs_f64(), cell.len()));
            let (_, plaintext) = opener.open(&cell).unwrap();
            is_media.push(!Payload::decode(&plaintext).unwrap().is_cover());
        }
    }
    (out, is_media)
}

fn gaps(times: &[f64]) -> Vec<f64> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Cells in each 200 ms window: what an observer counting packets sees.
fn counts(times: &[f64], seconds: usize) -> Vec<f64> {
    let mut counts = vec![0.0; seconds * 5];
    for t in times {
        if let Some(c) = counts.get_mut((t * 5.0) as usize) {
            *c += 1.0;
        }
    }
    counts
}

#[test]
fn silence_and_speech_leave_the_same_cell_stream() {
    let seconds = 20;
    let speech = speech_like(seconds * 48_000, 17);
    let silence = vec![0i16; seconds * 48_000];
    let (talk, talk_media) = emissions(&speech, 100);
    let (quiet, quiet_media) = emissions(&silence, 200);
    assert_eq!(talk.len(), quiet.len(), "one cell per tick either way");
    assert!(talk.iter().chain(&quiet).all(|&(_, len)| len == CELL_LEN));
    let talk_times: Vec<f64> = talk.iter().map(|c| c.0).collect();
    let quiet_times: Vec<f64> = quiet.iter().map(|c| c.0).collect();
    let (d, critical) = ks_two_sample(&gaps(&talk_times), &gaps(&quiet_times)).unwrap();
    assert!(
        d < critical,
        "inter-cell times differ: D = {d:.4} ≥ {critical:.4}"
    );
    let sizes = |c: &[(f64, usize)]| c.iter().map(|&(_, l)| l as f64).collect::<Vec<_>>();
    let (d, critical) = ks_two_sample(&sizes(&talk), &sizes(&quiet)).unwrap();
    assert!(d < critical, "cell sizes differ: D = {d:.4}");
    let (d, critical) = ks_two_sample(
        &counts(&talk_times, seconds),
        &counts(&quiet_times, seconds),
    )
    .unwrap();
    assert!(
        d < critical,
        "cells per window differ: D = {d:.4} ≥ {critical:.4}"
    );

    // The test has power: a sender that sent only its media cells would
    // be told apart at once.
    assert!(quiet_media.iter().filter(|m| **m).count() < 20);
    let media_times: Vec<f64> = talk_times
        .iter()
        .zip(&talk_media)
        .filter(|(_, m)| **m)
        .map(|(t, _)| *t)
        .collect();
    let (d, critical) = ks_two_sample(
        &counts(&media_times, seconds),
        &counts(&quiet_times, seconds),
    )
    .unwrap();
    assert!(
        d > critical,
        "a media-only stream should differ: D = {d:.4} ≤ {critical:.4}"
    );
}

#[test]
fn altered_cells_and_swapped_keys_fail_to_decrypt() {
    let profile = Profile::normal();
    let pcm = speech_like(48_000, 2);
    let mut rng = rand::rng();
    let caller_eph = EphemeralKey::generate(&mut rng);
    let callee_eph = EphemeralKey::generate(&mut rng);
    let mitm_eph = EphemeralKey::generate(&mut rng);
    let secrets = |x25519| SharedSecrets {
        x25519,
        ml_kem: Zeroizing::new([6; 32]),
    };
    // The caller saw the man in the middle's key where the callee's should be.
    let caller_view = transcript(mitm_eph.public(), caller_eph.public());
    let caller = CallKeys::derive(
        Role::Caller,
        &secrets(caller_eph.agree(&mitm_eph.public()).unwrap()),
        &caller_view,
    )
    .unwrap();
    let callee_view = transcript(callee_eph.public(), caller_eph.public());
    let callee = CallKeys::derive(
        Role::Callee,
        &secrets(callee_eph.agree(&caller_eph.public()).unwrap()),
        &callee_view,
    )
    .unwrap();
    assert_ne!(caller.confirmation(), callee.confirmation());
    let mut sender = Sender::new(profile.clone(), caller.send, Duration::ZERO).unwrap();
    let mut receiver = Receiver::new(profile.clone(), callee.receive).unwrap();
    sender
        .push_audio(Duration::ZERO, &pcm[..profile.audio_frame_samples()])
        .unwrap();
    let cell = sender.poll_transmit(Duration::ZERO).unwrap().unwrap();
    let err = receiver.handle_cell(Duration::ZERO, &cell).unwrap_err();
    assert!(matches!(err, Error::Decrypt));
    assert!(err.to_string().contains("failed to authenticate"), "{err}");

    // With honest keys, any altered byte fails, and the original still opens.
    let (caller, callee) = call_keys();
    let mut sender = Sender::new(profile.clone(), caller.send, Duration::ZERO).unwrap();
    let mut receiver = Receiver::new(profile, callee.receive).unwrap();
    let cell = sender.poll_transmit(Duration::ZERO).unwrap().unwrap();
    for i in [5, 20, 300, CELL_LEN - 1] {
        let mut altered = cell;
        altered[i] ^= 0x01;
        assert!(
            matches!(receiver.handle_cell(MS, &altered), Err(Error::Decrypt)),
            "byte {i}"
        );
    }
    receiver.handle_cell(MS, &cell).unwrap();
    let stats = receiver.stats();
    assert_eq!(stats.cells.rejected_unauthenticated, 4);
    assert_eq!(stats.cells.received, 1);
}

#[test]
fn a_replayed_cell_is_rejected() {
    let profile = Profile::normal();
    let (caller, callee) = call_keys();
    let mut sender = Sender::new(profile.clone(), caller.send, Duration::ZERO).unwrap();
    let mut receiver = Receiver::new(profile.clone(), callee.receive).unwrap();
    let pcm = speech_like(48_000, 8);
    let frame = profile.audio_frame_samples();
    let mut cells = Vec::new();
    for k in 0..5u32 {
        let t = profile.tick * k;
        sender
            .push_audio(t, &pcm[k as usize * frame..(k as usize + 1) * frame])
            .unwrap();
        cells.push(sender.poll_transmit(t).unwrap().unwrap());
    }
    for cell in &cells {
        receiver.handle_cell(50 * MS, cell).unwrap();
    }
    for cell in [&cells[4], &cells[0], &cells[2]] {
        assert!(matches!(
            receiver.handle_cell(60 * MS, cell),
            Err(Error::Replay { .. })
        ));
    }
    let stats = receiver.stats();
    assert_eq!(stats.cells.rejected_replay, 3);
    assert_eq!(stats.cells.received, 5);
}

/// A keyframe request rides in a slot that would carry cover, never in
/// place of media, looks like cover on the wire (same size, same cover
/// flag inside), and reaches the peer's receiver once.
#[test]
fn a_keyframe_request_takes_a_cover_slot_and_reaches_the_peer_once() {
    let profile = Profile::normal();
    let (caller, callee) = call_keys();
    let mut sender = Sender::new(profile.clone(), caller.send, Duration::ZERO).unwrap();
    let mut receiver = Receiver::new(profile.clone(), callee.receive).unwrap();
    let pcm = bastet_call::tone_sweep(profile.audio_frame_samples(), 300.0, 900.0, 0.3);
    // With audio queued, the request waits: media first.
    sender.ask_for_keyframe();
    sender.push_audio(Duration::ZERO, &pcm).unwrap();
    let with_audio = sender.poll_transmit(Duration::ZERO).unwrap().unwrap();
    assert!(!sender.last_was_cover());
    receiver.handle_cell(MS, &with_audio).unwrap();
    assert!(!receiver.take_peer_keyframe_request());
    // The next slot has nothing to say: it carries the request.
    let request = sender.poll_transmit(profile.tick).unwrap().unwrap();
    assert!(sender.last_was_cover());
    assert_eq!(request.len(), with_audio.len());
    receiver.handle_cell(profile.tick + MS, &request).unwrap();
    assert!(receiver.take_peer_keyframe_request());
    assert!(!receiver.take_peer_keyframe_request());
    // Then plain cover again.
    let cover = sender.poll_transmit(profile.tick * 2).unwrap().unwrap();
    receiver.handle_cell(profile.tick * 2 + MS, &cover).unwrap();
    assert!(!receiver.take_peer_keyframe_request());
    assert_eq!(receiver.stats().cells.cover, 2);
}
