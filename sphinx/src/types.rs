use std::fmt;

/// A node's name in the network: the BLAKE3 hash of its Ed25519 identity key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// Derives the id of the node whose Ed25519 identity public key is `key`.
    pub fn from_identity_key(key: &[u8; 32]) -> Self {
        NodeId(*blake3::hash(key).as_bytes())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, the form used in configs, logs and the CLI.
    pub fn to_hex(&self) -> String {
        hex_encode(&self.0)
    }

    /// Parses the hex form written by [`NodeId::to_hex`].
    pub fn from_hex(s: &str) -> Option<Self> {
        hex_decode_32(s).map(NodeId)
    }

    /// First 8 hex digits: enough to tell nodes apart in a human summary.
    pub fn short(&self) -> String {
        self.to_hex()[..8].to_string()
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A pseudonymous mailbox: derived from the mailbox owner's public key, so it
/// names no identity. Displayed redacted; use [`MailboxId::to_hex`] on purpose.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MailboxId(pub [u8; 32]);

impl MailboxId {
    /// The drop destination: "cover, discard at the final hop". A mailbox
    /// server authenticates and replay-checks a packet addressed here like
    /// any other, then throws it away unread and unstored. Client drop cover
    /// and mixnode cover end here, so on every link they look like messages.
    ///
    /// All zero bytes: real ids are BLAKE3 `derive_key` outputs
    /// ([`MailboxId::from_owner_key`]), so one equals this only with
    /// probability 2^-256; no owner key to register it is known.
    pub const DROP: MailboxId = MailboxId([0; 32]);

    /// Whether this is [`MailboxId::DROP`].
    pub fn is_drop(&self) -> bool {
        *self == MailboxId::DROP
    }

    /// The mailbox id owned by the holder of the Ed25519 mailbox key `key`.
    pub fn from_owner_key(key: &[u8; 32]) -> Self {
        MailboxId(blake3::derive_key("bastet 2026 mailbox id v1", key))
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex_encode(&self.0)
    }

    /// Parses the hex form written by [`MailboxId::to_hex`].
    pub fn from_hex(s: &str) -> Option<Self> {
        hex_decode_32(s).map(MailboxId)
    }
}

impl fmt::Debug for MailboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MailboxId([redacted])")
    }
}

fn hex_encode(bytes: &[u8; 32]) -> String {
    hex::encode(bytes)
}

fn hex_decode_32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let id = NodeId([0xab; 32]);
        assert_eq!(NodeId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(NodeId::from_hex("zz"), None);
        assert_eq!(NodeId::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn only_the_all_zero_id_is_the_drop_destination() {
        assert!(MailboxId::DROP.is_drop());
        assert_eq!(MailboxId::DROP.as_bytes(), &[0; 32]);
        assert!(!MailboxId::from_owner_key(&[0; 32]).is_drop());
        assert!(!MailboxId([7; 32]).is_drop());
    }

    #[test]
    fn mailbox_id_is_redacted_in_debug() {
        let id = MailboxId([7; 32]);
        assert!(!format!("{id:?}").contains("0707"));
    }
}
