//! The daemon's local API: one JSON request, one JSON response, each on
//! one line, over the Unix socket `daemon.sock` in the data directory (mode
//! 0600, in a 0700 directory). Both sides bound what they read.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::{
    DeliveryState, Error, InboxMessage, MessageId, Outgoing, ReceivedFile, ReceivedMessage, Result,
    RouteNode, RoutePolicy, SentMessage,
};

/// The socket's file name in the data directory.
pub const SOCKET_NAME: &str = "daemon.sock";
/// Longest request line: a 1 MiB file, base64-encoded, and its framing.
pub const MAX_REQUEST_LEN: usize = 2 << 20;
/// Longest response line (an inbox page holds at most
/// [`MAX_INBOX_PAGE_BYTES`] of content).
pub const MAX_RESPONSE_LEN: usize = 16 << 20;
/// Content bytes returned by one `inbox` request at most (one message of
/// any size is always returned whole).
pub const MAX_INBOX_PAGE_BYTES: usize = 4 << 20;
/// How long a request may take before the CLI gives up on the daemon
/// (beyond a `wait_ms` it asked for).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `wait_ms` the daemon honours.
pub const MAX_WAIT_MS: u64 = 20_000;

/// A file in a request or in a received message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireFile {
    /// Its name, without directories.
    pub name: String,
    /// Its bytes, base64.
    pub base64: String,
}

/// What the CLI asks of the daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Parameters, counters, bandwidth and latency.
    Status {},
    /// Seal, fragment and queue a message; answered once it is saved.
    Send {
        /// The recipient: a contact's name.
        to: String,
        /// The text, or
        #[serde(default)]
        text: Option<String>,
        /// the file.
        #[serde(default)]
        file: Option<WireFile>,
        /// Seconds after which an unacknowledged message fails.
        give_up_secs: u64,
        /// A route policy for this message instead of the configured one.
        #[serde(default)]
        route: Option<RoutePolicy>,
    },
    /// One message's progress.
    Message {
        /// Its id (hex).
        id: String,
        /// Answer only once it is stored or failed, or after this many
        /// milliseconds (at most [`MAX_WAIT_MS`]), whichever comes first.
        #[serde(default)]
        wait_ms: u64,
    },
    /// Every message in the outbox.
    Outbox {},
    /// Received messages not yet taken, oldest first.
    Inbox {},
    /// The CLI has shown (and saved) these messages: forget them.
    InboxDone {
        /// Their ids (hex).
        ids: Vec<String>,
    },
    /// Save everything and exit, as on SIGTERM.
    Shutdown {},
    /// The configuration the daemon runs with (its client.toml as it was
    /// at start, with environment overrides applied).
    Config {},
    /// A contact-book operation (the daemon owns the ratchet state).
    Contact {
        /// What to do.
        request: crate::ContactRequest,
    },
}

/// One relay of a route, for display.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireHop {
    /// Node id (hex).
    pub node: String,
    /// `mix1`, `mix2`, `mix3` (or `mix4`) or `mailbox`.
    pub role: String,
    /// Its declared jurisdiction.
    pub jurisdiction: String,
}

impl From<&RouteNode> for WireHop {
    fn from(n: &RouteNode) -> Self {
        WireHop {
            node: n.node.to_hex(),
            role: n.role_label(),
            jurisdiction: n.jurisdiction.clone(),
        }
    }
}

/// An outgoing message's progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageReport {
    /// Its id (hex).
    pub message_id: String,
    /// The recipient: the contact's name (or, for a message queued by an
    /// older bastet, its address).
    pub to: String,
    /// When it was sealed (unix ms).
    pub sent_at_ms: u64,
    /// The route its first fragment took (empty until it went out).
    pub route: Vec<WireHop>,
    /// The consensus epoch it was first sent in (0 until then).
    pub epoch: u64,
    /// Authority signatures on that consensus.
    pub signatures: usize,
    /// Fragments (packets) it was cut into.
    pub fragments: usize,
    /// Fragments acknowledged.
    pub acked: usize,
    /// Transmissions beyond the first of each fragment.
    pub retransmissions: u32,
    /// `queued`, `sent`, `stored` or `failed`.
    pub state: DeliveryState,
    /// Why it failed.
    pub reason: Option<String>,
    /// The recipient's device this copy is sealed to (short id).
    #[serde(default)]
    pub device: String,
}

impl From<&SentMessage> for MessageReport {
    fn from(s: &SentMessage) -> Self {
        MessageReport {
            message_id: s.message_id.to_hex(),
            to: String::new(),
            sent_at_ms: s.sent_at_ms,
            route: s.route.iter().map(WireHop::from).collect(),
            epoch: s.epoch,
            signatures: s.signatures,
            fragments: s.fragments,
            acked: s.acked,
            retransmissions: s.retransmissions,
            state: s.state,
            reason: s.reason.clone(),
            device: s.device.clone(),
        }
    }
}

impl From<&Outgoing> for MessageReport {
    fn from(m: &Outgoing) -> Self {
        MessageReport {
            message_id: m.message_id.clone(),
            to: m.contact.clone().unwrap_or_else(|| m.to.clone()),
            sent_at_ms: m.created_at_ms,
            route: Vec::new(),
            epoch: 0,
            signatures: 0,
            fragments: m.fragments.len(),
            acked: m.acked(),
            retransmissions: m.retransmissions,
            state: m.state,
            reason: m.reason.clone(),
            device: m.device.clone().unwrap_or_default(),
        }
    }
}

/// A received message, complete, decrypted and checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireReceived {
    /// The sender's message id (hex).
    pub message_id: String,
    /// The sender's identity key (hex; zeros if unknown).
    pub from: String,
    /// The contact it is from, if known.
    #[serde(default)]
    pub contact: Option<String>,
    /// Whether every layer opened and the signature is the contact's.
    pub verified: bool,
    /// Why it was rejected, if it was (then it has no content).
    #[serde(default)]
    pub rejected: Option<String>,
    /// A notice about the contact (their devices changed, an alarm), not a
    /// message they wrote.
    #[serde(default)]
    pub notice: bool,
    /// A copy of a message this identity sent to `contact` from another of
    /// its devices.
    #[serde(default)]
    pub outgoing: bool,
    /// The sender's timestamp (unix ms).
    pub sent_at_ms: u64,
    /// When the mailbox server stored its last fragment (unix ms).
    pub received_at_ms: u64,
    /// Fragments it arrived in.
    pub fragments: u32,
    /// The text (empty for a file).
    pub text: String,
    /// The file, if any.
    pub file: Option<WireFile>,
}

impl WireReceived {
    /// The wire form of `m`.
    pub fn new(m: &ReceivedMessage, received_at_ms: u64, fragments: u32) -> Self {
        use data_encoding::BASE64;
        WireReceived {
            message_id: m.message_id.to_hex(),
            from: hex::encode(m.from),
            contact: m.contact.clone(),
            verified: m.verified,
            rejected: m.rejected.clone(),
            notice: m.notice,
            outgoing: m.outgoing,
            sent_at_ms: m.sent_at_ms,
            received_at_ms,
            fragments,
            text: m.text.clone(),
            file: m.file.as_ref().map(|f| WireFile {
                name: f.name.clone(),
                base64: BASE64.encode(&f.bytes),
            }),
        }
    }

    /// Back to the form the inbox shows (the seq is not kept: 0).
    pub fn to_inbox_message(&self) -> Result<InboxMessage> {
        use data_encoding::BASE64;
        let bad = Error::MalformedMessage;
        let file = self
            .file
            .as_ref()
            .map(|f| {
                BASE64
                    .decode(f.base64.as_bytes())
                    .map(|bytes| ReceivedFile {
                        name: f.name.clone(),
                        bytes,
                    })
                    .map_err(|_| bad("a held file is not base64"))
            })
            .transpose()?;
        let from = hex::decode(&self.from)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or(bad("a held message's sender is not a key"))?;
        Ok(InboxMessage {
            seq: 0,
            received_at_ms: self.received_at_ms,
            fragments: self.fragments,
            message: ReceivedMessage {
                message_id: MessageId::from_hex(&self.message_id)
                    .ok_or(bad("a held message's id is not hex"))?,
                sent_at_ms: self.sent_at_ms,
                from,
                contact: self.contact.clone(),
                verified: self.verified,
                text: self.text.clone(),
                file,
                rejected: self.rejected.clone(),
                notice: self.notice,
                outgoing: self.outgoing,
            },
        })
    }
}

/// Traffic counters since the daemon started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Real packets (fragments) sent, retransmissions included.
    pub real: u64,
    /// Drop-cover packets sent.
    pub drop: u64,
    /// Loop-cover packets sent.
    pub loops_sent: u64,
    /// Loop-cover packets that came back.
    pub loops_returned: u64,
    /// Loop-cover packets given up on.
    pub loops_lost: u64,
    /// Ticks that sent nothing (no route could be built).
    pub skipped: u64,
    /// Ticks skipped because the daemon was more than 2 s late (suspend).
    pub missed: u64,
    /// Acks applied.
    pub acks: u64,
    /// Messages received and handed to the inbox.
    pub received: u64,
    /// Mailbox listings.
    pub polls: u64,
    /// Mailbox listings that failed.
    pub poll_errors: u64,
    /// Payload bytes fetched from the mailbox.
    pub bytes_down: u64,
    /// Ticks served (packets built and queued, or skipped).
    pub ticks: u64,
    /// Microseconds spent building and queueing them.
    pub tick_work_us: u64,
}

/// One node's loop-measured reliability.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireScore {
    /// Node id (hex).
    pub node: String,
    /// Estimated delivery rate of loops through it.
    pub delivery: f64,
    /// Weight in route selection, (0, 1].
    pub weight: f64,
    /// Loops it carried (decayed).
    pub samples: f64,
}

/// What `bastet status` shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The daemon's process id.
    pub pid: u32,
    /// Seconds since it started.
    pub uptime_secs: u64,
    /// The client's address.
    pub address: String,
    /// The traffic preset named in the config.
    pub preset: String,
    /// λ_P, packets/s.
    pub payload_rate: f64,
    /// λ_L, packets/s.
    pub loop_rate: f64,
    /// Mean per-mix delay, ms.
    pub mean_hop_delay_ms: u64,
    /// Longest per-mix delay, ms.
    pub max_hop_delay_ms: u64,
    /// Mailbox polling interval, ms.
    pub poll_interval_ms: u64,
    /// Packet length on every link, bytes.
    pub packet_len: usize,
    /// Idle bandwidth up (bytes/s), cover only.
    pub idle_up_bytes_per_sec: f64,
    /// Idle bandwidth down (bytes/s): loops fetched back and polling.
    pub idle_down_bytes_per_sec: f64,
    /// Expected time from queuing a one-packet message to it being
    /// stored at the recipient's mailbox server, ms.
    pub expected_latency_ms: u64,
    /// Measured payload-stream rate so far, packets/s.
    pub measured_payload_rate: f64,
    /// The consensus epoch in force.
    pub epoch: u64,
    /// Real packets waiting for a payload tick.
    pub queued_packets: usize,
    /// Messages in the outbox that are not final.
    pub pending_messages: usize,
    /// Received messages waiting for `bastet inbox`.
    pub inbox_messages: usize,
    /// Counters.
    pub counters: Counters,
    /// Per-node loop reliability, least reliable first.
    pub scores: Vec<WireScore>,
    /// This client's mailbox server (node id, hex).
    #[serde(default)]
    pub mailbox_server: String,
    /// Its jurisdiction, if the consensus lists it.
    #[serde(default)]
    pub mailbox_jurisdiction: Option<String>,
    /// Authority signatures on the consensus in force.
    #[serde(default)]
    pub consensus_signatures: usize,
    /// Nodes in it.
    #[serde(default)]
    pub consensus_nodes: usize,
    /// Seconds it stays valid (0: expired, a new one is being fetched).
    #[serde(default)]
    pub consensus_valid_secs: u64,
    /// The route policy in force: hop classes first mix to last, and the
    /// jurisdictions avoided.
    #[serde(default)]
    pub route_template: Vec<String>,
    /// Jurisdictions never crossed.
    #[serde(default)]
    pub route_avoid: Vec<String>,
    /// The encrypted store's size and the bytes its open compartments use
    /// (`None`: a plain data dir).
    #[serde(default)]
    pub store_bytes: Option<(u64, u64)>,
    /// Estimated sender anonymity of this preset on the consensus in
    /// force (`None` from a daemon that predates it).
    #[serde(default)]
    pub anonymity: Option<crate::AnonymityReport>,
}

/// The daemon's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// To `status`.
    Status(Box<StatusReport>),
    /// To `send` and `message`.
    Message(MessageReport),
    /// The copies of a message queued by `send`, one per device of the
    /// recipient.
    Sent {
        /// One report per copy.
        copies: Vec<MessageReport>,
    },
    /// To `outbox`.
    Outbox {
        /// Every message still in the outbox.
        messages: Vec<MessageReport>,
    },
    /// To `inbox`.
    Inbox {
        /// Received messages, oldest first.
        messages: Vec<WireReceived>,
        /// Whether more are waiting beyond this page.
        more: bool,
        /// Envelopes still missing fragments.
        partial: usize,
    },
    /// To `inbox_done` and `shutdown`.
    Done,
    /// To `contact`.
    Contact {
        /// The contact book's answer.
        contact: crate::ContactResponse,
    },
    /// To `config`.
    Config {
        /// The configuration in force.
        config: Box<crate::ClientConfig>,
    },
    /// The request failed.
    Error {
        /// Why.
        error: String,
    },
}

/// The socket path for a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// Sends `request` to the daemon of `data_dir` and returns its answer;
/// [`Error::NoDaemon`] if none is listening.
pub async fn call(data_dir: &Path, request: &Request) -> Result<Response> {
    let path = socket_path(data_dir);
    let not_running = || Error::NoDaemon(data_dir.to_path_buf());
    let stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(not_running());
        }
        Err(e) => {
            return Err(Error::File {
                path,
                why: format!("cannot reach the daemon: {e}"),
            });
        }
    };
    let exchange = async {
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(request).map_err(|e| daemon_error(&e))?;
        line.push(b'\n');
        write.write_all(&line).await.map_err(|e| daemon_error(&e))?;
        write.shutdown().await.map_err(|e| daemon_error(&e))?;
        let line = read_line(&mut BufReader::new(read), MAX_RESPONSE_LEN)
            .await
            .map_err(|e| daemon_error(&e))?
            .ok_or_else(|| {
                Error::Daemon("the daemon closed the connection without answering".into())
            })?;
        serde_json::from_slice(&line).map_err(|e| daemon_error(&e))
    };
    let limit = REQUEST_TIMEOUT
        + match request {
            Request::Message { wait_ms, .. } => Duration::from_millis((*wait_ms).min(MAX_WAIT_MS)),
            _ => Duration::ZERO,
        };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| Error::Daemon(format!("no answer within {limit:?}")))?
}

fn daemon_error(e: &dyn std::fmt::Display) -> Error {
    Error::Daemon(e.to_string())
}

/// Reads one `\n`-terminated line of at most `max` bytes (without the
/// newline); `None` at a clean end of stream before any byte.
pub async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok((!line.is_empty()).then_some(line));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("line longer than {max} bytes"),
            ));
        }
        line.extend_from_slice(&buf[..take]);
        reader.consume(take + usize::from(done));
        if done {
            return Ok(Some(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded_and_split() {
        let data: &[u8] = b"abc\ndef\n";
        let mut r = BufReader::new(data);
        assert_eq!(read_line(&mut r, 3).await.unwrap().unwrap(), b"abc");
        assert_eq!(read_line(&mut r, 3).await.unwrap().unwrap(), b"def");
        assert!(read_line(&mut r, 3).await.unwrap().is_none());
        let mut r = BufReader::new(&b"abcd\n"[..]);
        assert!(read_line(&mut r, 3).await.is_err());
        let mut r = BufReader::new(&b"tail"[..]);
        assert_eq!(read_line(&mut r, 8).await.unwrap().unwrap(), b"tail");
    }

    #[test]
    fn a_held_message_converts_back_whole() {
        use crate::{MessageId, ReceivedFile, ReceivedMessage};
        let m = ReceivedMessage {
            message_id: MessageId([7; 16]),
            sent_at_ms: 5,
            from: [3; 32],
            contact: Some("alice".into()),
            verified: true,
            text: String::new(),
            file: Some(ReceivedFile {
                name: "a.bin".into(),
                bytes: vec![0, 1, 2, 255],
            }),
            rejected: None,
            notice: false,
            outgoing: false,
        };
        let wire = WireReceived::new(&m, 9, 2);
        let json = serde_json::to_string(&wire).unwrap();
        let back: WireReceived = serde_json::from_str(&json).unwrap();
        let shown = back.to_inbox_message().unwrap();
        assert_eq!(shown.message, m);
        assert_eq!((shown.received_at_ms, shown.fragments), (9, 2));
        let mut bad = back.clone();
        bad.from = "zz".into();
        assert!(bad.to_inbox_message().is_err());
        let mut bad = back;
        bad.file.as_mut().unwrap().base64 = "***".into();
        assert!(bad.to_inbox_message().is_err());
    }

    #[test]
    fn contact_answers_survive_the_socket() {
        use crate::ContactResponse;
        for contact in [
            ContactResponse::Card { text: "c".into() },
            ContactResponse::Done {},
            ContactResponse::Devices {
                identity: "ab".into(),
                devices: Vec::new(),
                holds_identity_key: true,
            },
            ContactResponse::PairCode {
                code: "p".into(),
                expires_ms: 5,
            },
        ] {
            let json = serde_json::to_string(&Response::Contact {
                contact: contact.clone(),
            })
            .unwrap();
            match serde_json::from_str::<Response>(&json) {
                Ok(Response::Contact { contact: back }) => {
                    assert_eq!(format!("{back:?}"), format!("{contact:?}"));
                }
                other => panic!("{json}: {other:?}"),
            }
        }
        let copies = Response::Sent { copies: Vec::new() };
        let json = serde_json::to_string(&copies).unwrap();
        assert!(matches!(
            serde_json::from_str::<Response>(&json),
            Ok(Response::Sent { .. })
        ));
    }

    #[test]
    fn requests_parse_strictly() {
        let r: Request = serde_json::from_str(r#"{"op":"status"}"#).unwrap();
        assert!(matches!(r, Request::Status {}));
        assert!(serde_json::from_str::<Request>(r#"{"op":"status","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"nope"}"#).is_err());
        let r: Request =
            serde_json::from_str(r#"{"op":"send","to":"bastet1x","text":"hi","give_up_secs":5}"#)
                .unwrap();
        assert!(matches!(
            r,
            Request::Send {
                give_up_secs: 5,
                ..
            }
        ));
    }
}
