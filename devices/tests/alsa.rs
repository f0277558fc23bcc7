//! The live microphone and speaker through real ALSA, without a sound
//! card: a private ALSA configuration defines a microphone that reads a
//! file (ALSA's `file` plugin over its `null` device) and the `null`
//! speaker. ALSA reads its configuration once per process from `$HOME`,
//! so each test runs itself again as a child with `HOME` set.
//!
//! ALSA's `null` device is not paced by a clock: it delivers and takes
//! samples as fast as they are asked for. The tests therefore check what
//! flows and how the bounds hold, not timing.
#![cfg(feature = "audio")]
// This whole file is test code; its helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

const CHILD: &str = "BASTET_ALSA_TEST_CHILD";
/// The value every sample of the test microphone's file holds.
const LEVEL: i16 = 1234;

/// Runs `test` in a child process whose ALSA configuration is `asoundrc`.
fn in_child_with_alsa(test: &str, asoundrc: impl Fn(&Path) -> String) -> bool {
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join(".asoundrc"), asoundrc(home.path())).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("HOME", home.path())
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child {test} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The child ran the test's body; make sure it did not filter it out.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 passed"), "{stdout}");
    false
}

fn microphone_config(home: &Path) -> String {
    // 4 s of 48 kHz mono 16-bit samples, all LEVEL.
    let samples = LEVEL.to_le_bytes().repeat(48_000 * 4);
    std::fs::write(home.join("in.raw"), samples).unwrap();
    format!(
        "pcm.bastet_test_mic {{\n    type file\n    slave.pcm \"null\"\n    file \"/dev/null\"\n    \
         infile \"{}\"\n    format \"raw\"\n    hint {{ show on description \"Bastet test microphone\" }}\n}}\n",
        home.join("in.raw").display()
    )
}

#[test]
fn the_microphone_delivers_the_devices_samples_in_frames() {
    if !in_child_with_alsa(
        "the_microphone_delivers_the_devices_samples_in_frames",
        microphone_config,
    ) {
        return;
    }
    // Listed, and opened by its ALSA name.
    let listed = bastet_devices::list_devices();
    assert!(
        listed
            .iter()
            .any(|l| l.starts_with("microphone alsa:bastet_test_mic")),
        "{listed:?}"
    );
    let mut mic = bastet_devices::open_microphone(Some("bastet_test_mic")).unwrap();
    assert_eq!(mic.name(), "alsa:bastet_test_mic");
    let mut frame = vec![7i16; 960];
    let deadline = Instant::now() + Duration::from_secs(5);
    // The file's samples come through unchanged, a whole frame of them.
    loop {
        mic.read_frame(&mut frame);
        if frame.iter().all(|&s| s == LEVEL) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no frame of the file's samples: {:?}",
            &frame[..8]
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let stats = mic.stats();
    assert!(stats.delivered >= 960, "{stats:?}");
    // The device runs far ahead of the call (it is not paced): what the
    // call does not read is dropped, and the buffer stays bounded.
    std::thread::sleep(Duration::from_millis(200));
    mic.read_frame(&mut frame);
    let stats = mic.stats();
    assert!(stats.dropped > 0, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
}

#[test]
fn the_speaker_plays_what_the_call_queues() {
    if !in_child_with_alsa("the_speaker_plays_what_the_call_queues", |_| String::new()) {
        return;
    }
    let mut speaker = bastet_devices::open_speaker(Some("null")).unwrap();
    assert_eq!(speaker.name(), "alsa:null");
    for _ in 0..50 {
        speaker.play(&[LEVEL; 960]);
        std::thread::sleep(Duration::from_millis(2));
    }
    // The unpaced device took everything queued, then played silence.
    let deadline = Instant::now() + Duration::from_secs(5);
    while speaker.stats().missing == 0 {
        assert!(Instant::now() < deadline, "{:?}", speaker.stats());
        std::thread::sleep(Duration::from_millis(1));
    }
    let stats = speaker.stats();
    assert_eq!(stats.delivered, 50 * 960, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
}

#[test]
fn unknown_devices_are_named_with_the_ones_there_are() {
    if !in_child_with_alsa(
        "unknown_devices_are_named_with_the_ones_there_are",
        microphone_config,
    ) {
        return;
    }
    let err = bastet_devices::open_microphone(Some("no-such-mic"))
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        text.starts_with("no microphone named \"no-such-mic\"; there are: "),
        "{text}"
    );
    assert!(text.contains("alsa:bastet_test_mic"), "{text}");
    let err = bastet_devices::open_speaker(Some("alsa:no-such-speaker"))
        .err()
        .unwrap();
    assert!(err.to_string().contains("alsa:null"), "{err}");
}
