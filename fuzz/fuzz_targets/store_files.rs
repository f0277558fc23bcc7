//! The files of a store compartment as they are read back:
//! `FileTree::decode` on any bytes. Checks: whatever is accepted encodes
//! back to exactly its bytes, and every name it holds passes the name
//! check.
#![no_main]

use bastet_client::store::{FileTree, check_file_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tree) = FileTree::decode(data) {
        assert_eq!(&tree.encode()[..], data, "re-encodes to its bytes");
        for name in tree.list("") {
            assert!(check_file_name(name).is_ok());
        }
    }
});
