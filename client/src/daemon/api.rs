//! The daemon's local API: one JSON request, one JSON response, each on
//! one line, over the Unix socket `daemon.sock` in the data directory (mode
//! 0600, in a 0700 directory). Both sides bound what they read.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use bastet_sphinx::NodeId;

use crate::calls::{CallAnswer, CallId, CallOffer, CallSignal, Hangup, HangupReason, ReceivedCall};
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
    /// Seal a call signal to a contact and queue it like a message (same
    /// outbox, acks, retransmission and give-up); answered with `sent`.
    CallSend {
        /// The contact's name.
        to: String,
        /// One device of theirs (its device key, hex): an answer goes to
        /// the device that sent the offer. `None`: every current device
        /// (an offer rings them all; a hangup cancels it on all).
        #[serde(default)]
        device: Option<String>,
        /// With `device` left out: every current device but this one (hex):
        /// the caller's `answered_elsewhere` to the devices that did not
        /// answer.
        #[serde(default)]
        except: Option<String>,
        /// The signal.
        signal: WireCallSignal,
    },
    /// Take (remove) the call signals received, oldest first; answered
    /// with `call_signals`.
    CallSignals {
        /// With none waiting, wait up to this many milliseconds (at most
        /// [`MAX_WAIT_MS`]) for one.
        #[serde(default)]
        wait_ms: u64,
        /// Only the signals of this call (hex id); the others stay.
        #[serde(default)]
        call_id: Option<String>,
    },
    /// The relays of a call circuit under the configured route policy
    /// (entry, middle, rendezvous) from the daemon's consensus, and this
    /// device's public keys; answered with `call_route`.
    CallRoute {
        /// The rendezvous relay (node id, hex) the offer names; `None`:
        /// the daemon chooses one (the caller).
        #[serde(default)]
        rendezvous: Option<String>,
    },
}

/// One relay of a call circuit, as `call_route` gives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireCircuitHop {
    /// Node id, hex.
    pub node: String,
    /// Its circuit listener, `host:port`.
    pub addr: String,
    /// Its TLS certificate pin, hex.
    pub pin: String,
    /// Its Sphinx key for the consensus epoch, hex.
    pub sphinx_key: String,
    /// Its jurisdiction.
    pub jurisdiction: String,
}

/// A call circuit's relays and this device's keys.
#[derive(Clone, Debug)]
pub struct CallRoute {
    /// Entry, middle, rendezvous.
    pub hops: Vec<bastet_circuit::CircuitHop>,
    /// Their jurisdictions, in the same order (for the user).
    pub jurisdictions: Vec<String>,
    /// This device's identity and device keys.
    pub me: crate::calls::Peer,
    /// Where this client's connections leave from (`source_addr`).
    pub source_addr: Option<std::net::IpAddr>,
}

/// A call signal in JSON: byte fields in hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WireCallSignal {
    /// [`CallOffer`].
    Offer {
        /// 16 bytes.
        call_id: String,
        /// Unix seconds.
        expires_unix: u64,
        /// `normal`, `constrained` or `video`.
        profile: String,
        /// The rendezvous relay's node id, 32 bytes.
        rendezvous: String,
        /// 32 bytes.
        cookie: String,
        /// The caller's ephemeral X25519 key, 32 bytes.
        x25519: String,
        /// The caller's ML-KEM-768 encapsulation key, 1184 bytes.
        kem_ek: String,
    },
    /// [`CallAnswer`].
    Answer {
        /// 16 bytes.
        call_id: String,
        /// The callee's ephemeral X25519 key, 32 bytes.
        x25519: String,
        /// The ML-KEM-768 ciphertext, 1088 bytes.
        kem_ct: String,
        /// The callee's key confirmation, 32 bytes.
        confirmation: String,
    },
    /// [`Hangup`].
    Hangup {
        /// 16 bytes.
        call_id: String,
        /// Why.
        reason: HangupReason,
    },
}

/// `N` bytes from the hex of field `what`.
fn hex_field<const N: usize>(s: &str, what: &str) -> Result<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|_| {
        Error::MalformedCallSignal(format!(
            "{what} must be {N} bytes in hex ({} hex digits), got {} characters",
            2 * N,
            s.len()
        ))
    })?;
    Ok(out)
}

impl From<&CallSignal> for WireCallSignal {
    fn from(signal: &CallSignal) -> Self {
        match signal {
            CallSignal::Offer(o) => WireCallSignal::Offer {
                call_id: o.call_id.to_hex(),
                expires_unix: o.expires_unix,
                profile: o.profile.clone(),
                rendezvous: hex::encode(o.rendezvous),
                cookie: hex::encode(o.cookie),
                x25519: hex::encode(o.x25519),
                kem_ek: hex::encode(o.kem_ek.as_slice()),
            },
            CallSignal::Answer(a) => WireCallSignal::Answer {
                call_id: a.call_id.to_hex(),
                x25519: hex::encode(a.x25519),
                kem_ct: hex::encode(a.kem_ct.as_slice()),
                confirmation: hex::encode(a.confirmation),
            },
            CallSignal::Hangup(h) => WireCallSignal::Hangup {
                call_id: h.call_id.to_hex(),
                reason: h.reason,
            },
        }
    }
}

impl TryFrom<&WireCallSignal> for CallSignal {
    type Error = Error;

    /// Refuses bad hex, wrong lengths and an unknown profile.
    fn try_from(wire: &WireCallSignal) -> Result<Self> {
        let signal = match wire {
            WireCallSignal::Offer {
                call_id,
                expires_unix,
                profile,
                rendezvous,
                cookie,
                x25519,
                kem_ek,
            } => CallSignal::Offer(CallOffer {
                call_id: CallId(hex_field(call_id, "call_id")?),
                expires_unix: *expires_unix,
                profile: profile.clone(),
                rendezvous: hex_field(rendezvous, "rendezvous")?,
                cookie: hex_field(cookie, "cookie")?,
                x25519: hex_field(x25519, "x25519")?,
                kem_ek: Box::new(hex_field(kem_ek, "kem_ek")?),
            }),
            WireCallSignal::Answer {
                call_id,
                x25519,
                kem_ct,
                confirmation,
            } => CallSignal::Answer(CallAnswer {
                call_id: CallId(hex_field(call_id, "call_id")?),
                x25519: hex_field(x25519, "x25519")?,
                kem_ct: Box::new(hex_field(kem_ct, "kem_ct")?),
                confirmation: hex_field(confirmation, "confirmation")?,
            }),
            WireCallSignal::Hangup { call_id, reason } => CallSignal::Hangup(Hangup {
                call_id: CallId(hex_field(call_id, "call_id")?),
                reason: *reason,
            }),
        };
        signal.check()?;
        Ok(signal)
    }
}

/// A received call signal in JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireReceivedCall {
    /// The contact it is from.
    pub contact: String,
    /// The sender's identity key (hex).
    pub identity: String,
    /// The sender's device key (hex): where an answer or hangup goes.
    pub device: String,
    /// When this device opened it (unix ms).
    pub received_at_ms: u64,
    /// The signal.
    pub signal: WireCallSignal,
}

impl From<&ReceivedCall> for WireReceivedCall {
    fn from(c: &ReceivedCall) -> Self {
        WireReceivedCall {
            contact: c.contact.clone(),
            identity: hex::encode(c.identity),
            device: hex::encode(c.device),
            received_at_ms: c.received_at_ms,
            signal: WireCallSignal::from(&c.signal),
        }
    }
}

impl TryFrom<&WireReceivedCall> for ReceivedCall {
    type Error = Error;

    fn try_from(wire: &WireReceivedCall) -> Result<Self> {
        Ok(ReceivedCall {
            contact: wire.contact.clone(),
            identity: hex_field(&wire.identity, "identity")?,
            device: hex_field(&wire.device, "device")?,
            received_at_ms: wire.received_at_ms,
            signal: CallSignal::try_from(&wire.signal)?,
        })
    }
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
    /// Call signals received and queued for `call_signals`.
    #[serde(default)]
    pub call_signals: u64,
    /// Call signals refused: offers expired or too far ahead, replays.
    #[serde(default)]
    pub call_signals_refused: u64,
    /// Call signals dropped, oldest first, because too many waited.
    #[serde(default)]
    pub call_signals_dropped: u64,
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
    /// To `call_signals`.
    CallSignals {
        /// The signals taken, oldest first (empty if none came in time).
        signals: Vec<WireReceivedCall>,
    },
    /// To `call_route`.
    CallRoute {
        /// Entry, middle, rendezvous.
        hops: Vec<WireCircuitHop>,
        /// This identity's key, hex.
        identity: String,
        /// This device's key, hex.
        device: String,
        /// The configured `source_addr`, if any.
        #[serde(default)]
        source_addr: Option<String>,
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
            Request::Message { wait_ms, .. } | Request::CallSignals { wait_ms, .. } => {
                Duration::from_millis((*wait_ms).min(MAX_WAIT_MS))
            }
            _ => Duration::ZERO,
        };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| Error::Daemon(format!("no answer within {limit:?}")))?
}

/// Asks the daemon of `data_dir` to seal `signal` to contact `to` (its
/// device `device`, or every current device) and queue it: the reports of
/// the copies queued, one per device.
pub async fn send_call_signal(
    data_dir: &Path,
    to: &str,
    device: Option<&[u8; 32]>,
    signal: &CallSignal,
) -> Result<Vec<MessageReport>> {
    let request = Request::CallSend {
        to: to.to_string(),
        device: device.map(hex::encode),
        except: None,
        signal: WireCallSignal::from(signal),
    };
    match call(data_dir, &request).await? {
        Response::Sent { copies } => Ok(copies),
        other => Err(unexpected(other)),
    }
}

/// Like [`send_call_signal`] to every current device of `to` but
/// `except`.
pub async fn send_call_signal_except(
    data_dir: &Path,
    to: &str,
    except: &[u8; 32],
    signal: &CallSignal,
) -> Result<Vec<MessageReport>> {
    let request = Request::CallSend {
        to: to.to_string(),
        device: None,
        except: Some(hex::encode(except)),
        signal: WireCallSignal::from(signal),
    };
    match call(data_dir, &request).await? {
        Response::Sent { copies } => Ok(copies),
        other => Err(unexpected(other)),
    }
}

/// Takes the call signals the daemon of `data_dir` received (of call
/// `call_id` only, if given), waiting up to `wait` (at most
/// [`MAX_WAIT_MS`]) for one if none is there yet.
pub async fn take_call_signals(
    data_dir: &Path,
    wait: Duration,
    call_id: Option<CallId>,
) -> Result<Vec<ReceivedCall>> {
    let request = Request::CallSignals {
        wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        call_id: call_id.map(|id| id.to_hex()),
    };
    match call(data_dir, &request).await? {
        Response::CallSignals { signals } => signals.iter().map(ReceivedCall::try_from).collect(),
        other => Err(unexpected(other)),
    }
}

/// Asks the daemon of `data_dir` for the relays of a call circuit under
/// its route policy (ending at `rendezvous` if given) and this device's
/// keys.
pub async fn call_route(data_dir: &Path, rendezvous: Option<&NodeId>) -> Result<CallRoute> {
    let request = Request::CallRoute {
        rendezvous: rendezvous.map(NodeId::to_hex),
    };
    let (hops, identity, device, source_addr) = match call(data_dir, &request).await? {
        Response::CallRoute {
            hops,
            identity,
            device,
            source_addr,
        } => (hops, identity, device, source_addr),
        other => return Err(unexpected(other)),
    };
    let key = |what: &str, s: &str| -> Result<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| Error::Daemon(format!("call_route: {what} is not 64 hex digits")))?;
        Ok(out)
    };
    let mut circuit = Vec::with_capacity(hops.len());
    let mut jurisdictions = Vec::with_capacity(hops.len());
    for hop in hops {
        circuit.push(bastet_circuit::CircuitHop {
            node: NodeId(key("node", &hop.node)?),
            sphinx_key: bastet_sphinx::SphinxPublicKey::from(key("sphinx_key", &hop.sphinx_key)?),
            addr: hop.addr,
            pin: bastet_link::CertPin(key("pin", &hop.pin)?),
        });
        jurisdictions.push(hop.jurisdiction);
    }
    let source_addr = source_addr
        .map(|s| {
            s.parse()
                .map_err(|_| Error::Daemon(format!("call_route: bad source_addr {s:?}")))
        })
        .transpose()?;
    Ok(CallRoute {
        hops: circuit,
        jurisdictions,
        me: crate::calls::Peer {
            identity: key("identity", &identity)?,
            device: key("device", &device)?,
        },
        source_addr,
    })
}

/// The error for an answer of the wrong kind (or the daemon's error).
fn unexpected(response: Response) -> Error {
    match response {
        Response::Error { error } => Error::Daemon(error),
        other => Error::Daemon(format!("unexpected answer: {other:?}")),
    }
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
    fn call_signals_survive_the_socket_and_bad_fields_are_named() {
        use crate::calls::{self, CallSignal, Hangup, HangupReason, Peer, ReceivedCall};
        let now = 1_800_000_000;
        let (offer, _) = calls::new_offer(
            &mut rand::rng(),
            "video",
            [2; 32],
            now,
            Duration::from_secs(30),
        )
        .unwrap();
        let peer = Peer {
            identity: [1; 32],
            device: [2; 32],
        };
        let (answer, _) = calls::answer(&mut rand::rng(), &offer, &peer, &peer, now).unwrap();
        for signal in [
            CallSignal::Offer(offer.clone()),
            CallSignal::Answer(answer),
            CallSignal::Hangup(Hangup {
                call_id: offer.call_id,
                reason: HangupReason::AnsweredElsewhere,
            }),
        ] {
            let request = Request::CallSend {
                to: "bob".into(),
                device: None,
                except: None,
                signal: WireCallSignal::from(&signal),
            };
            let json = serde_json::to_string(&request).unwrap();
            let Ok(Request::CallSend { signal: wire, .. }) = serde_json::from_str(&json) else {
                panic!("{json}");
            };
            assert_eq!(CallSignal::try_from(&wire).unwrap(), signal);
            let received = ReceivedCall {
                contact: "alice".into(),
                identity: [3; 32],
                device: [4; 32],
                signal: signal.clone(),
                received_at_ms: 5,
            };
            let response = Response::CallSignals {
                signals: vec![WireReceivedCall::from(&received)],
            };
            let json = serde_json::to_string(&response).unwrap();
            let Ok(Response::CallSignals { signals }) = serde_json::from_str(&json) else {
                panic!("{json}");
            };
            assert_eq!(ReceivedCall::try_from(&signals[0]).unwrap(), received);
        }
        let json =
            r#"{"kind":"hangup","call_id":"00112233445566778899aabbccddeeff","reason":"busy"}"#;
        let wire: WireCallSignal = serde_json::from_str(json).unwrap();
        assert!(matches!(
            CallSignal::try_from(&wire),
            Ok(CallSignal::Hangup(Hangup {
                reason: HangupReason::Busy,
                ..
            }))
        ));
        for bad in [
            r#"{"kind":"hangup","call_id":"0011","reason":"busy"}"#,
            r#"{"kind":"hangup","call_id":"zz112233445566778899aabbccddeeff","reason":"busy"}"#,
        ] {
            let wire: WireCallSignal = serde_json::from_str(bad).unwrap();
            let e = CallSignal::try_from(&wire).unwrap_err();
            assert!(e.to_string().contains("call_id must be 16 bytes"), "{e}");
        }
        assert!(
            serde_json::from_str::<WireCallSignal>(
                r#"{"kind":"hangup","call_id":"00112233445566778899aabbccddeeff","reason":"bored"}"#
            )
            .is_err()
        );
        let WireCallSignal::Offer { .. } = WireCallSignal::from(&CallSignal::Offer(offer.clone()))
        else {
            panic!()
        };
        let mut wire = WireCallSignal::from(&CallSignal::Offer(offer.clone()));
        if let WireCallSignal::Offer {
            kem_ek, profile, ..
        } = &mut wire
        {
            kem_ek.pop();
            *profile = "normal".into();
        }
        let e = CallSignal::try_from(&wire).unwrap_err();
        assert!(e.to_string().contains("kem_ek must be 1184 bytes"), "{e}");
        let mut wire = WireCallSignal::from(&CallSignal::Offer(offer));
        if let WireCallSignal::Offer { profile, .. } = &mut wire {
            *profile = "hifi".into();
        }
        assert!(matches!(
            CallSignal::try_from(&wire),
            Err(Error::UnknownCallProfile(_))
        ));
        let r: Request = serde_json::from_str(r#"{"op":"call_signals","wait_ms":500}"#).unwrap();
        assert!(matches!(
            r,
            Request::CallSignals {
                wait_ms: 500,
                call_id: None
            }
        ));
        assert!(
            serde_json::from_str::<Request>(r#"{"op":"call_signals","wait_ms":5,"x":1}"#).is_err()
        );
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
