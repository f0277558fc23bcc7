//! A camera through V4L2 (Linux): memory-mapped capture on a thread of its
//! own, YUYV or MJPEG, each picture converted to the call's I420 size and
//! left in a one-picture slot the call takes from at its frame rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bastet_call::I420Frame;
use v4l::FourCC;
use v4l::buffer::Type;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;

use crate::picture::{rgb_to_i420, yuyv_to_i420};
use crate::{DeviceStats, Error, LatestPicture, Result, VideoCapture};

const YUYV: &[u8; 4] = b"YUYV";
const MJPG: &[u8; 4] = b"MJPG";
/// The largest picture a camera may hand over (bytes): 4K YUYV.
const MAX_PICTURE_BYTES: usize = 3840 * 2160 * 2;
/// How long the capture thread waits for a picture before it looks
/// whether the call has ended.
const POLL_MS: i32 = 500;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Yuyv,
    Mjpeg,
}

/// A live camera.
pub struct Camera {
    name: String,
    slot: Arc<LatestPicture>,
    stop: Arc<AtomicBool>,
}

fn fourcc_text(fourcc: FourCC) -> String {
    fourcc
        .str()
        .map_or_else(|_| format!("{:?}", fourcc.repr), str::to_string)
}

impl Camera {
    pub fn open(path: &str, width: usize, height: usize, fps: u32) -> Result<Self> {
        let device = v4l::Device::with_path(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NoDevice {
                    what: "camera",
                    name: path.to_string(),
                    available: cameras(),
                }
            } else {
                Error::Device {
                    device: path.to_string(),
                    why: format!("opening it: {e}"),
                }
            }
        })?;
        let failed = |what: &str, e: std::io::Error| Error::Device {
            device: path.to_string(),
            why: format!("{what}: {e}"),
        };
        let (w, h) = (
            u32::try_from(width).unwrap_or(u32::MAX),
            u32::try_from(height).unwrap_or(u32::MAX),
        );
        // YUYV at the call's size first (no decoding), MJPEG otherwise; the
        // driver answers with the nearest it has.
        let mut format = None;
        for fourcc in [YUYV, MJPG] {
            let got = device
                .set_format(&v4l::Format::new(w, h, FourCC::new(fourcc)))
                .map_err(|e| failed("setting the picture format", e))?;
            if got.fourcc.repr == *fourcc {
                format = Some(got);
                break;
            }
        }
        let Some(format) = format else {
            let offered = device
                .enum_formats()
                .map(|formats| {
                    formats
                        .iter()
                        .map(|f| fourcc_text(f.fourcc))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|e| format!("unknown: {e}"));
            return Err(Error::Unsupported {
                device: path.to_string(),
                why: format!("it offers neither YUYV nor MJPEG pictures (it offers {offered})"),
            });
        };
        let encoding = if format.fourcc.repr == *YUYV {
            Encoding::Yuyv
        } else {
            Encoding::Mjpeg
        };
        if let Err(e) = device.set_params(&v4l::video::capture::Parameters::with_fps(fps)) {
            tracing::warn!(camera = path, error = %e, fps, "the camera kept its own frame rate");
        }
        let source = (
            format.width as usize,
            format.height as usize,
            format.stride as usize,
        );
        tracing::info!(
            camera = path,
            width = source.0,
            height = source.1,
            encoding = ?encoding,
            "camera open"
        );
        let slot = Arc::new(LatestPicture::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = CaptureThread {
            device,
            encoding,
            source,
            target: (width, height),
            slot: slot.clone(),
            stop: stop.clone(),
            name: path.to_string(),
        };
        std::thread::Builder::new()
            .name("camera".into())
            .spawn(move || thread.run(&ready_tx))
            .map_err(|e| failed("starting the capture thread", e))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(failed("starting capture", e)),
            Err(_) => {
                return Err(Error::Device {
                    device: path.to_string(),
                    why: "the capture thread ended before it started".into(),
                });
            }
        }
        Ok(Camera {
            name: path.to_string(),
            slot,
            stop,
        })
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl VideoCapture for Camera {
    fn take_picture(&mut self) -> Option<I420Frame> {
        self.slot.take()
    }

    fn stats(&self) -> DeviceStats {
        self.slot.stats()
    }

    fn name(&self) -> &str {
        &self.name
    }
}

struct CaptureThread {
    device: v4l::Device,
    encoding: Encoding,
    source: (usize, usize, usize),
    target: (usize, usize),
    slot: Arc<LatestPicture>,
    stop: Arc<AtomicBool>,
    name: String,
}

impl CaptureThread {
    fn run(self, ready: &std::sync::mpsc::Sender<std::io::Result<()>>) {
        let mut stream =
            match v4l::io::mmap::Stream::with_buffers(&self.device, Type::VideoCapture, 4) {
                Ok(stream) => stream,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
        let _ = ready.send(Ok(()));
        let handle = stream.handle();
        let mut started = false;
        while !self.stop.load(Ordering::Relaxed) {
            // The stream starts on the first `next`, which blocks until the
            // first picture; after that, wait here with a timeout so that
            // the end of the call is seen (the v4l stream's own timeout
            // leaves it unusable after it fires).
            if started {
                match handle.poll(libc_pollin(), POLL_MS) {
                    Ok(0) => continue,
                    Ok(_) => {}
                    Err(e) => {
                        self.slot.count_error();
                        tracing::warn!(camera = %self.name, error = %e, "camera stopped");
                        return;
                    }
                }
            }
            started = true;
            let picture = match stream.next() {
                Ok((bytes, meta)) => {
                    let used = (meta.bytesused as usize).min(bytes.len());
                    self.convert(&bytes[..used])
                }
                Err(e) => {
                    self.slot.count_error();
                    tracing::warn!(camera = %self.name, error = %e, "camera stopped");
                    return;
                }
            };
            match picture {
                Ok(picture) => self.slot.put(picture),
                Err(e) => {
                    self.slot.count_error();
                    tracing::debug!(camera = %self.name, error = %e, "a camera picture was unreadable");
                }
            }
        }
    }

    fn convert(&self, bytes: &[u8]) -> Result<I420Frame> {
        let (dst_w, dst_h) = self.target;
        if bytes.len() > MAX_PICTURE_BYTES {
            return Err(Error::Picture(format!(
                "{} bytes exceeds the {MAX_PICTURE_BYTES}-byte limit",
                bytes.len()
            )));
        }
        match self.encoding {
            Encoding::Yuyv => yuyv_to_i420(bytes, self.source, dst_w, dst_h),
            Encoding::Mjpeg => mjpeg_to_i420(bytes, dst_w, dst_h),
        }
    }
}

/// `POLLIN` for `Handle::poll`, without a `libc` dependency of our own.
const fn libc_pollin() -> i16 {
    0x001
}

/// An MJPEG picture (a JPEG) to I420 of `dst_w` × `dst_h`; decoding is
/// bounded to a 4K picture's memory.
pub fn mjpeg_to_i420(bytes: &[u8], dst_w: usize, dst_h: usize) -> Result<I420Frame> {
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.set_max_decoding_buffer_size(3840 * 2160 * 3);
    let pixels = decoder
        .decode()
        .map_err(|e| Error::Picture(format!("MJPEG: {e}")))?;
    let info = decoder
        .info()
        .ok_or_else(|| Error::Picture("MJPEG: no picture header".into()))?;
    let bytes_per_pixel = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => 1,
        jpeg_decoder::PixelFormat::RGB24 => 3,
        other => {
            return Err(Error::Picture(format!(
                "MJPEG: {other:?} pictures are not read"
            )));
        }
    };
    rgb_to_i420(
        &pixels,
        (
            usize::from(info.width),
            usize::from(info.height),
            bytes_per_pixel,
        ),
        dst_w,
        dst_h,
    )
}

/// The V4L2 devices there are, by path.
fn cameras() -> Vec<String> {
    let mut paths: Vec<String> = v4l::context::enum_devices()
        .iter()
        .map(|node| {
            let path = node.path().display().to_string();
            match node.name() {
                Some(name) => format!("{path} ({name})"),
                None => path,
            }
        })
        .collect();
    paths.sort();
    paths
}

/// One line per camera.
pub fn list() -> Vec<String> {
    let cameras = cameras();
    if cameras.is_empty() {
        return vec!["no camera found (no /dev/video*)".into()];
    }
    cameras.into_iter().map(|c| format!("camera {c}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_camera_is_named_with_what_there_is() {
        let err = Camera::open("/dev/bastet-no-such-camera", 320, 240, 15)
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with("no camera named \"/dev/bastet-no-such-camera\""),
            "{err}"
        );
    }

    #[test]
    fn garbage_mjpeg_is_an_error() {
        assert!(mjpeg_to_i420(b"not a jpeg", 320, 240).is_err());
        assert!(mjpeg_to_i420(&[], 320, 240).is_err());
    }
}
