#![doc = include_str!("../README.md")]

mod audio;
mod cell;
mod crypto;
mod error;
mod frame;
mod io;
mod jitter;
mod keys;
mod pipeline;
mod stats;
mod video;

pub use audio::{AudioDecoder, AudioEncoder, AudioSource, EncodedAudio, SAMPLE_RATE, level_dbfs};
pub use cell::{
    AudioSettings, CIRCUIT_CELL_LEN, MAX_AUDIO_PACKET, MAX_VIDEO_FRAGMENTS, MAX_VIDEO_FRAME,
    ONION_BUDGET, Payload, Profile, Slot, VIDEO_FRAGMENT_LEN, VideoFragment, VideoSettings,
};
pub use crypto::{EphemeralKey, KEY_LEN, SecretKey, TAG_LEN, X25519_PUBLIC_LEN};
pub use error::Error;
pub use frame::{
    CELL_LEN, FRAME_VERSION, FrameHeader, FrameOpener, FrameSealer, HEADER_LEN, MAX_EPOCH_SKIP,
    PLAINTEXT_LEN, PREVIOUS_EPOCH_GRACE, Plaintext, RATCHET_CELLS, RATCHET_INTERVAL, REPLAY_WINDOW,
};
pub use io::{
    MAX_WAV_SAMPLES, MAX_Y4M_LINE, Y4mReader, Y4mWriter, moving_pattern, read_wav, read_wav_file,
    speech_like, tone_sweep, write_wav, write_wav_file,
};
pub use jitter::{Due, JitterBuffer, Push};
pub use keys::{
    CALL_ID_LEN, CallKeys, KEM_CIPHERTEXT_LEN, KEM_SHARED_LEN, PUBLIC_KEY_LEN, Party, Role,
    SharedSecrets, TrafficKey, Transcript,
};
pub use pipeline::{
    AUDIO_QUEUE, AudioOut, MAX_ASSEMBLING, Receiver, Sender, VideoOut, VideoSource,
};
pub use stats::{
    AudioStats, CellStats, Percentiles, SenderStats, Stats, VideoStats, ks_two_sample,
};
pub use video::{EncodedVideo, I420Frame, MAX_DIMENSION, VideoDecoder, VideoEncoder, i420_len};

/// Result of this crate's operations.
pub type Result<T> = std::result::Result<T, Error>;
