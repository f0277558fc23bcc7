//! `layers::psk::open` with a fixed key and direction on: (0) any bytes;
//! (1) any inner layer sealed by `psk::seal`, then possibly one byte
//! changed. Checks: any bytes fail as a pre-shared-key error (PskMismatch,
//! or the layer's "too short"); a sealed layer opens intact; any changed
//! byte, the other direction, or another key is a PskMismatch.
#![no_main]

use bastet_client::Error;
use bastet_client::layers::psk;
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;

const PSK: [u8; 32] = [7; 32];
const A: [u8; 32] = [0xaa; 32];
const B: [u8; 32] = [0xbb; 32];

fn psk_error(e: &Error) -> bool {
    matches!(e, Error::PskMismatch(n) if n == "alice")
        || matches!(
            e,
            Error::Layer {
                layer: "pre-shared-key",
                ..
            }
        )
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        match psk::open(&PSK, &A, &B, rest, "alice") {
            Ok(_) => panic!("fuzzed bytes opened"),
            Err(e) => assert!(psk_error(&e), "{e}"),
        }
        return;
    }
    let Some((tamper, inner)) = rest.split_first_chunk::<3>() else {
        return;
    };
    let sealed = psk::seal(&PSK, &A, &B, inner, &mut StdRng::from_seed([1; 32])).expect("seals");
    assert_eq!(sealed.len(), inner.len() + psk::OVERHEAD);
    assert_eq!(
        psk::open(&PSK, &A, &B, &sealed, "alice")
            .expect("opens")
            .as_slice(),
        inner
    );
    let mismatch = |r: Result<_, Error>| matches!(r, Err(Error::PskMismatch(_)));
    assert!(mismatch(psk::open(&PSK, &B, &A, &sealed, "alice")));
    assert!(mismatch(psk::open(&[8; 32], &A, &B, &sealed, "alice")));
    let mut bad = sealed.clone();
    let at = usize::from(u16::from_le_bytes([tamper[0], tamper[1]])) % bad.len();
    bad[at] ^= tamper[2] | 1;
    assert!(
        mismatch(psk::open(&PSK, &A, &B, &bad, "alice")),
        "byte {at} changed"
    );
});
