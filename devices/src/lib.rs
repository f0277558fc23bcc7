//! Live devices for Bastet calls: a microphone and a speaker through cpal
//! (feature `audio`), a camera through V4L2 (feature `camera`).
//!
//! Without the features the crate still builds: it holds the interfaces
//! the call's media loop drives ([`AudioCapture`], [`AudioPlayback`],
//! [`VideoCapture`]), the bounded buffers between a device's own thread and
//! the call ([`AudioRing`], [`LatestPicture`]) and the picture conversions
//! ([`picture`]); opening a device then fails with [`Error::NotBuilt`],
//! which names the feature to build with. Files (`--audio-in`, `--video-in`)
//! work in every build.
//!
//! Clocks: a device runs on its own clock, the call on the system clock.
//! The buffers absorb the difference: each is bounded, and where a device
//! runs ahead the oldest samples are dropped, where it falls behind the
//! call sends or plays silence; both are counted ([`DeviceStats`]) and
//! neither grows the latency past a fixed bound.

#[cfg(feature = "audio")]
mod audio;
#[cfg(feature = "camera")]
mod camera;
pub mod picture;
mod ring;

pub use ring::{AudioRing, LatestPicture};

use bastet_call::I420Frame;

/// What can go wrong with a live device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This build has no support for the device.
    #[error(
        "this bastet was built without live {what} support; rebuild with \
         `cargo build --release -p bastet-client --features {feature}`, or use {instead}"
    )]
    NotBuilt {
        /// `microphone`, `speaker` or `camera`.
        what: &'static str,
        /// The cargo feature that adds it.
        feature: &'static str,
        /// The file option that works without it.
        instead: &'static str,
    },
    /// No device of that name.
    #[error("no {what} named {name:?}; {}", available_text(available))]
    NoDevice {
        /// `microphone`, `speaker` or `camera`.
        what: &'static str,
        /// The name asked for.
        name: String,
        /// The devices there are.
        available: Vec<String>,
    },
    /// The device exists but cannot do what a call needs.
    #[error("{device}: {why}")]
    Unsupported {
        /// The device.
        device: String,
        /// What it lacks.
        why: String,
    },
    /// The device failed.
    #[error("{device}: {why}")]
    Device {
        /// The device.
        device: String,
        /// What failed.
        why: String,
    },
    /// A picture could not be converted.
    #[error("camera picture: {0}")]
    Picture(String),
}

fn available_text(available: &[String]) -> String {
    if available.is_empty() {
        "none was found".into()
    } else {
        format!("there are: {}", available.join(", "))
    }
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// How a device kept pace with the call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeviceStats {
    /// Samples (or pictures) the device delivered.
    pub delivered: u64,
    /// Samples (or pictures) dropped because the device ran ahead of the
    /// call or the buffer was full.
    pub dropped: u64,
    /// Samples the call needed before the device had them (silence was
    /// used instead), or pictures sent again because no new one came.
    pub missing: u64,
    /// Errors the device reported while running.
    pub errors: u64,
}

/// A live audio source for a call: 48 kHz mono.
pub trait AudioCapture: Send {
    /// Fills `frame` with the next captured samples; where the device has
    /// not delivered enough yet, the rest is silence (counted as missing).
    fn read_frame(&mut self, frame: &mut [i16]);
    /// How the device kept pace.
    fn stats(&self) -> DeviceStats;
    /// The device's name, for reports.
    fn name(&self) -> &str;
}

/// A live audio sink for a call: 48 kHz mono.
pub trait AudioPlayback: Send {
    /// Queues `pcm` to be played after what is already queued.
    fn play(&mut self, pcm: &[i16]);
    /// How the device kept pace.
    fn stats(&self) -> DeviceStats;
    /// The device's name, for reports.
    fn name(&self) -> &str;
}

/// A live picture source for a call.
pub trait VideoCapture: Send {
    /// The newest picture captured since the last call, at the size the
    /// camera was opened for; `None` if none came since.
    fn take_picture(&mut self) -> Option<I420Frame>;
    /// How the camera kept pace.
    fn stats(&self) -> DeviceStats;
    /// The camera's name, for reports.
    fn name(&self) -> &str;
}

/// The devices this build can open, one line each, for `bastet devices`.
pub fn list_devices() -> Vec<String> {
    let mut lines = audio_lines();
    lines.extend(camera_lines());
    lines
}

#[cfg(feature = "audio")]
fn audio_lines() -> Vec<String> {
    audio::list()
}

#[cfg(not(feature = "audio"))]
fn audio_lines() -> Vec<String> {
    vec!["microphones and speakers: not built (feature `live-audio`)".into()]
}

#[cfg(feature = "camera")]
fn camera_lines() -> Vec<String> {
    camera::list()
}

#[cfg(not(feature = "camera"))]
fn camera_lines() -> Vec<String> {
    vec!["cameras: not built (feature `camera`)".into()]
}

/// Whether this build has live audio.
pub const HAS_AUDIO: bool = cfg!(feature = "audio");
/// Whether this build has a live camera.
pub const HAS_CAMERA: bool = cfg!(feature = "camera");

/// Opens a microphone: `name` is a device id from [`list_devices`]
/// (`alsa:default`, `alsa:hw:1,0`, ...), or `None` for the system default.
pub fn open_microphone(name: Option<&str>) -> Result<Box<dyn AudioCapture>> {
    #[cfg(feature = "audio")]
    {
        Ok(Box::new(audio::Microphone::open(name)?))
    }
    #[cfg(not(feature = "audio"))]
    {
        let _ = name;
        Err(Error::NotBuilt {
            what: "microphone",
            feature: "live-audio",
            instead: "--audio-in FILE.wav",
        })
    }
}

/// Opens a speaker: `name` as for [`open_microphone`].
pub fn open_speaker(name: Option<&str>) -> Result<Box<dyn AudioPlayback>> {
    #[cfg(feature = "audio")]
    {
        Ok(Box::new(audio::Speaker::open(name)?))
    }
    #[cfg(not(feature = "audio"))]
    {
        let _ = name;
        Err(Error::NotBuilt {
            what: "speaker",
            feature: "live-audio",
            instead: "--audio-out FILE.wav",
        })
    }
}

/// Opens a camera (`/dev/video0` when `path` is `None`) for pictures of
/// `width` × `height` at `fps`; a camera that gives another size is
/// cropped to the same aspect and scaled.
pub fn open_camera(
    path: Option<&str>,
    width: usize,
    height: usize,
    fps: u32,
) -> Result<Box<dyn VideoCapture>> {
    #[cfg(feature = "camera")]
    {
        Ok(Box::new(camera::Camera::open(
            path.unwrap_or("/dev/video0"),
            width,
            height,
            fps,
        )?))
    }
    #[cfg(not(feature = "camera"))]
    {
        let _ = (path, width, height, fps);
        Err(Error::NotBuilt {
            what: "camera",
            feature: "camera",
            instead: "--video-in FILE.y4m",
        })
    }
}

impl std::fmt::Debug for dyn AudioCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "microphone {}", self.name())
    }
}

impl std::fmt::Debug for dyn AudioPlayback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "speaker {}", self.name())
    }
}

impl std::fmt::Debug for dyn VideoCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "camera {}", self.name())
    }
}

#[cfg(test)]
mod tests {
    #[cfg(not(feature = "audio"))]
    #[test]
    fn without_the_audio_feature_opening_says_how_to_build_it() {
        let err = super::open_microphone(None).err().unwrap().to_string();
        assert!(err.contains("without live microphone support"), "{err}");
        assert!(err.contains("--features live-audio"), "{err}");
        assert!(err.contains("--audio-in FILE.wav"), "{err}");
        let err = super::open_speaker(Some("x")).err().unwrap().to_string();
        assert!(err.contains("--audio-out FILE.wav"), "{err}");
    }

    #[cfg(not(feature = "camera"))]
    #[test]
    fn without_the_camera_feature_opening_says_how_to_build_it() {
        let err = super::open_camera(None, 320, 240, 15)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--features camera"), "{err}");
        assert!(err.contains("--video-in FILE.y4m"), "{err}");
    }
}
