//! One end of a call's media, in real time: captures frames from the
//! input at their own pace, sends one sealed cell per tick into the
//! circuit whatever is said, receives the peer's cells, plays them out
//! through the jitter buffer, and counts.
//!
//! Media clock: both ends run on the same host in the testnet, so the
//! media clock is the Unix time as a [`Duration`]. A frame's capture time is
//! the instant it is complete (its last sample), when the sender can first
//! encode it, and ticks are aligned with frame ends; so the receiver's
//! *network* latency (capture to cell arrival) is the path's network and
//! crypto time plus scheduling, and *mouth-to-ear* is the playout latency
//! plus one frame (the framing delay of waiting for a frame's last sample).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bastet_call::{
    CELL_LEN, CallKeys, I420Frame, Profile, Receiver, Sender, SenderStats, Stats, VideoSource,
};
use bastet_circuit::{CircuitReader, CircuitWriter, Incoming, PAYLOAD_LEN, Reason};
use bastet_devices::{AudioCapture, AudioPlayback, DeviceStats, VideoCapture};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

/// What can stop a call's media.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The media pipeline (codecs, call keys, cells) failed.
    #[error("call media: {0}")]
    Call(#[from] bastet_call::Error),
    /// The call circuit failed.
    #[error("call circuit: {0}")]
    Circuit(#[from] bastet_circuit::Error),
}

type Result<T> = std::result::Result<T, MediaError>;

const _: () = assert!(CELL_LEN == PAYLOAD_LEN, "a call cell fills a circuit cell");

/// After the last tick, how long the receiver keeps playing what is still
/// in the jitter buffer before the call's media ends.
const PLAYOUT_TAIL: Duration = Duration::from_millis(500);

/// What one end says into the call.
#[derive(Default)]
pub struct MediaInput {
    /// 48 kHz mono PCM; silence is sent once it runs out.
    pub audio: Vec<i16>,
    /// Pictures at the profile's frame rate (video profile only).
    pub video: Vec<I420Frame>,
    /// A live microphone, instead of `audio`.
    pub microphone: Option<Box<dyn AudioCapture>>,
    /// A live camera, instead of `video` (video profile only).
    pub camera: Option<Box<dyn VideoCapture>>,
}

impl std::fmt::Debug for MediaInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaInput")
            .field("audio_samples", &self.audio.len())
            .field("video_pictures", &self.video.len())
            .field("microphone", &self.microphone.as_ref().map(|m| m.name()))
            .field("camera", &self.camera.as_ref().map(|c| c.name()))
            .finish()
    }
}

/// How the live devices of one end kept pace with the call (none when the
/// end used files).
#[derive(Clone, Debug, Default, Serialize)]
pub struct DeviceReport {
    /// The microphone's name and counters (samples).
    pub microphone: Option<(String, DeviceStats)>,
    /// The speaker's name and counters (samples).
    pub speaker: Option<(String, DeviceStats)>,
    /// The camera's name and counters (pictures).
    pub camera: Option<(String, DeviceStats)>,
}

/// What one end heard and saw, and how it went.
#[derive(Debug)]
pub struct MediaOutcome {
    /// Played-out PCM, frame after frame from the first frame played.
    pub audio: Vec<i16>,
    /// Played-out pictures (the last good one again where a frame was
    /// missing; black before the first).
    pub video: Vec<I420Frame>,
    /// The receiving side's statistics.
    pub received: Stats,
    /// The sending side's counters.
    pub sent: SenderStats,
    /// Why the call's media ended.
    pub ended: Ended,
    /// With `trace_cells`: each cell sent, (Unix microseconds, whether it
    /// carried no media), at most [`MAX_TRACED_CELLS`].
    pub cells_sent: Vec<(u64, bool)>,
    /// How the live devices kept pace.
    pub devices: DeviceReport,
}

/// Most cells a traced call records (about 2.8 hours of the video profile).
pub const MAX_TRACED_CELLS: usize = 1 << 20;

/// Why the media of a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ended {
    /// This end reached its duration and hung up.
    Duration,
    /// This end was asked to hang up.
    HungUp,
    /// The circuit ended (the peer hung up, or a relay closed it).
    Circuit(#[serde(with = "reason_text")] Reason),
}

mod reason_text {
    use bastet_circuit::Reason;
    use serde::Serializer;

    pub fn serialize<S: Serializer>(reason: &Reason, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(reason.as_str())
    }
}

/// The media clock: Unix time.
pub fn media_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// Sleeps until the media clock reads `at`.
async fn sleep_until(at: Duration) {
    let now = media_now();
    if at > now {
        tokio::time::sleep(at - now).await;
    }
}

/// How one end's media runs.
#[derive(Debug)]
pub struct MediaPlan {
    /// The call profile both ends agreed on.
    pub profile: Profile,
    /// What to say and show.
    pub input: MediaInput,
    /// When this end hangs up.
    pub duration: Duration,
    /// Record each cell sent ([`MediaOutcome::cells_sent`]).
    pub trace_cells: bool,
    /// What to keep of what is played out (for output files).
    pub keep: Keep,
    /// A live speaker to play what is heard (besides what `keep` keeps).
    pub speaker: Option<Box<dyn AudioPlayback>>,
}

/// What of the played-out media [`run_media`] keeps, up to
/// [`MAX_KEPT_AUDIO`] and [`MAX_KEPT_VIDEO`]: nothing is kept that no
/// output asks for.
#[derive(Clone, Copy, Debug, Default)]
pub struct Keep {
    /// Keep the audio played.
    pub audio: bool,
    /// Keep the pictures shown.
    pub video: bool,
}

/// Most audio kept for `--audio-out`: 30 minutes (173 MB).
pub const MAX_KEPT_AUDIO: Duration = Duration::from_secs(30 * 60);
/// Most video kept for `--video-out`: 5 minutes (about 400 MB of pictures).
pub const MAX_KEPT_VIDEO: Duration = Duration::from_secs(5 * 60);
/// Keyframe requests between the two halves of one end: `ask` (this end
/// lost video: ask the peer), `peer_asked` (the peer lost video: force a
/// keyframe).
#[derive(Default)]
struct Keyframes {
    ask: AtomicBool,
    peer_asked: AtomicBool,
}

/// Forced keyframes at most this often, however often the peer asks.
const MIN_KEYFRAME_GAP: Duration = Duration::from_secs(1);

/// A cell write that takes longer than this ends the call: the first relay
/// stopped reading.
const SEND_LIMIT: Duration = Duration::from_secs(2);

/// Runs both directions of one end's media over a joined circuit until
/// the plan's duration has passed, the circuit ends, or `hang_up` fires.
pub async fn run_media<S>(
    (writer, reader): (CircuitWriter<S>, CircuitReader<S>),
    keys: CallKeys,
    plan: MediaPlan,
    hang_up: tokio::sync::oneshot::Receiver<()>,
) -> Result<MediaOutcome>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let MediaPlan {
        profile,
        input,
        duration,
        trace_cells,
        keep,
        speaker,
    } = plan;
    let start = media_now();
    let end = start + duration;
    let CallKeys { send, receive, .. } = keys;
    let sender = Sender::new(profile.clone(), send, start + profile.audio.frame)?;
    let receiver = Receiver::new(profile.clone(), receive)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (sender_done_tx, sender_done_rx) = tokio::sync::watch::channel(false);
    let keyframes = Arc::new(Keyframes::default());
    let send_keyframes = keyframes.clone();
    let send = async move {
        let sent = send_media(
            writer,
            sender,
            profile.clone(),
            input,
            (start, end),
            (hang_up, stop_rx),
            (trace_cells, send_keyframes),
        )
        .await;
        // However the sending half ended, the receiving half plays out
        // what it holds and stops.
        let _ = sender_done_tx.send(true);
        sent
    };
    let keep = (keep.audio, keep.video);
    let receive = receive_media(
        reader,
        receiver,
        Playout {
            end,
            keep,
            keyframes,
            speaker,
        },
        stop_tx,
        sender_done_rx,
    );
    // Two tasks, so that encoding (a video frame can take milliseconds)
    // never delays reading the peer's cells, and the other way round.
    let (sent, received) = tokio::join!(tokio::spawn(send), tokio::spawn(receive));
    let joined = |e: tokio::task::JoinError| {
        MediaError::Call(bastet_call::Error::Io {
            context: "a call media task".into(),
            source: std::io::Error::other(e.to_string()),
        })
    };
    let (sent, received) = (sent.map_err(joined)?, received.map_err(joined)?);
    let Sent {
        stats: sent,
        hung_up,
        cells: cells_sent,
        microphone,
        camera,
    } = sent?;
    let (audio, video, received, circuit_end, speaker) = received?;
    let ended = match (circuit_end, hung_up) {
        (_, true) => Ended::HungUp,
        (Some(reason), false) => Ended::Circuit(reason),
        (None, false) => Ended::Duration,
    };
    Ok(MediaOutcome {
        audio,
        video,
        received,
        sent,
        ended,
        cells_sent,
        devices: DeviceReport {
            microphone,
            speaker,
            camera,
        },
    })
}

/// What the sending half reports.
struct Sent {
    stats: SenderStats,
    /// Whether it stopped because this end hung up.
    hung_up: bool,
    /// The cell trace.
    cells: Vec<(u64, bool)>,
    microphone: Option<(String, DeviceStats)>,
    camera: Option<(String, DeviceStats)>,
}

/// The sending half: one cell per tick.
async fn send_media<S>(
    mut writer: CircuitWriter<S>,
    mut sender: Sender,
    profile: Profile,
    input: MediaInput,
    (start, end): (Duration, Duration),
    (mut hang_up, mut circuit_ended): (
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::watch::Receiver<bool>,
    ),
    (trace_cells, keyframes): (bool, Arc<Keyframes>),
) -> Result<Sent>
where
    S: AsyncRead + AsyncWrite,
{
    let frame = profile.audio.frame;
    let samples = profile.audio_frame_samples();
    let silence = vec![0i16; samples];
    let MediaInput {
        audio,
        video: pictures,
        mut microphone,
        mut camera,
    } = input;
    let frames: Vec<&[i16]> = audio.chunks_exact(samples).collect();
    let mut captured = vec![0i16; samples];
    let done = |sender: &Sender,
                hung_up: bool,
                cells: Vec<(u64, bool)>,
                microphone: &Option<Box<dyn AudioCapture>>,
                camera: &Option<Box<dyn VideoCapture>>| Sent {
        stats: sender.stats().clone(),
        hung_up,
        cells,
        microphone: microphone
            .as_ref()
            .map(|m| (m.name().to_string(), m.stats())),
        camera: camera.as_ref().map(|c| (c.name().to_string(), c.stats())),
    };
    let video_interval = profile.video_frame_interval();
    let (mut next_audio, mut next_video) = (0u32, 0u32);
    let mut video_done = pictures.is_empty();
    let mut video = sender.take_video_encoder().map(VideoThread::spawn);
    let mut trace = Vec::new();
    let mut last_forced = None;
    loop {
        let due = sender.poll_timeout();
        tokio::select! {
            () = sleep_until(due) => {}
            _ = &mut hang_up => {
                let _ = tokio::time::timeout(SEND_LIMIT, writer.hang_up()).await;
                return Ok(done(&sender, true, trace, &microphone, &camera));
            }
            _ = circuit_ended.changed() => {
                return Ok(done(&sender, false, trace, &microphone, &camera));
            }
        }
        let now = media_now();
        // Keyframe requests, both ways: ours goes out in a cover slot; the
        // peer's forces a keyframe, at most one a second.
        if keyframes.ask.swap(false, Ordering::Relaxed) {
            sender.ask_for_keyframe();
        }
        if keyframes.peer_asked.swap(false, Ordering::Relaxed)
            && last_forced.is_none_or(|t: std::time::Instant| t.elapsed() >= MIN_KEYFRAME_GAP)
        {
            sender.request_keyframe();
            last_forced = Some(std::time::Instant::now());
        }
        // Every audio frame complete by now, stamped with its end.
        while start + frame * (next_audio + 1) <= now {
            let pcm = match microphone.as_mut() {
                Some(microphone) => {
                    microphone.read_frame(&mut captured);
                    &captured
                }
                None => frames.get(next_audio as usize).copied().unwrap_or(&silence),
            };
            sender.push_audio(start + frame * (next_audio + 1), pcm)?;
            next_audio += 1;
        }
        if let (Some(interval), Some(video)) = (video_interval, video.as_mut()) {
            // What the encoder finished, then the pictures now due.
            video.collect(&mut sender)?;
            if let Some(camera) = camera.as_mut() {
                // The newest picture at each picture time; none new (the
                // camera is slower than the call), none sent.
                while start + interval * next_video <= now {
                    if let Some(picture) = camera.take_picture() {
                        video.offer(&mut sender, start + interval * next_video, &picture);
                    }
                    next_video += 1;
                }
            }
            while (next_video as usize) < pictures.len() && start + interval * next_video <= now {
                video.offer(
                    &mut sender,
                    start + interval * next_video,
                    &pictures[next_video as usize],
                );
                next_video += 1;
            }
            if !video_done && next_video as usize == pictures.len() {
                video.finish();
                video_done = true;
            }
        }
        while let Some(cell) = sender.poll_transmit(now)? {
            match tokio::time::timeout(SEND_LIMIT, writer.send(&cell)).await {
                Ok(Ok(())) => {}
                // The circuit is gone: the receiving half says why.
                Ok(Err(_)) => return Ok(done(&sender, false, trace, &microphone, &camera)),
                Err(_) => {
                    tracing::warn!(
                        "a call cell could not be written within {SEND_LIMIT:?}: the first \
                         relay stopped reading; ending the call"
                    );
                    return Ok(done(&sender, false, trace, &microphone, &camera));
                }
            }
            if trace_cells && trace.len() < MAX_TRACED_CELLS {
                let micros = u64::try_from(media_now().as_micros()).unwrap_or(u64::MAX);
                trace.push((micros, sender.last_was_cover()));
            }
        }
        if now >= end {
            let _ = tokio::time::timeout(SEND_LIMIT, writer.hang_up()).await;
            return Ok(done(&sender, false, trace, &microphone, &camera));
        }
    }
}

/// AV1 encoding on its own thread: a picture takes tens of milliseconds,
/// longer than a tick, and must never hold back the cells of the call.
/// The thread takes at most [`VIDEO_BACKLOG`] pictures ahead; a picture
/// that finds it busy beyond that is skipped (and counted).
struct VideoThread {
    jobs: std::sync::mpsc::SyncSender<VideoJob>,
    done: std::sync::mpsc::Receiver<bastet_call::Result<Encoded>>,
    next_frame: u32,
    skipped: u64,
}

/// Pictures waiting for the video encoder thread.
const VIDEO_BACKLOG: usize = 2;

enum VideoJob {
    Picture {
        frame: u32,
        capture: Duration,
        picture: Box<I420Frame>,
        keyframe: bool,
    },
    Finish,
}

type Encoded = (Vec<(u32, Duration)>, Vec<bastet_call::EncodedVideo>);

impl VideoThread {
    fn spawn(mut encoder: bastet_call::VideoEncoder) -> Self {
        let (jobs, job_rx) = std::sync::mpsc::sync_channel::<VideoJob>(VIDEO_BACKLOG);
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            while let Ok(job) = job_rx.recv() {
                let result = match job {
                    VideoJob::Picture {
                        frame,
                        capture,
                        picture,
                        keyframe,
                    } => encoder
                        .encode(&picture, keyframe)
                        .map(|e| (vec![(frame, capture)], e)),
                    VideoJob::Finish => encoder.finish().map(|e| (Vec::new(), e)),
                };
                if done_tx.send(result).is_err() {
                    return;
                }
            }
        });
        VideoThread {
            jobs,
            done,
            next_frame: 0,
            skipped: 0,
        }
    }

    /// Hands the encoder a picture, or skips it if the encoder is behind.
    fn offer(&mut self, sender: &mut Sender, capture: Duration, picture: &I420Frame) {
        let keyframe = sender.take_keyframe_wanted();
        let job = VideoJob::Picture {
            frame: self.next_frame,
            capture,
            picture: Box::new(picture.clone()),
            keyframe,
        };
        match self.jobs.try_send(job) {
            Ok(()) => self.next_frame += 1,
            Err(_) => {
                self.skipped += 1;
                if keyframe {
                    sender.request_keyframe();
                }
            }
        }
    }

    /// Queues what the encoder finished into the sender.
    fn collect(&mut self, sender: &mut Sender) -> Result<()> {
        while let Ok(result) = self.done.try_recv() {
            let (captures, encoded) = result?;
            sender.video_encoded(&captures, encoded)?;
        }
        Ok(())
    }

    /// Asks the encoder for the pictures it still holds.
    fn finish(&mut self) {
        let _ = self.jobs.try_send(VideoJob::Finish);
    }
}

impl Drop for VideoThread {
    fn drop(&mut self) {
        if self.skipped > 0 {
            tracing::warn!(
                skipped = self.skipped,
                "the video encoder fell behind: pictures were skipped"
            );
        }
    }
}

/// Where the receiving half's playout goes.
struct Playout {
    /// When this end hangs up.
    end: Duration,
    /// Keep the audio, the video.
    keep: (bool, bool),
    keyframes: Arc<Keyframes>,
    speaker: Option<Box<dyn AudioPlayback>>,
}

type Received = (
    Vec<i16>,
    Vec<I420Frame>,
    Stats,
    Option<Reason>,
    Option<(String, DeviceStats)>,
);

/// The receiving half: cells in, playout out, until the circuit ends or
/// the call's end plus the playout tail.
async fn receive_media<S>(
    mut reader: CircuitReader<S>,
    mut receiver: Receiver,
    Playout {
        end,
        keep: (keep_audio, keep_video),
        keyframes,
        mut speaker,
    }: Playout,
    circuit_ended: tokio::sync::watch::Sender<bool>,
    mut sender_done: tokio::sync::watch::Receiver<bool>,
) -> Result<Received>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let profile = receiver.profile().clone();
    let (width, height) = profile
        .video
        .as_ref()
        .map_or((0, 0), |v| (v.width, v.height));
    let max_audio = usize::try_from(
        u64::from(bastet_call::SAMPLE_RATE).saturating_mul(MAX_KEPT_AUDIO.as_secs()),
    )
    .unwrap_or(usize::MAX);
    let max_video = profile
        .video
        .as_ref()
        .map_or(0, |v| v.fps as usize * MAX_KEPT_VIDEO.as_secs() as usize);
    let (mut audio, mut video): (Vec<i16>, Vec<I420Frame>) = (Vec::new(), Vec::new());
    // The link is read in a task of its own: a cell is never cut in half
    // by the wake-ups of the playout loop.
    let (cells_tx, mut cells) = tokio::sync::mpsc::channel(64);
    let read_task = tokio::spawn(async move {
        loop {
            let incoming = reader.recv().await;
            let last = !matches!(incoming, Ok(Incoming::Cell(_) | Incoming::Corrupt));
            if cells_tx.send(incoming).await.is_err() || last {
                return;
            }
        }
    });
    let mut stop = end + PLAYOUT_TAIL;
    let mut ended = None;
    let mut sending = true;
    loop {
        let now = media_now();
        if now >= stop {
            break;
        }
        let wake = receiver.poll_timeout().unwrap_or(stop).min(stop);
        tokio::select! {
            incoming = cells.recv(), if ended.is_none() => {
                let now = media_now();
                match incoming {
                    // A refused cell is counted by the receiver; the call
                    // goes on.
                    Some(Ok(Incoming::Cell(cell))) => {
                        let _ = receiver.handle_cell(now, cell.as_slice());
                    }
                    // Lost on the way: the gap in the counter shows it.
                    Some(Ok(Incoming::Corrupt)) => {}
                    Some(Ok(Incoming::Ended(reason))) => {
                        ended = Some(reason);
                        stop = stop.min(now + PLAYOUT_TAIL);
                        let _ = circuit_ended.send(true);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %MediaError::from(e), "the call circuit failed");
                        ended = Some(Reason::Hangup);
                        stop = stop.min(now + PLAYOUT_TAIL);
                        let _ = circuit_ended.send(true);
                    }
                    None => {
                        ended = Some(Reason::Hangup);
                        stop = stop.min(now + PLAYOUT_TAIL);
                    }
                }
            }
            _ = sender_done.changed(), if sending => {
                // This end hung up (or its sending failed): play out what
                // is held, then stop.
                sending = false;
                stop = stop.min(media_now() + PLAYOUT_TAIL);
            }
            () = sleep_until(wake) => {}
        }
        let now = media_now();
        // Once the peer sends no more, play what was received and conceal
        // nothing after it.
        let audio_over = ended.is_some() && receiver.audio_held() == 0;
        let video_over = ended.is_some() && receiver.video_held() == 0;
        while let Some(out) = (!audio_over)
            .then(|| receiver.poll_audio(now))
            .transpose()?
            .flatten()
        {
            if let Some(speaker) = speaker.as_mut() {
                speaker.play(&out.pcm);
            }
            if keep_audio && audio.len() < max_audio {
                audio.extend_from_slice(&out.pcm);
            }
        }
        while let Some(out) = (!video_over)
            .then(|| receiver.poll_video(now))
            .transpose()?
            .flatten()
        {
            if keep_video && video.len() < max_video {
                let picture = match (out.picture, out.source) {
                    (Some(p), VideoSource::Decoded | VideoSource::Frozen) => p,
                    (None, _) => I420Frame::black(width, height)?,
                };
                video.push(picture);
            }
        }
        if receiver.take_keyframe_request() {
            keyframes.ask.store(true, Ordering::Relaxed);
        }
        if receiver.take_peer_keyframe_request() {
            keyframes.peer_asked.store(true, Ordering::Relaxed);
        }
        if audio_over && video_over {
            break;
        }
    }
    read_task.abort();
    let speaker = speaker.map(|s| (s.name().to_string(), s.stats()));
    Ok((audio, video, receiver.stats(), ended, speaker))
}
