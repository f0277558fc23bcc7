//! `bastet-testnet call-demo`: a call between two clients through the
//! local network, with generated audio (alice a speech-like signal with
//! pauses, bob a tone sweep) and, in the video profile, a moving
//! test pattern; then what the acceptance checks of calls measure:
//!
//! - **lossless path**: with no loss injected, what each end heard equals,
//!   sample for sample, a local Opus encode and decode of what the other
//!   said (and the same for video pictures with the same AV1 settings);
//! - **latency**: network + crypto and mouth-to-ear percentiles, from both
//!   ends' statistics;
//! - **loss**: with `--loss`, the rendezvous relay corrupts that fraction
//!   of cells (its `test_cell_loss` hook) and the statistics show the
//!   concealed frames;
//! - **on the wire**: every relay's `test_cell_log` gives the size and
//!   arrival time of every cell; alice's cell trace says which cells
//!   carried speech and which silence, and a two-sample
//!   Kolmogorov–Smirnov test compares the inter-arrival times of the two
//!   at the rendezvous relay.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bastet_call::{
    AudioDecoder, AudioEncoder, EncodedAudio, I420Frame, Profile, VideoDecoder, VideoEncoder,
    Y4mReader, Y4mWriter, ks_two_sample, moving_pattern, read_wav_file, speech_like, tone_sweep,
    write_wav_file,
};
use serde::Serialize;

use crate::{Error, Network, Result};

/// What to run.
#[derive(Clone, Debug)]
pub struct CallDemoOptions {
    /// `normal`, `constrained` or `video`.
    pub profile: String,
    /// Seconds of talk.
    pub duration: Duration,
    /// The cell loss injected at the rendezvous relay (the network must be
    /// started with the same `cell_loss`).
    pub loss: f64,
    /// Alice talks into this live microphone (`""` the default) instead of
    /// her file; what bob heard is then not compared.
    pub mic: Option<String>,
    /// Alice also plays what she hears on this live speaker (`""` the
    /// default).
    pub speaker: Option<String>,
}

impl Default for CallDemoOptions {
    fn default() -> Self {
        CallDemoOptions {
            profile: "normal".into(),
            duration: Duration::from_secs(10),
            loss: 0.0,
            mic: None,
            speaker: None,
        }
    }
}

/// One direction's comparison with a local encode and decode.
#[derive(Clone, Debug, Serialize)]
pub struct Lossless {
    /// Frames (audio) or pictures (video) compared.
    pub compared: usize,
    /// Of which identical to the local decode.
    pub identical: usize,
    /// Why the comparison does not apply, if it does not: frames that
    /// arrived after their playout time were concealed (audio) or frozen
    /// (video), which changes the decoder's state from there on. That is
    /// this machine not keeping real time, not the path altering media;
    /// the receiver's statistics count them.
    pub not_applicable: Option<String>,
}

impl Lossless {
    /// Whether every frame compared was identical (and some were), or
    /// the comparison does not apply.
    pub fn holds(&self) -> bool {
        self.not_applicable.is_some() || (self.compared > 0 && self.identical == self.compared)
    }

    fn unless_late(mut self, stats: &serde_json::Value, what: &str) -> Self {
        let count = |k: &str| stats[k].as_u64().unwrap_or(0);
        let late = count("late") + count("incomplete");
        if late > 0 {
            self.not_applicable = Some(format!(
                "{late} {what} frame(s) arrived after their playout time (this machine did not \
                 keep real time); the decoder state differs from there on"
            ));
        }
        self
    }
}

/// Cell timing and sizes at the rendezvous relay, for alice's cells.
#[derive(Clone, Debug, Serialize)]
pub struct WireReport {
    /// Distinct sizes of the call cells every relay logged (bytes).
    pub cell_sizes: Vec<usize>,
    /// Call cells logged by all relays.
    pub cells_logged: usize,
    /// Alice's cells at the rendezvous sent while she spoke.
    pub speech_cells: usize,
    /// Alice's cells at the rendezvous sent while she was silent.
    pub silence_cells: usize,
    /// KS statistic of the inter-arrival times (speech vs silence).
    pub ks_d: f64,
    /// Its critical value at α = 0.01.
    pub ks_critical: f64,
    /// Whether the test rejects (timing tells speech from silence).
    pub ks_rejects: bool,
    /// Mean inter-arrival time of speech cells, ms.
    pub speech_gap_ms: f64,
    /// Mean inter-arrival time of silence cells, ms.
    pub silence_gap_ms: f64,
}

/// What the demo measured.
#[derive(Clone, Debug, Serialize)]
pub struct CallDemoReport {
    /// The profile.
    pub profile: String,
    /// Seconds of talk asked for.
    pub duration_s: u64,
    /// Cell loss injected at the rendezvous relay.
    pub loss_injected: f64,
    /// The rendezvous relay (short node id).
    pub rendezvous: String,
    /// `bastet call`'s statistics (alice).
    pub caller: serde_json::Value,
    /// `bastet answer`'s statistics (bob).
    pub callee: serde_json::Value,
    /// What bob heard against alice's audio encoded and decoded locally
    /// (without loss only).
    pub audio_to_callee: Option<Lossless>,
    /// What alice heard against bob's audio encoded and decoded locally.
    pub audio_to_caller: Option<Lossless>,
    /// What bob saw against alice's pictures encoded and decoded locally
    /// (video profile, without loss only).
    pub video_to_callee: Option<Lossless>,
    /// Cell sizes and timing on the wire.
    pub wire: Option<WireReport>,
}

impl CallDemoReport {
    /// Whether the acceptance checks that apply hold.
    pub fn passed(&self) -> bool {
        let lossless = [
            &self.audio_to_callee,
            &self.audio_to_caller,
            &self.video_to_callee,
        ]
        .iter()
        .all(|l| l.as_ref().is_none_or(Lossless::holds));
        let wire = self
            .wire
            .as_ref()
            .is_none_or(|w| w.cell_sizes == [bastet_circuit::CELL_LEN] && !w.ks_rejects);
        lossless && wire
    }

    /// A human summary.
    pub fn to_human(&self) -> String {
        let side = |v: &serde_json::Value, key: &str| -> String {
            let l = &v[key];
            format!(
                "p50 {} ms, p99 {} ms",
                l["p50_ms"].as_f64().unwrap_or(f64::NAN),
                l["p99_ms"].as_f64().unwrap_or(f64::NAN)
            )
        };
        let audio = |v: &serde_json::Value| {
            let a = &v["received"]["audio"];
            let c = &v["received"]["cells"];
            format!(
                "{} frames played, {} concealed, {} recovered; cells lost {} ({:.1} %)",
                a["played"],
                a["concealed"],
                a["redundant_recovered"],
                c["lost"],
                c["loss_ratio"].as_f64().unwrap_or(0.0) * 100.0
            )
        };
        let mut out = format!(
            "call-demo: profile {}, {} s, rendezvous {}, cell loss injected {:.0} %\n",
            self.profile,
            self.duration_s,
            self.rendezvous,
            self.loss_injected * 100.0
        );
        for (who, v) in [
            ("alice (caller)", &self.caller),
            ("bob (callee)", &self.callee),
        ] {
            out.push_str(&format!(
                "{who}: heard {}\n  network + crypto {}; mouth-to-ear {}\n",
                audio(v),
                side(v, "network_latency"),
                side(v, "mouth_to_ear")
            ));
        }
        for (what, l) in [
            ("audio alice → bob", &self.audio_to_callee),
            ("audio bob → alice", &self.audio_to_caller),
            ("video alice → bob", &self.video_to_callee),
        ] {
            if let Some(l) = l {
                let verdict = match (&l.not_applicable, l.holds()) {
                    (Some(why), _) => format!(" (not a check here: {why})"),
                    (None, true) => String::new(),
                    (None, false) => "  ← DIFFERS".into(),
                };
                out.push_str(&format!(
                    "{what}: {}/{} identical to a local encode and decode{verdict}\n",
                    l.identical, l.compared,
                ));
            }
        }
        if let Some(w) = &self.wire {
            out.push_str(&format!(
                "on the wire: {} call cells logged by the relays, sizes {:?} bytes; at the \
                 rendezvous, alice's {} speech and {} silence cells arrive every {:.2} / {:.2} ms \
                 on average; KS D = {:.4} (critical {:.4} at α = 0.01): {}\n",
                w.cells_logged,
                w.cell_sizes,
                w.speech_cells,
                w.silence_cells,
                w.speech_gap_ms,
                w.silence_gap_ms,
                w.ks_d,
                w.ks_critical,
                if w.ks_rejects {
                    "timing TELLS speech from silence"
                } else {
                    "timing does not tell speech from silence"
                }
            ));
        }
        out.push_str(if self.passed() {
            "call-demo: checks passed\n"
        } else {
            "call-demo: CHECKS FAILED\n"
        });
        out
    }
}

/// The rendezvous relay of the call demo: the first mixnode, which carries
/// the network's `cell_loss` hook.
pub fn call_relay(network: &Network) -> Result<&crate::RelayNode> {
    network
        .layout()
        .relays
        .iter()
        .find(|r| r.role == bastet_directory::Role::Mix)
        .ok_or_else(|| Error::InvalidOption("the network has no mixnode".into()))
}

/// Runs the call demo on a network started with `circuit` listeners (all
/// testnet mixnodes have one), `cell_log` on, and `cell_loss` =
/// `options.loss`.
pub async fn run_call_demo(network: &Network, options: &CallDemoOptions) -> Result<CallDemoReport> {
    let profile = Profile::by_name(&options.profile).ok_or_else(|| {
        Error::InvalidOption(format!(
            "--profile {}: use normal, constrained or video",
            options.profile
        ))
    })?;
    let relay = call_relay(network)?;
    let secs = options.duration.as_secs().max(1);
    let (mut alice, mut bob) = crate::demo::alice_and_bob(network).await?;
    let _alice_daemon = alice.start_daemon().await?;
    let _bob_daemon = bob.start_daemon().await?;

    // What each says: a few seconds more than the call, so the input never
    // runs out before the hang-up.
    let samples = usize::try_from(secs + 2).unwrap_or(12) * 48_000;
    let dir = network.dir().join("call-demo");
    std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    let file = |name: &str| dir.join(name);
    let call_err = |e: bastet_call::Error| Error::InvalidOption(format!("call media: {e}"));
    // Alice's speech has pauses: her cells show speech and silence.
    write_wav_file(&file("alice.wav"), &speech_like(samples, 7)).map_err(call_err)?;
    write_wav_file(&file("bob.wav"), &tone_sweep(samples, 200.0, 3400.0, 0.3)).map_err(call_err)?;
    if let Some(v) = &profile.video {
        let pictures = usize::try_from(secs + 2).unwrap_or(12) * v.fps as usize;
        for (who, offset) in [("alice", 0u32), ("bob", 50)] {
            let frames: Vec<I420Frame> = (0..pictures as u32)
                .map(|i| moving_pattern(v.width, v.height, i + offset))
                .collect::<std::result::Result<_, _>>()
                .map_err(call_err)?;
            write_y4m(&file(&format!("{who}.y4m")), v, &frames).map_err(call_err)?;
        }
    }
    let device = |flag: &str, id: &str| {
        if id.is_empty() {
            flag.to_string()
        } else {
            format!("{flag}={id}")
        }
    };
    let media = |me: &str, peer: &str| -> Vec<String> {
        let mut args = vec!["--duration".to_string(), secs.to_string()];
        match (me, &options.mic) {
            ("alice", Some(id)) => args.push(device("--mic", id)),
            _ => args.extend(["--audio-in".into(), path_arg(&file(&format!("{me}.wav")))]),
        }
        if let ("alice", Some(id)) = (me, &options.speaker) {
            args.push(device("--speaker", id));
        }
        args.extend([
            "--audio-out".to_string(),
            path_arg(&file(&format!("{me}-heard-{peer}.wav"))),
            "--stats-json".into(),
            path_arg(&file(&format!("{me}-stats.json"))),
            "--cell-trace".into(),
            path_arg(&file(&format!("{me}-cells.txt"))),
        ]);
        if profile.video.is_some() {
            args.extend([
                "--video-in".into(),
                path_arg(&file(&format!("{me}.y4m"))),
                "--video-out".into(),
                path_arg(&file(&format!("{me}-saw-{peer}.y4m"))),
            ]);
        }
        args
    };
    let limit = options.duration + Duration::from_secs(240);
    let callee = {
        let bob = bob.clone();
        let mut args = vec!["answer".to_string(), "--wait".into(), "180".into()];
        args.extend(media("bob", "alice"));
        tokio::spawn(async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            bob.bastet_with_timeout(&args, limit).await
        })
    };
    tracing::info!(
        "alice calls bob (profile {}, {secs} s) through rendezvous {}",
        options.profile,
        relay.name
    );
    let mut args = vec![
        "call".to_string(),
        "bob".into(),
        "--profile".into(),
        options.profile.clone(),
        "--ring".into(),
        "120".into(),
        "--rendezvous".into(),
        relay.node_id.clone(),
    ];
    args.extend(media("alice", "bob"));
    let caller = {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        alice.bastet_with_timeout(&args, limit).await
    };
    let callee = callee
        .await
        .map_err(|e| Error::InvalidOption(format!("the answering task failed: {e}")))?;
    let caller_out = caller?;
    let callee_out = callee?;
    tracing::info!("alice: {}", caller_out.trim());
    tracing::info!("bob: {}", callee_out.trim());
    let read_json = |name: &str| -> Result<serde_json::Value> {
        let path = file(name);
        let text = std::fs::read_to_string(&path)
            .map_err(Error::io(format!("reading {}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| Error::InvalidOption(format!("{name}: {e}")))
    };
    let caller_stats = read_json("alice-stats.json")?;
    let callee_stats = read_json("bob-stats.json")?;

    let lossless = options.loss == 0.0;
    let audio_to_callee = (lossless && options.mic.is_none())
        .then(|| compare_audio(&profile, &file("alice.wav"), &file("bob-heard-alice.wav")))
        .transpose()?
        .map(|l| l.unless_late(&callee_stats["received"]["audio"], "audio"));
    let audio_to_caller = lossless
        .then(|| compare_audio(&profile, &file("bob.wav"), &file("alice-heard-bob.wav")))
        .transpose()?
        .map(|l| l.unless_late(&caller_stats["received"]["audio"], "audio"));
    let video_to_callee = (lossless && profile.video.is_some())
        .then(|| compare_video(&profile, &file("alice.y4m"), &file("bob-saw-alice.y4m")))
        .transpose()?
        .map(|l| l.unless_late(&callee_stats["received"]["video"], "video"));
    let wire = wire_report(
        network,
        relay,
        &file("alice-cells.txt"),
        profile.slots.len(),
    )?;
    Ok(CallDemoReport {
        profile: options.profile.clone(),
        duration_s: secs,
        loss_injected: options.loss,
        rendezvous: crate::layout::short(&relay.node_id).to_string(),
        caller: caller_stats,
        callee: callee_stats,
        audio_to_callee,
        audio_to_caller,
        video_to_callee,
        wire,
    })
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn write_y4m(
    path: &Path,
    v: &bastet_call::VideoSettings,
    frames: &[I420Frame],
) -> bastet_call::Result<()> {
    let file = std::fs::File::create(path).map_err(|source| bastet_call::Error::Io {
        context: format!("creating {}", path.display()),
        source,
    })?;
    let mut w = Y4mWriter::new(std::io::BufWriter::new(file), v.width, v.height, v.fps)?;
    for f in frames {
        w.write_frame(f)?;
    }
    w.finish().map(|_| ())
}

/// Frame by frame, what was heard against what a local Opus encoder and
/// decoder make of what was said. Playout starts at the first frame; the
/// last frames may be cut by the hang-up, so the comparison covers the
/// frames heard.
fn compare_audio(profile: &Profile, said: &Path, heard: &Path) -> Result<Lossless> {
    let err = |e: bastet_call::Error| Error::InvalidOption(format!("comparing audio: {e}"));
    let said = read_wav_file(said).map_err(err)?;
    let heard = read_wav_file(heard).map_err(err)?;
    let mut enc = AudioEncoder::new(&profile.audio).map_err(err)?;
    let mut dec = AudioDecoder::new(&profile.audio).map_err(err)?;
    let n = profile.audio_frame_samples();
    let mut compared = 0;
    let mut identical = 0;
    for (said, heard) in said.chunks_exact(n).zip(heard.chunks_exact(n)) {
        let local = match enc.encode(said).map_err(err)? {
            EncodedAudio::Packet(p) => dec.decode(&p).map_err(err)?,
            EncodedAudio::Silence => dec.silence(),
        };
        compared += 1;
        identical += usize::from(local == heard);
    }
    Ok(Lossless {
        compared,
        identical,
        not_applicable: None,
    })
}

/// Picture by picture, what was seen against a local AV1 encode (the
/// sender's settings, a keyframe first) and decode of what was shown.
/// Playout has one slot per frame: a slot shows its own frame decoded, or
/// the last good picture again (frozen, when the frame was late or lost),
/// or black before the first. A slot counts as identical when it is one of
/// these exactly: the path altered nothing. How many slots were frozen is
/// in the receiver's statistics.
fn compare_video(profile: &Profile, shown: &Path, seen: &Path) -> Result<Lossless> {
    let err = |e: bastet_call::Error| Error::InvalidOption(format!("comparing video: {e}"));
    let Some(settings) = &profile.video else {
        return Ok(Lossless {
            compared: 0,
            identical: 0,
            not_applicable: None,
        });
    };
    let shown = Y4mReader::open(shown)
        .and_then(|mut r| r.read_all(100_000))
        .map_err(err)?;
    let seen = Y4mReader::open(seen)
        .and_then(|mut r| r.read_all(100_000))
        .map_err(err)?;
    let mut enc = VideoEncoder::new(settings).map_err(err)?;
    let mut dec = VideoDecoder::new(settings).map_err(err)?;
    let mut local = Vec::new();
    for (i, p) in shown.iter().take(seen.len() + 8).enumerate() {
        for e in enc.encode(p, i == 0).map_err(err)? {
            if let Some(picture) = dec.decode(&e.data).map_err(err)? {
                local.push(picture);
            }
        }
    }
    let black = I420Frame::black(settings.width, settings.height).map_err(err)?;
    let mut shown_yet: Option<&I420Frame> = None;
    let mut identical = 0;
    for (slot, picture) in seen.iter().enumerate() {
        let own = local.get(slot);
        let explained = if own == Some(picture) {
            shown_yet = own;
            true
        } else {
            match shown_yet {
                Some(last) => last == picture,
                None => *picture == black,
            }
        };
        identical += usize::from(explained);
    }
    Ok(Lossless {
        compared: seen.len().min(local.len()),
        identical: identical.min(local.len()),
        not_applicable: None,
    })
}

/// Sizes of every call cell every relay logged, and the timing of
/// alice's cells at the rendezvous, speech against silence.
fn wire_report(
    network: &Network,
    rendezvous: &crate::RelayNode,
    alice_trace: &Path,
    slots: usize,
) -> Result<Option<WireReport>> {
    let mut sizes = std::collections::BTreeSet::new();
    let mut cells_logged = 0;
    let mut at_rendezvous: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for relay in &network.layout().relays {
        let Some(log) = &relay.cell_log else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(log) else {
            continue;
        };
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(t), Some(circuit), Some(size)) = (
                f.first().and_then(|s| s.parse::<u64>().ok()),
                f.get(1).and_then(|s| s.parse::<u64>().ok()),
                f.get(3).and_then(|s| s.parse::<usize>().ok()),
            ) else {
                continue;
            };
            sizes.insert(size);
            cells_logged += 1;
            if relay.name == rendezvous.name {
                at_rendezvous.entry(circuit).or_default().push(t);
            }
        }
    }
    let trace = std::fs::read_to_string(alice_trace)
        .map_err(Error::io(format!("reading {}", alice_trace.display())))?;
    let sent: Vec<(u64, bool)> = trace
        .lines()
        .filter_map(|l| {
            let (t, kind) = l.split_once(' ')?;
            Some((t.parse().ok()?, kind == "cover"))
        })
        .collect();
    // Alice's circuit at the rendezvous: the one whose cells arrive just
    // after she sent them.
    let Some(first_sent) = sent.first().map(|s| s.0) else {
        return Ok(None);
    };
    let Some(arrivals) = at_rendezvous
        .values()
        .filter(|times| times.len() >= sent.len() / 2)
        .min_by_key(|times| times.first().map_or(u64::MAX, |t| t.abs_diff(first_sent)))
    else {
        return Ok(None);
    };
    // Each cell is labelled by the period it was sent in: speech or
    // silence, as the audio slot of its round of slots says (in the video
    // profile the other slot carries video either way).
    let slots = slots.max(1);
    let (mut speech, mut silence) = (Vec::new(), Vec::new());
    for (n, pair) in arrivals.windows(2).enumerate() {
        let Some(&(_, cover)) = sent.get((n + 1) - (n + 1) % slots) else {
            break;
        };
        let gap = pair[1].saturating_sub(pair[0]) as f64 / 1000.0;
        if cover {
            silence.push(gap);
        } else {
            speech.push(gap);
        }
    }
    let Some((d, critical)) = ks_two_sample(&speech, &silence) else {
        return Ok(None);
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok(Some(WireReport {
        cell_sizes: sizes.into_iter().collect(),
        cells_logged,
        speech_cells: speech.len(),
        silence_cells: silence.len(),
        ks_d: d,
        ks_critical: critical,
        ks_rejects: d > critical,
        speech_gap_ms: mean(&speech),
        silence_gap_ms: mean(&silence),
    }))
}
