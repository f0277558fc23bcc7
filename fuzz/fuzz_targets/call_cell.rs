//! A call cell as the other party's device delivers it, with the call keys
//! derived from fixed secrets and transcript:
//!
//! - the first `PLAINTEXT_LEN` input bytes (zero padded) as a decrypted
//!   cell's plaintext: `Payload::decode` never panics, and what it accepts
//!   encodes (`Payload::encode`) to a plaintext that decodes to the same
//!   payload and encodes again to the same bytes;
//! - the input as a sealed cell, as sent and with its length and version
//!   byte made right (to reach the epoch logic and the AEAD):
//!   `FrameOpener::open` refuses both, since arbitrary bytes never
//!   authenticate;
//! - a `normal` profile `Receiver`: `handle_cell` refuses the input as a
//!   cell, then takes each `PLAINTEXT_LEN` chunk of the input sealed by
//!   the sending end (the peer holds that key, so this is what it can make
//!   the receiver parse), one per 20 ms tick, and plays out the audio
//!   (jitter buffer, Opus decoding, FEC, concealment). A sealed cell is
//!   accepted exactly when its plaintext decodes to a payload other than
//!   video (the profile has none), every cell sealed is counted as
//!   received, and every frame played out is one profile frame of PCM.
//!
//! Nothing may panic.
#![no_main]

use std::time::Duration;

use bastet_call::{
    CELL_LEN, CallKeys, FRAME_VERSION, FrameOpener, FrameSealer, KEM_CIPHERTEXT_LEN, PLAINTEXT_LEN,
    Party, Payload, Profile, Receiver, Role, SharedSecrets, Transcript,
};
use libfuzzer_sys::fuzz_target;
use zeroize::Zeroizing;

/// Sealed cells per input: a few audio frames and their redundancy.
const MAX_CELLS: usize = 16;
/// Frames played out per poll, at the most: more than the receiver's
/// jitter buffer holds (a second and its depth of 20 ms frames), yet a
/// bound on the concealment of an endless gap.
const MAX_PLAYOUT: usize = 64;

/// Both ends' keys, the same in every run (as in call/tests/vectors.rs).
fn keys(role: Role) -> CallKeys {
    let transcript = Transcript {
        call_id: [0x33; 16],
        caller: Party {
            identity: [0x01; 32],
            device: [0x02; 32],
            ephemeral: [0x03; 32],
        },
        callee: Party {
            identity: [0x04; 32],
            device: [0x05; 32],
            ephemeral: [0x06; 32],
        },
        kem_ciphertext: Box::new([0x07; KEM_CIPHERTEXT_LEN]),
    };
    let secrets = SharedSecrets {
        x25519: Zeroizing::new([0x11; 32]),
        ml_kem: Zeroizing::new([0x22; 32]),
    };
    CallKeys::derive(role, &secrets, &transcript).expect("fixed keys derive")
}

fn padded<const N: usize>(data: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = data.len().min(N);
    out[..n].copy_from_slice(&data[..n]);
    out
}

fn payload_round_trips(plaintext: &[u8; PLAINTEXT_LEN]) {
    let Ok(payload) = Payload::decode(plaintext) else {
        return;
    };
    let encoded = payload.encode().expect("a decoded payload fits a cell");
    assert_eq!(Payload::decode(&encoded).expect("decodes"), payload);
    assert_eq!(*payload.encode().expect("encodes"), *encoded);
}

fn play_out(receiver: &mut Receiver, now: Duration, frame_samples: usize) {
    for _ in 0..MAX_PLAYOUT {
        match receiver.poll_audio(now).expect("playout never fails") {
            Some(out) => assert_eq!(out.pcm.len(), frame_samples),
            None => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    payload_round_trips(&padded(data));

    let mut opener = FrameOpener::new(keys(Role::Callee).receive);
    let mut cell: [u8; CELL_LEN] = padded(data);
    cell[0] = FRAME_VERSION;
    assert!(opener.open(data).is_err());
    assert!(opener.open(&cell).is_err());

    let profile = Profile::normal();
    let tick = profile.tick;
    let frame_samples = profile.audio_frame_samples();
    let mut receiver = Receiver::new(profile, keys(Role::Callee).receive).expect("a receiver");
    assert!(receiver.handle_cell(Duration::ZERO, data).is_err());
    assert!(receiver.handle_cell(Duration::ZERO, &cell).is_err());

    let mut sealer = FrameSealer::new(keys(Role::Caller).send);
    let mut now = Duration::ZERO;
    let mut sealed = 0;
    for chunk in data.chunks(PLAINTEXT_LEN).take(MAX_CELLS) {
        let plaintext: [u8; PLAINTEXT_LEN] = padded(chunk);
        let cell = sealer.seal(now, &plaintext).expect("a fresh sealer");
        sealed += 1;
        let accepted = receiver.handle_cell(now, &cell).is_ok();
        let audio = Payload::decode(&plaintext).is_ok_and(|p| !matches!(p, Payload::Video(_)));
        assert_eq!(accepted, audio, "{:?}", Payload::decode(&plaintext));
        play_out(&mut receiver, now, frame_samples);
        now += tick;
    }
    play_out(&mut receiver, now + Duration::from_secs(2), frame_samples);
    assert_eq!(receiver.stats().cells.received, sealed);
});
