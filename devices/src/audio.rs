//! Microphone and speaker through cpal (ALSA on Linux).
//!
//! Both run at the call's 48 kHz. A device that cannot is refused with the
//! rates it offers (on Linux the `default` or `plughw:` devices convert).
//! Any channel count and the common sample formats are accepted: capture
//! is mixed down to mono, playback copies mono to every channel.

use std::sync::Arc;

use bastet_call::SAMPLE_RATE;
use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, Sample, SampleFormat, SizedSample, StreamConfig};

use crate::{AudioCapture, AudioPlayback, AudioRing, DeviceStats, Error, Result};

/// The capture ring holds 200 ms; each frame read keeps at most 3 frames
/// queued behind it, so a fast microphone adds at most 60 ms.
const CAPTURE_CAPACITY: usize = SAMPLE_RATE as usize / 5;
/// The playback ring holds 200 ms; past 100 ms queued (the call's clock
/// runs ahead of the sound card's), the oldest is dropped down to 40 ms.
const PLAYBACK_CAPACITY: usize = SAMPLE_RATE as usize / 5;
const PLAYBACK_HIGH: usize = SAMPLE_RATE as usize / 10;
const PLAYBACK_LOW: usize = SAMPLE_RATE as usize / 25;

#[derive(Clone, Copy)]
enum Direction {
    Input,
    Output,
}

impl Direction {
    fn what(self) -> &'static str {
        match self {
            Direction::Input => "microphone",
            Direction::Output => "speaker",
        }
    }
}

fn device_id(device: &cpal::Device) -> String {
    device
        .id()
        .map_or_else(|_| "(unnamed)".to_string(), |id| id.to_string())
}

fn devices(host: &cpal::Host, direction: Direction) -> Vec<cpal::Device> {
    let listed = match direction {
        Direction::Input => host.input_devices().map(|d| d.collect::<Vec<_>>()),
        Direction::Output => host.output_devices().map(|d| d.collect::<Vec<_>>()),
    };
    listed.unwrap_or_default()
}

/// Finds the device: by id (`alsa:default`, or just `default`), or the
/// host's default.
fn find(direction: Direction, name: Option<&str>) -> Result<cpal::Device> {
    let host = cpal::default_host();
    let Some(name) = name else {
        let default = match direction {
            Direction::Input => host.default_input_device(),
            Direction::Output => host.default_output_device(),
        };
        return default.ok_or_else(|| Error::NoDevice {
            what: direction.what(),
            name: "(the default)".into(),
            available: devices(&host, direction).iter().map(device_id).collect(),
        });
    };
    let full = if name.contains(':') && name.parse::<cpal::DeviceId>().is_ok() {
        name.to_string()
    } else {
        format!("{}:{name}", host.id().name().to_lowercase())
    };
    full.parse::<cpal::DeviceId>()
        .ok()
        .and_then(|id| host.device_by_id(&id))
        .ok_or_else(|| Error::NoDevice {
            what: direction.what(),
            name: name.to_string(),
            available: devices(&host, direction).iter().map(device_id).collect(),
        })
}

/// The stream configuration: 48 kHz, the fewest channels, the first of
/// i16, f32, i32, u16 the device takes.
fn choose_config(
    device: &cpal::Device,
    direction: Direction,
) -> Result<(StreamConfig, SampleFormat)> {
    let name = device_id(device);
    let ranges: Vec<_> = match direction {
        Direction::Input => device.supported_input_configs().map(|r| r.collect()),
        Direction::Output => device.supported_output_configs().map(|r| r.collect()),
    }
    .map_err(|e| Error::Device {
        device: name.clone(),
        why: format!("listing its configurations: {e}"),
    })?;
    const FORMATS: [SampleFormat; 4] = [
        SampleFormat::I16,
        SampleFormat::F32,
        SampleFormat::I32,
        SampleFormat::U16,
    ];
    let best = ranges
        .iter()
        .filter(|r| r.min_sample_rate() <= SAMPLE_RATE && SAMPLE_RATE <= r.max_sample_rate())
        .filter_map(|r| {
            let rank = FORMATS.iter().position(|f| *f == r.sample_format())?;
            Some((r.channels(), rank, r))
        })
        .min_by_key(|(channels, rank, _)| (*channels, *rank));
    let Some((channels, _, range)) = best else {
        let mut rates: Vec<String> = ranges
            .iter()
            .map(|r| {
                format!(
                    "{}–{} Hz {:?}",
                    r.min_sample_rate(),
                    r.max_sample_rate(),
                    r.sample_format()
                )
            })
            .collect();
        rates.dedup();
        return Err(Error::Unsupported {
            device: name,
            why: format!(
                "no 48 kHz 16-bit, 32-bit or float mode (it offers {}); choose a converting \
                 device such as `default` or `plughw:CARD,DEV`",
                if rates.is_empty() {
                    "nothing".into()
                } else {
                    rates.join(", ")
                }
            ),
        });
    };
    Ok((
        StreamConfig {
            channels,
            sample_rate: SAMPLE_RATE,
            buffer_size: cpal::BufferSize::Default,
        },
        range.sample_format(),
    ))
}

/// A live microphone: cpal's callback fills a ring the call reads a frame
/// at a time.
pub struct Microphone {
    name: String,
    ring: Arc<AudioRing>,
    _stream: cpal::Stream,
}

impl Microphone {
    pub fn open(name: Option<&str>) -> Result<Self> {
        let ring = Arc::new(AudioRing::new(CAPTURE_CAPACITY));
        let (name, stream) = open_stream(Direction::Input, name, &ring)?;
        Ok(Microphone {
            name,
            ring,
            _stream: stream,
        })
    }
}

/// Opens the device, starts its stream on `ring` and returns its id.
fn open_stream(
    direction: Direction,
    name: Option<&str>,
    ring: &Arc<AudioRing>,
) -> Result<(String, cpal::Stream)> {
    let device = find(direction, name)?;
    let id = device_id(&device);
    let (config, format) = choose_config(&device, direction)?;
    let (d, c, r) = (&device, &config, ring.clone());
    let stream = match (direction, format) {
        (Direction::Input, SampleFormat::I16) => capture::<i16>(d, c, r),
        (Direction::Input, SampleFormat::F32) => capture::<f32>(d, c, r),
        (Direction::Input, SampleFormat::I32) => capture::<i32>(d, c, r),
        (Direction::Input, _) => capture::<u16>(d, c, r),
        (Direction::Output, SampleFormat::I16) => playback::<i16>(d, c, r),
        (Direction::Output, SampleFormat::F32) => playback::<f32>(d, c, r),
        (Direction::Output, SampleFormat::I32) => playback::<i32>(d, c, r),
        (Direction::Output, _) => playback::<u16>(d, c, r),
    }
    .map_err(|why| Error::Device {
        device: id.clone(),
        why: format!("opening it as a {}: {why}", direction.what()),
    })?;
    stream.play().map_err(|e| Error::Device {
        device: id.clone(),
        why: format!("starting the {}: {e}", direction.what()),
    })?;
    tracing::info!(device = %id, channels = config.channels, ?format, "{} open", direction.what());
    Ok((id, stream))
}

fn capture<T>(
    device: &cpal::Device,
    config: &StreamConfig,
    ring: Arc<AudioRing>,
) -> std::result::Result<cpal::Stream, cpal::Error>
where
    T: SizedSample + Send + 'static,
    i16: FromSample<T>,
{
    let channels = usize::from(config.channels.max(1));
    let errors = ring.clone();
    device.build_input_stream(
        *config,
        move |data: &[T], _| {
            // Mixed down to mono: the mean of the channels.
            ring.push(data.chunks_exact(channels).map(|frame| {
                let sum: i32 = frame.iter().map(|s| i32::from(i16::from_sample(*s))).sum();
                (sum / channels as i32) as i16
            }));
        },
        move |e| {
            errors.count_error();
            tracing::warn!(error = %e, "microphone");
        },
        None,
    )
}

impl AudioCapture for Microphone {
    fn read_frame(&mut self, frame: &mut [i16]) {
        self.ring.trim_to(frame.len() * 3);
        self.ring.pop_into(frame);
    }

    fn stats(&self) -> DeviceStats {
        self.ring.stats()
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// A live speaker: the call queues frames into a ring cpal's callback
/// plays from, silence where there is nothing.
pub struct Speaker {
    name: String,
    ring: Arc<AudioRing>,
    _stream: cpal::Stream,
}

impl Speaker {
    pub fn open(name: Option<&str>) -> Result<Self> {
        let ring = Arc::new(AudioRing::new(PLAYBACK_CAPACITY));
        let (name, stream) = open_stream(Direction::Output, name, &ring)?;
        Ok(Speaker {
            name,
            ring,
            _stream: stream,
        })
    }
}

fn playback<T>(
    device: &cpal::Device,
    config: &StreamConfig,
    ring: Arc<AudioRing>,
) -> std::result::Result<cpal::Stream, cpal::Error>
where
    T: SizedSample + FromSample<i16> + Send + 'static,
{
    let channels = usize::from(config.channels.max(1));
    let errors = ring.clone();
    let mut mono = Vec::new();
    device.build_output_stream(
        *config,
        move |data: &mut [T], _| {
            let frames = data.len() / channels;
            mono.resize(frames, 0i16);
            ring.pop_into(&mut mono);
            for (out, s) in data.chunks_exact_mut(channels).zip(&mono) {
                out.fill(T::from_sample(*s));
            }
        },
        move |e| {
            errors.count_error();
            tracing::warn!(error = %e, "speaker");
        },
        None,
    )
}

impl AudioPlayback for Speaker {
    fn play(&mut self, pcm: &[i16]) {
        if self.ring.len() > PLAYBACK_HIGH {
            self.ring.trim_to(PLAYBACK_LOW);
        }
        self.ring.push(pcm.iter().copied());
    }

    fn stats(&self) -> DeviceStats {
        self.ring.stats()
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// One line per microphone and speaker.
pub fn list() -> Vec<String> {
    let host = cpal::default_host();
    let mut lines = Vec::new();
    for (direction, label) in [
        (Direction::Input, "microphone"),
        (Direction::Output, "speaker"),
    ] {
        for device in devices(&host, direction) {
            let description = device
                .description()
                .map(|d| d.name().lines().next().unwrap_or_default().to_string())
                .unwrap_or_default();
            lines.push(format!("{label} {}  {description}", device_id(&device)));
        }
    }
    if lines.is_empty() {
        lines.push(format!(
            "no microphone or speaker found ({})",
            host.id().name()
        ));
    }
    lines
}
