//! The fragment and final-payload decoders on any bytes (an accepted input
//! must re-encode to itself), then a reassembler with small limits fed a
//! stream of fragments built from the input: well-formed headers (so that
//! the fuzzer reaches the reassembly logic) with colliding envelope ids,
//! any index, length and contents, and time moving forward. Checks: no
//! panic, the limits hold at every step, a completed envelope has the
//! length its fragments announced, and everything expires.
#![no_main]

use std::time::{Duration, Instant};

use bastet_sphinx::{
    FRAGMENT_CAPACITY, FRAGMENT_VERSION, FinalPayload, Fragment, Reassembler, Reassembly,
    ReassemblyLimits,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = Fragment::from_bytes(data) {
        assert_eq!(f.to_bytes(), data, "fragment decoding is not canonical");
    }
    if let Ok(p) = FinalPayload::from_bytes(data) {
        assert_eq!(
            p.to_bytes(),
            data,
            "final payload decoding is not canonical"
        );
        let _ = Fragment::from_bytes(p.fragment_bytes());
    }

    let limits = ReassemblyLimits {
        max_envelope_len: 6 * FRAGMENT_CAPACITY,
        max_partial: 3,
        max_buffered_bytes: 8 * FRAGMENT_CAPACITY,
        expiry: Duration::from_secs(60),
        remembered_complete: 4,
    };
    let Ok(mut reasm) = Reassembler::new(limits.clone()) else {
        return;
    };
    let t0 = Instant::now();
    let mut now = t0;
    // Records of 7 bytes: id, index, count, total length (2), fill, time step.
    for r in data.chunks_exact(7) {
        let total = usize::from(u16::from_le_bytes([r[3], r[4]])) % (7 * FRAGMENT_CAPACITY);
        let index = u32::from(r[1] % 8);
        let count = u32::from(r[2] % 8);
        let mut bytes = vec![FRAGMENT_VERSION];
        bytes.extend_from_slice(&[r[0] % 4; 16]);
        bytes.extend_from_slice(&index.to_be_bytes());
        bytes.extend_from_slice(&count.to_be_bytes());
        bytes.extend_from_slice(&(total as u32).to_be_bytes());
        let start = index as usize * FRAGMENT_CAPACITY;
        let len = total.saturating_sub(start).min(FRAGMENT_CAPACITY);
        bytes.extend(std::iter::repeat_n(r[5], len));
        now += Duration::from_secs(u64::from(r[6] % 16));
        reasm.expire(now);
        if let Ok(f) = Fragment::from_bytes(&bytes) {
            let announced = f.total_len();
            if let Ok(Reassembly::Complete { bytes, .. }) = reasm.insert(f, now) {
                assert_eq!(bytes.len(), announced);
            }
        }
        assert!(reasm.buffered_bytes() <= limits.max_buffered_bytes);
        assert!(reasm.partial_envelopes() <= limits.max_partial);
        if let Some(deadline) = reasm.next_expiry() {
            assert!(deadline > now);
        }
    }
    reasm.expire(now + limits.expiry);
    assert_eq!(reasm.buffered_bytes(), 0);
    assert_eq!(reasm.partial_envelopes(), 0);
});
