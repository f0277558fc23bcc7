//! The per-hop keys and the onion layers of data cells.
//!
//! A circuit is the route `entry → … → rendezvous`. Every hop shares one
//! [`HopSecret`] with the endpoint, from the one Sphinx setup packet, and
//! derives two keys from it: one per direction. Cells are fixed-size
//! ([`BODY_LEN`] bytes on the link, after the kind byte):
//!
//! - **towards the rendezvous** the endpoint seals the payload with
//!   ChaCha20-Poly1305 under the rendezvous hop's key, then adds one
//!   ChaCha20 layer per earlier hop, the entry's outermost. Each hop removes
//!   its layer; the rendezvous opens the AEAD and drops a cell that does not
//!   authenticate.
//! - **towards the endpoint** the rendezvous seals under its key for that
//!   direction and each earlier hop adds a ChaCha20 layer; the endpoint
//!   removes them all and opens the AEAD.
//!
//! Nonces are the cell's index on the circuit in its direction: every hop
//! counts the cells it passes, links are TLS over TCP (ordered, lossless)
//! and a relay never drops a single cell of a circuit it keeps (it destroys
//! the circuit instead), so every hop's count agrees with the endpoint's.
//! No public-key operation happens per cell. The call's own end-to-end
//! encryption sits inside the payload: a relay, the rendezvous included,
//! sees only the call's ciphertext.

use bastet_sphinx::HopSecret;
use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit, Nonce, Tag};
use zeroize::Zeroizing;

use crate::{BODY_LEN, Error, PAYLOAD_LEN, Result};

/// Bytes of the rendezvous hop's authentication tag.
pub const TAG_LEN: usize = 16;
/// Bytes the rendezvous hop's AEAD seals: the payload and zero padding.
pub const SEALED_LEN: usize = BODY_LEN - TAG_LEN;
const _: () = assert!(PAYLOAD_LEN <= SEALED_LEN);

const TOWARDS_RENDEZVOUS: &str = "bastet 2026 call circuit v1 towards the rendezvous";
const TOWARDS_ENDPOINT: &str = "bastet 2026 call circuit v1 towards the endpoint";
/// The AEAD's associated data.
const CELL_AD: &[u8] = b"bastet/circuit/v1/cell";

/// One hop's keys for one circuit, one per direction.
pub struct HopKeys {
    towards_rendezvous: Zeroizing<[u8; 32]>,
    towards_endpoint: Zeroizing<[u8; 32]>,
}

impl HopKeys {
    /// Derives both keys from the hop's Sphinx secret.
    pub fn derive(secret: &HopSecret) -> Self {
        HopKeys {
            towards_rendezvous: secret.derive(TOWARDS_RENDEZVOUS),
            towards_endpoint: secret.derive(TOWARDS_ENDPOINT),
        }
    }
}

impl std::fmt::Debug for HopKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HopKeys(<redacted>)")
    }
}

fn nonce(index: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&index.to_be_bytes());
    nonce
}

/// Applies (adds or removes: it is its own inverse) one ChaCha20 layer.
fn stream(key: &[u8; 32], index: u64, body: &mut [u8; BODY_LEN]) {
    let mut cipher = ChaCha20::new(key.into(), &nonce(index).into());
    cipher.apply_keystream(body);
}

fn seal(key: &[u8; 32], index: u64, sealed: &[u8; SEALED_LEN]) -> Result<[u8; BODY_LEN]> {
    let mut body = [0u8; BODY_LEN];
    body[..SEALED_LEN].copy_from_slice(sealed);
    let (plain, tag_out) = body.split_at_mut(SEALED_LEN);
    let aead = ChaCha20Poly1305::new(key.into());
    // Fails only for a plaintext over the AEAD's limit (2^38 bytes).
    let tag = aead
        .encrypt_inout_detached(&Nonce::from(nonce(index)), CELL_AD, plain.into())
        .map_err(|_| Error::Seal)?;
    tag_out.copy_from_slice(&tag);
    Ok(body)
}

fn open(key: &[u8; 32], index: u64, body: &[u8; BODY_LEN]) -> Result<[u8; SEALED_LEN]> {
    let mut plain = [0u8; SEALED_LEN];
    plain.copy_from_slice(&body[..SEALED_LEN]);
    let tag = Tag::try_from(&body[SEALED_LEN..]).map_err(|_| Error::CellAuthentication)?;
    let aead = ChaCha20Poly1305::new(key.into());
    aead.decrypt_inout_detached(
        &Nonce::from(nonce(index)),
        CELL_AD,
        (&mut plain[..]).into(),
        &tag,
    )
    .map_err(|_| Error::CellAuthentication)?;
    Ok(plain)
}

/// A relay's layer on one circuit that is not its rendezvous: removes its
/// layer from cells towards the rendezvous, adds it to cells towards the
/// endpoint.
#[derive(Debug)]
pub struct RelayLayer {
    keys: HopKeys,
}

impl RelayLayer {
    /// The layer of a hop with these keys, before its first cell.
    pub fn new(keys: HopKeys) -> Self {
        RelayLayer { keys }
    }

    /// The two directions, for the two tasks that relay them.
    pub fn split(self) -> (HopLayer, HopLayer) {
        let HopKeys {
            towards_rendezvous,
            towards_endpoint,
        } = self.keys;
        (
            HopLayer {
                key: towards_rendezvous,
                next: 0,
            },
            HopLayer {
                key: towards_endpoint,
                next: 0,
            },
        )
    }
}

/// One direction of a [`RelayLayer`].
pub struct HopLayer {
    key: Zeroizing<[u8; 32]>,
    next: u64,
}

impl HopLayer {
    /// Processes the next cell in this direction, in place.
    pub fn apply(&mut self, body: &mut [u8; BODY_LEN]) -> Result<()> {
        let index = self.next;
        self.next = index.checked_add(1).ok_or(Error::CircuitExhausted)?;
        stream(&self.key, index, body);
        Ok(())
    }
}

impl std::fmt::Debug for HopLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HopLayer")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

/// The rendezvous relay's end of one circuit.
#[derive(Debug)]
pub struct RendezvousEnd {
    keys: HopKeys,
}

impl RendezvousEnd {
    /// The rendezvous end of a circuit whose last hop has these keys.
    pub fn new(keys: HopKeys) -> Self {
        RendezvousEnd { keys }
    }

    /// Splits into what opens the cells arriving on this circuit and what
    /// seals the cells sent back down it (the latter goes to the task that
    /// reads the peer's circuit).
    pub fn split(self) -> (RendezvousOpener, RendezvousSealer) {
        let HopKeys {
            towards_rendezvous,
            towards_endpoint,
        } = self.keys;
        (
            RendezvousOpener {
                key: towards_rendezvous,
                next: 0,
            },
            RendezvousSealer {
                key: towards_endpoint,
                next: 0,
            },
        )
    }
}

/// Opens the cells arriving at the rendezvous on one circuit.
pub struct RendezvousOpener {
    key: Zeroizing<[u8; 32]>,
    next: u64,
}

impl RendezvousOpener {
    /// Opens the next cell. A cell that does not authenticate is
    /// [`Error::CellAuthentication`] and still counts (the next one has the
    /// next index).
    pub fn open(&mut self, body: &[u8; BODY_LEN]) -> Result<[u8; SEALED_LEN]> {
        let index = self.next;
        self.next = index.checked_add(1).ok_or(Error::CircuitExhausted)?;
        open(&self.key, index, body)
    }
}

/// Seals the cells the rendezvous sends down one circuit.
pub struct RendezvousSealer {
    key: Zeroizing<[u8; 32]>,
    next: u64,
}

impl RendezvousSealer {
    /// Seals the next cell.
    pub fn seal(&mut self, sealed: &[u8; SEALED_LEN]) -> Result<[u8; BODY_LEN]> {
        let index = self.next;
        self.next = index.checked_add(1).ok_or(Error::CircuitExhausted)?;
        seal(&self.key, index, sealed)
    }
}

impl std::fmt::Debug for RendezvousOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RendezvousOpener")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RendezvousSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RendezvousSealer")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

/// The endpoint's side of its circuit: every hop's keys, in route order
/// (the rendezvous last).
#[derive(Debug)]
pub struct EndpointOnion {
    hops: Vec<HopKeys>,
}

impl EndpointOnion {
    /// The onion over these hops (at least one: the rendezvous).
    pub fn new(hops: Vec<HopKeys>) -> Result<Self> {
        if hops.is_empty() {
            return Err(Error::BadRoute("a circuit needs at least one hop".into()));
        }
        Ok(EndpointOnion { hops })
    }

    /// Splits into the sealing and the opening half, for two tasks.
    pub fn split(self) -> (OnionSender, OnionReceiver) {
        let (out, back): (Vec<_>, Vec<_>) = self
            .hops
            .into_iter()
            .map(|h| (h.towards_rendezvous, h.towards_endpoint))
            .unzip();
        (
            OnionSender { keys: out, next: 0 },
            OnionReceiver {
                keys: back,
                next: 0,
            },
        )
    }
}

/// Wraps payloads into cells towards the rendezvous.
pub struct OnionSender {
    keys: Vec<Zeroizing<[u8; 32]>>,
    next: u64,
}

impl OnionSender {
    /// The body of the next cell carrying `payload`.
    pub fn wrap(&mut self, payload: &[u8; PAYLOAD_LEN]) -> Result<[u8; BODY_LEN]> {
        let index = self.next;
        self.next = index.checked_add(1).ok_or(Error::CircuitExhausted)?;
        let mut sealed = [0u8; SEALED_LEN];
        sealed[..PAYLOAD_LEN].copy_from_slice(payload);
        let (last, earlier) = self.keys.split_last().ok_or(Error::CircuitExhausted)?;
        let mut body = seal(last, index, &sealed)?;
        for key in earlier.iter().rev() {
            stream(key, index, &mut body);
        }
        Ok(body)
    }

    /// Cells wrapped so far.
    pub fn sent(&self) -> u64 {
        self.next
    }
}

/// Unwraps cells arriving from the rendezvous.
pub struct OnionReceiver {
    keys: Vec<Zeroizing<[u8; 32]>>,
    next: u64,
}

impl OnionReceiver {
    /// The payload of the next cell that arrived. A cell that does not
    /// authenticate is [`Error::CellAuthentication`] and still counts.
    pub fn unwrap(&mut self, body: &[u8; BODY_LEN]) -> Result<[u8; PAYLOAD_LEN]> {
        let index = self.next;
        self.next = index.checked_add(1).ok_or(Error::CircuitExhausted)?;
        let (last, earlier) = self.keys.split_last().ok_or(Error::CircuitExhausted)?;
        let mut body = *body;
        for key in earlier {
            stream(key, index, &mut body);
        }
        let sealed = open(last, index, &body)?;
        let mut payload = [0u8; PAYLOAD_LEN];
        payload.copy_from_slice(&sealed[..PAYLOAD_LEN]);
        Ok(payload)
    }

    /// Cells received so far.
    pub fn received(&self) -> u64 {
        self.next
    }
}

/// Moves the sealed content of a cell from one circuit to the other at the
/// rendezvous: opens it from one circuit, seals it for the other.
pub fn splice(
    from: &mut RendezvousOpener,
    to: &mut RendezvousSealer,
    body: &[u8; BODY_LEN],
) -> Result<[u8; BODY_LEN]> {
    let sealed = from.open(body)?;
    to.seal(&sealed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bastet_sphinx::{Hop, MailboxId, NodeId, Prepared, Processed, build_with_hop_secrets};
    use bastet_sphinx::{SphinxPublicKey as PublicKey, SphinxSecretKey as StaticSecret};
    use std::time::Duration;

    /// Both ends' keys for a circuit of `n` hops, as a real setup packet
    /// gives them.
    fn circuit(n: u8) -> (Vec<HopKeys>, Vec<HopKeys>) {
        let secrets: Vec<StaticSecret> = (1..=n).map(|i| StaticSecret::from([i; 32])).collect();
        let route: Vec<Hop> = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| Hop {
                node: NodeId::from_identity_key(&[i as u8; 32]),
                sphinx_key: PublicKey::from(s),
                delay: Duration::ZERO,
            })
            .collect();
        let (mut packet, endpoint) =
            build_with_hop_secrets(&route, &MailboxId([0; 32]), b"setup").unwrap();
        let mut relays = Vec::new();
        for s in &secrets {
            let prepared = Prepared::new(packet.as_bytes(), s).unwrap();
            relays.push(HopKeys::derive(&prepared.hop_secret()));
            if let Processed::Forward { packet: next, .. } = prepared.process().unwrap() {
                packet = next;
            }
        }
        (endpoint.iter().map(HopKeys::derive).collect(), relays)
    }

    fn payload(i: u8) -> [u8; PAYLOAD_LEN] {
        let mut p = [0u8; PAYLOAD_LEN];
        for (j, b) in p.iter_mut().enumerate() {
            *b = i.wrapping_mul(31).wrapping_add(j as u8);
        }
        p
    }

    /// Two endpoints, three hops each, spliced at a shared rendezvous: what
    /// one sends the other receives, in both directions, and no link
    /// carries the payload or the same bytes as another link.
    #[test]
    fn cells_cross_two_spliced_circuits_both_ways() {
        let (a_keys, mut a_relays) = circuit(3);
        let (b_keys, mut b_relays) = circuit(3);
        let (mut a_send, mut a_recv) = EndpointOnion::new(a_keys).unwrap().split();
        let (mut b_send, mut b_recv) = EndpointOnion::new(b_keys).unwrap().split();
        let (mut a_open, mut a_seal) = RendezvousEnd::new(a_relays.pop().unwrap()).split();
        let (mut b_open, mut b_seal) = RendezvousEnd::new(b_relays.pop().unwrap()).split();
        let layers = |relays: Vec<HopKeys>| -> (Vec<HopLayer>, Vec<HopLayer>) {
            relays
                .into_iter()
                .map(|k| RelayLayer::new(k).split())
                .unzip()
        };
        let (mut a_up, mut a_down) = layers(a_relays);
        let (mut b_up, mut b_down) = layers(b_relays);

        for i in 0..20u8 {
            // A to B.
            let p = payload(i);
            let mut body = a_send.wrap(&p).unwrap();
            let mut seen = vec![body];
            for hop in &mut a_up {
                hop.apply(&mut body).unwrap();
                seen.push(body);
            }
            body = splice(&mut a_open, &mut b_seal, &body).unwrap();
            seen.push(body);
            for hop in b_down.iter_mut().rev() {
                hop.apply(&mut body).unwrap();
                seen.push(body);
            }
            assert_eq!(b_recv.unwrap(&body).unwrap(), p);
            for (x, link) in seen.iter().enumerate() {
                assert!(
                    !link.windows(16).any(|w| w == &p[..16]),
                    "link {x} shows the payload"
                );
                for other in &seen[x + 1..] {
                    assert_ne!(link, other);
                }
            }
            // B to A.
            let q = payload(i ^ 0x55);
            let mut body = b_send.wrap(&q).unwrap();
            for hop in &mut b_up {
                hop.apply(&mut body).unwrap();
            }
            body = splice(&mut b_open, &mut a_seal, &body).unwrap();
            for hop in a_down.iter_mut().rev() {
                hop.apply(&mut body).unwrap();
            }
            assert_eq!(a_recv.unwrap(&body).unwrap(), q);
        }
        assert_eq!(a_send.sent(), 20);
        assert_eq!(b_recv.received(), 20);
    }

    /// A bit flipped by any hop is caught at the rendezvous, and the cells
    /// after it still open (the count stays in step).
    #[test]
    fn a_tampered_cell_is_refused_and_the_next_still_opens() {
        let (keys, mut relays) = circuit(3);
        let (mut send, _) = EndpointOnion::new(keys).unwrap().split();
        let (mut rv, _) = RendezvousEnd::new(relays.pop().unwrap()).split();
        let mut hops: Vec<HopLayer> = relays
            .into_iter()
            .map(|k| RelayLayer::new(k).split().0)
            .collect();
        for i in 0..4u8 {
            let mut body = send.wrap(&payload(i)).unwrap();
            for hop in &mut hops {
                hop.apply(&mut body).unwrap();
            }
            if i == 1 {
                body[100] ^= 1;
                assert!(matches!(rv.open(&body), Err(Error::CellAuthentication)));
            } else {
                assert_eq!(&rv.open(&body).unwrap()[..PAYLOAD_LEN], &payload(i)[..]);
            }
        }
    }

    /// A cell replayed, reordered or moved to another circuit does not
    /// open.
    #[test]
    fn cells_do_not_open_out_of_order_or_on_another_circuit() {
        let (keys, mut relays) = circuit(1);
        let (other_keys, _) = circuit(1);
        let (mut send, _) = EndpointOnion::new(keys).unwrap().split();
        let (mut other, _) = EndpointOnion::new(other_keys).unwrap().split();
        let (mut rv, _) = RendezvousEnd::new(relays.pop().unwrap()).split();
        let first = send.wrap(&payload(0)).unwrap();
        let second = send.wrap(&payload(1)).unwrap();
        assert!(rv.open(&second).is_err());
        assert!(rv.open(&first).is_err());
        assert!(rv.open(&other.wrap(&payload(2)).unwrap()).is_err());
    }

    /// RFC 8439 §2.3.2 / appendix A.1 test vector 1: the ChaCha20 block
    /// function with an all-zero key, nonce and counter 0.
    #[test]
    fn chacha20_layer_matches_rfc8439_a1_vector_1() {
        let mut body = [0u8; BODY_LEN];
        stream(&[0; 32], 0, &mut body);
        assert_eq!(
            hex::encode(&body[..64]),
            "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7\
             da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
        );
    }
}
