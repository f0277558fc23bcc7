//! Node descriptors: what a node tells the authorities about itself, signed
//! by its identity key.

use bastet_link::CertPin;
use bastet_sphinx::{NodeId, SphinxPublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Most bytes of an encoded signed descriptor.
pub const MAX_DESCRIPTOR_LEN: usize = 2048;
const DESCRIPTOR_CONTEXT: &[u8] = b"bastet descriptor v1\0";
const MAX_ADDR_LEN: usize = 255;
const MAX_OPERATOR_LEN: usize = 64;

/// What a node does in the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// A mixnode. Its layer (1, 2 or 3) is assigned per epoch by the
    /// consensus, not chosen by the node.
    Mix,
    /// A mailbox server: the final hop.
    Mailbox,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Mix => f.write_str("mix"),
            Role::Mailbox => f.write_str("mailbox"),
        }
    }
}

/// A node's self-description for one epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// Ed25519 identity key; the node id is its BLAKE3 hash.
    pub identity_key: [u8; 32],
    /// The epoch this descriptor (and its Sphinx key) is for.
    pub epoch: u64,
    /// X25519 Sphinx key for that epoch.
    pub sphinx_key: [u8; 32],
    /// Pin of the node's TLS certificate.
    pub tls_pin: [u8; 32],
    /// `host:port` of the packet link.
    pub addr: String,
    /// `host:port` of the HTTPS API (mailbox servers), same certificate.
    pub api_addr: Option<String>,
    /// `host:port` of the call circuit listener (mixnodes that relay
    /// calls), same certificate.
    pub circuit_addr: Option<String>,
    /// Mix layer or mailbox.
    pub role: Role,
    /// ISO 3166-1 alpha-2 code of the jurisdiction the node runs in.
    pub jurisdiction: String,
    /// Who runs the node.
    pub operator: String,
}

impl Descriptor {
    /// The node's id.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_identity_key(&self.identity_key)
    }

    /// The Sphinx public key.
    pub fn sphinx_public(&self) -> SphinxPublicKey {
        SphinxPublicKey::from(self.sphinx_key)
    }

    /// The TLS pin.
    pub fn pin(&self) -> CertPin {
        CertPin(self.tls_pin)
    }

    /// Checks every field is in range.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, why: &str| {
            Err(Error::InvalidField {
                field,
                why: why.to_string(),
            })
        };
        if self.role == Role::Mailbox && self.api_addr.is_none() {
            return bad("api_addr", "a mailbox server must publish its API address");
        }
        for (field, addr) in [
            ("addr", Some(&self.addr)),
            ("api_addr", self.api_addr.as_ref()),
            ("circuit_addr", self.circuit_addr.as_ref()),
        ] {
            if let Some(a) = addr
                && (a.is_empty() || a.len() > MAX_ADDR_LEN || !a.contains(':'))
            {
                return bad(field, "must be host:port, at most 255 bytes");
            }
        }
        let j = self.jurisdiction.as_bytes();
        if j.len() != 2 || !j.iter().all(u8::is_ascii_uppercase) {
            return bad(
                "jurisdiction",
                "must be an ISO 3166-1 alpha-2 code such as DE",
            );
        }
        if self.operator.is_empty()
            || self.operator.len() > MAX_OPERATOR_LEN
            || self.operator.chars().any(char::is_control)
        {
            return bad("operator", "must be 1 to 64 printable characters");
        }
        Ok(())
    }

    /// Signs the descriptor with the node's identity key.
    pub fn sign(&self, key: &SigningKey) -> Result<SignedDescriptor> {
        if key.verifying_key().as_bytes() != &self.identity_key {
            return Err(Error::InvalidField {
                field: "identity_key",
                why: "is not the signing key's public key".into(),
            });
        }
        self.validate()?;
        let body = postcard::to_stdvec(self).map_err(|e| Error::malformed("descriptor", e))?;
        let signature = key
            .sign(&signed_bytes(DESCRIPTOR_CONTEXT, &body))
            .to_bytes();
        Ok(SignedDescriptor { body, signature })
    }
}

/// A descriptor's canonical encoding with its node's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDescriptor {
    /// Canonical (postcard) encoding of the [`Descriptor`].
    pub body: Vec<u8>,
    /// Ed25519 signature by the descriptor's identity key.
    #[serde(with = "sig_bytes")]
    pub signature: [u8; 64],
}

impl SignedDescriptor {
    /// Decodes and checks signature and fields.
    pub fn verify(&self) -> Result<Descriptor> {
        let descriptor: Descriptor =
            postcard::from_bytes(&self.body).map_err(|e| Error::malformed("descriptor", e))?;
        let key = VerifyingKey::from_bytes(&descriptor.identity_key)
            .map_err(|_| Error::BadSignature("descriptor"))?;
        key.verify_strict(
            &signed_bytes(DESCRIPTOR_CONTEXT, &self.body),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| Error::BadSignature("descriptor"))?;
        descriptor.validate()?;
        Ok(descriptor)
    }

    /// Wire encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Parses the wire encoding, refusing anything over [`MAX_DESCRIPTOR_LEN`].
    /// Does not verify; call [`SignedDescriptor::verify`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_DESCRIPTOR_LEN {
            return Err(Error::TooLarge {
                what: "descriptor",
                len: bytes.len(),
                max: MAX_DESCRIPTOR_LEN,
            });
        }
        postcard::from_bytes(bytes).map_err(|e| Error::malformed("descriptor", e))
    }
}

pub(crate) fn signed_bytes(context: &[u8], body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(context.len() + 32);
    m.extend_from_slice(context);
    m.extend_from_slice(blake3::hash(body).as_bytes());
    m
}

/// The current time in unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The epoch number at `unix_secs` for epochs of `epoch_secs`.
pub fn epoch_of(unix_secs: u64, epoch_secs: u64) -> u64 {
    unix_secs / epoch_secs.max(1)
}

/// `(valid_after, valid_until)` of `epoch`, in unix seconds.
pub fn epoch_bounds(epoch: u64, epoch_secs: u64) -> (u64, u64) {
    let start = epoch.saturating_mul(epoch_secs);
    (start, start.saturating_add(epoch_secs))
}

pub(crate) mod sig_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(sig: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(sig)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let v: &[u8] = <&[u8]>::deserialize(d)?;
        v.try_into()
            .map_err(|_| serde::de::Error::invalid_length(v.len(), &"64 bytes"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn descriptor(key: &SigningKey, role: Role, jurisdiction: &str) -> Descriptor {
        Descriptor {
            identity_key: *key.verifying_key().as_bytes(),
            epoch: 7,
            sphinx_key: [1; 32],
            tls_pin: [2; 32],
            addr: "127.0.0.1:4000".into(),
            api_addr: (role == Role::Mailbox).then(|| "127.0.0.1:4001".into()),
            circuit_addr: None,
            role,
            jurisdiction: jurisdiction.into(),
            operator: "Example Org".into(),
        }
    }

    #[test]
    fn signed_descriptor_round_trips() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let d = descriptor(&key, Role::Mix, "DE");
        let signed = d.sign(&key).unwrap();
        let parsed = SignedDescriptor::from_bytes(&signed.to_bytes()).unwrap();
        assert_eq!(parsed.verify().unwrap(), d);
    }

    #[test]
    fn forged_descriptor_signature_is_rejected() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let mut signed = descriptor(&key, Role::Mailbox, "CH").sign(&key).unwrap();
        signed.signature[0] ^= 1;
        assert!(matches!(signed.verify(), Err(Error::BadSignature(_))));

        // A valid signature over a body that claims someone else's key.
        let other = SigningKey::from_bytes(&[6; 32]);
        let mut d = descriptor(&key, Role::Mailbox, "CH");
        d.identity_key = *other.verifying_key().as_bytes();
        let body = postcard::to_stdvec(&d).unwrap();
        let forged = SignedDescriptor {
            signature: key
                .sign(&signed_bytes(DESCRIPTOR_CONTEXT, &body))
                .to_bytes(),
            body,
        };
        assert!(matches!(forged.verify(), Err(Error::BadSignature(_))));
    }

    #[test]
    fn out_of_range_fields_are_named() {
        let key = SigningKey::from_bytes(&[5; 32]);
        for (field, d) in [("jurisdiction", descriptor(&key, Role::Mailbox, "de"))] {
            match d.sign(&key) {
                Err(Error::InvalidField { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected InvalidField({field}), got {other:?}"),
            }
        }
        assert!(matches!(
            SignedDescriptor::from_bytes(&vec![0; MAX_DESCRIPTOR_LEN + 1]),
            Err(Error::TooLarge { .. })
        ));
    }
}
