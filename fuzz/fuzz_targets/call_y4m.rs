//! A Y4M file given to `bastet-call` as a video source (a call's camera
//! stand-in): `Y4mReader::new` on any bytes, then up to [`FRAMES`] frames.
//! Checks: nothing panics; an accepted header has even sides of 1 to
//! `MAX_DIMENSION` pixels; every picture has the header's size and exactly
//! `i420_len` bytes, all taken from the input (so nothing beyond the
//! dimension limit is ever allocated for a short input); and the pictures
//! read, written back by `Y4mWriter`, read back unchanged.
#![no_main]

use bastet_call::{I420Frame, MAX_DIMENSION, Y4mReader, Y4mWriter, i420_len};
use libfuzzer_sys::fuzz_target;

/// Pictures read per input: enough for the frame-to-frame state, few
/// enough that a 1920×1920 stream stays cheap.
const FRAMES: usize = 4;

/// Bytes of the `FRAME\n` line before each picture, at the least.
const FRAME_LINE: usize = 6;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = Y4mReader::new(data) else {
        return;
    };
    let (width, height) = (reader.width(), reader.height());
    assert!((1..=MAX_DIMENSION).contains(&width) && width.is_multiple_of(2));
    assert!((1..=MAX_DIMENSION).contains(&height) && height.is_multiple_of(2));
    let (num, den) = reader.fps();
    assert!(num > 0 && den > 0);

    let mut frames: Vec<I420Frame> = Vec::new();
    let mut consumed = 0;
    while frames.len() < FRAMES {
        match reader.next_frame() {
            Ok(Some(frame)) => {
                assert_eq!((frame.width(), frame.height()), (width, height));
                assert_eq!(frame.data().len(), i420_len(width, height));
                consumed += FRAME_LINE + frame.data().len();
                assert!(consumed <= data.len(), "a picture not in the input");
                frames.push(frame);
            }
            Ok(None) => break,
            Err(_) => return,
        }
    }

    let mut writer = Y4mWriter::new(Vec::new(), width, height, num).expect("a header it accepted");
    for frame in &frames {
        writer.write_frame(frame).expect("a picture of its size");
    }
    let bytes = writer.finish().expect("writes to memory");
    let mut again = Y4mReader::new(&bytes[..]).expect("reads what it wrote");
    assert_eq!((again.width(), again.height()), (width, height));
    assert_eq!(again.fps(), (num, 1));
    for frame in &frames {
        assert_eq!(again.next_frame().expect("rereads").as_ref(), Some(frame));
    }
    assert!(again.next_frame().expect("ends cleanly").is_none());
});
