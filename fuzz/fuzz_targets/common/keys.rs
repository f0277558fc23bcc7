//! Fixed client keys for targets that need one device, and the identity
//! they hold (its chain and a card), built once per process.

#![allow(dead_code)] // each target uses part of it

use std::sync::OnceLock;

use bastet_client::identity::{CAP_SEND, Chain, DeviceCert, short_id};
use bastet_client::{Card, ClientKeys, Contacts, DataDir, DeviceSecrets};
use bastet_sphinx::NodeId;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The same keys in every run, so that crashes reproduce.
pub fn fixed_keys() -> &'static ClientKeys {
    static KEYS: OnceLock<ClientKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        ClientKeys::from_secrets(
            &[1; 32],
            &[2; 32],
            &[3; 32],
            &DeviceSecrets::generate(&mut StdRng::from_seed([4; 32])),
        )
    })
}

/// The identity of [`fixed_keys`], as its contact book makes it.
pub struct Identity {
    /// A card made by the first device right after the identity started
    /// (its chain has one link: one device).
    pub card: Card,
    /// The chain after a second device was added and revoked, and the first
    /// moved its mailbox: one link of each kind.
    pub chain: Chain,
}

/// The identity, built once per process in a temporary directory (removed
/// afterwards). The first link's time is the setup's clock, so the chain's
/// hashes and signatures differ between processes; its layout does not.
pub fn fixed_identity() -> &'static Identity {
    static IDENTITY: OnceLock<Identity> = OnceLock::new();
    IDENTITY.get_or_init(|| {
        let keys = fixed_keys();
        let root = std::env::temp_dir().join(format!("bastet-fuzz-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = DataDir::new(root.clone());
        dir.create().expect("data dir");
        let mut book = Contacts::load(&dir, keys, NodeId([7; 32])).expect("contact book");
        assert_eq!(book.own_chain().links().len(), 1, "a new identity's chain");
        let card = book
            .export_card(keys, "fixed", None, 1)
            .expect("a card of the fixed keys");
        // A second device of the same identity, added and then revoked.
        let phone = ClientKeys::from_device_secrets(
            keys.identity_public(),
            &[5; 32],
            &[6; 32],
            &DeviceSecrets::generate(&mut StdRng::from_seed([8; 32])),
        );
        let cert = DeviceCert::of(
            &phone,
            [9; 32],
            [10; 32],
            NodeId([11; 32]),
            CAP_SEND,
            "phone",
        )
        .expect("a certificate");
        let back = cert
            .back_signature(&phone, &keys.identity_public())
            .expect("a back-signature");
        book.add_device(keys, cert, back, 2)
            .expect("a device added");
        book.revoke_device(keys, &short_id(&phone.device_public()), "lost", 3)
            .expect("a device revoked");
        drop(book);
        // Loading on another mailbox server records the move in the chain.
        let book = Contacts::load(&dir, keys, NodeId([12; 32])).expect("contact book");
        let chain = book.own_chain().clone();
        assert_eq!(chain.links().len(), 4, "one link of each kind");
        drop(book);
        let _ = std::fs::remove_dir_all(&root);
        Identity { card, chain }
    })
}
