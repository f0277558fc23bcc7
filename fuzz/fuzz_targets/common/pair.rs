//! A befriended pair (alice and bob) in a temporary directory, set up once
//! per fuzzing process, and genuine payloads from alice that bob's saved
//! state has not opened yet. Each run loads bob's contact book afresh from
//! disk (nothing is saved), so every run starts from the same state.

#![allow(dead_code)] // each target uses part of it

use std::path::PathBuf;
use std::sync::OnceLock;

use bastet_client::{ClientKeys, Contacts, Content, DataDir, DeviceSecrets, Opened};
use bastet_sphinx::NodeId;
use rand::SeedableRng;
use rand::rngs::StdRng;

pub struct Pair {
    pub bob_dir: DataDir,
    /// The mailbox server of every device here.
    pub server: NodeId,
    pub bob_keys: ClientKeys,
    pub alice_keys: ClientKeys,
    /// Alice's ratchet identity key, as her envelopes carry it.
    pub alice_ratchet_key: [u8; 32],
    /// (text, payload): a pre-key message (the session's second) and a
    /// normal message, neither opened in bob's saved state.
    pub genuine: Vec<(String, Vec<u8>)>,
}

fn keys(seed: u8) -> ClientKeys {
    let mut rng = StdRng::from_seed([seed; 32]);
    ClientKeys::from_secrets(
        &[seed; 32],
        &[seed.wrapping_add(1); 32],
        &[seed.wrapping_add(2); 32],
        &DeviceSecrets::generate(&mut rng),
    )
}

fn book(root: &PathBuf, name: &str, keys: &ClientKeys, server: NodeId) -> (DataDir, Contacts) {
    let dir = DataDir::new(root.join(name));
    dir.create().expect("data dir");
    let book = Contacts::load(&dir, keys, server).expect("contact book");
    (dir, book)
}

fn text(m: Opened) -> String {
    match m {
        Opened::Message(m) => m.text,
        Opened::Pending(e) => panic!("pending: {e}"),
        Opened::Held => panic!("held"),
        Opened::Chain(n) => panic!("chain traffic: {n:?}"),
    }
}

pub fn pair() -> &'static Pair {
    static PAIR: OnceLock<Pair> = OnceLock::new();
    PAIR.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("bastet-fuzz-pair-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (alice_keys, bob_keys) = (keys(1), keys(11));
        let server = NodeId([7; 32]);
        let (_, mut alice) = book(&root, "alice", &alice_keys, server);
        let (bob_dir, mut bob) = book(&root, "bob", &bob_keys, server);
        let card = alice
            .export_card(&alice_keys, "alice", None, 1)
            .and_then(|c| c.to_text(&alice_keys))
            .expect("alice's card");
        bob.import_card(&bob_keys, &card, "alice", 1)
            .expect("import");
        let reply = bob
            .export_card(&bob_keys, "bob", Some("alice"), 1)
            .and_then(|c| c.to_text(&bob_keys))
            .expect("bob's card");
        alice
            .import_card(&alice_keys, &reply, "bob", 1)
            .expect("import");
        let rng = &mut StdRng::from_seed([3; 32]);
        let mut send = |book: &mut Contacts, keys: &ClientKeys, to: &str, t: &str| {
            let sealed = book
                .seal_message(keys, to, &Content::Text(t.into()), 5, rng)
                .expect("seal");
            // One copy per current device: each has one.
            let [m] = <[_; 1]>::try_from(sealed).expect("one device, one copy");
            m.payload
        };
        let first = send(&mut alice, &alice_keys, "bob", "first");
        let second = send(&mut alice, &alice_keys, "bob", "second (pre-key)");
        assert_eq!(
            text(bob.open_message(&bob_keys, &first).expect("open")),
            "first"
        );
        let answer = send(&mut bob, &bob_keys, "alice", "answer");
        assert_eq!(
            text(alice.open_message(&alice_keys, &answer).expect("open")),
            "answer"
        );
        alice.save().expect("save");
        bob.save().expect("save");
        let third = send(&mut alice, &alice_keys, "bob", "third (normal)");
        let alice_ratchet_key = bastet_client::layers::envelope::open(&bob_keys, &first)
            .expect("envelope")
            .sender_ratchet_key;
        Pair {
            bob_dir,
            server,
            bob_keys,
            alice_keys,
            alice_ratchet_key,
            genuine: vec![
                ("second (pre-key)".into(), second),
                ("third (normal)".into(), third),
            ],
        }
    })
}

impl Pair {
    /// Bob's contact book as saved.
    pub fn bob(&self) -> Contacts {
        Contacts::load(&self.bob_dir, &self.bob_keys, self.server).expect("bob's book loads")
    }
}
