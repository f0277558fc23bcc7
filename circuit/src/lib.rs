#![doc = include_str!("../README.md")]

mod endpoint;
mod error;
mod onion;
mod relay;
mod setup;
mod wire;

pub use endpoint::{
    CircuitReader, CircuitWriter, Incoming, PendingCircuit, hops_from_consensus, open_circuit,
};
pub use error::Error;
pub use onion::{
    EndpointOnion, HopKeys, HopLayer, OnionReceiver, OnionSender, RelayLayer, RendezvousEnd,
    RendezvousOpener, RendezvousSealer, SEALED_LEN, TAG_LEN, splice,
};
pub use relay::{
    CircuitMetrics, MAX_WAITING, RelayConfig, SPLICE_QUEUE, STALL_LIMIT, serve_circuits,
};
pub use setup::{
    COOKIE_LEN, CircuitHop, Cookie, MAX_CIRCUIT_HOPS, Setup, build_setup, process_setup,
};
pub use wire::{
    BODY_LEN, CELL_LEN, CREATE_LEN, Message, PAYLOAD_LEN, Reason, read_message, write_message,
};

/// Result of this crate's operations.
pub type Result<T> = std::result::Result<T, Error>;
