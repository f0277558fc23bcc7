//! The thin async shell around the pure core: it fetches the consensus,
//! talks to the mailbox API and hands packets to the first mixes. What to
//! send when, and what to show, is decided by `outbox` and `inbox`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bastet_directory::{DirectoryClient, DirectoryConfig, VerifiedConsensus, epoch_of};
use bastet_link::{Outbound, OutboundConfig};
use bastet_mailbox::{MailboxClient, StoredMessage};
use bastet_sphinx::{AckId, Fragment, NodeId, SEALED_REPLY_LEN, SealedReply};
use rand::seq::IndexedRandom;

use crate::contacts::Contacts;
use crate::datadir::OutboxLock;
use crate::inbox::{InboxMessage, UnreadablePayload, plan_inbox};
use crate::message::{Content, MessageId};
use crate::outbox::{DeliveryState, MAX_IN_FLIGHT, Outgoing, RoundTrip, ack_timeout};
use crate::packets::{RouteChoice, fragment_packet};
use crate::policy::{RoutePolicy, choose_policy_route};
use crate::route::{RouteNode, mailbox_descriptor};
use crate::send_log::{SendLog, SendNote};
use crate::{Address, ClientConfig, ClientKeys, DataDir, Error, Result};

/// How often `inbox --wait` and `send` poll the mailbox.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Most messages one `inbox` call reads (a mailbox holds at most its quota).
const MAX_INBOX_MESSAGES: usize = 20_000;
/// Page size for listing.
const LIST_LIMIT: usize = bastet_mailbox::api::MAX_LIST_LIMIT;
/// Bound on handing the last packets to the first mixes before exiting.
const SEND_TIMEOUT: Duration = Duration::from_secs(15);
/// Packets queued per first mix; a 1 MiB message is about 700.
const OUTBOUND_QUEUE: usize = 4096;
/// A fragment that could not be handed to a first mix is tried again after
/// this long, without counting as a transmission.
const UNSENT_RETRY: Duration = Duration::from_secs(1);
/// The outbox state on disk is rewritten at most this often while sending
/// (and whenever a message changes state).
const SAVE_PERIOD: Duration = Duration::from_secs(1);

/// A client: its keys and configuration, loaded from its data directory.
pub struct Client {
    dir: DataDir,
    keys: ClientKeys,
    config: ClientConfig,
}

/// How [`Client::send`] behaves.
#[derive(Clone, Copy, Debug)]
pub struct SendOptions {
    /// Give up on a message this long after it was queued.
    pub give_up: Duration,
    /// Wait until the message is stored or failed (retransmitting). If
    /// false, send each fragment once, as far as the in-flight window
    /// ([`crate::MAX_IN_FLIGHT`]) allows, and return; `bastet outbox
    /// --resume` (or the next waiting `send`) carries on.
    pub wait: bool,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            give_up: crate::outbox::DEFAULT_GIVE_UP,
            wait: true,
        }
    }
}

/// What became of one outgoing message.
#[derive(Clone, Debug)]
pub struct SentMessage {
    /// The message id (the recipient sees the same).
    pub message_id: MessageId,
    /// When it was sealed, unix milliseconds.
    pub sent_at_ms: u64,
    /// The relays its first fragment crossed, first mix to mailbox server
    /// (empty if nothing was sent in this call).
    pub route: Vec<RouteNode>,
    /// The epoch of the consensus (and so of the Sphinx keys) it was built
    /// with.
    pub epoch: u64,
    /// How many pinned authorities signed that consensus.
    pub signatures: usize,
    /// Fragments (packets) the message was cut into.
    pub fragments: usize,
    /// Fragments acknowledged.
    pub acked: usize,
    /// Transmissions beyond the first of each fragment.
    pub retransmissions: u32,
    /// Where it is.
    pub state: DeliveryState,
    /// Why it failed.
    pub reason: Option<String>,
    /// The recipient's device this copy is sealed to (short id; empty for
    /// a message queued by an older bastet).
    pub device: String,
}

/// What [`Client::inbox`] found.
#[derive(Debug, Default)]
pub struct InboxReport {
    /// Messages not shown before, in mailbox order.
    pub messages: Vec<InboxMessage>,
    /// For each message, where its file was saved (with a save dir).
    pub saved: Vec<Option<PathBuf>>,
    /// Payloads that could not be read; they stay on the server.
    pub unreadable: Vec<UnreadablePayload>,
    /// Duplicate fragments dropped (retransmissions whose first copy
    /// arrived).
    pub duplicates: usize,
    /// Messages still missing fragments; their fragments stay on the server.
    pub partial: usize,
    /// Acks for this client's own outgoing fragments applied.
    pub acks: usize,
    /// How many payloads the server deleted.
    pub deleted: u64,
    /// Why deleting what was read failed, if it did (those messages are
    /// remembered and not shown again).
    pub delete_error: Option<String>,
}

/// The consensus in force and where this client's mailbox is.
struct Network {
    consensus: VerifiedConsensus,
    api: MailboxClient,
}

impl Client {
    /// Creates a client in `dir`: fetches the consensus, picks
    /// `mailbox_server` (or a random one), generates keys, registers a
    /// mailbox there, and writes keys and `client.toml`.
    pub async fn init(
        dir: DataDir,
        directory: DirectoryConfig,
        mailbox_server: Option<NodeId>,
    ) -> Result<Client> {
        dir.create()?;
        let consensus = fetch_consensus(&directory).await?;
        let server = match mailbox_server {
            Some(id) => mailbox_descriptor(&consensus, &id)?,
            None => {
                let servers: Vec<_> = consensus.mailboxes().collect();
                *servers
                    .choose(&mut rand::rng())
                    .ok_or(Error::NoMailboxServer)?
            }
        };
        let api = mailbox_client(server)?;
        let keys = ClientKeys::generate(&mut rand::rng());
        let mailbox = api.register(keys.mailbox_signing_key()).await?;
        dir.save_keys(&keys)?;
        let config = ClientConfig::new(directory, server.node_id(), mailbox);
        dir.save_config(&config)?;
        Ok(Client { dir, keys, config })
    }

    /// Loads the client in `dir`.
    pub fn open(dir: DataDir) -> Result<Client> {
        let config = dir.load_config()?;
        let keys = dir.load_keys()?;
        if keys.mailbox_id() != config.mailbox()? {
            return Err(Error::Config(
                "mailbox_id: does not belong to mailbox.key in the data dir".into(),
            ));
        }
        Ok(Client { dir, keys, config })
    }

    /// This client's address.
    pub fn address(&self) -> Result<Address> {
        Ok(Address {
            identity_key: self.keys.identity_public(),
            encryption_key: self.keys.encryption_public(),
            mailbox_server: self.config.mailbox_server_id()?,
            mailbox: self.keys.mailbox_id(),
        })
    }

    /// Its keys and configuration, for the daemon to own.
    pub(crate) fn into_parts(self) -> (ClientKeys, ClientConfig) {
        (self.keys, self.config)
    }

    /// The configuration in force.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The current consensus, verified against the pinned authorities.
    pub async fn consensus(&self) -> Result<VerifiedConsensus> {
        fetch_consensus(&self.config.directory).await
    }

    /// This client with `policy` instead of the configured route policy
    /// (a per-message override; the file is not changed).
    pub fn with_route_policy(mut self, policy: RoutePolicy) -> Result<Client> {
        policy.validate("route policy: ")?;
        self.config.route = policy;
        Ok(self)
    }

    /// Encrypts `content` to the contact named `contact` (one copy per
    /// current device of theirs), cuts each copy into fragments, saves
    /// them in the outbox (state `queued`), and sends each fragment in its own
    /// packet on its own route with an ack SURB back to this client's
    /// mailbox. With `options.wait`, then polls for acks and retransmits
    /// until every fragment is acknowledged (`stored`) or `give_up` passes
    /// (`failed`); other pending messages in the outbox are driven too.
    pub async fn send(
        &self,
        contact: &str,
        content: &Content,
        options: SendOptions,
    ) -> Result<Vec<SentMessage>> {
        content.check()?;
        let lock = self.lock_outbox()?;
        let own_server = self.config.mailbox_server_id()?;
        let mut contacts = Contacts::load(&self.dir, &self.keys, own_server)?;
        let addresses = contacts.addresses_of(contact)?;
        let mut network = self.network().await?;
        // Refused now, not retried until the give-up: an unknown mailbox
        // server, or a route policy this consensus cannot meet (there or
        // back), fails before anything is saved or sent.
        {
            let (policy, mean) = (&self.config.route, self.config.mix_delay());
            let rng = &mut rand::rng();
            for to in &addresses {
                mailbox_descriptor(&network.consensus, &to.mailbox_server)?;
                choose_policy_route(&network.consensus, policy, &to.mailbox_server, mean, rng)?;
            }
            choose_policy_route(&network.consensus, policy, &own_server, mean, rng)?;
        }
        let sent_at_ms = now_ms();
        let copies =
            contacts.seal_message(&self.keys, contact, content, sent_at_ms, &mut rand::rng())?;
        let mut outgoing = Vec::with_capacity(copies.len());
        for sealed in &copies {
            outgoing.push(self.queue_copy(sealed, contact, options.give_up)?);
        }
        // Copies for this identity's other devices (not reported with the
        // message; a failure is logged).
        match contacts.seal_copies(&self.keys, contact, content, sent_at_ms, &mut rand::rng()) {
            Ok(own) => {
                let label = format!("your devices (copy of a message to {contact})");
                for sealed in &own {
                    outgoing.push(self.queue_copy(sealed, &label, options.give_up)?);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "copies for your other devices could not be sealed");
            }
        }
        // Chain traffic the book wants sent (links a contact asked for).
        outgoing.extend(self.queue_chain_actions(&mut contacts)?);
        let ids: Vec<String> = copies.iter().map(|c| c.message_id.to_hex()).collect();
        let mut others = if options.wait {
            self.dir.load_outbox()?
        } else {
            Vec::new()
        };
        others.retain(|m| !outgoing.iter().any(|o| o.message_id == m.message_id) && !m.is_final());
        outgoing.extend(others);
        let reports = self
            .drive(&lock, &mut network, outgoing, options.wait)
            .await?;
        let mine: Vec<SentMessage> = reports
            .into_iter()
            .filter(|r| ids.contains(&r.message_id.to_hex()))
            .collect();
        if mine.len() != ids.len() {
            return Err(Error::MalformedMessage(
                "a copy of the message left the outbox unreported",
            ));
        }
        Ok(mine)
    }

    /// Cuts one sealed copy into fragments and saves it in the outbox
    /// (state `queued`).
    fn queue_copy(
        &self,
        sealed: &crate::SealedMessage,
        contact: &str,
        give_up: Duration,
    ) -> Result<Outgoing> {
        let fragments: Vec<Vec<u8>> = bastet_sphinx::fragment(&sealed.payload, &mut rand::rng())?
            .iter()
            .map(Fragment::to_bytes)
            .collect();
        let message_id = sealed.message_id.to_hex();
        let mut outgoing = Outgoing::new(
            message_id.clone(),
            sealed.to.to_string(),
            fragments.len(),
            sealed.sent_at_ms,
            give_up,
        );
        outgoing.contact = Some(contact.to_string());
        outgoing.device =
            (sealed.device != [0; 32]).then(|| crate::identity::short_id(&sealed.device));
        self.dir.save_fragments(&message_id, &fragments)?;
        self.dir.save_outgoing(&outgoing)?;
        Ok(outgoing)
    }

    /// Seals the chain traffic `contacts` asks for (this identity's links
    /// for contacts after a device change) into the outbox, where the
    /// daemon (or `outbox --resume`) sends it. Returns how many copies.
    pub fn queue_chain_traffic(&self, contacts: &mut Contacts) -> Result<usize> {
        Ok(self.queue_chain_actions(contacts)?.len())
    }

    /// Seals and queues the chain traffic `contacts` asks for (its links
    /// for contacts, requests for theirs); failures are logged.
    fn queue_chain_actions(&self, contacts: &mut Contacts) -> Result<Vec<Outgoing>> {
        let mut out = Vec::new();
        let mut sealed = contacts.seal_actions(&self.keys, now_ms(), &mut rand::rng());
        sealed.extend(
            contacts
                .take_pairing_outgoing()
                .into_iter()
                .map(|s| ("pairing".to_string(), s)),
        );
        for (contact, sealed) in sealed {
            out.push(self.queue_copy(&sealed, &contact, crate::outbox::DEFAULT_GIVE_UP)?);
        }
        contacts.save()?;
        Ok(out)
    }

    /// Drives every pending message in the outbox: with `wait`, until each
    /// is stored or failed; otherwise one round of sending what is due and
    /// reading acks.
    pub async fn resume(&self, wait: bool) -> Result<Vec<SentMessage>> {
        let lock = self.lock_outbox()?;
        let pending: Vec<Outgoing> = self
            .dir
            .load_outbox()?
            .into_iter()
            .filter(|m| !m.is_final())
            .collect();
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let mut network = self.network().await?;
        self.drive(&lock, &mut network, pending, wait).await
    }

    /// The outgoing messages saved in the outbox, as they stand.
    pub fn outbox(&self) -> Result<Vec<Outgoing>> {
        self.dir.load_outbox()
    }

    fn lock_outbox(&self) -> Result<OutboxLock> {
        self.dir
            .try_lock_outbox()?
            .ok_or_else(|| Error::OutboxBusy(self.dir.path().to_path_buf()))
    }

    async fn network(&self) -> Result<Network> {
        let consensus = fetch_consensus(&self.config.directory).await?;
        let server = mailbox_descriptor(&consensus, &self.config.mailbox_server_id()?)?;
        let api = mailbox_client(server)?;
        Ok(Network { consensus, api })
    }

    /// The retransmission loop over `messages` (all held under `_lock`).
    async fn drive(
        &self,
        _lock: &OutboxLock,
        network: &mut Network,
        mut messages: Vec<Outgoing>,
        wait: bool,
    ) -> Result<Vec<SentMessage>> {
        let outbound = Outbound::new(OutboundConfig {
            queue_len: OUTBOUND_QUEUE,
            bind_addr: self.config.source_ip()?,
            ..OutboundConfig::default()
        });
        let own_server = self.config.mailbox_server_id()?;
        let send_log = self
            .config
            .test_send_log
            .as_deref()
            .map(SendLog::open)
            .transpose()?;
        let base_timeout = ack_timeout(self.config.mix_delay(), POLL_INTERVAL);
        let mut round_trip = RoundTrip::default();
        let mut fragments: Vec<Vec<Vec<u8>>> = Vec::with_capacity(messages.len());
        let mut recipients: Vec<Option<Address>> = Vec::with_capacity(messages.len());
        for m in &mut messages {
            let frags = self.dir.load_fragments(&m.message_id);
            let to = Address::parse(&m.to);
            match (frags, to) {
                (Ok(f), Ok(a)) if f.len() == m.fragments.len() => {
                    fragments.push(f);
                    recipients.push(Some(a));
                }
                (f, a) => {
                    let why = match (f, a) {
                        (Err(e), _) | (_, Err(e)) => e.to_string(),
                        _ => "fragment count does not match its state".into(),
                    };
                    m.fail(format!("cannot resend: {why}"));
                    fragments.push(Vec::new());
                    recipients.push(None);
                }
            }
        }
        let mut first_routes: Vec<Vec<RouteNode>> = vec![Vec::new(); messages.len()];
        let mut packets_sent = 0u64;
        let mut last_save = Instant::now();
        let mut handled: HashSet<u64> = HashSet::new();
        let mut last_poll = None;
        loop {
            let now = now_ms();
            if epoch_of(now / 1000, self.config.directory.epoch_secs) != network.consensus.epoch {
                match fetch_consensus(&self.config.directory).await {
                    Ok(c) => network.consensus = c,
                    Err(e) => tracing::warn!(error = %e, "refreshing the consensus failed"),
                }
            }
            let mut changed = false;
            // Acks first: a resumed message's acks may have waited in the
            // mailbox past their fragments' retry time.
            let poll_due = last_poll.is_none_or(|t: Instant| t.elapsed() >= POLL_INTERVAL);
            if wait && poll_due && !messages.iter().all(Outgoing::is_final) {
                last_poll = Some(Instant::now());
                changed |= self
                    .take_acks(&network.api, &mut messages, &mut handled, &mut round_trip)
                    .await;
            }
            let now = now_ms();
            let timeout = round_trip.timeout(base_timeout);
            let mut window =
                MAX_IN_FLIGHT.saturating_sub(messages.iter().map(|m| m.in_flight(now)).sum());
            for (i, m) in messages.iter_mut().enumerate() {
                let Some(to) = &recipients[i] else { continue };
                for index in m.due(now) {
                    if window == 0 {
                        break;
                    }
                    window -= 1;
                    let note = send_log.as_ref().map(|log| {
                        let note = SendNote::Real {
                            recipient: to.mailbox,
                            message: m.message_id.clone(),
                            fragment: index,
                        };
                        (log, note)
                    });
                    let sent = self.send_fragment(
                        &network.consensus,
                        (&outbound, note),
                        to,
                        &own_server,
                        &fragments[i][index],
                    );
                    match sent {
                        Ok((ack_id, keys, route)) => {
                            m.record_send(index, ack_id, &keys, now, timeout);
                            packets_sent += 1;
                            if first_routes[i].is_empty() {
                                first_routes[i] = route;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "a fragment could not be sent; trying again");
                            m.record_unsent(index, now, UNSENT_RETRY);
                        }
                    }
                }
                changed |= m.advance(now);
            }
            if changed || last_save.elapsed() >= SAVE_PERIOD || !wait {
                self.save_all(&messages)?;
                last_save = Instant::now();
            }
            if !wait || messages.iter().all(Outgoing::is_final) {
                break;
            }
            // Wake for the next fragment due, unless the window is full:
            // then only acks can make room.
            let next = messages
                .iter()
                .filter_map(Outgoing::next_due_ms)
                .min()
                .unwrap_or(u64::MAX);
            let until_due = if window == 0 {
                POLL_INTERVAL
            } else {
                Duration::from_millis(next.saturating_sub(now_ms()))
            };
            tokio::time::sleep(until_due.clamp(Duration::from_millis(10), POLL_INTERVAL)).await;
        }
        // Let the packets already queued reach their first mixes.
        let drained = Instant::now();
        while outbound.written() + outbound.lost() < packets_sent
            && drained.elapsed() < SEND_TIMEOUT
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(messages
            .iter()
            .zip(first_routes)
            .map(|(m, route)| SentMessage {
                message_id: MessageId::from_hex(&m.message_id).unwrap_or(MessageId([0; 16])),
                sent_at_ms: m.created_at_ms,
                route,
                epoch: network.consensus.epoch,
                signatures: network.consensus.signatures,
                fragments: m.fragments.len(),
                acked: m.acked(),
                retransmissions: m.retransmissions,
                state: m.state,
                reason: m.reason.clone(),
                device: m.device.clone().unwrap_or_default(),
            })
            .collect())
    }

    /// Builds one fragment's packet along a fresh route, with an ack SURB
    /// along another fresh route back to this client's mailbox, and queues
    /// it for its first mix.
    fn send_fragment(
        &self,
        consensus: &VerifiedConsensus,
        (outbound, note): (&Outbound, Option<(&SendLog, SendNote)>),
        to: &Address,
        own_server: &NodeId,
        fragment: &[u8],
    ) -> Result<(AckId, bastet_sphinx::SurbKeys, Vec<RouteNode>)> {
        let params = self.config.traffic_params();
        let choice = RouteChoice {
            consensus,
            policy: &self.config.route,
            params: &params,
            weight: None,
        };
        let rng = &mut rand::rng();
        let (built, ack_id, keys) =
            fragment_packet(&choice, &self.keys, to, own_server, fragment, rng)?;
        let logged = note.map(|(log, note)| (log, note, built.packet.clone()));
        outbound
            .send(&built.peer, built.packet)
            .map_err(|e| Error::Send {
                addr: built.peer.addr.clone(),
                why: e.to_string(),
            })?;
        if let Some((log, note, packet)) = logged {
            log.record(&packet, &note);
        }
        Ok((ack_id, keys, built.nodes))
    }

    /// Lists this client's mailbox, applies the acks found to `messages`,
    /// and deletes the leading run of replies. Returns whether a message
    /// changed state. A listing that fails is logged and retried next round.
    async fn take_acks(
        &self,
        api: &MailboxClient,
        messages: &mut [Outgoing],
        handled: &mut HashSet<u64>,
        round_trip: &mut RoundTrip,
    ) -> bool {
        let listing = match self.list_all(api).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listing the mailbox for acks failed");
                return false;
            }
        };
        let mut leading_replies = None;
        let mut leading = true;
        for stored in &listing {
            let is_reply = stored.payload.len() == SEALED_REPLY_LEN;
            leading &= is_reply;
            if leading {
                leading_replies = Some(stored.seq);
            }
            if !is_reply || !handled.insert(stored.seq) {
                continue;
            }
            if let Ok(reply) = SealedReply::from_bytes(&stored.payload) {
                let now = now_ms();
                for m in messages.iter_mut() {
                    if let Some(acked) = m.apply_reply(&reply, now) {
                        round_trip.sample(acked.round_trip);
                        break;
                    }
                }
            }
        }
        let now = now_ms();
        let mut changed = false;
        for m in messages.iter_mut() {
            changed |= m.advance(now);
        }
        if let Some(upto) = leading_replies {
            let key = self.keys.mailbox_signing_key();
            if let Err(e) = api.delete(key, &self.keys.mailbox_id(), upto).await {
                tracing::warn!(error = %e, "deleting acks read failed; they are read again");
            }
        }
        changed
    }

    /// Saves every message's state; final ones leave the outbox.
    fn save_all(&self, messages: &[Outgoing]) -> Result<()> {
        for m in messages {
            if m.is_final() {
                self.dir.remove_outgoing(&m.message_id)?;
            } else {
                self.dir.save_outgoing(m)?;
            }
        }
        Ok(())
    }

    /// Reads the mailbox: reassembles and decrypts what is new, saves the
    /// files of new messages into `save_dir` (if given), applies acks to the
    /// outbox (unless another process holds it), deletes what was read, and
    /// keeps (and reports) what could not be read and the fragments of
    /// incomplete messages. With a non-zero `wait`, polls every
    /// [`POLL_INTERVAL`] until a new message arrives or `wait` has passed.
    pub async fn inbox(&self, wait: Duration, save_dir: Option<&Path>) -> Result<InboxReport> {
        let network = self.network().await?;
        let api = network.api;
        let mailbox = self.keys.mailbox_id();
        let shown = self.dir.load_shown()?;
        let completed: HashSet<_> = self.dir.load_completed()?.into_iter().collect();
        // Opening a message moves the ratchet: only the lock holder may.
        let lock = self.lock_outbox()?;
        let mut contacts = Contacts::load(&self.dir, &self.keys, self.config.mailbox_server_id()?)?;
        let (mut retried, retried_files) = contacts.retry_pending(&self.keys)?;
        let deadline = Instant::now() + wait;
        let mut plan = loop {
            let listing = self.list_all(&api).await?;
            let keys = &self.keys;
            let mut open = |bytes: &[u8]| Ok(contacts.receive(keys, bytes));
            let plan = plan_inbox(
                &mut open,
                &listing,
                &shown,
                &completed,
                true,
                Instant::now(),
            );
            if !plan.new.is_empty() || !retried.is_empty() || Instant::now() >= deadline {
                break plan;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        };
        retried.append(&mut plan.new);
        plan.new = retried;
        // Messages held for a contact's chain links that came, and notices
        // of their devices changing.
        let (released, held_files) = contacts.take_released();
        plan.new
            .extend(released.into_iter().map(|message| InboxMessage {
                seq: 0,
                received_at_ms: now_ms(),
                fragments: 0,
                message,
            }));

        let mut report = InboxReport {
            duplicates: plan.duplicates,
            partial: plan.partial_envelopes,
            ..InboxReport::default()
        };
        if !plan.replies.is_empty() {
            let mut outbox = self.dir.load_outbox()?;
            let now = now_ms();
            for reply in &plan.replies {
                if outbox
                    .iter_mut()
                    .any(|m| m.apply_reply(reply, now).is_some())
                {
                    report.acks += 1;
                }
            }
            for m in &mut outbox {
                m.advance(now);
            }
            self.save_all(&outbox)?;
        }
        // Files are saved and envelopes remembered before anything is
        // deleted: a crash in between shows a message again, never loses it.
        for m in &plan.new {
            let saved = match (&m.message.file, save_dir) {
                (Some(file), Some(dir)) => Some(save_received_file(dir, &file.name, &file.bytes)?),
                _ => None,
            };
            report.saved.push(saved);
        }
        self.dir.add_completed(&plan.completed)?;
        // The ratchet moves on disk only now: a crash before this opens the
        // same messages again.
        contacts.save()?;
        for f in &retried_files {
            contacts.drop_pending(f)?;
        }
        for f in &held_files {
            contacts.drop_held(f)?;
        }
        // Accepted into an identity: this device becomes one of its own
        // (the next command runs with the identity's keys).
        if let Some((identity, bundle)) = contacts.take_join() {
            contacts.join(&self.keys, &identity, &bundle, now_ms())?;
            self.dir.join_identity(&self.keys, identity)?;
        }
        // Chain traffic (links asked for, or to ask for) waits in the
        // outbox for the next `outbox --resume` or daemon.
        self.queue_chain_actions(&mut contacts)?;
        drop(lock);
        let mut deleted = false;
        if let Some(upto) = plan.delete_upto {
            match api
                .delete(self.keys.mailbox_signing_key(), &mailbox, upto)
                .await
            {
                Ok(n) => {
                    report.deleted = n;
                    deleted = true;
                }
                Err(e) => report.delete_error = Some(e.to_string()),
            }
        }
        self.dir.save_shown(&plan.still_stored_shown(deleted))?;
        report.messages = plan.new;
        report.unreadable = plan.unreadable;
        Ok(report)
    }

    async fn list_all(&self, api: &MailboxClient) -> Result<Vec<StoredMessage>> {
        let key = self.keys.mailbox_signing_key();
        let mailbox = self.keys.mailbox_id();
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let (page, next) = api.list_page(key, &mailbox, after, LIST_LIMIT).await?;
            all.extend(page);
            match next {
                Some(n) if all.len() < MAX_INBOX_MESSAGES && after.is_none_or(|a| n > a) => {
                    after = Some(n);
                }
                _ => return Ok(all),
            }
        }
    }
}

async fn fetch_consensus(directory: &DirectoryConfig) -> Result<VerifiedConsensus> {
    Ok(DirectoryClient::new(directory)?.fetch_consensus().await?)
}

fn mailbox_client(server: &bastet_directory::Descriptor) -> Result<MailboxClient> {
    let api_addr = server
        .api_addr
        .as_deref()
        .ok_or_else(|| Error::MailboxServerNotInConsensus(server.node_id().to_hex()))?;
    Ok(MailboxClient::new(api_addr, server.pin())?)
}

/// Writes a received file into `dir` under its (checked) name, never over
/// an existing file: `name`, then `name.1`, `name.2`, ... Returns the path.
pub fn save_received_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    use std::io::Write;
    crate::message::check_file_name(name)?;
    let failed = |path: &Path, e: std::io::Error| Error::File {
        path: path.to_path_buf(),
        why: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| failed(dir, e))?;
    for n in 0..1000u32 {
        let path = if n == 0 {
            dir.join(name)
        } else {
            dir.join(format!("{name}.{n}"))
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(bytes)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| failed(&path, e))?;
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(failed(&path, e)),
        }
    }
    Err(Error::File {
        path: dir.join(name),
        why: "a thousand files of that name exist already".into(),
    })
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn shell_futures_can_run_on_any_runtime_thread() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = ClientKeys::generate(&mut rand::rng());
        let client = Client {
            dir: DataDir::new(tmp.path()),
            config: ClientConfig::new(
                DirectoryConfig {
                    authorities: Vec::new(),
                    threshold: None,
                    epoch_secs: 60,
                },
                NodeId([1; 32]),
                keys.mailbox_id(),
            ),
            keys,
        };
        let text = Content::Text("x".into());
        assert_send(&client.send("bob", &text, SendOptions::default()));
        assert_send(&client.resume(true));
        assert_send(&client.inbox(Duration::ZERO, None));
        assert_send(&Client::init(
            DataDir::new(tmp.path()),
            client.config.directory.clone(),
            None,
        ));
    }

    #[test]
    fn received_files_never_overwrite_and_bad_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("in");
        let a = save_received_file(&dir, "f.txt", b"one").unwrap();
        let b = save_received_file(&dir, "f.txt", b"two").unwrap();
        assert_eq!(a, dir.join("f.txt"));
        assert_eq!(b, dir.join("f.txt.1"));
        assert_eq!(std::fs::read(&a).unwrap(), b"one");
        assert_eq!(std::fs::read(&b).unwrap(), b"two");
        assert!(save_received_file(&dir, "../escape", b"x").is_err());
        assert!(!tmp.path().join("escape").exists());
    }
}
