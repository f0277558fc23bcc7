//! The index of a store compartment's files as it is read back:
//! `decode_index` on any bytes. Checks: whatever is accepted encodes back
//! to exactly its bytes, every name passes the name check, and every block
//! is in range and used once.
#![no_main]

use bastet_client::store::{check_file_name, decode_index, encode_index};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the compartment's length.
    let Some((&logical, rest)) = data.split_first() else {
        return;
    };
    let logical = u32::from(logical) + 1;
    if let Ok(entries) = decode_index(rest, logical, &[1]) {
        assert_eq!(encode_index(&entries), rest, "re-encodes to its bytes");
        let mut seen = std::collections::HashSet::from([1u32]);
        for e in &entries {
            assert!(check_file_name(&e.name).is_ok());
            for b in &e.blocks {
                assert!(*b > 0 && *b < logical && seen.insert(*b));
            }
        }
    }
});
