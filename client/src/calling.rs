//! `bastet call`, `bastet answer` and `bastet hangup`: call setup through
//! the daemon (signals over the mixnet), the circuit to the rendezvous
//! relay, the media from and to files, and the call's statistics.
//!
//! ```text
//! caller                                   callee
//!  call_route (daemon: policy, consensus)
//!  offer ── mixnet ─────────────────────▶  offer (rings every device)
//!                                          call_route(rendezvous), answer
//!  answer ◀───────────────────── mixnet ── answer; circuit ─▶ rendezvous, waits
//!  finish (key confirmation)
//!  circuit ─▶ rendezvous: both joined, media both ways until hang-up
//! ```
//!
//! The callee opens its circuit right after answering and waits at the
//! rendezvous; the caller opens its own once the answer has confirmed the
//! keys, so both ends start their media at the same moment, when the
//! rendezvous splices the circuits.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bastet_call::{Profile, Y4mReader, Y4mWriter, write_wav_file};
use bastet_circuit::{Cookie, open_circuit};
use bastet_sphinx::NodeId;
use serde::Serialize;

use crate::calls::{
    self, CallId, CallOffer, CallSignal, Hangup, HangupReason, MAX_OFFER_TTL, ReceivedCall,
};
use crate::daemon::{call_route, send_call_signal, send_call_signal_except, take_call_signals};
use crate::media::{Ended, Keep, MediaInput, MediaOutcome, MediaPlan, run_media};
use crate::{Error, Result};

/// The local socket a running call listens on for `bastet hangup`.
pub const CALL_SOCKET: &str = "call.sock";
/// How long the circuit setup (TLS to the first relay, the setup packet)
/// may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the caller waits at the rendezvous for the callee's circuit
/// once it has the answer (the callee's circuit is normally there first).
const CALLER_JOIN_WAIT: Duration = Duration::from_secs(30);
/// How long the callee's circuit waits at the rendezvous for the caller's:
/// the answer has to cross the mixnet first.
const CALLEE_JOIN_WAIT: Duration = Duration::from_secs(110);
/// Most pictures read from a video file.
const MAX_VIDEO_FRAMES: usize = 100_000;

/// What both `call` and `answer` take.
#[derive(Clone, Debug)]
pub struct MediaArgs {
    /// 48 kHz mono 16-bit WAV to send (silence when it runs out; silence
    /// throughout without one).
    pub audio_in: Option<PathBuf>,
    /// Where to write what was heard (WAV).
    pub audio_out: Option<PathBuf>,
    /// 320×240 YUV4MPEG2 to send (video profile).
    pub video_in: Option<PathBuf>,
    /// Where to write what was seen (Y4M).
    pub video_out: Option<PathBuf>,
    /// Seconds of media before this end hangs up.
    pub duration: Duration,
    /// Where to write the statistics (JSON).
    pub stats_json: Option<PathBuf>,
    /// Where to write one line per cell sent, `<unix micros> <media|cover>`
    /// (for timing measurements).
    pub cell_trace: Option<PathBuf>,
    /// Talk into a live microphone: `Some(None)` the system default,
    /// `Some(Some(id))` a device from `bastet devices`.
    pub microphone: Option<Option<String>>,
    /// Listen on a live speaker, as for `microphone`.
    pub speaker: Option<Option<String>>,
    /// Show a live camera (video profile): `Some(None)` `/dev/video0`.
    pub camera: Option<Option<String>>,
}

impl MediaArgs {
    /// What the callee uses of its options: the caller chose the profile,
    /// so in a call without video the callee's `--camera` and `--video-in`
    /// are set aside rather than refusing the call.
    fn answering(&self, profile: &Profile) -> MediaArgs {
        let mut args = self.clone();
        if profile.video.is_none() && (args.camera.is_some() || args.video_in.is_some()) {
            eprintln!("an audio call ({}): no video is sent", profile.name);
            args.camera = None;
            args.video_in = None;
        }
        args
    }
}

/// Latency percentiles of a call end, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    fn shifted(p: &bastet_call::Percentiles, by_ms: f64) -> Self {
        Latency {
            count: p.count,
            p50_ms: p.p50_ms + by_ms,
            p90_ms: p.p90_ms + by_ms,
            p99_ms: p.p99_ms + by_ms,
            max_ms: p.max_ms + by_ms,
        }
    }
}

/// One relay of the circuit, as the report shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ReportHop {
    /// Short node id.
    pub node: String,
    /// Its jurisdiction.
    pub jurisdiction: String,
}

/// What `bastet call` and `bastet answer` report (`--stats-json`).
#[derive(Debug, Serialize)]
pub struct CallReport {
    /// `caller` or `callee`.
    pub role: &'static str,
    /// The call's id.
    pub call_id: String,
    /// The contact on the other end.
    pub contact: String,
    /// The media profile.
    pub profile: String,
    /// Bits per second on the wire, per direction, whatever is said.
    pub wire_bitrate_bps: u64,
    /// This end's circuit: entry, middle, rendezvous.
    pub circuit: Vec<ReportHop>,
    /// Milliseconds from the offer sent (caller) or read (callee) to both
    /// circuits joined at the rendezvous.
    pub setup_ms: u64,
    /// Why the media ended.
    pub ended: Ended,
    /// The peer's audio: capture (the end of the frame) to cell arrival,
    /// that is the path's network and crypto time plus scheduling.
    pub network_latency: Latency,
    /// The peer's audio: first sample captured to playout, framing and the
    /// jitter buffer included.
    pub mouth_to_ear: Latency,
    /// The receiving side.
    pub received: bastet_call::Stats,
    /// The sending side.
    pub sent: bastet_call::SenderStats,
    /// How the live devices kept pace (all null when files were used).
    pub devices: crate::media::DeviceReport,
}

impl CallReport {
    /// The one-paragraph summary printed after a call.
    pub fn summary(&self) -> String {
        let r = &self.received;
        format!(
            "call {} with {} ({}, {:.1} kbit/s per direction on the wire) ended: {}\n\
             circuit: {}\n\
             setup: {} ms; cells received {}, lost {} ({:.1} %), rejected {}\n\
             audio: {} frames played, {} concealed, {} recovered from the next cell, {} late\n\
             latency: network + crypto p50 {:.0} ms, p99 {:.0} ms; mouth-to-ear p50 {:.0} ms, p99 {:.0} ms",
            self.call_id,
            self.contact,
            self.profile,
            self.wire_bitrate_bps as f64 / 1000.0,
            match self.ended {
                Ended::Duration => "duration reached".to_string(),
                Ended::HungUp => "hung up here".to_string(),
                Ended::Circuit(reason) => reason.to_string(),
            },
            self.circuit
                .iter()
                .map(|h| format!("{} ({})", h.node, h.jurisdiction))
                .collect::<Vec<_>>()
                .join(" → "),
            self.setup_ms,
            r.cells.received,
            r.cells.lost,
            r.cells.loss_ratio * 100.0,
            r.cells.rejected_unauthenticated + r.cells.rejected_replay + r.cells.rejected_other,
            r.audio.played,
            r.audio.concealed,
            r.audio.redundant_recovered,
            r.audio.late,
            self.network_latency.p50_ms,
            self.network_latency.p99_ms,
            self.mouth_to_ear.p50_ms,
            self.mouth_to_ear.p99_ms,
        )
    }
}

/// A live speaker, if asked for.
type Speaker = Option<Box<dyn bastet_devices::AudioPlayback>>;

/// Reads the media to send, checking it fits `profile`, and opens the live
/// devices asked for (before the call rings, so that a missing device
/// stops it early).
fn open_media(profile: &Profile, args: &MediaArgs) -> Result<(MediaInput, Speaker)> {
    let (audio, microphone) = match (&args.audio_in, &args.microphone) {
        (Some(_), Some(_)) => {
            return Err(Error::CallOptions(
                "--audio-in and --mic both say what to send: give one".into(),
            ));
        }
        (Some(path), None) => (bastet_call::read_wav_file(path)?, None),
        (None, Some(name)) => (
            Vec::new(),
            Some(bastet_devices::open_microphone(name.as_deref())?),
        ),
        (None, None) => (Vec::new(), None),
    };
    let camera = match (&profile.video, &args.camera, &args.video_in) {
        (_, Some(_), Some(_)) => {
            return Err(Error::CallOptions(
                "--video-in and --camera both say what to show: give one".into(),
            ));
        }
        (None, Some(_), None) => {
            return Err(Error::CallOptions("--camera needs --profile video".into()));
        }
        (Some(settings), Some(path), None) => Some(bastet_devices::open_camera(
            path.as_deref(),
            settings.width,
            settings.height,
            settings.fps,
        )?),
        _ => None,
    };
    let speaker = match &args.speaker {
        Some(name) => Some(bastet_devices::open_speaker(name.as_deref())?),
        None => None,
    };
    let video = match (&profile.video, &args.video_in) {
        (Some(_), None) if camera.is_some() => Vec::new(),
        (Some(settings), Some(path)) => {
            let mut reader = Y4mReader::open(path)?;
            if (reader.width(), reader.height()) != (settings.width, settings.height) {
                return Err(Error::Call(bastet_call::Error::WrongPictureSize {
                    got_width: reader.width(),
                    got_height: reader.height(),
                    width: settings.width,
                    height: settings.height,
                }));
            }
            reader.read_all(MAX_VIDEO_FRAMES)?
        }
        (Some(_), None) => {
            return Err(Error::CallOptions(
                "the video profile needs --video-in (a 320x240 YUV4MPEG2 file) or --camera".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(Error::CallOptions(
                "--video-in needs --profile video".into(),
            ));
        }
        (None, None) => Vec::new(),
    };
    Ok((
        MediaInput {
            audio,
            video,
            microphone,
            camera,
        },
        speaker,
    ))
}

/// Writes what was heard and seen, and the statistics.
fn write_output(
    profile: &Profile,
    args: &MediaArgs,
    outcome: &MediaOutcome,
    report: &CallReport,
) -> Result<()> {
    if let Some(path) = &args.audio_out {
        write_wav_file(path, &outcome.audio)?;
    }
    if let (Some(path), Some(settings)) = (&args.video_out, &profile.video) {
        let file = std::fs::File::create(path).map_err(|e| Error::File {
            path: path.clone(),
            why: e.to_string(),
        })?;
        let mut writer = Y4mWriter::new(
            std::io::BufWriter::new(file),
            settings.width,
            settings.height,
            settings.fps,
        )?;
        for picture in &outcome.video {
            writer.write_frame(picture)?;
        }
        writer.finish()?;
    }
    if let Some(path) = &args.stats_json {
        let json = serde_json::to_string_pretty(report)
            .map_err(|e| Error::Daemon(format!("encoding the statistics: {e}")))?;
        std::fs::write(path, json + "\n").map_err(|e| Error::File {
            path: path.clone(),
            why: e.to_string(),
        })?;
    }
    if let Some(path) = &args.cell_trace {
        let mut text = String::with_capacity(outcome.cells_sent.len() * 24);
        for (micros, cover) in &outcome.cells_sent {
            text.push_str(&format!(
                "{micros} {}\n",
                if *cover { "cover" } else { "media" }
            ));
        }
        std::fs::write(path, text).map_err(|e| Error::File {
            path: path.clone(),
            why: e.to_string(),
        })?;
    }
    Ok(())
}

/// What `bastet hangup` writes on the call socket.
const HANGUP_REQUEST: &[u8] = b"hangup\n";

/// Listens on DATA_DIR/call.sock while a call runs: a connection that
/// writes [`HANGUP_REQUEST`] asks to hang up (`bastet hangup`); one that
/// writes nothing is only looking whether a call runs. Refuses to start a
/// second call.
struct HangupSocket {
    path: PathBuf,
    listener: tokio::net::UnixListener,
}

/// Turns true when the user hangs up: `bastet hangup`, SIGINT or SIGTERM.
type HangUp = tokio::sync::watch::Receiver<bool>;

impl HangupSocket {
    async fn bind(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join(CALL_SOCKET);
        if tokio::net::UnixStream::connect(&path).await.is_ok() {
            return Err(Error::CallRoute(format!(
                "a call is already running on this device ({} answers); hang it up first \
                 (`bastet hangup`)",
                path.display()
            )));
        }
        // A socket left by a call that did not end cleanly.
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).map_err(|e| Error::File {
            path: path.clone(),
            why: format!("cannot listen for hang-ups: {e}"),
        })?;
        Ok(HangupSocket { path, listener })
    }

    /// Watches the socket and the signals from now on.
    fn spawn(self) -> Result<(HangUp, SocketGuard)> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let guard = SocketGuard(self.path.clone());
        let signal = bastet_link::shutdown_signal().map_err(|e| Error::File {
            path: self.path.clone(),
            why: format!("cannot watch for SIGINT/SIGTERM: {e}"),
        })?;
        tokio::spawn(async move {
            let listener = self.listener;
            let requested = async {
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let mut request = [0u8; HANGUP_REQUEST.len()];
                    let read = tokio::time::timeout(
                        Duration::from_secs(1),
                        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut request),
                    )
                    .await;
                    if matches!(read, Ok(Ok(_))) && request == HANGUP_REQUEST {
                        return;
                    }
                }
            };
            tokio::select! {
                () = requested => {}
                () = signal => {}
            }
            let _ = tx.send(true);
        });
        Ok((rx, guard))
    }
}

/// Removes the call socket when the call ends.
struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Resolves once the user hung up (never, if the watch is gone).
async fn hung_up(hang_up: &mut HangUp) {
    if hang_up.wait_for(|h| *h).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A one-shot view of `hang_up` for [`run_media`].
fn media_hang_up(mut hang_up: HangUp) -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        hung_up(&mut hang_up).await;
        let _ = tx.send(());
    });
    rx
}

/// The rendezvous cookie the two circuits present: the offer's cookie
/// bound to the call keys this device and its peer derived. Every device
/// that answers an offer derives other keys, so the circuits of two
/// answering devices never meet each other, and a circuit is only joined
/// to the one whose keys match.
fn rendezvous_cookie(offer: &CallOffer, keys: &bastet_call::CallKeys) -> Cookie {
    let mut material = [0u8; 64];
    material[..32].copy_from_slice(&keys.confirmation());
    material[32..].copy_from_slice(&offer.cookie);
    Cookie(blake3::derive_key(
        "bastet 2026 call rendezvous cookie v1",
        &material,
    ))
}

fn now_unix() -> u64 {
    crate::media::media_now().as_secs()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn media_plan(
    profile: &Profile,
    (input, speaker): (MediaInput, Speaker),
    args: &MediaArgs,
) -> MediaPlan {
    MediaPlan {
        speaker,
        profile: profile.clone(),
        input,
        duration: args.duration,
        trace_cells: args.cell_trace.is_some(),
        keep: Keep {
            audio: args.audio_out.is_some(),
            video: args.video_out.is_some(),
        },
    }
}

/// Opens this end's circuit with `cookie` and waits until the rendezvous
/// joins it to the peer's (at most `wait`), unless the user hangs up.
async fn join_circuit(
    route: &crate::daemon::CallRoute,
    cookie: &Cookie,
    wait: Duration,
    hang_up: &mut HangUp,
) -> std::result::Result<
    (bastet_circuit::CircuitWriter, bastet_circuit::CircuitReader),
    Option<Error>,
> {
    let join = async {
        open_circuit(&route.hops, cookie, route.source_addr, SETUP_TIMEOUT)
            .await?
            .joined(wait)
            .await
    };
    tokio::select! {
        joined = join => joined.map_err(|e| Some(crate::media::MediaError::from(e).into())),
        () = hung_up(hang_up) => Err(None),
    }
}

/// What to tell the peer, and the error to return, when the circuit did
/// not join: it failed (`why`), or the user hung up (`None`).
fn not_joined(call_id: CallId, why: Option<Error>) -> (HangupReason, Error) {
    match why {
        Some(e) => (HangupReason::Failed, e),
        None => (
            HangupReason::Normal,
            Error::CallRoute(format!("call {call_id} hung up before it connected")),
        ),
    }
}

/// Sends `reason` to the peer device, best effort (the call is ending).
async fn tell(
    data_dir: &Path,
    contact: &str,
    device: &[u8; 32],
    call_id: CallId,
    reason: HangupReason,
) {
    let signal = CallSignal::Hangup(Hangup { call_id, reason });
    if let Err(e) = send_call_signal(data_dir, contact, Some(device), &signal).await {
        tracing::warn!(error = %e, "could not tell {contact} the call ended ({reason})");
    }
}

/// Places a call to `contact` and runs it; `rendezvous` fixes the
/// rendezvous relay (default: one the route policy admits, at random).
pub async fn place_call(
    data_dir: &Path,
    contact: &str,
    profile_name: &str,
    rendezvous: Option<NodeId>,
    ring: Duration,
    args: &MediaArgs,
) -> Result<CallReport> {
    let profile = Profile::by_name(profile_name)
        .ok_or_else(|| Error::UnknownCallProfile(profile_name.to_string()))?;
    let input = open_media(&profile, args)?;
    let hangup = HangupSocket::bind(data_dir).await?;
    let route = call_route(data_dir, rendezvous.as_ref()).await?;
    let rendezvous_node = route
        .hops
        .last()
        .map(|h| h.node)
        .ok_or_else(|| Error::CallRoute("the daemon gave an empty circuit".into()))?;
    let ttl = ring.min(MAX_OFFER_TTL);
    let (offer, secrets) = calls::new_offer(
        &mut rand::rng(),
        profile_name,
        rendezvous_node.0,
        now_unix(),
        ttl,
    )?;
    let call_id = offer.call_id;
    let started = Instant::now();
    let (mut hang_up, _guard) = hangup.spawn()?;
    send_call_signal(data_dir, contact, None, &CallSignal::Offer(offer.clone())).await?;
    eprintln!(
        "calling {contact} (call {call_id}, profile {profile_name}); ringing for up to {} s",
        ring.as_secs()
    );
    // An answer, a refusal, the end of the ring, or the user hanging up.
    let (answer_from, answer) = match wait_for_answer(data_dir, call_id, ring, &mut hang_up).await {
        Ok(Some(answered)) => answered,
        Ok(None) => {
            let _ = cancel(data_dir, contact, call_id).await;
            return Err(Error::CallRoute(format!(
                "{contact} did not answer within {} s (call {call_id})",
                ring.as_secs()
            )));
        }
        Err(e) => {
            let _ = cancel(data_dir, contact, call_id).await;
            return Err(e);
        }
    };
    let callee = answer_from.peer();
    // The other devices of the callee stop ringing.
    let elsewhere = CallSignal::Hangup(Hangup {
        call_id,
        reason: HangupReason::AnsweredElsewhere,
    });
    if let Err(e) = send_call_signal_except(data_dir, contact, &callee.device, &elsewhere).await {
        tracing::warn!(error = %e, "could not tell {contact}'s other devices the call was answered");
    }
    let keys = match calls::finish(&secrets, &offer, &answer, &route.me, &callee) {
        Ok(keys) => keys,
        Err(e) => {
            tell(
                data_dir,
                contact,
                &callee.device,
                call_id,
                HangupReason::Failed,
            )
            .await;
            return Err(e);
        }
    };
    eprintln!(
        "{contact} answered; key confirmation {}; joining the circuit",
        short_confirmation(&keys)
    );
    let cookie = rendezvous_cookie(&offer, &keys);
    let (writer, reader) = match join_circuit(&route, &cookie, CALLER_JOIN_WAIT, &mut hang_up).await
    {
        Ok(halves) => halves,
        Err(why) => {
            let (reason, error) = not_joined(call_id, why);
            tell(data_dir, contact, &callee.device, call_id, reason).await;
            return Err(error);
        }
    };
    let setup = started.elapsed();
    eprintln!(
        "connected after {} ms; talking for up to {} s",
        millis(setup),
        args.duration.as_secs()
    );
    let plan = media_plan(&profile, input, args);
    let outcome = run_media((writer, reader), keys, plan, media_hang_up(hang_up)).await;
    let reason = if outcome.is_ok() {
        HangupReason::Normal
    } else {
        HangupReason::Failed
    };
    tell(data_dir, contact, &callee.device, call_id, reason).await;
    finish_report(
        "caller", call_id, contact, &profile, &route, setup, outcome?, args,
    )
}

/// The answer to `call_id`, from which device; `None` if the ring ended
/// without one. A refusal by the callee, or the user hanging up, is an
/// error.
async fn wait_for_answer(
    data_dir: &Path,
    call_id: CallId,
    ring: Duration,
    hang_up: &mut HangUp,
) -> Result<Option<(ReceivedCall, calls::CallAnswer)>> {
    let deadline = Instant::now() + ring;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let wait = left.min(Duration::from_secs(5));
        let signals = tokio::select! {
            signals = take_call_signals(data_dir, wait, Some(call_id)) => signals?,
            () = hung_up(hang_up) => {
                return Err(Error::CallRoute(format!("call {call_id} cancelled")));
            }
        };
        for received in signals {
            match &received.signal {
                CallSignal::Answer(answer) => {
                    let answer = answer.clone();
                    return Ok(Some((received, answer)));
                }
                CallSignal::Hangup(h) => {
                    return Err(Error::CallRoute(format!(
                        "{} {}: call {call_id} not connected",
                        received.contact, h.reason
                    )));
                }
                CallSignal::Offer(_) => {}
            }
        }
    }
}

/// Tells every device of `contact` the offer is withdrawn.
async fn cancel(data_dir: &Path, contact: &str, call_id: CallId) -> Result<()> {
    let signal = CallSignal::Hangup(Hangup {
        call_id,
        reason: HangupReason::Normal,
    });
    send_call_signal(data_dir, contact, None, &signal)
        .await
        .map(|_| ())
}

fn short_confirmation(keys: &bastet_call::CallKeys) -> String {
    hex::encode(&keys.confirmation()[..4])
}

/// Waits for an offer (of `call_id`, or the newest one that has not
/// expired) and answers it.
pub async fn answer_call(
    data_dir: &Path,
    call_id: Option<CallId>,
    wait: Duration,
    args: &MediaArgs,
) -> Result<CallReport> {
    let hangup = HangupSocket::bind(data_dir).await?;
    let (mut hang_up, _guard) = hangup.spawn()?;
    let (received, offer) = tokio::select! {
        offer = wait_for_offer(data_dir, call_id, wait) => offer?,
        () = hung_up(&mut hang_up) => {
            return Err(Error::CallRoute("stopped waiting for a call".into()));
        }
    };
    let started = Instant::now();
    let contact = received.contact.clone();
    let caller = received.peer();
    let call = offer.call_id;
    let refuse = |reason| tell(data_dir, &contact, &caller.device, call, reason);
    let Some(profile) = Profile::by_name(&offer.profile) else {
        refuse(HangupReason::Failed).await;
        return Err(Error::UnknownCallProfile(offer.profile.clone()));
    };
    let input = match open_media(&profile, &args.answering(&profile)) {
        Ok(input) => input,
        Err(e) => {
            refuse(HangupReason::Failed).await;
            return Err(e);
        }
    };
    let route = match call_route(data_dir, Some(&NodeId(offer.rendezvous))).await {
        Ok(route) => route,
        Err(e) => {
            refuse(HangupReason::Failed).await;
            return Err(e);
        }
    };
    let (answer, keys) =
        match calls::answer(&mut rand::rng(), &offer, &caller, &route.me, now_unix()) {
            Ok(answered) => answered,
            Err(e) => {
                refuse(HangupReason::Failed).await;
                return Err(e);
            }
        };
    send_call_signal(
        data_dir,
        &contact,
        Some(&caller.device),
        &CallSignal::Answer(answer),
    )
    .await?;
    eprintln!(
        "answered {contact} (call {call}, profile {}); key confirmation {}; waiting at the \
         rendezvous",
        offer.profile,
        short_confirmation(&keys)
    );
    let cookie = rendezvous_cookie(&offer, &keys);
    // While the circuit waits at the rendezvous, the caller may hang up or
    // take another device's answer: stop waiting then.
    let joined = tokio::select! {
        joined = join_circuit(&route, &cookie, CALLEE_JOIN_WAIT, &mut hang_up) => joined,
        reason = caller_gave_up(data_dir, call) => {
            let why = match reason {
                HangupReason::AnsweredElsewhere => {
                    "another of your devices answered it".to_string()
                }
                other => format!("{contact} {other}"),
            };
            return Err(Error::CallRoute(format!("call {call} not connected: {why}")));
        }
    };
    let (writer, reader) = match joined {
        Ok(halves) => halves,
        Err(why) => {
            let (reason, error) = not_joined(call, why);
            refuse(reason).await;
            return Err(error);
        }
    };
    let setup = started.elapsed();
    eprintln!(
        "connected after {} ms; talking for up to {} s",
        millis(setup),
        args.duration.as_secs()
    );
    let plan = media_plan(&profile, input, args);
    let outcome = run_media((writer, reader), keys, plan, media_hang_up(hang_up)).await;
    if outcome.is_err() {
        refuse(HangupReason::Failed).await;
    }
    finish_report(
        "callee", call, &contact, &profile, &route, setup, outcome?, args,
    )
}

/// Resolves with the reason when the caller hangs up call `call_id` (or
/// takes another device's answer); never otherwise.
async fn caller_gave_up(data_dir: &Path, call_id: CallId) -> HangupReason {
    loop {
        match take_call_signals(data_dir, Duration::from_secs(5), Some(call_id)).await {
            Ok(signals) => {
                if let Some(reason) = signals.iter().find_map(|r| match &r.signal {
                    CallSignal::Hangup(h) => Some(h.reason),
                    _ => None,
                }) {
                    return reason;
                }
            }
            // The daemon is gone or busy: the circuit's own limits still
            // end the wait.
            Err(_) => tokio::time::sleep(Duration::from_secs(5)).await,
        }
    }
}

/// The first live offer (of `call_id` if given) within `wait`.
async fn wait_for_offer(
    data_dir: &Path,
    call_id: Option<CallId>,
    wait: Duration,
) -> Result<(ReceivedCall, CallOffer)> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let signals =
            take_call_signals(data_dir, left.min(Duration::from_secs(5)), call_id).await?;
        // The newest live offer wins; hang-ups cancel the offers they name.
        let mut offers: Vec<(ReceivedCall, CallOffer)> = Vec::new();
        for received in signals {
            match &received.signal {
                CallSignal::Offer(offer) => {
                    if calls::check_offer_time(offer, now_unix()).is_ok() {
                        let offer = offer.clone();
                        offers.push((received, offer));
                    }
                }
                CallSignal::Hangup(h) => offers.retain(|(_, o)| o.call_id != h.call_id),
                CallSignal::Answer(_) => {}
            }
        }
        if let Some(newest) = offers.pop() {
            return Ok(newest);
        }
        if Instant::now() >= deadline {
            return Err(Error::CallRoute(format!(
                "no call came in within {} s",
                wait.as_secs()
            )));
        }
    }
}

/// Hangs up the call running on this device, or declines the offers
/// waiting. Returns what it did.
pub async fn hang_up(data_dir: &Path) -> Result<String> {
    let path = data_dir.join(CALL_SOCKET);
    if let Ok(mut stream) = tokio::net::UnixStream::connect(&path).await {
        use tokio::io::AsyncWriteExt;
        stream
            .write_all(HANGUP_REQUEST)
            .await
            .map_err(|e| Error::File {
                path: path.clone(),
                why: format!("cannot ask the running call to hang up: {e}"),
            })?;
        return Ok("hung up the call running on this device".into());
    }
    let waiting = take_call_signals(data_dir, Duration::ZERO, None).await?;
    let mut declined = Vec::new();
    for received in waiting {
        if let CallSignal::Offer(offer) = &received.signal {
            let signal = CallSignal::Hangup(Hangup {
                call_id: offer.call_id,
                reason: HangupReason::Declined,
            });
            send_call_signal(data_dir, &received.contact, Some(&received.device), &signal).await?;
            declined.push(format!("{} from {}", offer.call_id, received.contact));
        }
    }
    if declined.is_empty() {
        Err(Error::CallRoute(
            "no call is running on this device and none is ringing".into(),
        ))
    } else {
        Ok(format!("declined call(s) {}", declined.join(", ")))
    }
}

#[allow(clippy::too_many_arguments)]
fn finish_report(
    role: &'static str,
    call_id: CallId,
    contact: &str,
    profile: &Profile,
    route: &crate::daemon::CallRoute,
    setup: Duration,
    outcome: MediaOutcome,
    args: &MediaArgs,
) -> Result<CallReport> {
    let frame_ms = profile.audio.frame.as_secs_f64() * 1000.0;
    let report = CallReport {
        role,
        call_id: call_id.to_hex(),
        contact: contact.to_string(),
        profile: profile.name.to_string(),
        wire_bitrate_bps: profile.wire_bitrate(),
        circuit: route
            .hops
            .iter()
            .zip(&route.jurisdictions)
            .map(|(h, j)| ReportHop {
                node: h.node.short(),
                jurisdiction: j.clone(),
            })
            .collect(),
        setup_ms: millis(setup),
        ended: outcome.ended,
        network_latency: Latency::shifted(&outcome.received.audio.network_latency, 0.0),
        mouth_to_ear: Latency::shifted(&outcome.received.audio.playout_latency, frame_ms),
        received: outcome.received.clone(),
        sent: outcome.sent.clone(),
        devices: outcome.devices.clone(),
    };
    write_output(profile, args, &outcome, &report)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> MediaArgs {
        MediaArgs {
            audio_in: None,
            audio_out: None,
            video_in: Some("me.y4m".into()),
            video_out: None,
            duration: Duration::from_secs(1),
            stats_json: None,
            cell_trace: None,
            microphone: None,
            speaker: None,
            camera: Some(None),
        }
    }

    #[test]
    fn a_callee_sets_its_video_options_aside_only_in_an_audio_call() {
        let normal = Profile::by_name("normal").unwrap();
        let answering = args().answering(&normal);
        assert!(answering.camera.is_none() && answering.video_in.is_none());
        let video = Profile::by_name("video").unwrap();
        let answering = args().answering(&video);
        assert_eq!(answering.camera, Some(None));
        assert!(answering.video_in.is_some());
        // The caller's own options are checked as given.
        let err = open_media(&normal, &args()).err().unwrap().to_string();
        assert!(err.contains("give one"), "{err}");
    }
}
