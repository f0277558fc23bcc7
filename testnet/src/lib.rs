#![doc = include_str!("../README.md")]

mod anonymity;
mod bench;
mod call_demo;
mod chaos;
mod client;
mod demo;
mod error;
mod layout;
mod metrics;
mod network;
mod ports;
mod probe;
mod process;
mod scan;
mod soak;
mod web;

pub use anonymity::{
    AnonymityOptions, AnonymityReport, Capture, CaptureStats, ClientLogs, MAX_CLIENTS, RelayLogs,
    Traffic, build_trace, delay_model, run_anonymity,
};
pub use bench::{
    Added, Goal, LATENCY_LOADS, LatencyPhase, MixnodeBenchOptions, MixnodeBenchReport,
    NodeActivity, Overload, Percentiles, ProcessRate, RecoveryWindow, Throughput, bench_mixnode,
    process_rate, status_kib,
};
pub use call_demo::{
    CallDemoOptions, CallDemoReport, Lossless, WireReport, call_relay, run_call_demo,
};
pub use chaos::{
    ChaosOptions, ChaosReport, Scenario, network_options as chaos_network_options,
    node_panics_error, run_chaos, run_on as run_chaos_on,
};
pub use client::{
    Client, Daemon, GIVE_UP_MARGIN, Payload, Received, ReceivedFileInfo, RouteHop, Sent,
};
pub use demo::{
    DEMO_PASSPHRASES, DEMO_STORE_SIZE, DemoOptions, DemoReport, INLINE_TEXT_LIMIT, MAX_SIZE,
    MessageReport, message_file, message_text, route_text, run_demo,
};
pub use error::Error;
pub use layout::{AuthorityNode, Layout, RelayNode};
pub use metrics::metric_sum;
pub use network::{Network, NetworkOptions, client_source_addr, relay_source_addr};
pub use process::{Binaries, STOP_GRACE, StopOutcome};
pub use scan::{Hit, ScanReport, scan_for_marker};
pub use soak::{
    GROWTH, Growth, ProcessSeries, SoakOptions, SoakReport, fd_count, rss_kib, run_soak, soak_on,
};
pub use web::{NodeView, REFRESH, Snapshot, WebView};

/// Result of this crate's operations.
pub type Result<T> = std::result::Result<T, Error>;
