//! The endpoint media pipeline, sans IO: a [`Sender`] turns captured audio
//! (and video) into one sealed cell per tick; a [`Receiver`] turns the
//! cells that arrive, lost or reordered, into PCM and pictures with
//! concealment. Both are driven by the caller's `now` (a monotonic media
//! clock); neither sleeps, spawns or touches a socket.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::audio::{AudioDecoder, AudioEncoder, AudioSource, EncodedAudio};
use crate::cell::{
    CIRCUIT_CELL_LEN, MAX_AUDIO_PACKET, MAX_VIDEO_FRAGMENTS, Payload, Profile, Slot,
    VIDEO_FRAGMENT_LEN, VideoFragment,
};
use crate::frame::{CELL_LEN, FrameOpener, FrameSealer};
use crate::jitter::{JitterBuffer, Push};
use crate::keys::TrafficKey;
use crate::stats::{AudioStats, CellStats, Histogram, SenderStats, Stats, VideoStats};
use crate::video::{EncodedVideo, I420Frame, VideoDecoder, VideoEncoder};
use crate::{Error, Result};

/// Audio frames a sender holds for cells (more means the caller pushes
/// faster than real time; the oldest is dropped).
pub const AUDIO_QUEUE: usize = 4;
/// Bytes of an audio cell's plaintext for its packets and their lengths.
const AUDIO_HEADER_ROOM: usize = MAX_AUDIO_PACKET + 2;
/// Video frames a receiver reassembles at once.
pub const MAX_ASSEMBLING: usize = 16;
/// Frame numbers whose capture time a sender remembers while they are
/// inside the video encoder.
const MAX_CAPTURES: usize = 64;

/// Sends one direction of a call.
pub struct Sender {
    profile: Profile,
    sealer: FrameSealer,
    audio: AudioEncoder,
    video: Option<VideoEncoder>,
    audio_queue: VecDeque<Payload>,
    video_queue: VecDeque<VideoFragment>,
    queued_video_bytes: usize,
    captures: VecDeque<(u32, Duration)>,
    force_keyframe: bool,
    skip_until_keyframe: bool,
    /// The previous frame's packet, to ride again in the next cell.
    last_packet: Option<(u32, Vec<u8>)>,
    next_audio_seq: u32,
    next_video_frame: u32,
    next_tick: Duration,
    slot: usize,
    /// Whether the last cell sent was cover.
    last_cover: bool,
    /// A keyframe request to send in the next slot that would be cover.
    ask_keyframe: bool,
    stats: SenderStats,
}

impl Sender {
    /// A sender for `profile` sealing with `key` (this end's send key),
    /// whose first cell is due at `start`.
    pub fn new(profile: Profile, key: TrafficKey, start: Duration) -> Result<Self> {
        let audio = AudioEncoder::new(&profile.audio)?;
        let video = profile.video.as_ref().map(VideoEncoder::new).transpose()?;
        Ok(Sender {
            profile,
            sealer: FrameSealer::new(key),
            audio,
            video,
            audio_queue: VecDeque::with_capacity(AUDIO_QUEUE),
            video_queue: VecDeque::new(),
            queued_video_bytes: 0,
            captures: VecDeque::new(),
            force_keyframe: true,
            skip_until_keyframe: false,
            last_packet: None,
            next_audio_seq: 0,
            next_video_frame: 0,
            next_tick: start,
            slot: 0,
            last_cover: false,
            ask_keyframe: false,
            stats: SenderStats::default(),
        })
    }

    /// The call profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Counters so far.
    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    /// Encodes one captured audio frame (exactly the profile's frame of
    /// 48 kHz mono PCM) and queues it for the next audio slot.
    pub fn push_audio(&mut self, capture: Duration, pcm: &[i16]) -> Result<()> {
        let seq = self.next_audio_seq;
        let payload = match self.audio.encode(pcm)? {
            EncodedAudio::Packet(packet) => {
                self.stats.media_bytes += packet.len() as u64;
                let mut packets = vec![packet.clone()];
                if let Some((last_seq, last)) = self.last_packet.take() {
                    let fits = AUDIO_HEADER_ROOM >= packet.len() + last.len() + 4;
                    if last_seq.wrapping_add(1) == seq && fits {
                        packets.push(last);
                    }
                }
                self.last_packet = Some((seq, packet));
                Payload::Audio {
                    seq,
                    capture,
                    packets,
                }
            }
            EncodedAudio::Silence => {
                self.stats.silent_frames += 1;
                self.last_packet = None;
                Payload::Silence { seq, capture }
            }
        };
        self.next_audio_seq = seq.checked_add(1).ok_or(Error::CounterExhausted)?;
        self.stats.audio_frames += 1;
        if self.audio_queue.len() == AUDIO_QUEUE {
            self.audio_queue.pop_front();
            self.stats.audio_dropped += 1;
        }
        self.audio_queue.push_back(payload);
        Ok(())
    }

    /// Encodes one captured picture and queues the fragments of whatever
    /// frames the encoder finished.
    pub fn push_video(&mut self, capture: Duration, picture: &I420Frame) -> Result<()> {
        let encoder = self
            .video
            .as_mut()
            .ok_or(Error::NoVideo(self.profile.name))?;
        let force = std::mem::take(&mut self.force_keyframe);
        let frame = self.next_video_frame;
        self.next_video_frame = frame.checked_add(1).ok_or(Error::CounterExhausted)?;
        if self.captures.len() == MAX_CAPTURES {
            self.captures.pop_front();
        }
        self.captures.push_back((frame, capture));
        let encoded = encoder.encode(picture, force)?;
        self.queue_video(encoded)
    }

    /// Takes the video encoder out, for an application that encodes on
    /// its own thread (an AV1 picture takes tens of milliseconds, more
    /// than a tick): it then numbers pictures 0, 1, … as
    /// [`Sender::push_video`] would, asks [`Sender::take_keyframe_wanted`]
    /// before each, and hands what the encoder returns to
    /// [`Sender::video_encoded`]. `None` without video or if already taken.
    pub fn take_video_encoder(&mut self) -> Option<VideoEncoder> {
        self.video.take()
    }

    /// Whether the next picture must be a keyframe (the start of the
    /// call, a frame dropped from the queue, or the peer's request);
    /// clears the flag. For an application that encodes itself.
    pub fn take_keyframe_wanted(&mut self) -> bool {
        std::mem::take(&mut self.force_keyframe)
    }

    /// Queues frames encoded outside the sender (see
    /// [`Sender::take_video_encoder`]); `captures` gives the capture time
    /// of each picture number the encoder was given.
    pub fn video_encoded(
        &mut self,
        captures: &[(u32, Duration)],
        encoded: Vec<EncodedVideo>,
    ) -> Result<()> {
        for &(frame, capture) in captures {
            if self.captures.len() == MAX_CAPTURES {
                self.captures.pop_front();
            }
            self.captures.push_back((frame, capture));
        }
        self.queue_video(encoded)
    }

    /// Asks the peer for a keyframe (this end's receiver lost video: see
    /// [`Receiver::take_keyframe_request`]), in the next cell that would
    /// otherwise be cover; the peer's receiver reports it with
    /// [`Receiver::take_peer_keyframe_request`].
    pub fn ask_for_keyframe(&mut self) {
        self.ask_keyframe = true;
    }

    /// Asks for the next picture to be a keyframe (the peer lost video).
    pub fn request_keyframe(&mut self) {
        self.force_keyframe = true;
    }

    /// Flushes the pictures the video encoder still holds (at hang-up).
    pub fn finish_video(&mut self) -> Result<()> {
        let Some(encoder) = self.video.as_mut() else {
            return Ok(());
        };
        let encoded = encoder.finish()?;
        self.queue_video(encoded)
    }

    fn queue_video(&mut self, encoded: Vec<EncodedVideo>) -> Result<()> {
        let max_queued = self
            .profile
            .video
            .as_ref()
            .map_or(0, |v| v.max_queued_bytes);
        for frame in encoded {
            self.stats.video_frames += 1;
            self.stats.keyframes += u64::from(frame.keyframe);
            let capture = self
                .captures
                .iter()
                .find(|(n, _)| *n == frame.frame)
                .map_or(self.next_tick, |(_, c)| *c);
            if frame.keyframe {
                self.skip_until_keyframe = false;
            }
            // A frame that does not fit breaks the reference chain: drop
            // it and everything up to a fresh keyframe, which is forced.
            if self.skip_until_keyframe || self.queued_video_bytes + frame.data.len() > max_queued {
                self.stats.video_dropped += 1;
                self.skip_until_keyframe = true;
                self.force_keyframe = true;
                continue;
            }
            let count = frame.data.len().div_ceil(VIDEO_FRAGMENT_LEN).max(1);
            if count > MAX_VIDEO_FRAGMENTS {
                return Err(Error::VideoFrameTooLarge {
                    len: frame.data.len(),
                    max: MAX_VIDEO_FRAGMENTS * VIDEO_FRAGMENT_LEN,
                });
            }
            self.queued_video_bytes += frame.data.len();
            self.stats.media_bytes += frame.data.len() as u64;
            for (index, chunk) in frame.data.chunks(VIDEO_FRAGMENT_LEN).enumerate() {
                self.video_queue.push_back(VideoFragment {
                    frame: frame.frame,
                    capture,
                    index: index as u16,
                    count: count as u16,
                    keyframe: frame.keyframe,
                    data: chunk.to_vec(),
                });
            }
        }
        Ok(())
    }

    fn next_video(&mut self) -> Option<Payload> {
        let fragment = self.video_queue.pop_front()?;
        self.queued_video_bytes = self.queued_video_bytes.saturating_sub(fragment.data.len());
        Some(Payload::Video(fragment))
    }

    /// Whether the cell [`Sender::poll_transmit`] returned last carries
    /// no media (cover, or silence past the gate): for measurements that
    /// compare cell timing in speech and in silence. The cell itself does
    /// not show it.
    pub fn last_was_cover(&self) -> bool {
        self.last_cover
    }

    /// When the next cell is due.
    pub fn poll_timeout(&self) -> Duration {
        self.next_tick
    }

    /// The cell of the current tick, if it is due at `now`. Exactly one
    /// cell per tick whatever is queued: a caller that fell behind gets
    /// the missed ticks' cells on its next calls.
    pub fn poll_transmit(&mut self, now: Duration) -> Result<Option<[u8; CELL_LEN]>> {
        if now < self.next_tick {
            return Ok(None);
        }
        let slot = self.profile.slots[self.slot % self.profile.slots.len()];
        let payload = match slot {
            Slot::Audio => self.audio_queue.pop_front().or_else(|| self.next_video()),
            Slot::Video => self.next_video().or_else(|| self.audio_queue.pop_front()),
        }
        .unwrap_or_else(|| {
            if std::mem::take(&mut self.ask_keyframe) {
                Payload::KeyframeRequest
            } else {
                Payload::Cover
            }
        });
        self.last_cover = payload.is_cover();
        self.stats.cover += u64::from(self.last_cover);
        let plaintext = payload.encode()?;
        let cell = self.sealer.seal(self.next_tick, &plaintext)?;
        self.stats.cells += 1;
        self.next_tick += self.profile.tick;
        self.slot = self.slot.wrapping_add(1);
        Ok(Some(cell))
    }
}

/// A played-out audio frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AudioOut {
    /// Audio frame number.
    pub seq: u32,
    /// Its playout time.
    pub at: Duration,
    /// 48 kHz mono PCM, one profile frame.
    pub pcm: Vec<i16>,
    /// How it was obtained.
    pub source: AudioSource,
}

/// How a played-out picture was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VideoSource {
    /// Decoded from its own frame.
    Decoded,
    /// The last good picture again (frame lost, or waiting for a keyframe).
    Frozen,
}

/// A played-out video frame slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VideoOut {
    /// Frame number.
    pub frame: u32,
    /// Its playout time.
    pub at: Duration,
    /// The picture to show; `None` before the first picture decoded.
    pub picture: Option<I420Frame>,
    /// How it was obtained.
    pub source: VideoSource,
}

enum AudioItem {
    Packet {
        packet: Vec<u8>,
        capture: Duration,
        /// Came as the copy in the next frame's cell.
        redundant: bool,
    },
    Silence {
        capture: Duration,
    },
}

struct CompleteFrame {
    data: Vec<u8>,
    keyframe: bool,
    capture: Duration,
}

struct Assembly {
    capture: Duration,
    keyframe: bool,
    parts: Vec<Option<Vec<u8>>>,
    received: usize,
}

struct VideoReceive {
    decoder: VideoDecoder,
    assembling: BTreeMap<u32, Assembly>,
    buffer: JitterBuffer<CompleteFrame>,
    last_picture: Option<I420Frame>,
    need_keyframe: bool,
    keyframe_wanted: bool,
    stats: VideoCounters,
}

#[derive(Default)]
struct VideoCounters {
    played: u64,
    decoded: u64,
    frozen: u64,
    late: u64,
    incomplete: u64,
    decode_errors: u64,
    network: Histogram,
    playout: Histogram,
}

#[derive(Default)]
struct AudioCounters {
    played: u64,
    decoded: u64,
    redundant: u64,
    fec: u64,
    concealed: u64,
    silence: u64,
    late: u64,
    decode_errors: u64,
    network: Histogram,
    playout: Histogram,
}

/// Receives one direction of a call.
pub struct Receiver {
    profile: Profile,
    opener: FrameOpener,
    audio: AudioDecoder,
    audio_buffer: JitterBuffer<AudioItem>,
    video: Option<VideoReceive>,
    cells: CellStats,
    highest_counter: Option<u64>,
    media_bytes: u64,
    first_arrival: Option<Duration>,
    last_now: Duration,
    audio_stats: AudioCounters,
    /// The peer asked for a keyframe.
    peer_wants_keyframe: bool,
}

fn frames_in(depth: Duration, interval: Duration) -> u32 {
    let n = depth.as_nanos() / interval.as_nanos().max(1);
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Receiver {
    /// A receiver for `profile` opening with `key` (this end's receive key).
    pub fn new(profile: Profile, key: TrafficKey) -> Result<Self> {
        let audio = AudioDecoder::new(&profile.audio)?;
        let frame = profile.audio.frame;
        // Room for the depth, reordering and a second of early frames.
        let audio_capacity = frames_in(profile.audio.jitter_depth + Duration::from_secs(1), frame);
        let audio_buffer = JitterBuffer::new(frame, profile.audio.jitter_depth, audio_capacity);
        let video = match (&profile.video, profile.video_frame_interval()) {
            (Some(v), Some(interval)) => Some(VideoReceive {
                decoder: VideoDecoder::new(v)?,
                assembling: BTreeMap::new(),
                buffer: JitterBuffer::new(
                    interval,
                    v.jitter_depth,
                    frames_in(v.jitter_depth + Duration::from_secs(1), interval),
                ),
                last_picture: None,
                need_keyframe: true,
                keyframe_wanted: false,
                stats: VideoCounters::default(),
            }),
            _ => None,
        };
        Ok(Receiver {
            profile,
            opener: FrameOpener::new(key),
            audio,
            audio_buffer,
            video,
            cells: CellStats::default(),
            highest_counter: None,
            media_bytes: 0,
            first_arrival: None,
            last_now: Duration::ZERO,
            audio_stats: AudioCounters::default(),
            peer_wants_keyframe: false,
        })
    }

    /// The call profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Audio frames received and not yet played out: once the peer has
    /// stopped sending, its audio ends when this is zero (playing on would
    /// only conceal frames that will never come).
    pub fn audio_held(&self) -> usize {
        self.audio_buffer.held()
    }

    /// Video frames complete and not yet played out (see
    /// [`Receiver::audio_held`]).
    pub fn video_held(&self) -> usize {
        self.video.as_ref().map_or(0, |v| v.buffer.held())
    }

    /// Takes in one cell that arrived at `now`. An error says why the cell
    /// was refused; the receiver is unchanged by a refused cell and goes
    /// on with the next one.
    pub fn handle_cell(&mut self, now: Duration, cell: &[u8]) -> Result<()> {
        self.last_now = self.last_now.max(now);
        let (header, plaintext) = match self.opener.open(cell) {
            Ok(opened) => opened,
            Err(e) => {
                match e {
                    Error::Decrypt => self.cells.rejected_unauthenticated += 1,
                    Error::Replay { .. } => self.cells.rejected_replay += 1,
                    _ => self.cells.rejected_other += 1,
                }
                return Err(e);
            }
        };
        self.first_arrival.get_or_insert(now);
        self.cells.received += 1;
        self.highest_counter = Some(
            self.highest_counter
                .map_or(header.counter, |h| h.max(header.counter)),
        );
        let payload = match Payload::decode(&plaintext) {
            Ok(p) => p,
            Err(e) => {
                self.cells.rejected_other += 1;
                return Err(e);
            }
        };
        self.cells.cover += u64::from(payload.is_cover());
        match payload {
            Payload::Cover => {}
            Payload::KeyframeRequest => self.peer_wants_keyframe = true,
            Payload::Audio {
                seq,
                capture,
                packets,
            } => {
                self.audio_stats.network.record(now.saturating_sub(capture));
                let frame = self.profile.audio.frame;
                for (back, packet) in (0u32..).zip(packets) {
                    let Some(seq) = seq.checked_sub(back) else {
                        break;
                    };
                    let redundant = back > 0;
                    if !redundant {
                        self.media_bytes += packet.len() as u64;
                    }
                    let capture = capture.saturating_sub(frame * back);
                    let item = AudioItem::Packet {
                        packet,
                        capture,
                        redundant,
                    };
                    let push = self.audio_buffer.push(now, seq, item);
                    // A copy arriving after its frame played is expected.
                    self.audio_stats.late += u64::from(push == Push::Late && !redundant);
                }
            }
            Payload::Silence { seq, capture } => {
                let push = self
                    .audio_buffer
                    .push(now, seq, AudioItem::Silence { capture });
                self.audio_stats.late += u64::from(push == Push::Late);
            }
            Payload::Video(fragment) => {
                let Some(video) = self.video.as_mut() else {
                    self.cells.rejected_other += 1;
                    return Err(Error::MalformedCell("video in a call without video"));
                };
                self.media_bytes += fragment.data.len() as u64;
                video.take_fragment(now, fragment)?;
            }
        }
        Ok(())
    }

    /// The next audio frame, once its playout time has come.
    pub fn poll_audio(&mut self, now: Duration) -> Result<Option<AudioOut>> {
        self.last_now = self.last_now.max(now);
        let Some(due) = self.audio_buffer.poll(now) else {
            return Ok(None);
        };
        let s = &mut self.audio_stats;
        s.played += 1;
        let (pcm, source) = match due.item {
            Some(AudioItem::Packet {
                packet,
                capture,
                redundant,
            }) => {
                s.playout.record(due.at.saturating_sub(capture));
                match self.audio.decode(&packet) {
                    Ok(pcm) if redundant => (pcm, AudioSource::Redundant),
                    Ok(pcm) => (pcm, AudioSource::Decoded),
                    Err(_) => {
                        s.decode_errors += 1;
                        (self.audio.conceal()?, AudioSource::Concealed)
                    }
                }
            }
            Some(AudioItem::Silence { capture }) => {
                s.playout.record(due.at.saturating_sub(capture));
                (self.audio.silence(), AudioSource::Silence)
            }
            None => {
                let next = match self.audio_buffer.peek(due.seq.wrapping_add(1)) {
                    Some(AudioItem::Packet { packet, .. }) => Some(packet.clone()),
                    _ => None,
                };
                match next.map(|p| self.audio.recover(&p)) {
                    Some(Ok(pcm)) => (pcm, AudioSource::Fec),
                    _ => (self.audio.conceal()?, AudioSource::Concealed),
                }
            }
        };
        match source {
            AudioSource::Decoded => s.decoded += 1,
            AudioSource::Redundant => s.redundant += 1,
            AudioSource::Fec => s.fec += 1,
            AudioSource::Concealed => s.concealed += 1,
            AudioSource::Silence => s.silence += 1,
        }
        Ok(Some(AudioOut {
            seq: due.seq,
            at: due.at,
            pcm,
            source,
        }))
    }

    /// The next video frame slot, once its playout time has come.
    pub fn poll_video(&mut self, now: Duration) -> Result<Option<VideoOut>> {
        self.last_now = self.last_now.max(now);
        let Some(video) = self.video.as_mut() else {
            return Ok(None);
        };
        video.poll(now)
    }

    /// When the receiver next has something to play out, if anything.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let audio = self.audio_buffer.poll_timeout();
        let video = self.video.as_ref().and_then(|v| v.buffer.poll_timeout());
        match (audio, video) {
            (Some(a), Some(v)) => Some(a.min(v)),
            (a, v) => a.or(v),
        }
    }

    /// Whether the peer asked for a keyframe since the last call (give it
    /// to this end's [`Sender::request_keyframe`], at a rate the call can
    /// afford). Clears the flag.
    pub fn take_peer_keyframe_request(&mut self) -> bool {
        std::mem::take(&mut self.peer_wants_keyframe)
    }

    /// Whether video was lost since the last call, so the peer should
    /// send a keyframe (call [`Sender::request_keyframe`] on the peer's
    /// sender, through call control). Clears the flag.
    pub fn take_keyframe_request(&mut self) -> bool {
        self.video
            .as_mut()
            .is_some_and(|v| std::mem::take(&mut v.keyframe_wanted))
    }

    /// Statistics so far.
    pub fn stats(&self) -> Stats {
        let elapsed = self
            .first_arrival
            .map_or(Duration::ZERO, |f| self.last_now.saturating_sub(f))
            .as_secs_f64();
        let per_second = |x: f64| if elapsed > 0.0 { x / elapsed } else { 0.0 };
        let mut cells = self.cells.clone();
        if let Some(h) = self.highest_counter {
            let sent = h.saturating_add(1);
            cells.lost = sent.saturating_sub(cells.received);
            cells.loss_ratio = cells.lost as f64 / sent as f64;
        }
        let a = &self.audio_stats;
        Stats {
            profile: self.profile.name.to_string(),
            wire_bitrate_bps: self.profile.wire_bitrate(),
            received_bitrate_bps: per_second((cells.received * CIRCUIT_CELL_LEN as u64 * 8) as f64),
            media_bitrate_bps: per_second((self.media_bytes * 8) as f64),
            elapsed_s: elapsed,
            cells,
            audio: AudioStats {
                played: a.played,
                decoded: a.decoded,
                redundant_recovered: a.redundant,
                fec_decoded: a.fec,
                concealed: a.concealed,
                silence: a.silence,
                late: a.late,
                decode_errors: a.decode_errors,
                network_latency: a.network.summary(),
                playout_latency: a.playout.summary(),
            },
            video: self.video.as_ref().map(|v| {
                let s = &v.stats;
                VideoStats {
                    played: s.played,
                    decoded: s.decoded,
                    frozen: s.frozen,
                    late: s.late,
                    incomplete: s.incomplete,
                    decode_errors: s.decode_errors,
                    network_latency: s.network.summary(),
                    playout_latency: s.playout.summary(),
                }
            }),
        }
    }
}

impl VideoReceive {
    fn take_fragment(&mut self, now: Duration, f: VideoFragment) -> Result<()> {
        if f.frame < self.buffer.next_seq() {
            self.stats.late += 1;
            return Ok(());
        }
        if !self.assembling.contains_key(&f.frame) && self.assembling.len() == MAX_ASSEMBLING {
            // Bounded: give up the oldest frame in progress.
            self.assembling.pop_first();
            self.stats.incomplete += 1;
        }
        let assembly = self.assembling.entry(f.frame).or_insert_with(|| Assembly {
            capture: f.capture,
            keyframe: f.keyframe,
            parts: vec![None; usize::from(f.count)],
            received: 0,
        });
        if assembly.parts.len() != usize::from(f.count) || assembly.keyframe != f.keyframe {
            return Err(Error::MalformedCell("fragments of one frame disagree"));
        }
        let part = &mut assembly.parts[usize::from(f.index)];
        if part.is_some() {
            return Ok(());
        }
        *part = Some(f.data);
        assembly.received += 1;
        if assembly.received < assembly.parts.len() {
            return Ok(());
        }
        let Some(assembly) = self.assembling.remove(&f.frame) else {
            return Ok(());
        };
        let data: Vec<u8> = assembly.parts.into_iter().flatten().flatten().collect();
        self.stats
            .network
            .record(now.saturating_sub(assembly.capture));
        let push = self.buffer.push(
            now,
            f.frame,
            CompleteFrame {
                data,
                keyframe: assembly.keyframe,
                capture: assembly.capture,
            },
        );
        self.stats.late += u64::from(push == Push::Late);
        Ok(())
    }

    fn poll(&mut self, now: Duration) -> Result<Option<VideoOut>> {
        let Some(due) = self.buffer.poll(now) else {
            return Ok(None);
        };
        // Fragments of frames now past playout will never be used.
        while let Some(entry) = self.assembling.first_entry() {
            if *entry.key() > due.seq {
                break;
            }
            entry.remove();
            self.stats.incomplete += 1;
        }
        self.stats.played += 1;
        let mut decoded = None;
        match due.item {
            Some(frame) if frame.keyframe || !self.need_keyframe => {
                match self.decoder.decode(&frame.data) {
                    Ok(Some(picture)) => {
                        self.stats
                            .playout
                            .record(due.at.saturating_sub(frame.capture));
                        decoded = Some(picture);
                    }
                    Ok(None) | Err(_) => self.stats.decode_errors += 1,
                }
            }
            _ => {}
        }
        let source = match decoded {
            Some(picture) => {
                self.last_picture = Some(picture);
                self.need_keyframe = false;
                self.stats.decoded += 1;
                VideoSource::Decoded
            }
            None => {
                // Later frames may reference the missing one: show the last
                // good picture until a keyframe restarts the chain.
                if !self.need_keyframe {
                    self.keyframe_wanted = true;
                }
                self.need_keyframe = true;
                self.stats.frozen += 1;
                VideoSource::Frozen
            }
        };
        Ok(Some(VideoOut {
            frame: due.seq,
            at: due.at,
            picture: self.last_picture.clone(),
            source,
        }))
    }
}
