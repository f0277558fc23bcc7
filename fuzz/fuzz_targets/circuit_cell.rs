//! The onion layers of a call circuit's data cells, as the rendezvous relay
//! (`RendezvousOpener::open`) and the endpoint (`OnionReceiver::unwrap`)
//! see them, on two three-hop circuits set up once per process through
//! `build_setup` and `process_setup` with fixed relay keys:
//!
//! - the first `BODY_LEN` input bytes (zero padded) as a cell body on one
//!   circuit: both must refuse it (arbitrary bytes do not authenticate);
//! - the first `PAYLOAD_LEN` input bytes as a payload sent across the
//!   other circuit and back (endpoint, relays, rendezvous, relays,
//!   endpoint): it must arrive intact both ways, and if the three bytes
//!   after the body name a position and a non-zero mask, that change to
//!   the cell on either way must be refused, and the next cell still open.
//!
//! Nothing may panic. The circuits' counters advance with each input; what
//! is checked does not depend on them.
#![no_main]

use std::sync::{Mutex, OnceLock};

use bastet_circuit::{
    BODY_LEN, CircuitHop, Cookie, HopLayer, OnionReceiver, OnionSender, PAYLOAD_LEN,
    RendezvousOpener, RendezvousSealer, SEALED_LEN, Setup, build_setup, process_setup,
};
use bastet_link::CertPin;
use bastet_sphinx::{NodeId, Prepared, SphinxPublicKey, SphinxSecretKey};
use libfuzzer_sys::fuzz_target;

/// Both ends of one circuit: the endpoint's halves, each relay's layer in
/// both directions (route order, the rendezvous excluded) and the
/// rendezvous relay's halves.
struct Circuit {
    sender: OnionSender,
    receiver: OnionReceiver,
    up: Vec<HopLayer>,
    down: Vec<HopLayer>,
    opener: RendezvousOpener,
    sealer: RendezvousSealer,
}

const HOPS: u8 = 3;

fn circuit(cookie: Cookie) -> Circuit {
    let secrets: Vec<SphinxSecretKey> =
        (1..=HOPS).map(|i| SphinxSecretKey::from([i; 32])).collect();
    let hops: Vec<CircuitHop> = (1..=HOPS)
        .zip(&secrets)
        .map(|(i, secret)| CircuitHop {
            node: NodeId::from_identity_key(&[i; 32]),
            sphinx_key: SphinxPublicKey::from(secret),
            addr: format!("127.0.0.1:{}", 5000 + u16::from(i)),
            pin: CertPin([i; 32]),
        })
        .collect();
    let (mut packet, onion) = build_setup(&hops, &cookie).expect("a valid route");
    let (sender, receiver) = onion.split();
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for secret in &secrets {
        let prepared = Prepared::new(packet.as_bytes(), secret).expect("a packet for this hop");
        match process_setup(prepared).expect("a setup packet") {
            Setup::Extend {
                packet: next,
                layer,
                ..
            } => {
                let (towards_rendezvous, towards_endpoint) = layer.split();
                up.push(towards_rendezvous);
                down.push(towards_endpoint);
                packet = next;
            }
            Setup::Rendezvous { cookie: found, end } => {
                assert!(found == cookie && up.len() == usize::from(HOPS) - 1);
                let (opener, sealer) = end.split();
                return Circuit {
                    sender,
                    receiver,
                    up,
                    down,
                    opener,
                    sealer,
                };
            }
        }
    }
    panic!("the setup packet never reached the rendezvous");
}

/// The circuit that refuses arbitrary bodies, and the one that carries
/// payloads.
fn circuits() -> &'static Mutex<(Circuit, Circuit)> {
    static CIRCUITS: OnceLock<Mutex<(Circuit, Circuit)>> = OnceLock::new();
    CIRCUITS.get_or_init(|| Mutex::new((circuit(Cookie([1; 32])), circuit(Cookie([2; 32])))))
}

/// Changes one byte of `body` if `change` is a position and a non-zero
/// mask; whether it did.
fn tamper(body: &mut [u8; BODY_LEN], change: Option<(usize, u8)>) -> bool {
    match change {
        Some((at, mask)) if mask != 0 => {
            body[at] ^= mask;
            true
        }
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut guard = circuits().lock().expect("no panic held the lock");
    let (arbitrary, carrier) = &mut *guard;

    let mut body = [0u8; BODY_LEN];
    let n = data.len().min(BODY_LEN);
    body[..n].copy_from_slice(&data[..n]);
    assert!(arbitrary.opener.open(&body).is_err());
    assert!(arbitrary.receiver.unwrap(&body).is_err());

    let mut payload = [0u8; PAYLOAD_LEN];
    let n = data.len().min(PAYLOAD_LEN);
    payload[..n].copy_from_slice(&data[..n]);
    let change = data.get(BODY_LEN..BODY_LEN + 3).map(|c| {
        (
            usize::from(u16::from_be_bytes([c[0], c[1]])) % BODY_LEN,
            c[2],
        )
    });

    // Towards the rendezvous: the entry's layer comes off first.
    let mut body = carrier.sender.wrap(&payload).expect("a fresh circuit");
    for hop in &mut carrier.up {
        hop.apply(&mut body).expect("a fresh circuit");
    }
    let tampered = tamper(&mut body, change);
    let mut sealed = [0u8; SEALED_LEN];
    sealed[..PAYLOAD_LEN].copy_from_slice(&payload);
    match carrier.opener.open(&body) {
        Ok(opened) => {
            assert!(!tampered, "a changed cell opened");
            assert_eq!(opened, sealed);
        }
        Err(_) => assert!(tampered, "a genuine cell was refused"),
    }

    // Back towards the endpoint: the rendezvous's neighbour adds its layer
    // first.
    let mut body = carrier.sealer.seal(&sealed).expect("a fresh circuit");
    for hop in carrier.down.iter_mut().rev() {
        hop.apply(&mut body).expect("a fresh circuit");
    }
    let tampered = tamper(&mut body, change);
    match carrier.receiver.unwrap(&body) {
        Ok(received) => {
            assert!(!tampered, "a changed cell opened");
            assert_eq!(received, payload);
        }
        Err(_) => assert!(tampered, "a genuine cell was refused"),
    }
});
