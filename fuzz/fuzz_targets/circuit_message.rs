//! What a relay or an endpoint reads from a circuit link: any bytes as one
//! message (`Message::decode`), and as a stream of messages
//! (`read_message` until the end or the first error). Checks: nothing
//! panics; an accepted message re-encodes to exactly its bytes; the stream
//! reader yields no more messages than the bytes hold (each is at least
//! `CELL_LEN` bytes), and what it yields re-encodes to the stream's bytes,
//! in order.
#![no_main]

use std::sync::OnceLock;

use bastet_circuit::{CELL_LEN, Message, read_message};
use libfuzzer_sys::fuzz_target;
use tokio::runtime::Runtime;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data) {
        assert_eq!(message.encode(), data);
    }

    let messages = runtime().block_on(async {
        let mut reader = data;
        let mut messages = Vec::new();
        while let Ok(Some(message)) = read_message(&mut reader).await {
            messages.push(message);
            assert!(messages.len() <= data.len() / CELL_LEN);
        }
        messages
    });
    let mut rest = data;
    for message in &messages {
        let bytes = message.encode();
        assert!(rest.starts_with(&bytes), "{message:?} is not what was read");
        rest = &rest[bytes.len()..];
    }
});
