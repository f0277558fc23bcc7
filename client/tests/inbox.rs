//! `Client::init` and `Client::inbox` against a real in-process directory
//! authority and a small in-memory mailbox API that checks request
//! signatures with `bastet_mailbox::api` (the RocksDB-backed server is
//! tested in its own crate).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bastet_client::{Client, Content, DataDir, Error};
use bastet_directory::{DirectoryConfig, unix_now};
use bastet_link::TlsIdentity;
use bastet_mailbox::api::{
    DeleteResponse, ListResponse, RegisterRequest, RegisterResponse, ReplayCache, RequestAuth,
    SignedRequest, StoredMessage, verify_request,
};
use bastet_sphinx::{MailboxId, NodeId};

mod common;
use common::{await_consensus, publish, relays, start_authority};

#[derive(Default)]
struct FakeMailboxes {
    boxes: HashMap<MailboxId, BTreeMap<u64, (u64, Vec<u8>)>>,
    next_seq: u64,
    replay: Option<ReplayCache>,
    /// Every authenticated request: method, path and query, signing time.
    accepted: Vec<(Method, String, u64)>,
    /// Why requests were refused authentication (none expected).
    refused: Vec<String>,
}

type Shared = Arc<Mutex<FakeMailboxes>>;

impl FakeMailboxes {
    fn deliver(&mut self, mailbox: MailboxId, payload: Vec<u8>) -> u64 {
        self.next_seq += 1;
        let seq = self.next_seq;
        self.boxes
            .get_mut(&mailbox)
            .expect("unknown mailbox")
            .insert(seq, (1_000 + seq, payload));
        seq
    }
}

async fn handle(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path_and_query = uri.path_and_query().map_or("", |p| p.as_str()).to_string();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut state = state.lock().unwrap();
    let FakeMailboxes { replay, .. } = &mut *state;
    let cache = replay.get_or_insert_with(|| ReplayCache::new(10_000));
    let key = match verify_request(
        &SignedRequest {
            method: method.as_str(),
            path_and_query: &path_and_query,
            authorization: auth.as_deref(),
            body: &body,
        },
        unix_now(),
        cache,
    ) {
        Ok(k) => k,
        Err(e) => {
            state.refused.push(e.to_string());
            return (StatusCode::UNAUTHORIZED, e.to_string()).into_response();
        }
    };
    let ts = RequestAuth::parse(auth.as_deref().unwrap()).unwrap().ts;
    state
        .accepted
        .push((method.clone(), path_and_query.clone(), ts));
    let owned = MailboxId::from_owner_key(key.as_bytes());
    if uri.path() == "/v1/mailboxes" && method == Method::POST {
        let req: RegisterRequest = serde_json::from_slice(&body).unwrap();
        assert_eq!(req.owner_key, hex::encode(key.as_bytes()));
        state.boxes.entry(owned).or_default();
        let reply = RegisterResponse {
            mailbox_id: owned.to_hex(),
        };
        return (StatusCode::CREATED, axum::Json(reply)).into_response();
    }
    let id = uri
        .path()
        .strip_prefix("/v1/mailboxes/")
        .and_then(|rest| rest.strip_suffix("/messages"))
        .and_then(MailboxId::from_hex);
    let Some(id) = id else {
        return (StatusCode::NOT_FOUND, "no such endpoint").into_response();
    };
    if id != owned {
        return (StatusCode::FORBIDDEN, "not the owner").into_response();
    }
    let query: HashMap<String, u64> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect();
    let Some(mailbox) = state.boxes.get_mut(&id) else {
        return (StatusCode::NOT_FOUND, "no such mailbox").into_response();
    };
    match method {
        Method::GET => {
            let after = query.get("after").copied().unwrap_or(0);
            let limit = usize::try_from(query["limit"]).unwrap();
            assert!((1..=500).contains(&limit));
            let mut rest = mailbox.range(after + 1..);
            let messages: Vec<_> = rest
                .by_ref()
                .take(limit)
                .map(|(&seq, (at, payload))| {
                    StoredMessage {
                        seq,
                        received_at_ms: *at,
                        payload: payload.clone(),
                    }
                    .to_json()
                })
                .collect();
            let next = if rest.next().is_some() {
                messages.last().map(|m| m.seq)
            } else {
                None
            };
            axum::Json(ListResponse { messages, next }).into_response()
        }
        Method::DELETE => {
            let upto = query["upto"];
            let before = mailbox.len();
            mailbox.retain(|&seq, _| seq > upto);
            let deleted = u64::try_from(before - mailbox.len()).unwrap();
            axum::Json(DeleteResponse { deleted }).into_response()
        }
        _ => (StatusCode::METHOD_NOT_ALLOWED, "no").into_response(),
    }
}

struct Network {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    directory: DirectoryConfig,
    mailbox_server: NodeId,
    store: Shared,
}

async fn network() -> Network {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let directory = start_authority(&root.join("authority")).await;
    let store: Shared = Arc::default();
    let tls = TlsIdentity::generate().unwrap();
    let pin = tls.pin();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api_addr = listener.local_addr().unwrap().to_string();
    let router = Router::new().fallback(handle).with_state(store.clone());
    tokio::spawn(async move { bastet_link::serve_https(listener, &tls, router).await });

    let relays = relays();
    for relay in &relays[..3] {
        publish(&directory, relay, "127.0.0.1:9".into(), None, [7; 32]).await;
    }
    publish(
        &directory,
        &relays[3],
        "127.0.0.1:9".into(),
        Some(api_addr),
        pin.0,
    )
    .await;
    await_consensus(&directory, &relays).await;
    Network {
        _tmp: tmp,
        root,
        directory,
        mailbox_server: relays[3].keys.node_id(),
        store,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_registers_a_mailbox_and_inbox_reads_deletes_and_keeps_what_fails() {
    let net = network().await;
    let bob_dir = DataDir::new(net.root.join("bob"));
    let bob = Client::init(
        bob_dir.clone(),
        net.directory.clone(),
        Some(net.mailbox_server),
    )
    .await
    .unwrap();
    let bob_address = bob.address().unwrap();
    assert_eq!(bob_address.mailbox_server, net.mailbox_server);
    assert!(
        net.store
            .lock()
            .unwrap()
            .boxes
            .contains_key(&bob_address.mailbox)
    );
    // The written data dir loads back to the same client.
    assert_eq!(
        Client::open(bob_dir.clone()).unwrap().address().unwrap(),
        bob_address
    );
    let again = Client::init(bob_dir.clone(), net.directory.clone(), None).await;
    assert!(matches!(again, Err(Error::AlreadyInitialised(_))));

    // Without --mailbox-server, the one mailbox server is picked.
    let alice = Client::init(
        DataDir::new(net.root.join("alice")),
        net.directory.clone(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(alice.address().unwrap().mailbox_server, net.mailbox_server);
    let unknown = Client::init(
        DataDir::new(net.root.join("carol")),
        net.directory.clone(),
        Some(NodeId([0xee; 32])),
    )
    .await;
    assert!(matches!(
        unknown,
        Err(Error::MailboxServerNotInConsensus(_))
    ));

    // Alice and bob exchange cards; alice's messages go to bob whole (as a
    // mailbox server stored them before fragmentation).
    let alice_dir = DataDir::new(net.root.join("alice"));
    let alice_keys = alice_dir.load_keys().unwrap();
    let bob_keys = bob_dir.load_keys().unwrap();
    common::befriend(
        (&alice_dir, &alice_keys, net.mailbox_server, "alice"),
        (&bob_dir, &bob_keys, net.mailbox_server, "bob"),
    );
    let mut book =
        bastet_client::Contacts::load(&alice_dir, &alice_keys, net.mailbox_server).unwrap();
    let mut seal = |text: &str| {
        book.seal_message(
            &alice_keys,
            "bob",
            &Content::Text(text.into()),
            42,
            &mut rand::rng(),
        )
        .unwrap()
        .remove(0)
        .payload
    };
    {
        let mut store = net.store.lock().unwrap();
        store.deliver(bob_address.mailbox, seal("one"));
        store.deliver(bob_address.mailbox, vec![1; 300]);
        store.deliver(bob_address.mailbox, seal("three"));
    }

    // What does not open is shown as rejected, never dropped silently or
    // shown as from someone; all three are then deleted.
    let report = bob.inbox(Duration::ZERO, None).await.unwrap();
    let texts: Vec<&str> = report
        .messages
        .iter()
        .map(|m| m.message.text.as_str())
        .collect();
    assert_eq!(texts, ["one", "", "three"]);
    let m = &report.messages;
    assert!(m[0].message.verified && m[2].message.verified);
    assert_eq!(m[0].message.contact.as_deref(), Some("alice"));
    assert_eq!(m[0].message.from, alice_keys.identity_public());
    assert!(!m[1].message.verified && m[1].message.contact.is_none());
    let why = m[1].message.rejected.as_deref().unwrap();
    assert!(why.contains("sealed envelope layer"), "{why}");
    assert_eq!(m[0].received_at_ms, 1_001);
    assert!(report.unreadable.is_empty());
    assert_eq!(report.deleted, 3);
    let left = |store: &Shared| -> Vec<u64> {
        store.lock().unwrap().boxes[&bob_address.mailbox]
            .keys()
            .copied()
            .collect()
    };
    assert!(left(&net.store).is_empty());

    // Polling again shows nothing twice.
    let report = bob.inbox(Duration::ZERO, None).await.unwrap();
    assert!(report.messages.is_empty() && report.unreadable.is_empty());

    // More than one page is read whole.
    {
        let mut store = net.store.lock().unwrap();
        for i in 0..650 {
            store.deliver(bob_address.mailbox, seal(&format!("bulk {i}")));
        }
    }
    let report = bob.inbox(Duration::ZERO, None).await.unwrap();
    assert_eq!(report.messages.len(), 650);
    assert_eq!(report.messages[649].message.text, "bulk 649");
    assert_eq!(report.deleted, 650);

    // --wait returns as soon as a message arrives, and not before.
    let store = net.store.clone();
    let late = seal("late");
    let mailbox = bob_address.mailbox;
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        store.lock().unwrap().deliver(mailbox, late);
    });
    let started = Instant::now();
    let report = bob.inbox(Duration::from_secs(20), None).await.unwrap();
    assert_eq!(report.messages.len(), 1);
    assert_eq!(report.messages[0].message.text, "late");
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert!(started.elapsed() < Duration::from_secs(15));

    // With nothing to read, --wait gives up after its time, polling every
    // 200 ms with identical requests; each is signed under its own nonce,
    // so those signed in the same second are all accepted, none delayed.
    let polls_before = net.store.lock().unwrap().accepted.len();
    let started = Instant::now();
    let report = bob.inbox(Duration::from_secs(2), None).await.unwrap();
    assert!(report.messages.is_empty());
    assert!(started.elapsed() >= Duration::from_secs(2));
    let store = net.store.lock().unwrap();
    let polls = &store.accepted[polls_before..];
    assert!(polls.len() >= 5, "only {} polls in 2 s", polls.len());
    assert!(
        polls
            .iter()
            .all(|p| p.0 == Method::GET && p.1 == polls[0].1),
        "{polls:?}"
    );
    let mut seconds: Vec<u64> = polls.iter().map(|p| p.2).collect();
    seconds.dedup();
    assert!(
        seconds.len() < polls.len(),
        "no two identical polls in the same second: {polls:?}"
    );
    assert!(store.refused.is_empty(), "refused: {:?}", store.refused);
}
