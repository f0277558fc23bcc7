//! The cell format's test vector, `testdata/cell_v1.json`: fixed secrets
//! and transcript in, the key confirmation and sealed cells out (the first
//! in epoch 0, the second after the 30 s ratchet). Any change to the key
//! schedule, the header, the nonce or the plaintext layout fails here.
//!
//! `BASTET_WRITE_VECTORS=1 cargo test -p bastet-call --test vectors`
//! rewrites the file (only for a deliberate format change).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code may panic

use std::time::Duration;

use bastet_call::{
    CallKeys, FrameHeader, FrameOpener, FrameSealer, KEM_CIPHERTEXT_LEN, Party, Payload, Role,
    SharedSecrets, Transcript,
};
use serde_json::{Value, json};
use zeroize::Zeroizing;

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/cell_v1.json");

fn transcript() -> Transcript {
    Transcript {
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
    }
}

fn secrets() -> SharedSecrets {
    SharedSecrets {
        x25519: Zeroizing::new([0x11; 32]),
        ml_kem: Zeroizing::new([0x22; 32]),
    }
}

fn payloads() -> Vec<(Duration, Payload)> {
    vec![
        (
            Duration::ZERO,
            Payload::Audio {
                seq: 7,
                capture: Duration::from_millis(140),
                packets: vec![vec![0xaa; 40], vec![0xbb; 40]],
            },
        ),
        (Duration::from_secs(30), Payload::Cover),
    ]
}

fn compute() -> Value {
    let t = transcript();
    let caller = CallKeys::derive(Role::Caller, &secrets(), &t).unwrap();
    let confirmation = caller.confirmation();
    let mut sealer = FrameSealer::new(caller.send);
    let cells: Vec<Value> = payloads()
        .into_iter()
        .map(|(now, payload)| {
            let plaintext = payload.encode().unwrap();
            let cell = sealer.seal(now, &plaintext).unwrap();
            let header = FrameHeader::parse(&cell).unwrap();
            json!({
                "now_ms": now.as_millis() as u64,
                "epoch": header.epoch,
                "counter": header.counter,
                "plaintext": hex::encode(plaintext.as_slice()),
                "cell": hex::encode(cell),
            })
        })
        .collect();
    json!({
        "description": "bastet-call cell format v1: CallKeys::derive(Caller) over the inputs, \
                        FrameSealer sealing the plaintexts at now_ms; the callee opens them",
        "inputs": {
            "x25519_shared": hex::encode([0x11; 32]),
            "ml_kem_shared": hex::encode([0x22; 32]),
            "call_id": hex::encode(t.call_id),
            "caller": {
                "identity": hex::encode(t.caller.identity),
                "device": hex::encode(t.caller.device),
                "ephemeral": hex::encode(t.caller.ephemeral),
            },
            "callee": {
                "identity": hex::encode(t.callee.identity),
                "device": hex::encode(t.callee.device),
                "ephemeral": hex::encode(t.callee.ephemeral),
            },
            "kem_ciphertext": "07 repeated 1088 times",
        },
        "confirmation": hex::encode(confirmation),
        "cells": cells,
    })
}

#[test]
fn the_cell_format_matches_its_vector() {
    let computed = compute();
    if std::env::var_os("BASTET_WRITE_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(&computed).unwrap();
        std::fs::write(PATH, text + "\n").unwrap();
    }
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(PATH).expect("testdata/cell_v1.json"))
            .unwrap();
    assert_eq!(computed, stored, "the cell format changed");

    // The callee opens the stored cells back into the payloads.
    let callee = CallKeys::derive(Role::Callee, &secrets(), &transcript()).unwrap();
    assert_eq!(
        stored["confirmation"].as_str(),
        Some(hex::encode(callee.confirmation()).as_str())
    );
    let mut opener = FrameOpener::new(callee.receive);
    let cells = stored["cells"].as_array().unwrap();
    for (cell, (_, payload)) in cells.iter().zip(payloads()) {
        let bytes = hex::decode(cell["cell"].as_str().unwrap()).unwrap();
        let (header, plaintext) = opener.open(&bytes).unwrap();
        assert_eq!(u64::from(header.epoch), cell["epoch"].as_u64().unwrap());
        assert_eq!(Payload::decode(&plaintext).unwrap(), payload);
    }
    assert_eq!(cells[1]["epoch"], 1, "the second cell is after the ratchet");
}
