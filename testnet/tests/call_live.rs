//! A call with live devices, on real processes on loopback (binaries from
//! `target/<profile>/`, built with `--features bastet-testnet/live` as
//! scripts/test.sh does): `bastet-testnet call-demo --mic=... --speaker=...`
//! with alice talking into an ALSA microphone and hearing bob on an ALSA
//! speaker.
//!
//! There is no sound card. A private ALSA configuration (the `.asoundrc`
//! of the `HOME` call-demo runs with) defines both devices with ALSA's
//! `file` plugin over its `null` device: the microphone reads a FIFO this
//! test writes a 440 Hz tone into at 48,000 samples a second, the speaker
//! writes into a FIFO this test reads at the same pace. The FIFOs give the
//! devices a real-time clock, as a sound card would.
//!
//! Asserted: what bob heard is alice's tone (440 Hz, loud); what alice's
//! speaker played is what she heard from bob; both ends' device counters.
#![cfg(feature = "live")]
// This whole file is test code; its helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Samples a second on both devices.
const RATE: usize = 48_000;
/// `O_NONBLOCK` (Linux).
const O_NONBLOCK: i32 = 0o4000;
/// Samples written or read at a time (10 ms).
const CHUNK: usize = 480;

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Writes a 440 Hz tone into the FIFO at 48,000 samples a second, opening
/// it again whenever the reader closes it (ALSA opens the device once to
/// read its capabilities, then again to capture).
fn paced_tone_writer(fifo: PathBuf, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut file) = std::fs::OpenOptions::new().write(true).open(&fifo) else {
                return;
            };
            loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let chunk: Vec<u8> = (sent..sent + CHUNK)
                    .flat_map(|i| {
                        let t = i as f64 / RATE as f64;
                        (((t * 440.0 * std::f64::consts::TAU).sin() * 8000.0) as i16).to_le_bytes()
                    })
                    .collect();
                if file.write_all(&chunk).is_err() {
                    break;
                }
                sent += CHUNK;
                let due = start + Duration::from_secs_f64(sent as f64 / RATE as f64);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        }
    });
}

/// Reads the FIFO at 48,000 samples a second until `stop`, opening it
/// again whenever the writer closes it; returns every sample read.
fn paced_reader(fifo: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<i16>> {
    std::thread::spawn(move || {
        let mut samples = Vec::new();
        let start = Instant::now();
        let mut taken = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut file) = std::fs::File::open(&fifo) else {
                return samples;
            };
            let mut buf = vec![0u8; CHUNK * 2];
            loop {
                if stop.load(Ordering::Relaxed) {
                    return samples;
                }
                if file.read_exact(&mut buf).is_err() {
                    break;
                }
                samples.extend(
                    buf.chunks_exact(2)
                        .map(|b| i16::from_le_bytes([b[0], b[1]])),
                );
                taken += CHUNK;
                let due = start + Duration::from_secs_f64(taken as f64 / RATE as f64);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        }
        samples
    })
}

/// The signal's power at `hz` against its whole power (Goertzel).
fn share_at(samples: &[i16], hz: f64) -> f64 {
    let w = std::f64::consts::TAU * hz / RATE as f64;
    let (mut s1, mut s2) = (0.0, 0.0);
    let mut total = 0.0;
    for &x in samples {
        let x = f64::from(x);
        let s = x + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s;
        total += x * x;
    }
    let power = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
    // A pure tone puts N/2 · total into the bin.
    power / (total * samples.len() as f64 / 2.0).max(1.0)
}

#[test]
fn a_call_with_a_live_microphone_and_speaker() {
    let home = tempfile::tempdir().unwrap();
    let (mic, speaker) = (
        home.path().join("mic.fifo"),
        home.path().join("speaker.fifo"),
    );
    mkfifo(&mic);
    mkfifo(&speaker);
    std::fs::write(
        home.path().join(".asoundrc"),
        format!(
            "pcm.bastet_test_mic {{\n type file\n slave.pcm \"null\"\n file \"/dev/null\"\n \
             infile \"{}\"\n format \"raw\"\n hint {{ show on description \"test mic\" }}\n}}\n\
             pcm.bastet_test_speaker {{\n type file\n slave.pcm \"null\"\n file \"{}\"\n \
             format \"raw\"\n hint {{ show on description \"test speaker\" }}\n}}\n",
            mic.display(),
            speaker.display()
        ),
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    paced_tone_writer(mic, stop.clone());
    let speaker_fifo = speaker.clone();
    let played = paced_reader(speaker, stop.clone());
    let dir = home.path().join("net");
    let testnet = env!("CARGO_BIN_EXE_bastet-testnet");
    let out = std::process::Command::new(testnet)
        .args([
            "call-demo",
            "--duration",
            "5",
            "--mic=bastet_test_mic",
            "--speaker=bastet_test_speaker",
            "--json",
            "--dir",
        ])
        .arg(&dir)
        .env("HOME", home.path())
        // The other binaries sit beside this one in target/<profile>/.
        .env("BASTET_BIN_DIR", Path::new(testnet).parent().unwrap())
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    // A reader waiting for the next writer in open() is let go.
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(O_NONBLOCK)
        .open(&speaker_fifo);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "call-demo failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let (alice, bob) = (&report["caller"], &report["callee"]);

    // Alice's microphone delivered about a second's samples a second.
    let mic = &alice["devices"]["microphone"];
    assert_eq!(mic[0], "alsa:bastet_test_mic", "{alice}");
    let delivered = mic[1]["delivered"].as_u64().unwrap();
    assert!(delivered >= 4 * RATE as u64, "{mic}");
    assert_eq!(mic[1]["errors"], 0, "{mic}");
    // Bob heard her tone: 440 Hz carries most of what he heard.
    let heard = bastet_call::read_wav_file(&dir.join("call-demo/bob-heard-alice.wav")).unwrap();
    // In 100 ms blocks (a dropped sample shifts the phase between blocks,
    // not within most of them), over the middle of the call.
    let middle = &heard[heard.len() / 4..heard.len() * 3 / 4];
    let shares: Vec<f64> = middle
        .chunks_exact(RATE / 10)
        .map(|block| share_at(block, 440.0))
        .collect();
    let share = shares.iter().sum::<f64>() / shares.len().max(1) as f64;
    assert!(
        share > 0.5,
        "440 Hz is only {share:.3} of what bob heard: {shares:?}"
    );

    // Alice's speaker was handed every frame she heard, and the device
    // played them: the FIFO carried her peer's sweep, not only silence.
    let speaker = &alice["devices"]["speaker"];
    assert_eq!(speaker[0], "alsa:bastet_test_speaker", "{alice}");
    let frames = alice["received"]["audio"]["played"].as_u64().unwrap();
    assert!(frames >= 200, "alice played {frames} frames");
    assert_eq!(
        speaker[1]["delivered"].as_u64().unwrap(),
        frames * 960,
        "{speaker}"
    );
    let played = played.join().unwrap();
    let loud = played.iter().filter(|s| s.unsigned_abs() > 100).count();
    println!(
        "microphone {mic}; 440 Hz share of what bob heard {share:.3}; speaker {speaker}; \
         {loud} loud samples of {} read from the speaker for {frames} frames",
        played.len()
    );
    assert!(
        loud as u64 >= frames * 960 / 2,
        "the speaker played {loud} loud samples of {} for {frames} frames",
        played.len()
    );
    // What alice heard is still sample for sample what bob said (her
    // --audio-out file); what bob heard has no file to compare with.
    assert_eq!(report["audio_to_callee"], serde_json::Value::Null);
    let to_caller = &report["audio_to_caller"];
    assert_eq!(to_caller["identical"], to_caller["compared"], "{to_caller}");
    assert_eq!(bob["devices"]["microphone"], serde_json::Value::Null);
}
