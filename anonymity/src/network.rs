//! The simulated network as Bastet's own code sees it: a consensus of
//! descriptors (layers dealt by `bastet_directory` exactly as in
//! production), the Sphinx secrets behind them, and the map from node ids
//! to trace endpoints.

use std::collections::HashMap;

use bastet_directory::{Descriptor, MIX_LAYERS, Role, VerifiedConsensus};
use bastet_sphinx::{NodeId, SphinxPublicKey, SphinxSecretKey};
use rand::Rng;

use crate::{Endpoint, Error, Result};

/// Jurisdictions handed out in turn, so that policies with jurisdiction
/// rules have something to work with.
const JURISDICTIONS: [&str; 6] = ["DE", "NL", "CH", "SE", "FR", "IS"];

/// The consensus of a simulated epoch, its nodes' Sphinx secrets, and
/// which trace endpoint each node is.
pub struct Network {
    /// The consensus every client and node uses.
    pub consensus: VerifiedConsensus,
    /// Mixes by trace index: layer 1 first, then 2, then 3.
    pub mixes: Vec<NodeId>,
    /// The layer of each mix, by trace index.
    pub mix_layers: Vec<u8>,
    /// Mailbox servers by trace index.
    pub mailboxes: Vec<NodeId>,
    /// Sphinx secrets of the mixes, by trace index.
    pub mix_secrets: Vec<SphinxSecretKey>,
    /// Sphinx secrets of the mailbox servers, by trace index.
    pub mailbox_secrets: Vec<SphinxSecretKey>,
    endpoints: HashMap<NodeId, Endpoint>,
}

impl Network {
    /// `layers` × `per_layer` mixes and `mailboxes` mailbox servers, each
    /// with its own operator, keys drawn from `rng`. Bastet's consensus
    /// deals exactly [`MIX_LAYERS`] layers, so `layers` must be that.
    pub fn new<R: Rng + ?Sized>(
        layers: u8,
        per_layer: u32,
        mailboxes: u32,
        rng: &mut R,
    ) -> Result<Self> {
        if layers != MIX_LAYERS {
            return Err(Error::InvalidParameter {
                name: "layers",
                why: format!(
                    "{layers}: Bastet's consensus deals exactly {MIX_LAYERS} mix layers (bastet_directory::MIX_LAYERS), and routes cross each once"
                ),
            });
        }
        if !(1..=64).contains(&per_layer) {
            return Err(Error::InvalidParameter {
                name: "per-layer",
                why: format!("{per_layer}: must be 1 to 64 mixes per layer"),
            });
        }
        if !(1..=64).contains(&mailboxes) {
            return Err(Error::InvalidParameter {
                name: "mailboxes",
                why: format!("{mailboxes}: must be 1 to 64 mailbox servers"),
            });
        }
        let mix_count = u32::from(layers) * per_layer;
        let mut descriptors = Vec::new();
        let mut secrets: HashMap<NodeId, SphinxSecretKey> = HashMap::new();
        for i in 0..mix_count + mailboxes {
            let mut identity = [0u8; 32];
            rng.fill_bytes(&mut identity);
            let mut secret = [0u8; 32];
            rng.fill_bytes(&mut secret);
            let secret = SphinxSecretKey::from(secret);
            let role = if i < mix_count {
                Role::Mix
            } else {
                Role::Mailbox
            };
            let d = Descriptor {
                identity_key: identity,
                epoch: 1,
                sphinx_key: SphinxPublicKey::from(&secret).to_bytes(),
                tls_pin: identity,
                addr: format!("127.0.0.1:{}", 20_000 + i),
                api_addr: (role == Role::Mailbox).then(|| format!("127.0.0.1:{}", 30_000 + i)),
                circuit_addr: None,
                role,
                jurisdiction: JURISDICTIONS[i as usize % JURISDICTIONS.len()].into(),
                operator: format!("operator-{i}"),
            };
            secrets.insert(d.node_id(), secret);
            descriptors.push(d);
        }
        let consensus = VerifiedConsensus::assume_verified(1, 0, u64::MAX, descriptors, 1);
        let mut network = Network {
            mixes: Vec::new(),
            mix_layers: Vec::new(),
            mailboxes: Vec::new(),
            mix_secrets: Vec::new(),
            mailbox_secrets: Vec::new(),
            endpoints: HashMap::new(),
            consensus,
        };
        let missing = || Error::Network("a node of the consensus has no key".into());
        for layer in 1..=layers {
            let ids: Vec<NodeId> = network
                .consensus
                .mixes(layer)
                .map(Descriptor::node_id)
                .collect();
            if ids.len() != per_layer as usize {
                return Err(Error::Network(format!(
                    "the consensus dealt {} mixes to layer {layer}, not {per_layer}",
                    ids.len()
                )));
            }
            for id in ids {
                let index = network.mixes.len() as u32;
                network.endpoints.insert(id, Endpoint::Mix(index));
                network
                    .mix_secrets
                    .push(secrets.remove(&id).ok_or_else(missing)?);
                network.mixes.push(id);
                network.mix_layers.push(layer);
            }
        }
        let servers: Vec<NodeId> = network
            .consensus
            .mailboxes()
            .map(Descriptor::node_id)
            .collect();
        for id in servers {
            let index = network.mailboxes.len() as u32;
            network.endpoints.insert(id, Endpoint::Mailbox(index));
            network
                .mailbox_secrets
                .push(secrets.remove(&id).ok_or_else(missing)?);
            network.mailboxes.push(id);
        }
        Ok(network)
    }

    /// The trace endpoint of a node of the consensus.
    pub fn endpoint(&self, node: &NodeId) -> Result<Endpoint> {
        self.endpoints
            .get(node)
            .copied()
            .ok_or_else(|| Error::Network(format!("{} is not in the consensus", node.to_hex())))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn every_layer_gets_its_mixes_and_every_node_an_endpoint() {
        let mut rng = StdRng::seed_from_u64(1);
        let n = Network::new(3, 4, 2, &mut rng).unwrap();
        assert_eq!(n.mix_layers, [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]);
        assert_eq!(n.mailboxes.len(), 2);
        for (i, id) in n.mixes.iter().enumerate() {
            assert_eq!(n.endpoint(id).unwrap(), Endpoint::Mix(i as u32));
            assert_eq!(n.consensus.layer_of(id), Some(n.mix_layers[i]));
        }
        assert_eq!(n.endpoint(&n.mailboxes[1]).unwrap(), Endpoint::Mailbox(1));
        assert!(matches!(
            Network::new(4, 3, 1, &mut rng),
            Err(Error::InvalidParameter { name: "layers", .. })
        ));
        assert!(Network::new(3, 0, 1, &mut rng).is_err());
    }
}
