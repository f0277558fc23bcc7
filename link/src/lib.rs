#![doc = include_str!("../README.md")]

mod connections;
mod error;
mod frame;
mod https;
mod ingress;
mod ingress_log;
mod metrics;
mod packet_log;
mod pool;
mod process;
mod tls;

pub use connections::{ConnectionEnd, ConnectionStats, Direction, register_peer_connections};
pub use error::Error;
pub use frame::{FRAME_LEN, read_frame, write_frame};
pub use https::{https_client, serve_https, serve_https_counted};
pub use ingress::{Frame, FrameSink, IngressConfig, IngressStats, Offered, serve_packets};
pub use ingress_log::{FrameId, INGRESS_LOG_LIMIT, IngressLog, TestLog, frame_id, unix_micros};
pub use metrics::{MIN_FREE_BYTES, Readiness, check_free_space, free_bytes, serve_metrics};
pub use packet_log::{PACKET_LOG_LIMIT, PacketLog};
pub use pool::{Outbound, OutboundConfig, Peer, SendError};
pub use process::{exit_code, init_logging, read_fd_line, read_passphrase, shutdown_signal};
pub use tls::{
    CertPin, TlsIdentity, check_private, client_config, connect, connect_from, read_private,
    server_config, write_private,
};

/// Result of this crate's operations.
pub type Result<T> = std::result::Result<T, Error>;
