#![doc = include_str!("../README.md")]

mod address;
mod anonymity;
pub mod backup;
pub mod calling;
pub mod calls;
mod card;
mod client;
mod config;
mod contacts;
mod crypto;
pub mod daemon;
mod datadir;
mod error;
pub mod identity;
mod inbox;
pub mod layers;
pub mod media;
mod message;
mod outbox;
pub mod packets;
pub mod pairing;
mod poisson;
mod policy;
mod reliability;
mod route;
mod send_log;
pub mod store;

pub use address::{ADDRESS_LEN, ADDRESS_PREFIX, ADDRESS_VERSION, Address};
pub use anonymity::{
    AnonymityReport, AnonymityWarning, DEFAULT_MIX_COVER_DELAY, DEFAULT_MIX_COVER_RATE,
    ESTIMATED_CLIENTS, Estimate, MIN_MIXES_PER_LAYER, MIN_POOL, NetworkLoad, sender_entropy_bits,
};
pub use calls::{CallId, CallSignal, ReceivedCall};
pub use card::{
    CARD_PREFIX, CARD_VERSION, Card, MAX_CARD_LEN, MAX_CARD_TEXT_LEN, qr_png, qr_terminal,
    safety_number,
};
pub use client::{
    Client, InboxReport, POLL_INTERVAL, SendOptions, SentMessage, now_ms, save_received_file,
};
pub use config::{
    ClientConfig, ENV_PREFIX, MAX_POLL_INTERVAL_MS, MIN_POLL_INTERVAL_MS, TRAFFIC_PRESETS,
    TrafficConfig,
};
pub use contacts::{
    BundledContact, ChainAction, ContactInfo, ContactRequest, ContactResponse, Contacts,
    DeviceBundle, DeviceInfo, FIRST_DEVICE_NAME, MAX_CONTACTS, MAX_HELD_PER_CONTACT, MAX_NAME_LEN,
    MAX_OPENED_CALLS, MAX_PENDING, MAX_SESSIONS, Opened, PskSource, check_name,
};
pub use crypto::{ClientKeys, DeviceSecrets};
pub use datadir::{DataDir, MAX_COMPLETED_ENVELOPES, OutboxLock, STORE_FILE};
pub use error::Error;
pub use inbox::{InboxMessage, InboxPlan, UnreadablePayload, plan_inbox, reassembly_limits};
pub use message::{
    Content, MAX_CONTENT_LEN, MAX_FILE_NAME_LEN, MAX_SEALED_LEN, MAX_TEXT_LEN, MESSAGE_OVERHEAD,
    MessageId, RATCHET_OVERHEAD, ReceivedFile, ReceivedMessage, SealedMessage, check_file_name,
    check_text,
};
pub use outbox::{
    ACK_SLACK, Acked, BACKOFF_FACTOR, DEFAULT_GIVE_UP, DeliveryState, FragmentState, MAX_IN_FLIGHT,
    MAX_PENDING_SURBS, MAX_RETRY_INTERVAL, Outgoing, PendingSurb, RoundTrip, ack_timeout,
    retry_interval,
};
pub use poisson::{
    Bandwidth, FETCHED_MESSAGE_BYTES, KsTest, MAX_LAG, MAX_RATE, ScheduledSend, Scheduler,
    SendKind, TrafficParams, TrafficStream,
};
pub use policy::{
    ANY_CLASS, HopCandidates, MAX_MIX_HOPS, MIN_MIX_HOPS, RoutePolicy, choose_circuit_nodes,
    choose_policy_nodes, choose_policy_nodes_weighted, choose_policy_route,
    choose_policy_route_weighted, hop_layer, is_country_code, parse_classes, parse_list,
};
pub use reliability::{
    HALF_LIFE_MS, MAX_SCORED_NODES, MAX_SCORES_JSON, NodeScore, NodeScores, PRIOR_DELIVERED,
    PRIOR_LOST, SCORES_VERSION, WEIGHT_FLOOR,
};
pub use route::{
    MAX_HOP_DELAY, MIX_LAYERS, Route, RouteNode, choose_route, mailbox_descriptor, sample_delay,
};

/// Result of this crate's operations.
pub type Result<T> = std::result::Result<T, Error>;
