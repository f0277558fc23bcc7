//! What an authority does with a POSTed descriptor body.
#![no_main]

use bastet_directory::SignedDescriptor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = SignedDescriptor::from_bytes(data) {
        let _ = d.verify();
    }
});
