//! Files and test signals: WAV (48 kHz mono 16-bit, through `hound`),
//! YUV4MPEG2 (C420) read and write with a small bounded parser, and
//! deterministic generators (tone sweep, speech-like signal, moving video
//! pattern).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::path::Path;

use crate::audio::SAMPLE_RATE;
use crate::video::{I420Frame, MAX_DIMENSION, i420_len};
use crate::{Error, Result};

/// Longest WAV file read: one hour.
pub const MAX_WAV_SAMPLES: u32 = SAMPLE_RATE * 3600;
/// Longest Y4M header or frame header line.
pub const MAX_Y4M_LINE: usize = 1024;

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

fn wav_spec() -> hound::WavSpec {
    hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    }
}

/// Reads 48 kHz mono 16-bit PCM from a WAV stream.
pub fn read_wav<R: Read>(reader: R) -> Result<Vec<i16>> {
    let mut wav = hound::WavReader::new(reader).map_err(|e| Error::Wav(e.to_string()))?;
    let spec = wav.spec();
    if spec != wav_spec() {
        return Err(Error::Wav(format!(
            "{} Hz, {} channel(s), {}-bit {:?}: only 48000 Hz mono 16-bit integer PCM is supported",
            spec.sample_rate, spec.channels, spec.bits_per_sample, spec.sample_format
        )));
    }
    if wav.duration() > MAX_WAV_SAMPLES {
        return Err(Error::Wav(format!(
            "{} samples exceed the {MAX_WAV_SAMPLES}-sample (one hour) limit",
            wav.duration()
        )));
    }
    wav.samples::<i16>()
        .map(|s| s.map_err(|e| Error::Wav(e.to_string())))
        .collect()
}

/// Reads a WAV file (see [`read_wav`]).
pub fn read_wav_file(path: &Path) -> Result<Vec<i16>> {
    let file = File::open(path).map_err(io_error(format!("opening {}", path.display())))?;
    read_wav(BufReader::new(file))
}

/// Writes 48 kHz mono 16-bit PCM as WAV.
pub fn write_wav<W: Write + Seek>(writer: W, pcm: &[i16]) -> Result<()> {
    let mut wav =
        hound::WavWriter::new(writer, wav_spec()).map_err(|e| Error::Wav(e.to_string()))?;
    for &s in pcm {
        wav.write_sample(s).map_err(|e| Error::Wav(e.to_string()))?;
    }
    wav.finalize().map_err(|e| Error::Wav(e.to_string()))
}

/// Writes a WAV file (see [`write_wav`]).
pub fn write_wav_file(path: &Path, pcm: &[i16]) -> Result<()> {
    let file = File::create(path).map_err(io_error(format!("creating {}", path.display())))?;
    write_wav(BufWriter::new(file), pcm)
}

/// Reads one `\n`-terminated line of at most [`MAX_Y4M_LINE`] bytes;
/// `None` at a clean end of stream.
fn read_line<R: BufRead>(reader: &mut R) -> Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let read = reader
        .by_ref()
        .take(MAX_Y4M_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(io_error("reading Y4M"))?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(Error::Y4m(if line.len() > MAX_Y4M_LINE {
            format!("header line longer than {MAX_Y4M_LINE} bytes")
        } else {
            "stream ends inside a header line".into()
        }));
    }
    line.pop();
    Ok(Some(line))
}

fn parse_ratio(value: &str) -> Option<(u32, u32)> {
    let (a, b) = value.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// A YUV4MPEG2 stream of 8-bit 4:2:0 pictures.
pub struct Y4mReader<R> {
    reader: R,
    width: usize,
    height: usize,
    fps: (u32, u32),
}

impl<R: BufRead> Y4mReader<R> {
    /// Parses the stream header. Refuses sides that are odd or above
    /// [`MAX_DIMENSION`], chroma other than 4:2:0, interlacing.
    pub fn new(mut reader: R) -> Result<Self> {
        let line = read_line(&mut reader)?.ok_or_else(|| Error::Y4m("empty stream".into()))?;
        // ASCII only: the fields below are split after their first byte.
        let line = std::str::from_utf8(&line)
            .ok()
            .filter(|l| l.is_ascii())
            .ok_or_else(|| Error::Y4m("header is not ASCII".into()))?;
        let mut fields = line.split(' ');
        if fields.next() != Some("YUV4MPEG2") {
            return Err(Error::Y4m("missing YUV4MPEG2 signature".into()));
        }
        let (mut width, mut height, mut fps) = (None, None, (25, 1));
        for field in fields.filter(|f| !f.is_empty()) {
            let (tag, value) = field.split_at(1);
            match tag {
                "W" => width = value.parse::<usize>().ok(),
                "H" => height = value.parse::<usize>().ok(),
                "F" => {
                    fps = parse_ratio(value)
                        .filter(|&(n, d)| n > 0 && d > 0)
                        .ok_or_else(|| Error::Y4m(format!("bad frame rate {value:?}")))?;
                }
                "I" => {
                    if value != "p" && value != "?" {
                        return Err(Error::Y4m(format!(
                            "interlacing {value:?} is not supported (progressive only)"
                        )));
                    }
                }
                "C" => {
                    if !matches!(value, "420" | "420jpeg" | "420paldv" | "420mpeg2") {
                        return Err(Error::Y4m(format!(
                            "colour space {value:?} is not supported (8-bit 4:2:0 only)"
                        )));
                    }
                }
                "A" | "X" => {}
                _ => return Err(Error::Y4m(format!("unknown header field {field:?}"))),
            }
        }
        let (Some(width), Some(height)) = (width, height) else {
            return Err(Error::Y4m("header lacks a valid W or H".into()));
        };
        if width == 0 || height == 0 || width > MAX_DIMENSION || height > MAX_DIMENSION {
            return Err(Error::Y4m(format!(
                "{width}x{height}: each side must be 1 to {MAX_DIMENSION} pixels"
            )));
        }
        if !width.is_multiple_of(2) || !height.is_multiple_of(2) {
            return Err(Error::Y4m(format!(
                "{width}x{height}: odd sides are not supported"
            )));
        }
        Ok(Y4mReader {
            reader,
            width,
            height,
            fps,
        })
    }

    /// Picture width.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Picture height.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Frame rate as numerator and denominator.
    pub fn fps(&self) -> (u32, u32) {
        self.fps
    }

    /// The next picture; `None` at the end of the stream.
    pub fn next_frame(&mut self) -> Result<Option<I420Frame>> {
        let Some(line) = read_line(&mut self.reader)? else {
            return Ok(None);
        };
        if line != b"FRAME" && !line.starts_with(b"FRAME ") {
            return Err(Error::Y4m("expected a FRAME header".into()));
        }
        let mut data = vec![0u8; i420_len(self.width, self.height)];
        self.reader.read_exact(&mut data).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::Y4m("stream ends inside a frame".into())
            } else {
                Error::Io {
                    context: "reading Y4M".into(),
                    source: e,
                }
            }
        })?;
        I420Frame::new(self.width, self.height, data).map(Some)
    }

    /// Every remaining picture, refusing more than `max_frames`.
    pub fn read_all(&mut self, max_frames: usize) -> Result<Vec<I420Frame>> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next_frame()? {
            if frames.len() == max_frames {
                return Err(Error::Y4m(format!("more than {max_frames} frames")));
            }
            frames.push(frame);
        }
        Ok(frames)
    }
}

impl Y4mReader<BufReader<File>> {
    /// Opens a Y4M file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(io_error(format!("opening {}", path.display())))?;
        Self::new(BufReader::new(file))
    }
}

/// Writes a YUV4MPEG2 stream (C420jpeg, progressive, square pixels).
pub struct Y4mWriter<W> {
    writer: W,
    width: usize,
    height: usize,
}

impl<W: Write> Y4mWriter<W> {
    /// Writes the stream header.
    pub fn new(mut writer: W, width: usize, height: usize, fps: u32) -> Result<Self> {
        I420Frame::black(width, height)?;
        writeln!(
            writer,
            "YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg"
        )
        .map_err(io_error("writing Y4M"))?;
        Ok(Y4mWriter {
            writer,
            width,
            height,
        })
    }

    /// Writes one picture of the stream's size.
    pub fn write_frame(&mut self, frame: &I420Frame) -> Result<()> {
        if frame.width() != self.width || frame.height() != self.height {
            return Err(Error::WrongPictureSize {
                got_width: frame.width(),
                got_height: frame.height(),
                width: self.width,
                height: self.height,
            });
        }
        self.writer
            .write_all(b"FRAME\n")
            .and_then(|()| self.writer.write_all(frame.data()))
            .map_err(io_error("writing Y4M"))
    }

    /// Flushes and returns the writer.
    pub fn finish(mut self) -> Result<W> {
        self.writer.flush().map_err(io_error("writing Y4M"))?;
        Ok(self.writer)
    }
}

/// SplitMix64: a small deterministic generator for test signals.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn to_i16(x: f64) -> i16 {
    (x * 32767.0).round().clamp(-32768.0, 32767.0) as i16
}

/// A linear sine sweep from `f0` to `f1` Hz over `samples` samples at
/// 48 kHz, at `amplitude` (0 to 1) of full scale.
pub fn tone_sweep(samples: usize, f0: f64, f1: f64, amplitude: f64) -> Vec<i16> {
    let rate = f64::from(SAMPLE_RATE);
    let mut phase = 0.0f64;
    (0..samples)
        .map(|i| {
            let f = f0 + (f1 - f0) * i as f64 / samples.max(1) as f64;
            phase += std::f64::consts::TAU * f / rate;
            to_i16(amplitude * phase.sin())
        })
        .collect()
}

/// A speech-like signal of `samples` samples at 48 kHz: phrases of three
/// to six syllables (voiced harmonics of a wandering 100–220 Hz pitch,
/// shaped by two formant-like peaks, under a syllable envelope) separated
/// by pauses of digital silence. Deterministic in `seed`.
pub fn speech_like(samples: usize, seed: u64) -> Vec<i16> {
    let rate = f64::from(SAMPLE_RATE);
    let mut rng = SplitMix(seed);
    let mut out = Vec::with_capacity(samples);
    while out.len() < samples {
        let syllables = 3 + (rng.next() % 4) as usize;
        for _ in 0..syllables {
            let len = (rng.range(0.12, 0.28) * rate) as usize;
            let pitch0 = rng.range(100.0, 220.0);
            let glide = rng.range(-30.0, 30.0);
            let formants = [rng.range(300.0, 900.0), rng.range(900.0, 2500.0)];
            let loudness = rng.range(0.15, 0.35);
            let mut phase = 0.0f64;
            for i in 0..len {
                let t = i as f64 / len as f64;
                let pitch = pitch0 + glide * t;
                phase += std::f64::consts::TAU * pitch / rate;
                let mut x = 0.0;
                for k in 1..=20 {
                    let f = pitch * f64::from(k);
                    if f > 4000.0 {
                        break;
                    }
                    let weight: f64 = formants
                        .iter()
                        .map(|&fm| 1.0 / (1.0 + ((f - fm) / 150.0).powi(2)))
                        .sum::<f64>()
                        + 0.05;
                    x += weight * (phase * f64::from(k)).sin() / f64::from(k).sqrt();
                }
                let envelope = (std::f64::consts::PI * t).sin().powi(2);
                out.push(to_i16(loudness * envelope * x / 3.0));
            }
            // A short gap between syllables.
            let gap = (rng.range(0.02, 0.06) * rate) as usize;
            out.extend(std::iter::repeat_n(0, gap));
        }
        let pause = (rng.range(0.3, 0.8) * rate) as usize;
        out.extend(std::iter::repeat_n(0, pause));
    }
    out.truncate(samples);
    out
}

/// Picture `index` of a moving test pattern: vertical colour bars
/// scrolling left, a bright square bouncing across them, a luma ramp at
/// the bottom.
pub fn moving_pattern(width: usize, height: usize, index: u32) -> Result<I420Frame> {
    let mut frame = I420Frame::black(width, height)?.data().to_vec();
    const BARS: [(u8, u8, u8); 8] = [
        (235, 128, 128),
        (210, 16, 146),
        (170, 166, 16),
        (145, 54, 34),
        (106, 202, 222),
        (81, 90, 240),
        (41, 240, 110),
        (16, 128, 128),
    ];
    let shift = (index as usize * 4) % width;
    let bar_width = width.div_ceil(BARS.len());
    let square = height / 4;
    let travel_x = width - square;
    let travel_y = height - square;
    let bounce = |pos: usize, travel: usize| {
        let p = pos % (2 * travel.max(1));
        if p > travel { 2 * travel - p } else { p }
    };
    let sx = bounce(index as usize * 7, travel_x);
    let sy = bounce(index as usize * 5, travel_y);
    let (cw, ch) = (width / 2, height / 2);
    let (y_len, c_len) = (width * height, cw * ch);
    for y in 0..height {
        for x in 0..width {
            let bar = ((x + shift) % width) / bar_width;
            let (mut luma, u, v) = BARS[bar.min(BARS.len() - 1)];
            if y >= height * 7 / 8 {
                luma = (16 + 219 * x / width.max(1)) as u8;
            }
            if (sx..sx + square).contains(&x) && (sy..sy + square).contains(&y) {
                luma = 235;
            }
            frame[y * width + x] = luma;
            if y % 2 == 0 && x % 2 == 0 {
                let c = (y / 2) * cw + x / 2;
                frame[y_len + c] = u;
                frame[y_len + c_len + c] = v;
            }
        }
    }
    I420Frame::new(width, height, frame)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// Found by the `call_y4m` fuzz target: a header field starting with a
    /// character of more than one byte panicked the parser.
    #[test]
    fn a_non_ascii_header_is_an_error_not_a_panic() {
        let crash = hex::decode("595556344d5045473220cea90a").unwrap();
        assert!(matches!(Y4mReader::new(&crash[..]), Err(Error::Y4m(_))));
        let found = hex::decode(
            "595556344d50454732205732292920cea9205720573456344d20573220572057322055410a20205759003220550a22",
        )
        .unwrap();
        assert!(Y4mReader::new(&found[..]).is_err());
    }

    #[test]
    fn wav_round_trips_and_refuses_other_formats() {
        let pcm = tone_sweep(4800, 200.0, 2000.0, 0.5);
        let mut bytes = Cursor::new(Vec::new());
        write_wav(&mut bytes, &pcm).unwrap();
        assert_eq!(read_wav(Cursor::new(bytes.get_ref())).unwrap(), pcm);

        let mut stereo = Cursor::new(Vec::new());
        let spec = hound::WavSpec {
            channels: 2,
            ..wav_spec()
        };
        let mut w = hound::WavWriter::new(&mut stereo, spec).unwrap();
        w.write_sample(0i16).unwrap();
        w.write_sample(0i16).unwrap();
        w.finalize().unwrap();
        let err = read_wav(Cursor::new(stereo.get_ref())).unwrap_err();
        assert!(err.to_string().contains("48000 Hz mono 16-bit"), "{err}");
        assert!(read_wav(Cursor::new(b"RIFF junk".to_vec())).is_err());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        write_wav_file(&path, &pcm).unwrap();
        assert_eq!(read_wav_file(&path).unwrap(), pcm);
    }

    #[test]
    fn y4m_round_trips() {
        let frames: Vec<_> = (0..3).map(|i| moving_pattern(64, 48, i).unwrap()).collect();
        let mut w = Y4mWriter::new(Vec::new(), 64, 48, 12).unwrap();
        for f in &frames {
            w.write_frame(f).unwrap();
        }
        let bytes = w.finish().unwrap();
        let mut r = Y4mReader::new(Cursor::new(bytes)).unwrap();
        assert_eq!((r.width(), r.height(), r.fps()), (64, 48, (12, 1)));
        assert_eq!(r.read_all(10).unwrap(), frames);
        assert_ne!(frames[0], frames[1], "the pattern moves");
    }

    #[test]
    fn y4m_refuses_bad_and_oversize_streams() {
        let cases: [(&[u8], &str); 9] = [
            (b"", "empty"),
            (b"YUV4MPEG3 W2 H2\n", "signature"),
            (b"YUV4MPEG2 W99999 H2\n", "1 to 1920"),
            (b"YUV4MPEG2 W3 H2\n", "odd"),
            (b"YUV4MPEG2 W2 H2 C444\n", "4:2:0 only"),
            (b"YUV4MPEG2 W2 H2 It\n", "progressive"),
            (b"YUV4MPEG2 H2\n", "W or H"),
            (b"YUV4MPEG2 W2 H2\nFRAME\n\x10\x10", "inside a frame"),
            (b"YUV4MPEG2 W2 H2\nFRAMX\n", "FRAME header"),
        ];
        for (bytes, why) in cases {
            let err = Y4mReader::new(Cursor::new(bytes))
                .and_then(|mut r| r.read_all(10))
                .unwrap_err();
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
        let long = [b"YUV4MPEG2 ".as_slice(), &[b'X'; 2000], b"\n"].concat();
        let err = Y4mReader::new(Cursor::new(long)).err().unwrap();
        assert!(err.to_string().contains("longer than"), "{err}");
        let mut many = b"YUV4MPEG2 W2 H2\n".to_vec();
        for _ in 0..3 {
            many.extend_from_slice(b"FRAME\n\x10\x10\x10\x10\x80\x80");
        }
        let err = Y4mReader::new(Cursor::new(many))
            .unwrap()
            .read_all(2)
            .unwrap_err();
        assert!(err.to_string().contains("more than 2 frames"), "{err}");
    }

    #[test]
    fn generators_are_deterministic_and_speech_has_pauses() {
        assert_eq!(speech_like(48_000, 1), speech_like(48_000, 1));
        assert_ne!(speech_like(48_000, 1), speech_like(48_000, 2));
        let s = speech_like(5 * 48_000, 1);
        let frames: Vec<f32> = s.chunks_exact(960).map(crate::audio::level_dbfs).collect();
        let silent = frames.iter().filter(|l| l.is_infinite()).count();
        let loud = frames.iter().filter(|l| **l > -30.0).count();
        assert!(silent > 20 && loud > 30, "silent {silent}, loud {loud}");
    }
}
