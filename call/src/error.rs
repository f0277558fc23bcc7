use thiserror::Error;

/// What went wrong in the call media pipeline.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// HKDF refused the requested output length (a bug, not an input).
    #[error("key derivation failed")]
    KeyDerivation,
    /// The peer's X25519 key is a low-order point: the shared secret would
    /// not depend on our key.
    #[error("the peer's ephemeral X25519 key is invalid (a low-order point)")]
    LowOrderPoint,
    /// The AEAD refused to seal (a bug, not an input).
    #[error("the cell could not be sealed")]
    Encrypt,
    /// The cell does not authenticate under the key of its epoch: altered
    /// on the way, forged, or sealed under other keys (a different call,
    /// or a man in the middle who swapped a key in call setup).
    #[error("cell failed to authenticate: altered, forged, or sealed under other keys")]
    Decrypt,
    /// This direction has used every frame counter: the call must be
    /// re-keyed through call setup.
    #[error("frame counter exhausted: refusing to reuse a nonce; set up a new call")]
    CounterExhausted,
    /// This direction has used every key epoch.
    #[error("key epoch exhausted; set up a new call")]
    EpochExhausted,
    /// A cell of a length other than the one cell size.
    #[error("cell has {got} bytes, expected exactly {expected}")]
    WrongCellLength {
        /// Bytes received.
        got: usize,
        /// The only length accepted.
        expected: usize,
    },
    /// A cell format this version does not read.
    #[error("unsupported cell format version {0}")]
    UnsupportedVersion(u8),
    /// A cell whose counter was already accepted.
    #[error("replayed cell (frame counter {counter} already accepted)")]
    Replay {
        /// The repeated counter.
        counter: u64,
    },
    /// A cell older than the replay window.
    #[error("cell too old: counter {counter} is outside the replay window below {highest}")]
    TooOld {
        /// The cell's counter.
        counter: u64,
        /// The highest counter accepted.
        highest: u64,
    },
    /// A cell of an epoch whose key is already erased.
    #[error("cell of key epoch {epoch}, whose key is erased (current epoch {current})")]
    StaleEpoch {
        /// The cell's epoch.
        epoch: u32,
        /// The receiver's current epoch.
        current: u32,
    },
    /// A cell claiming an epoch too far ahead to try.
    #[error("cell claims key epoch {epoch}, too far ahead of the current {current}")]
    EpochTooFarAhead {
        /// The cell's epoch.
        epoch: u32,
        /// The receiver's current epoch.
        current: u32,
    },
    /// An authenticated cell whose plaintext does not parse: the peer runs
    /// an incompatible or broken implementation.
    #[error("malformed cell plaintext: {0}")]
    MalformedCell(&'static str),
    /// PCM of the wrong length for the profile's audio frame.
    #[error("audio frame has {got} samples, the profile needs exactly {expected}")]
    WrongAudioFrame {
        /// Samples given.
        got: usize,
        /// Samples per frame.
        expected: usize,
    },
    /// A picture of the wrong size for the profile.
    #[error("picture is {got_width}x{got_height}, the profile needs {width}x{height}")]
    WrongPictureSize {
        /// Width given.
        got_width: usize,
        /// Height given.
        got_height: usize,
        /// Width required.
        width: usize,
        /// Height required.
        height: usize,
    },
    /// Video was given to a profile without video.
    #[error("the {0} profile carries no video")]
    NoVideo(&'static str),
    /// An encoded video frame too large to fragment into the cells allowed
    /// for one frame.
    #[error("encoded video frame of {len} bytes exceeds the {max}-byte limit")]
    VideoFrameTooLarge {
        /// Bytes of the encoded frame.
        len: usize,
        /// Most bytes allowed.
        max: usize,
    },
    /// The audio codec failed.
    #[error("opus: {0}")]
    Opus(String),
    /// The video codec failed.
    #[error("video codec: {0}")]
    Video(String),
    /// A WAV file that is not 48 kHz mono 16-bit PCM, or does not read.
    #[error("WAV: {0}")]
    Wav(String),
    /// A Y4M stream that is malformed, unsupported or too large.
    #[error("Y4M: {0}")]
    Y4m(String),
    /// Reading or writing a file failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}
