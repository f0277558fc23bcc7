//! Video: I420 pictures, AV1 encoding (rav1e) and decoding (dav1d, the
//! system libdav1d). Why AV1 and not VP8: see the crate README.

use std::collections::VecDeque;

use rav1e::prelude::{
    ChromaSampling, Config, Context, EncoderConfig, EncoderStatus, FrameParameters, FrameType,
    FrameTypeOverride, Rational, SpeedSettings,
};

use crate::cell::{MAX_VIDEO_FRAME, VideoSettings};
use crate::{Error, Result};

/// Largest picture side this crate handles (bounds every buffer a peer or
/// a file can make us allocate).
pub const MAX_DIMENSION: usize = 1920;

/// rav1e's fastest preset: a real-time call cannot wait for more.
const SPEED_PRESET: u8 = 10;

/// An 8-bit planar YUV 4:2:0 picture: the Y plane, then U, then V, each
/// tightly packed (no stride padding).
#[derive(Clone, PartialEq, Eq)]
pub struct I420Frame {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for I420Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "I420Frame({}x{})", self.width, self.height)
    }
}

/// Bytes of an I420 picture of `width` × `height` (both even).
pub fn i420_len(width: usize, height: usize) -> usize {
    width * height + 2 * (width / 2) * (height / 2)
}

fn check_dimensions(width: usize, height: usize) -> Result<()> {
    if width == 0 || height == 0 || !width.is_multiple_of(2) || !height.is_multiple_of(2) {
        return Err(Error::Video(format!(
            "{width}x{height}: sides must be even and non-zero"
        )));
    }
    if width > MAX_DIMENSION || height > MAX_DIMENSION {
        return Err(Error::Video(format!(
            "{width}x{height} exceeds the {MAX_DIMENSION}-pixel limit"
        )));
    }
    Ok(())
}

impl I420Frame {
    /// A picture from its planes, which must be exactly
    /// [`i420_len`]`(width, height)` bytes.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        check_dimensions(width, height)?;
        if data.len() != i420_len(width, height) {
            return Err(Error::Video(format!(
                "{} bytes for a {width}x{height} I420 picture, expected {}",
                data.len(),
                i420_len(width, height)
            )));
        }
        Ok(I420Frame {
            width,
            height,
            data,
        })
    }

    /// A black picture.
    pub fn black(width: usize, height: usize) -> Result<Self> {
        check_dimensions(width, height)?;
        let mut data = vec![16u8; width * height];
        data.resize(i420_len(width, height), 128);
        Ok(I420Frame {
            width,
            height,
            data,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// All three planes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The luma plane.
    pub fn y(&self) -> &[u8] {
        &self.data[..self.width * self.height]
    }

    /// The two chroma planes (U, V).
    pub fn uv(&self) -> (&[u8], &[u8]) {
        let y = self.width * self.height;
        let c = (self.width / 2) * (self.height / 2);
        (&self.data[y..y + c], &self.data[y + c..])
    }

    /// Luma PSNR against `other` (same size), in dB; infinite if identical.
    pub fn psnr_y(&self, other: &I420Frame) -> f64 {
        let mse = self
            .y()
            .iter()
            .zip(other.y())
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
            .sum::<f64>()
            / self.y().len().max(1) as f64;
        if mse == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (255.0 * 255.0 / mse).log10()
        }
    }
}

/// One encoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedVideo {
    /// Its number: the n-th picture given to the encoder.
    pub frame: u32,
    /// Whether it is a keyframe (decodable on its own).
    pub keyframe: bool,
    /// The AV1 temporal unit.
    pub data: Vec<u8>,
}

/// AV1 encoder tuned for calls: low latency (no frame reordering, one
/// frame of lookahead), fastest preset, a keyframe at least every
/// `keyframe_interval` frames, on the caller's thread (no thread pool).
pub struct VideoEncoder {
    context: Context<u8>,
    width: usize,
    height: usize,
    frames_in: u32,
}

impl VideoEncoder {
    /// An encoder as `settings` say.
    pub fn new(settings: &VideoSettings) -> Result<Self> {
        check_dimensions(settings.width, settings.height)?;
        let mut enc = EncoderConfig::with_speed_preset(SPEED_PRESET);
        enc.width = settings.width;
        enc.height = settings.height;
        enc.time_base = Rational::new(1, u64::from(settings.fps.max(1)));
        enc.bit_depth = 8;
        enc.chroma_sampling = ChromaSampling::Cs420;
        enc.low_latency = true;
        enc.bitrate = i32::try_from(settings.bitrate)
            .map_err(|_| Error::Video("bitrate out of range".into()))?;
        enc.min_key_frame_interval = 1;
        enc.max_key_frame_interval = u64::from(settings.keyframe_interval.max(1));
        enc.speed_settings = SpeedSettings::from_preset(SPEED_PRESET);
        enc.speed_settings.rdo_lookahead_frames = 1;
        let context = Config::new()
            .with_encoder_config(enc)
            .new_context()
            .map_err(|e| Error::Video(format!("encoder configuration: {e}")))?;
        Ok(VideoEncoder {
            context,
            width: settings.width,
            height: settings.height,
            frames_in: 0,
        })
    }

    /// Gives the encoder one picture; returns the frames it finished
    /// (rav1e holds a couple of pictures for its lookahead). With
    /// `force_keyframe` this picture becomes a keyframe.
    pub fn encode(
        &mut self,
        picture: &I420Frame,
        force_keyframe: bool,
    ) -> Result<Vec<EncodedVideo>> {
        if picture.width != self.width || picture.height != self.height {
            return Err(Error::WrongPictureSize {
                got_width: picture.width,
                got_height: picture.height,
                width: self.width,
                height: self.height,
            });
        }
        let mut frame = self.context.new_frame();
        let (u, v) = picture.uv();
        frame.planes[0].copy_from_raw_u8(picture.y(), self.width, 1);
        frame.planes[1].copy_from_raw_u8(u, self.width / 2, 1);
        frame.planes[2].copy_from_raw_u8(v, self.width / 2, 1);
        let params = FrameParameters {
            frame_type_override: if force_keyframe {
                FrameTypeOverride::Key
            } else {
                FrameTypeOverride::No
            },
            ..Default::default()
        };
        self.context
            .send_frame((frame, params))
            .map_err(|e| Error::Video(format!("encoder refused a picture: {e}")))?;
        self.frames_in = self.frames_in.saturating_add(1);
        self.drain()
    }

    /// Flushes the pictures the encoder still holds (at hang-up).
    pub fn finish(&mut self) -> Result<Vec<EncodedVideo>> {
        self.context.flush();
        self.drain()
    }

    fn drain(&mut self) -> Result<Vec<EncodedVideo>> {
        let mut out = Vec::new();
        loop {
            match self.context.receive_packet() {
                Ok(packet) => {
                    if packet.data.len() > MAX_VIDEO_FRAME {
                        return Err(Error::VideoFrameTooLarge {
                            len: packet.data.len(),
                            max: MAX_VIDEO_FRAME,
                        });
                    }
                    out.push(EncodedVideo {
                        frame: u32::try_from(packet.input_frameno)
                            .map_err(|_| Error::Video("frame number overflow".into()))?,
                        keyframe: packet.frame_type == FrameType::KEY,
                        data: packet.data,
                    });
                }
                Err(EncoderStatus::Encoded) => {}
                Err(EncoderStatus::NeedMoreData | EncoderStatus::LimitReached) => break,
                Err(e) => return Err(Error::Video(format!("encoder: {e}"))),
            }
        }
        Ok(out)
    }
}

/// AV1 decoder (libdav1d): single-threaded, no frame delay, pictures
/// larger than the profile's refused.
pub struct VideoDecoder {
    decoder: dav1d::Decoder,
    width: usize,
    height: usize,
}

fn dav1d_error(what: &str, e: dav1d::Error) -> Error {
    Error::Video(format!("decoder: {what}: {e}"))
}

impl VideoDecoder {
    /// A decoder for pictures as `settings` describe.
    pub fn new(settings: &VideoSettings) -> Result<Self> {
        check_dimensions(settings.width, settings.height)?;
        let mut s = dav1d::Settings::new();
        s.set_n_threads(1);
        s.set_max_frame_delay(1);
        s.set_frame_size_limit(u32::try_from(settings.width * settings.height).unwrap_or(u32::MAX));
        let decoder = dav1d::Decoder::with_settings(&s).map_err(|e| dav1d_error("open", e))?;
        Ok(VideoDecoder {
            decoder,
            width: settings.width,
            height: settings.height,
        })
    }

    /// Decodes one temporal unit; `None` if it shows no picture.
    pub fn decode(&mut self, data: &[u8]) -> Result<Option<I420Frame>> {
        let mut pictures = VecDeque::new();
        let mut sent = self.decoder.send_data(data.to_vec(), None, None, None);
        loop {
            match sent {
                Ok(()) => break,
                Err(dav1d::Error::Again) => {
                    self.collect(&mut pictures)?;
                    sent = self.decoder.send_pending_data();
                    if matches!(sent, Err(dav1d::Error::Again)) && pictures.is_empty() {
                        // Neither side can make progress: a broken stream.
                        self.decoder.flush();
                        return Err(Error::Video("decoder stalled".into()));
                    }
                }
                Err(e) => return Err(dav1d_error("bitstream", e)),
            }
        }
        self.collect(&mut pictures)?;
        Ok(pictures.pop_back())
    }

    fn collect(&mut self, out: &mut VecDeque<I420Frame>) -> Result<()> {
        loop {
            match self.decoder.get_picture() {
                Ok(picture) => out.push_back(self.convert(&picture)?),
                Err(dav1d::Error::Again) => return Ok(()),
                Err(e) => return Err(dav1d_error("picture", e)),
            }
        }
    }

    fn convert(&self, picture: &dav1d::Picture) -> Result<I420Frame> {
        use dav1d::PlanarImageComponent as C;
        let (width, height) = (picture.width() as usize, picture.height() as usize);
        if width != self.width || height != self.height {
            return Err(Error::WrongPictureSize {
                got_width: width,
                got_height: height,
                width: self.width,
                height: self.height,
            });
        }
        if picture.pixel_layout() != dav1d::PixelLayout::I420 || picture.bit_depth() != 8 {
            return Err(Error::Video("decoded picture is not 8-bit 4:2:0".into()));
        }
        let mut data = Vec::with_capacity(i420_len(width, height));
        for (component, w, h) in [
            (C::Y, width, height),
            (C::U, width / 2, height / 2),
            (C::V, width / 2, height / 2),
        ] {
            let stride = picture.stride(component) as usize;
            let plane = picture.plane(component);
            for row in 0..h {
                let start = row * stride;
                let line = plane
                    .get(start..start + w)
                    .ok_or_else(|| Error::Video("decoded plane shorter than its size".into()))?;
                data.extend_from_slice(line);
            }
        }
        I420Frame::new(width, height, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::Profile;
    use crate::io::moving_pattern;

    /// The video profile's settings at a small size: rav1e in this
    /// workspace's test profile (debug assertions on) takes seconds per
    /// 320x240 picture. `examples/codec_cost.rs` measures the real size.
    pub(crate) fn small_settings() -> VideoSettings {
        let mut settings = Profile::video().video.unwrap();
        settings.width = 96;
        settings.height = 64;
        settings
    }

    #[test]
    fn av1_round_trip_resembles_the_input() {
        let settings = small_settings();
        let mut enc = VideoEncoder::new(&settings).unwrap();
        let mut dec = VideoDecoder::new(&settings).unwrap();
        let pictures: Vec<I420Frame> = (0..12)
            .map(|i| moving_pattern(96, 64, i).unwrap())
            .collect();
        let mut encoded = Vec::new();
        for (i, p) in pictures.iter().enumerate() {
            encoded.extend(enc.encode(p, i == 0).unwrap());
        }
        encoded.extend(enc.finish().unwrap());
        assert_eq!(encoded.len(), pictures.len());
        assert!(encoded[0].keyframe);
        for (i, e) in encoded.iter().enumerate() {
            assert_eq!(e.frame as usize, i);
            let decoded = dec.decode(&e.data).unwrap().unwrap();
            let psnr = decoded.psnr_y(&pictures[i]);
            assert!(psnr > 25.0, "frame {i}: PSNR {psnr:.1} dB");
        }
        assert!(dec.decode(b"not av1 at all").is_err() || dec.decode(b"x").is_err());
    }

    #[test]
    fn pictures_of_the_wrong_size_are_refused() {
        let settings = small_settings();
        let mut enc = VideoEncoder::new(&settings).unwrap();
        let small = I420Frame::black(160, 120).unwrap();
        assert!(matches!(
            enc.encode(&small, false),
            Err(Error::WrongPictureSize { .. })
        ));
        assert!(I420Frame::new(3, 2, vec![0; 9]).is_err());
        assert!(I420Frame::new(4000, 2, vec![0; i420_len(4000, 2)]).is_err());
        assert!(I420Frame::new(4, 2, vec![0; 5]).is_err());
    }
}
