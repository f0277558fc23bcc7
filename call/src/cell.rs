//! Constant-rate cells: the profiles (tick, slots, codec settings) and the
//! plaintext layout inside each sealed cell.
//!
//! Every cell on the circuit is [`CIRCUIT_CELL_LEN`] = 512 bytes: the
//! [`CELL_LEN`] = 448 bytes this crate seals, plus a budget of
//! [`ONION_BUDGET`] = 64 bytes for the relay circuit's own framing (circuit
//! id, per-hop headers and MACs of a three-hop onion). One cell leaves per
//! tick per direction from answer to hang-up, whatever is said.
//!
//! Plaintext (419 bytes, encrypted, so none of it shows on the wire):
//!
//! ```text
//! kind (1)
//!   0 cover:   zero padding
//!   1 audio:   seq (u32 BE) || capture µs (u64 BE) || count (1, 1 to 2)
//!              || count × (len (u16 BE) || Opus packet) || zero padding
//!              (the packets of frames seq, seq − 1: the previous frame's packet rides
//!               again in the cell's spare room, so one lost cell costs no audio)
//!   2 silence: seq (u32 BE) || capture µs (u64 BE) || zero padding
//!              (the sender's gate found the frame silent: the receiver plays silence,
//!               not concealment; on the wire it is a cover cell like any other)
//!   3 video:   frame (u32 BE) || capture µs (u64 BE) || fragment index (u16 BE)
//!              || fragment count (u16 BE) || flags (1: bit 0 keyframe) || len (u16 BE)
//!              || fragment || zero padding
//!   4 keyframe request: zero padding (the receiver lost video and asks for a
//!              keyframe; sent in a slot that would carry cover, so it costs nothing
//!              and on the wire it is a cover cell like any other)
//! ```

use std::time::Duration;

use zeroize::Zeroizing;

use crate::frame::{CELL_LEN, PLAINTEXT_LEN, Plaintext};
use crate::{Error, Result};

/// Bytes of a cell on the relay circuit, onion framing included.
pub const CIRCUIT_CELL_LEN: usize = 512;
/// Bytes of each circuit cell left to the relay circuit's onion framing.
pub const ONION_BUDGET: usize = CIRCUIT_CELL_LEN - CELL_LEN;

const KIND_COVER: u8 = 0;
const KIND_AUDIO: u8 = 1;
const KIND_SILENCE: u8 = 2;
const KIND_VIDEO: u8 = 3;
const KIND_KEYFRAME_REQUEST: u8 = 4;
const AUDIO_HEADER: usize = 1 + 4 + 8 + 1 + 2;
/// Packets one audio cell carries: its frame's and the previous frame's.
pub const AUDIO_PACKETS_PER_CELL: usize = 2;
const VIDEO_HEADER: usize = 1 + 4 + 8 + 2 + 2 + 1 + 2;
/// Largest Opus packet one cell carries.
pub const MAX_AUDIO_PACKET: usize = PLAINTEXT_LEN - AUDIO_HEADER;
/// Bytes of an encoded video frame one cell carries.
pub const VIDEO_FRAGMENT_LEN: usize = PLAINTEXT_LEN - VIDEO_HEADER;
/// Most cells one encoded video frame may span.
pub const MAX_VIDEO_FRAGMENTS: usize = 256;
/// Largest encoded video frame.
pub const MAX_VIDEO_FRAME: usize = MAX_VIDEO_FRAGMENTS * VIDEO_FRAGMENT_LEN;
const FLAG_KEYFRAME: u8 = 1;

/// What a tick's cell carries first, when both media are waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Audio first, then video, then cover.
    Audio,
    /// Video first, then audio, then cover.
    Video,
}

/// Opus settings of a profile.
#[derive(Clone, Debug, PartialEq)]
pub struct AudioSettings {
    /// Duration of one Opus frame (20 or 60 ms).
    pub frame: Duration,
    /// Constant bitrate, bits per second.
    pub bitrate: u32,
    /// Widest audio band the encoder may use, in Hz of audio bandwidth
    /// (4000 narrowband, 8000 wideband).
    pub max_bandwidth_hz: u32,
    /// Expected packet loss the encoder protects against with in-band
    /// FEC, percent.
    pub expected_loss_percent: u8,
    /// Frames whose level is below this (dBFS RMS) for [`Self::gate_hangover`]
    /// are sent as silence; `None` disables the gate.
    pub silence_gate_dbfs: Option<f32>,
    /// How long the level must stay low before frames count as silence.
    pub gate_hangover: Duration,
    /// Fixed playout delay of the jitter buffer.
    pub jitter_depth: Duration,
}

/// Video settings of a profile.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoSettings {
    /// Picture width (even).
    pub width: usize,
    /// Picture height (even).
    pub height: usize,
    /// Frames per second.
    pub fps: u32,
    /// Target bitrate of the encoder, bits per second: below what the video
    /// share of the cells carries, so keyframes and overshoot drain.
    pub bitrate: u32,
    /// A keyframe at least every this many frames (bounds a freeze after
    /// loss even without a keyframe request).
    pub keyframe_interval: u32,
    /// Fixed playout delay of the jitter buffer (covers a keyframe's burst
    /// of fragments).
    pub jitter_depth: Duration,
    /// Most encoded bytes waiting for cells; beyond, frames are dropped
    /// and the next one is forced to be a keyframe.
    pub max_queued_bytes: usize,
}

/// A call profile: how often cells leave, and what fills them.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// Short name (`normal`, `constrained`, `video`).
    pub name: &'static str,
    /// Interval between two cells of one direction.
    pub tick: Duration,
    /// Slot pattern, one slot per tick, repeated.
    pub slots: &'static [Slot],
    /// Audio settings.
    pub audio: AudioSettings,
    /// Video settings, for video calls.
    pub video: Option<VideoSettings>,
}

impl Profile {
    /// Audio only: 20 ms Opus frames at 16 kbit/s CBR, one cell every 20 ms.
    pub fn normal() -> Self {
        Profile {
            name: "normal",
            tick: Duration::from_millis(20),
            slots: &[Slot::Audio],
            audio: AudioSettings {
                frame: Duration::from_millis(20),
                bitrate: 16_000,
                max_bandwidth_hz: 8_000,
                expected_loss_percent: 10,
                silence_gate_dbfs: Some(-60.0),
                gate_hangover: Duration::from_millis(200),
                jitter_depth: Duration::from_millis(60),
            },
            video: None,
        }
    }

    /// Audio only for poor links: 60 ms Opus frames at 6 kbit/s CBR
    /// (narrowband), one cell every 60 ms.
    pub fn constrained() -> Self {
        Profile {
            name: "constrained",
            tick: Duration::from_millis(60),
            slots: &[Slot::Audio],
            audio: AudioSettings {
                frame: Duration::from_millis(60),
                bitrate: 6_000,
                max_bandwidth_hz: 4_000,
                expected_loss_percent: 10,
                silence_gate_dbfs: Some(-60.0),
                gate_hangover: Duration::from_millis(240),
                jitter_depth: Duration::from_millis(120),
            },
            video: None,
        }
    }

    /// Audio as in [`Profile::normal`] plus 320×240 AV1 video at 12 fps:
    /// one cell every 10 ms, slots alternating audio and video.
    pub fn video() -> Self {
        let mut profile = Profile::normal();
        profile.name = "video";
        profile.tick = Duration::from_millis(10);
        profile.slots = &[Slot::Audio, Slot::Video];
        profile.video = Some(VideoSettings {
            width: 320,
            height: 240,
            fps: 12,
            bitrate: 100_000,
            keyframe_interval: 24,
            jitter_depth: Duration::from_millis(250),
            max_queued_bytes: 24_000,
        });
        profile
    }

    /// The profile named `name`.
    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "normal" => Some(Self::normal()),
            "constrained" => Some(Self::constrained()),
            "video" => Some(Self::video()),
            _ => None,
        }
    }

    /// Cells per second in each direction.
    pub fn cells_per_second(&self) -> f64 {
        1.0 / self.tick.as_secs_f64()
    }

    /// Bits per second on the wire in each direction, whatever is said:
    /// cells per second × [`CIRCUIT_CELL_LEN`] × 8.
    pub fn wire_bitrate(&self) -> u64 {
        let bits_per_cell = (CIRCUIT_CELL_LEN * 8) as u128;
        let nanos = self.tick.as_nanos().max(1);
        ((bits_per_cell * 1_000_000_000 + nanos / 2) / nanos) as u64
    }

    /// PCM samples in one audio frame (48 kHz mono).
    pub fn audio_frame_samples(&self) -> usize {
        (crate::audio::SAMPLE_RATE as u128 * self.audio.frame.as_nanos() / 1_000_000_000) as usize
    }

    /// Interval between two video frames, for video profiles.
    pub fn video_frame_interval(&self) -> Option<Duration> {
        self.video
            .as_ref()
            .map(|v| Duration::from_nanos(1_000_000_000 / u64::from(v.fps.max(1))))
    }
}

/// One fragment of an encoded video frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VideoFragment {
    /// Frame number (0 at the start of the call).
    pub frame: u32,
    /// When the frame was captured (sender's media clock).
    pub capture: Duration,
    /// This fragment's index.
    pub index: u16,
    /// Fragments of the frame.
    pub count: u16,
    /// Whether the frame is a keyframe.
    pub keyframe: bool,
    /// The fragment's bytes.
    pub data: Vec<u8>,
}

/// What one cell carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Nothing: padding.
    Cover,
    /// Opus packets: frame `seq`'s, then (if any) frame `seq − 1`'s again.
    Audio {
        /// Audio frame number (0 at the start of the call).
        seq: u32,
        /// When the frame was captured (sender's media clock).
        capture: Duration,
        /// The packets of frames `seq`, `seq − 1`, … (1 to
        /// [`AUDIO_PACKETS_PER_CELL`], non-empty).
        packets: Vec<Vec<u8>>,
    },
    /// An audio frame the sender's gate found silent.
    Silence {
        /// Audio frame number.
        seq: u32,
        /// When the frame was captured.
        capture: Duration,
    },
    /// A fragment of an encoded video frame.
    Video(VideoFragment),
    /// The peer lost video: send a keyframe.
    KeyframeRequest,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(Error::MalformedCell("truncated field"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn time(&mut self) -> Result<Duration> {
        Ok(Duration::from_micros(u64::from_be_bytes(self.array()?)))
    }
}

impl Payload {
    /// The plaintext of a cell carrying this payload.
    pub fn encode(&self) -> Result<Plaintext> {
        let mut out = Zeroizing::new([0u8; PLAINTEXT_LEN]);
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            out[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        match self {
            Payload::Cover => put(&[KIND_COVER]),
            Payload::KeyframeRequest => put(&[KIND_KEYFRAME_REQUEST]),
            Payload::Audio {
                seq,
                capture,
                packets,
            } => {
                let room = AUDIO_HEADER - 2 + packets.iter().map(|p| 2 + p.len()).sum::<usize>();
                if packets.is_empty()
                    || packets.len() > AUDIO_PACKETS_PER_CELL
                    || packets.iter().any(Vec::is_empty)
                    || room > PLAINTEXT_LEN
                {
                    return Err(Error::Opus(format!(
                        "{} packets of {room} bytes do not fit one cell",
                        packets.len()
                    )));
                }
                put(&[KIND_AUDIO]);
                put(&seq.to_be_bytes());
                put(&micros(*capture).to_be_bytes());
                put(&[packets.len() as u8]);
                for packet in packets {
                    put(&(packet.len() as u16).to_be_bytes());
                    put(packet);
                }
            }
            Payload::Silence { seq, capture } => {
                put(&[KIND_SILENCE]);
                put(&seq.to_be_bytes());
                put(&micros(*capture).to_be_bytes());
            }
            Payload::Video(f) => {
                if f.data.len() > VIDEO_FRAGMENT_LEN
                    || f.count == 0
                    || f.index >= f.count
                    || usize::from(f.count) > MAX_VIDEO_FRAGMENTS
                {
                    return Err(Error::Video("invalid fragment".into()));
                }
                put(&[KIND_VIDEO]);
                put(&f.frame.to_be_bytes());
                put(&micros(f.capture).to_be_bytes());
                put(&f.index.to_be_bytes());
                put(&f.count.to_be_bytes());
                put(&[if f.keyframe { FLAG_KEYFRAME } else { 0 }]);
                put(&(f.data.len() as u16).to_be_bytes());
                put(&f.data);
            }
        }
        Ok(out)
    }

    /// Parses an authenticated cell's plaintext; bounded by construction
    /// (every length is checked against the cell).
    pub fn decode(plaintext: &[u8; PLAINTEXT_LEN]) -> Result<Self> {
        let mut r = Reader { bytes: plaintext };
        match r.array::<1>()?[0] {
            KIND_COVER => Ok(Payload::Cover),
            KIND_KEYFRAME_REQUEST => Ok(Payload::KeyframeRequest),
            KIND_AUDIO => {
                let seq = r.u32()?;
                let capture = r.time()?;
                let count = usize::from(r.array::<1>()?[0]);
                if count == 0 || count > AUDIO_PACKETS_PER_CELL {
                    return Err(Error::MalformedCell("audio packet count out of range"));
                }
                let mut packets = Vec::with_capacity(count);
                for _ in 0..count {
                    let len = usize::from(r.u16()?);
                    if len == 0 {
                        return Err(Error::MalformedCell("empty audio packet"));
                    }
                    packets.push(r.take(len)?.to_vec());
                }
                Ok(Payload::Audio {
                    seq,
                    capture,
                    packets,
                })
            }
            KIND_SILENCE => Ok(Payload::Silence {
                seq: r.u32()?,
                capture: r.time()?,
            }),
            KIND_VIDEO => {
                let frame = r.u32()?;
                let capture = r.time()?;
                let index = r.u16()?;
                let count = r.u16()?;
                let flags = r.array::<1>()?[0];
                let len = usize::from(r.u16()?);
                if count == 0 || index >= count || usize::from(count) > MAX_VIDEO_FRAGMENTS {
                    return Err(Error::MalformedCell("video fragment index out of range"));
                }
                if len == 0 {
                    return Err(Error::MalformedCell("empty video fragment"));
                }
                let data = r.take(len)?.to_vec();
                Ok(Payload::Video(VideoFragment {
                    frame,
                    capture,
                    index,
                    count,
                    keyframe: flags & FLAG_KEYFRAME != 0,
                    data,
                }))
            }
            _ => Err(Error::MalformedCell("unknown cell kind")),
        }
    }

    /// Whether this cell carries no media (cover or gated silence): what
    /// the cover/real flag inside the encryption says.
    pub fn is_cover(&self) -> bool {
        matches!(
            self,
            Payload::Cover | Payload::Silence { .. } | Payload::KeyframeRequest
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wire_bitrates_of_the_profiles() {
        assert_eq!(Profile::normal().wire_bitrate(), 204_800);
        assert_eq!(Profile::constrained().wire_bitrate(), 68_267);
        assert_eq!(Profile::video().wire_bitrate(), 409_600);
        assert_eq!(Profile::normal().audio_frame_samples(), 960);
        assert_eq!(Profile::constrained().audio_frame_samples(), 2880);
        assert_eq!(PLAINTEXT_LEN, 419);
        assert_eq!(ONION_BUDGET, 64);
        for name in ["normal", "constrained", "video"] {
            let p = Profile::by_name(name).unwrap();
            assert_eq!(p.name, name);
            // One audio frame per audio slot at most: audio never queues up.
            let audio_slots_per_frame = p.audio.frame.as_secs_f64() / p.tick.as_secs_f64()
                * p.slots.iter().filter(|s| **s == Slot::Audio).count() as f64
                / p.slots.len() as f64;
            assert!(audio_slots_per_frame >= 1.0, "{name}");
        }
        // The video share of the cells carries more than the encoder's target.
        let v = Profile::video();
        let video_capacity = v.cells_per_second() / 2.0 * (VIDEO_FRAGMENT_LEN * 8) as f64;
        assert!(video_capacity > 1.3 * f64::from(v.video.unwrap().bitrate));
    }

    #[test]
    fn malformed_plaintexts_are_refused() {
        let mut p = [0u8; PLAINTEXT_LEN];
        p[0] = 9;
        assert!(matches!(
            Payload::decode(&p),
            Err(Error::MalformedCell("unknown cell kind"))
        ));
        p[0] = KIND_AUDIO;
        p[13] = 1;
        p[14..16].copy_from_slice(&(PLAINTEXT_LEN as u16).to_be_bytes());
        assert!(matches!(
            Payload::decode(&p),
            Err(Error::MalformedCell("truncated field"))
        ));
        let mut p = [0u8; PLAINTEXT_LEN];
        p[0] = KIND_VIDEO;
        p[15..17].copy_from_slice(&3u16.to_be_bytes()); // index 3
        p[17..19].copy_from_slice(&3u16.to_be_bytes()); // of 3
        assert!(Payload::decode(&p).is_err());
    }

    fn payload() -> impl Strategy<Value = Payload> {
        let time = (0u64..u64::MAX / 2).prop_map(Duration::from_micros);
        prop_oneof![
            Just(Payload::Cover),
            (
                any::<u32>(),
                time.clone(),
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..=190), 1..=2)
            )
                .prop_map(|(seq, capture, packets)| Payload::Audio {
                    seq,
                    capture,
                    packets
                }),
            (
                any::<u32>(),
                time.clone(),
                proptest::collection::vec(any::<u8>(), 1..=MAX_AUDIO_PACKET)
            )
                .prop_map(|(seq, capture, packet)| Payload::Audio {
                    seq,
                    capture,
                    packets: vec![packet]
                }),
            (any::<u32>(), time.clone())
                .prop_map(|(seq, capture)| Payload::Silence { seq, capture }),
            (
                any::<u32>(),
                time,
                1u16..=MAX_VIDEO_FRAGMENTS as u16,
                any::<bool>(),
                proptest::collection::vec(any::<u8>(), 1..=VIDEO_FRAGMENT_LEN)
            )
                .prop_flat_map(|(frame, capture, count, keyframe, data)| {
                    (0..count).prop_map(move |index| {
                        Payload::Video(VideoFragment {
                            frame,
                            capture,
                            index,
                            count,
                            keyframe,
                            data: data.clone(),
                        })
                    })
                }),
        ]
    }

    proptest! {
        #[test]
        fn payloads_round_trip(p in payload()) {
            let plaintext = p.encode().unwrap();
            prop_assert_eq!(Payload::decode(&plaintext).unwrap(), p);
        }

        #[test]
        fn decoding_arbitrary_plaintext_never_panics(bytes in proptest::collection::vec(any::<u8>(), PLAINTEXT_LEN)) {
            let mut p = [0u8; PLAINTEXT_LEN];
            p.copy_from_slice(&bytes);
            let _ = Payload::decode(&p);
        }
    }
}
