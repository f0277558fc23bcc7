use std::path::PathBuf;

use thiserror::Error;

/// What went wrong, in terms a user of `bastet` can act on.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The data directory holds no client yet.
    #[error("data dir {} not initialised: run `bastet init --directory FILE`", .0.display())]
    NotInitialised(PathBuf),
    /// `init` would overwrite an existing client.
    #[error("{} already exists: this data dir already holds a client (use another --data-dir)", .0.display())]
    AlreadyInitialised(PathBuf),
    /// A file in the data directory cannot be read or written.
    #[error("{}: {why}", path.display())]
    File {
        /// The file or directory.
        path: PathBuf,
        /// What happened.
        why: String,
    },
    /// A configuration value is wrong; the message names the key.
    #[error("configuration: {0}")]
    Config(String),

    /// The address does not start with `bastet1`.
    #[error("not a Bastet address: it must start with \"{expected}\"")]
    AddressPrefix {
        /// The prefix every address starts with.
        expected: &'static str,
    },
    /// The address has too few or too many characters.
    #[error("address has {got} characters, expected {expected}: check that it was copied whole")]
    AddressLength {
        /// Characters given.
        got: usize,
        /// Characters in every address.
        expected: usize,
    },
    /// The address holds a character outside its alphabet.
    #[error(
        "address contains a character that cannot appear in an address (only a-z and 2-7 after the prefix): check for a typo"
    )]
    AddressCharacters,
    /// The address checksum does not match its contents.
    #[error("address checksum mismatch: check for a typo")]
    AddressChecksum,
    /// The address was made by a newer (or unknown) version of Bastet.
    #[error("address version {0} is not supported by this version of bastet")]
    AddressVersion(u8),

    /// The text or file is longer than one message carries.
    #[error("message is {len} bytes, but one message holds at most {max} bytes of text or file")]
    MessageTooLong {
        /// Bytes given.
        len: usize,
        /// Most bytes.
        max: usize,
    },
    /// Another process is sending from this data dir.
    #[error("another bastet process is sending from {} (outbox.lock is held); wait for it or use `bastet outbox`", .0.display())]
    OutboxBusy(std::path::PathBuf),
    /// No daemon listens on the data directory's socket.
    #[error("no bastet daemon is running for {}: start one with `bastet --data-dir {} daemon` (it keeps running; stop it with Ctrl-C or SIGTERM)", .0.display(), .0.display())]
    NoDaemon(PathBuf),
    /// A daemon (or a direct send) already owns the data directory.
    #[error("a bastet daemon (or `send --direct` / `outbox --resume`) is already running for {}: talk to it with `bastet send`, `bastet inbox`, `bastet status`", .0.display())]
    DaemonRunning(PathBuf),
    /// The daemon failed a request or could not be talked to.
    #[error("daemon: {0}")]
    Daemon(String),
    /// A file name that cannot travel or be saved safely.
    #[error("file name {0:?}: {1}")]
    BadFileName(String, &'static str),
    /// A payload decrypted but its contents are malformed.
    #[error("malformed message: {0}")]
    MalformedMessage(&'static str),
    /// One end-to-end layer of a message failed: it was altered, or not
    /// made for this device. The message names the layer.
    #[error("{layer} layer: {why}")]
    Layer {
        /// "sealed envelope", "ratchet", "pre-shared-key" or "content".
        layer: &'static str,
        /// What failed.
        why: String,
    },
    /// The pre-shared-key layer did not open under the contact's key.
    #[error(
        "pre-shared-key layer: pre-shared key mismatch with {0} (compare `bastet contact show {0}` on both sides, or both set the same passphrase with `bastet contact psk {0} --passphrase`), or the message was altered"
    )]
    PskMismatch(String),
    /// The ratchet refused a message it had already decrypted.
    #[error("ratchet layer: this message was received before (a replay or a duplicate); rejected")]
    Replayed,
    /// A message from a device that is not a contact.
    #[error(
        "message from a device that is not one of your contacts (ratchet identity {0}): it is kept; import their card with `bastet contact import FILE --name NAME` to read it"
    )]
    UnknownSender(String),
    /// The content layer was signed by a key other than the contact's.
    #[error("content layer: signed by a key that is not {0}'s; rejected")]
    NotTheContact(String),
    /// A contact operation cannot be done; the message says why.
    #[error("contact: {0}")]
    Contact(String),
    /// A contact card does not parse or verify.
    #[error("contact card: {0}")]
    Card(String),
    /// An identity chain (devices, revocations) is malformed or breaks a
    /// rule; the message says which.
    #[error("identity chain: {0}")]
    Chain(String),
    /// An identity signed two different histories: its devices cannot be
    /// trusted until the user finds out why.
    #[error(
        "EQUIVOCATION ALARM: {0}: someone holding an admin key of this identity signed two different histories of its devices (a seized device, or a stolen key); verify with the contact in person before trusting their devices again"
    )]
    Equivocation(String),
    /// A message from a device its identity revoked.
    #[error(
        "revoked device: {contact}'s device {device} was revoked by its identity{}; its message is rejected",
        if reason.is_empty() { String::new() } else { format!(" ({reason})") }
    )]
    RevokedDevice {
        /// The contact.
        contact: String,
        /// The device's short id.
        device: String,
        /// The reason given.
        reason: String,
    },
    /// The encrypted store cannot be opened, read or written; the message
    /// says why.
    #[error("store: {0}")]
    Store(String),
    /// No contact has that name.
    #[error(
        "no contact named {0:?}: `bastet contact list` shows your contacts; `bastet contact import FILE --name NAME` adds one"
    )]
    NoSuchContact(String),

    /// A call signal does not parse: the message says which field.
    #[error("malformed call signal: {0}")]
    MalformedCallSignal(String),
    /// An offer names a media profile this client does not know.
    #[error("unknown call profile {0:?}: use normal, constrained or video")]
    UnknownCallProfile(String),
    /// An offer's lifetime is zero or longer than allowed.
    #[error("a call offer must expire within 1 to {max_secs} s, not {secs} s")]
    CallOfferTtl {
        /// The lifetime asked for, seconds.
        secs: f64,
        /// The longest allowed.
        max_secs: u64,
    },
    /// An offer arrived (or was answered) after it expired.
    #[error(
        "call offer {call_id} expired {secs_ago} s ago: it cannot be answered; ask the caller to call again (or check both clocks)"
    )]
    CallOfferExpired {
        /// The call's id (hex).
        call_id: String,
        /// Seconds since it expired.
        secs_ago: u64,
    },
    /// An offer expires further ahead than any offer may: the caller's
    /// clock is far ahead, or the offer was made to be replayed later.
    #[error(
        "call offer {call_id} expires {secs_ahead} s from now, more than the {max_secs} s an offer may live (clock skew included): refused (check both clocks)"
    )]
    CallOfferTooFarAhead {
        /// The call's id (hex).
        call_id: String,
        /// Seconds until it expires, by this device's clock.
        secs_ahead: u64,
        /// The most allowed.
        max_secs: u64,
    },
    /// A key in a call signal cannot be used.
    #[error("call setup: the peer's {0} is invalid; the call cannot start")]
    InvalidCallKey(&'static str),
    /// A signal, or the caller's secrets, of another call than expected.
    #[error("call setup: expected a signal of call {expected}, got one of call {got}")]
    CallIdMismatch {
        /// The call expected (hex).
        expected: String,
        /// The call given (hex).
        got: String,
    },
    /// The two ends derived different call keys.
    #[error(
        "call {call_id}: the call keys do not match: the offer or the answer was altered on the way (possible man-in-the-middle); the call must not start"
    )]
    CallKeyMismatch {
        /// The call's id (hex).
        call_id: String,
    },
    /// A call signal that was received before.
    #[error("call {call_id}: this {kind} was received before (a replay or a duplicate); dropped")]
    CallReplay {
        /// The call's id (hex).
        call_id: String,
        /// `offer`, `answer` or `hangup`.
        kind: String,
    },
    /// A call-media key schedule problem.
    #[error(transparent)]
    Call(#[from] bastet_call::Error),

    /// The consensus has no mix node in a layer, so no route can be built.
    #[error("no mix node in layer {0} of the consensus: cannot build a route, try again later")]
    NoMixInLayer(u8),
    /// The consensus lists no mailbox server at all.
    #[error("no mailbox server in the consensus: cannot create a mailbox, try again later")]
    NoMailboxServer,
    /// A mailbox server named by an address, the config or `--mailbox-server`
    /// is not in the consensus (or is not a mailbox server).
    #[error("mailbox server {0} is not a mailbox server in the current consensus")]
    MailboxServerNotInConsensus(String),
    /// A hop class of the route policy has no eligible node in the
    /// consensus: nothing is sent.
    #[error(
        "route policy cannot be met: hop {hop} (class \"{class}\", jurisdictions {jurisdictions}) has no eligible node: {offered}; nothing was sent"
    )]
    NoEligibleNode {
        /// 1-based hop.
        hop: usize,
        /// The hop class.
        class: String,
        /// The jurisdictions it asked for.
        jurisdictions: String,
        /// The mix layer it is drawn from.
        layer: u8,
        /// What the consensus offers instead.
        offered: String,
    },
    /// The distinctness rules leave no route: nothing is sent.
    #[error(
        "route policy cannot be met: hop {hop} (class \"{class}\") has no node that satisfies {rule}: {why}; nothing was sent"
    )]
    NoDistinctRoute {
        /// 1-based hop where no compatible node is left.
        hop: usize,
        /// Its hop class.
        class: String,
        /// The rule(s) in the way.
        rule: String,
        /// Why.
        why: String,
    },
    /// The recipient's mailbox server is in an avoided jurisdiction.
    #[error(
        "route policy cannot be met: the recipient's mailbox server {node} is in {jurisdiction}, which route.avoid lists (set route.allow_avoided_mailbox = true to send anyway); nothing was sent"
    )]
    MailboxServerAvoided {
        /// The mailbox server's node id (hex).
        node: String,
        /// Its jurisdiction.
        jurisdiction: String,
    },
    /// Saved reliability scores are of a format version this client does
    /// not know.
    #[error(
        "reliability scores format version {0} is not supported by this version of bastet (remove the file to start afresh)"
    )]
    ScoresVersion(u32),
    /// Saved reliability scores cannot be read; the message says where.
    #[error("reliability scores are corrupt: {0} (remove the file to start afresh)")]
    CorruptScores(String),
    /// A mailbox server request failed.
    #[error(transparent)]
    Mailbox(#[from] bastet_mailbox::Error),
    /// Sending the packet to the first mix failed.
    #[error("cannot send to the first mix at {addr}: {why}")]
    Send {
        /// The mix's address.
        addr: String,
        /// What happened.
        why: String,
    },

    /// A directory, consensus or key-file problem.
    #[error(transparent)]
    Directory(#[from] bastet_directory::Error),
    /// A link (TLS) problem.
    #[error(transparent)]
    Link(#[from] bastet_link::Error),
    /// Building the Sphinx packet failed.
    #[error(transparent)]
    Sphinx(#[from] bastet_sphinx::Error),
    /// No call circuit meets the route policy.
    #[error("no call circuit: {0}")]
    CallRoute(String),
    /// Call options that do not go together.
    #[error("call options: {0}")]
    CallOptions(String),
    /// A live microphone, speaker or camera.
    #[error("{0}")]
    Device(#[from] bastet_devices::Error),
    /// The call's media or circuit failed.
    #[error(transparent)]
    Media(#[from] crate::media::MediaError),
}
