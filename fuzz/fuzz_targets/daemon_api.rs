//! The daemon's local API and state files: any bytes as a request line
//! (bounded line reader, then strict JSON), as a response the CLI reads, as
//! a held inbox message, and as a saved node-scores file. Checks: nothing
//! panics; an accepted request or response survives a JSON round trip
//! unchanged; a held message converts back or is refused with an error;
//! scores that load are saved in a form that loads again.
#![no_main]

use bastet_client::NodeScores;
use bastet_client::daemon::api::{Request, Response, WireReceived, read_line};
use libfuzzer_sys::fuzz_target;

fn round_trips<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) {
    let json = serde_json::to_value(value).expect("serialises");
    let back: T = serde_json::from_value(json.clone()).expect("reparses");
    assert_eq!(serde_json::to_value(&back).expect("serialises"), json);
}

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let line = runtime.block_on(async {
        let mut reader = tokio::io::BufReader::new(data);
        read_line(&mut reader, 4096).await
    });
    if let Ok(Some(line)) = line {
        assert!(line.len() <= 4096 && !line.contains(&b'\n'));
        if let Ok(request) = serde_json::from_slice::<Request>(&line) {
            round_trips(&request);
        }
    }
    if let Ok(response) = serde_json::from_slice::<Response>(data) {
        round_trips(&response);
    }
    if let Ok(held) = serde_json::from_slice::<WireReceived>(data) {
        let _ = held.to_inbox_message();
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(scores) = NodeScores::from_json(text)
    {
        // What it saves it can load again (floats may move by an ulp).
        let again = NodeScores::from_json(&scores.to_json()).expect("reloads");
        assert_eq!(again.len(), scores.len());
    }
});
