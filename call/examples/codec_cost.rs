//! Measures the per-frame cost of the call codecs on this machine:
//! `cargo run -p bastet-call --release --example codec_cost`.

use std::time::Instant;

use bastet_call::{
    AudioDecoder, AudioEncoder, EncodedAudio, Profile, VideoDecoder, VideoEncoder, moving_pattern,
    speech_like,
};

fn main() -> bastet_call::Result<()> {
    for profile in [Profile::normal(), Profile::constrained()] {
        let mut settings = profile.audio.clone();
        settings.silence_gate_dbfs = None;
        let mut enc = AudioEncoder::new(&settings)?;
        let mut dec = AudioDecoder::new(&settings)?;
        let pcm = speech_like(10 * 48_000, 1);
        let frames: Vec<&[i16]> = pcm.chunks_exact(enc.frame_samples()).collect();
        let t = Instant::now();
        let mut packets = Vec::new();
        for f in &frames {
            if let EncodedAudio::Packet(p) = enc.encode(f)? {
                packets.push(p);
            }
        }
        let encode = t.elapsed();
        let t = Instant::now();
        for p in &packets {
            dec.decode(p)?;
        }
        let decode = t.elapsed();
        println!(
            "opus {:>11}: encode {:.3} ms/frame, decode {:.3} ms/frame ({} frames of {} ms), wire {} bit/s",
            profile.name,
            encode.as_secs_f64() * 1e3 / frames.len() as f64,
            decode.as_secs_f64() * 1e3 / packets.len() as f64,
            frames.len(),
            settings.frame.as_millis(),
            profile.wire_bitrate(),
        );
    }
    let profile = Profile::video();
    let Some(settings) = profile.video.clone() else {
        return Ok(());
    };
    let mut enc = VideoEncoder::new(&settings)?;
    let mut dec = VideoDecoder::new(&settings)?;
    // BASTET_FRAMES overrides the picture count (48, four seconds).
    let n: u32 = std::env::var("BASTET_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let pictures: Vec<_> = (0..n)
        .map(|i| moving_pattern(settings.width, settings.height, i))
        .collect::<bastet_call::Result<_>>()?;
    let t = Instant::now();
    let mut encoded = Vec::new();
    let mut first_out = None;
    for (i, p) in pictures.iter().enumerate() {
        let out = enc.encode(p, i == 0)?;
        if first_out.is_none() && !out.is_empty() {
            first_out = Some(i);
        }
        encoded.extend(out);
    }
    encoded.extend(enc.finish()?);
    let encode = t.elapsed();
    let t = Instant::now();
    let mut psnr = 0.0;
    for (e, p) in encoded.iter().zip(&pictures) {
        if let Some(picture) = dec.decode(&e.data)? {
            psnr += picture.psnr_y(p);
        }
    }
    let decode = t.elapsed();
    let bytes: usize = encoded.iter().map(|e| e.data.len()).sum();
    let key_bytes: usize = encoded
        .iter()
        .filter(|e| e.keyframe)
        .map(|e| e.data.len())
        .sum();
    let keys = encoded.iter().filter(|e| e.keyframe).count();
    println!(
        "av1 {}x{}@{}: encode {:.1} ms/frame, decode {:.2} ms/frame, first packet after picture {} \
         (encoder delay), {:.0} bit/s encoded, {} keyframes of {:.0} B on average, mean luma PSNR {:.1} dB, wire {} bit/s",
        settings.width,
        settings.height,
        settings.fps,
        encode.as_secs_f64() * 1e3 / f64::from(n),
        decode.as_secs_f64() * 1e3 / f64::from(n),
        first_out.unwrap_or(0),
        bytes as f64 * 8.0 * f64::from(settings.fps) / f64::from(n),
        keys,
        key_bytes as f64 / keys.max(1) as f64,
        psnr / f64::from(n),
        profile.wire_bitrate(),
    );
    Ok(())
}
