//! The thin async shell around the pure core: it fetches the consensus,
//! talks to the mailbox API and writes one packet to the first mix.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bastet_directory::{DirectoryClient, DirectoryConfig, VerifiedConsensus};
use bastet_link::{CertPin, write_frame};
use bastet_mailbox::{MailboxClient, StoredMessage};
use bastet_sphinx::NodeId;
use rand::seq::IndexedRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::inbox::{InboxMessage, UnreadablePayload, plan_inbox};
use crate::message::check_text;
use crate::policy::{RoutePolicy, choose_policy_route};
use crate::route::{RouteNode, mailbox_descriptor};
use crate::{Address, ClientConfig, ClientKeys, DataDir, Error, MessageId, Result, seal_message};

/// How often `inbox --wait` polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Most messages one `inbox` call reads (a mailbox holds at most its quota).
const MAX_INBOX_MESSAGES: usize = 20_000;
/// Page size for listing.
const LIST_LIMIT: usize = bastet_mailbox::api::MAX_LIST_LIMIT;
/// Bound on connecting to the first mix and handing it the packet.
const SEND_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to wait for the first mix to close the link after our packet.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// A client: its keys and configuration, loaded from its data directory.
pub struct Client {
    dir: DataDir,
    keys: ClientKeys,
    config: ClientConfig,
}

/// What [`Client::send`] did.
#[derive(Clone, Debug)]
pub struct SentMessage {
    /// The message id (the recipient sees the same).
    pub message_id: MessageId,
    /// When it was sealed, unix milliseconds.
    pub sent_at_ms: u64,
    /// The relays it crosses, first mix to mailbox server.
    pub route: Vec<RouteNode>,
    /// The epoch of the consensus (and so of the Sphinx keys) it was built
    /// with.
    pub epoch: u64,
    /// How many pinned authorities signed that consensus.
    pub signatures: usize,
}

/// What [`Client::inbox`] found.
#[derive(Debug, Default)]
pub struct InboxReport {
    /// Messages not shown before, in mailbox order.
    pub messages: Vec<InboxMessage>,
    /// Payloads that could not be read; they stay on the server.
    pub unreadable: Vec<UnreadablePayload>,
    /// How many payloads the server deleted.
    pub deleted: u64,
    /// Why deleting what was read failed, if it did (those messages are
    /// remembered and not shown again).
    pub delete_error: Option<String>,
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

    /// Encrypts `text` to `to`, wraps it in a Sphinx packet along a fresh
    /// route to `to`'s mailbox server that meets the route policy, and
    /// hands it to the first mix. When the policy cannot be met, fails
    /// before anything is sent.
    pub async fn send(&self, to: &Address, text: &str) -> Result<SentMessage> {
        check_text(text)?;
        let consensus = fetch_consensus(&self.config.directory).await?;
        let route = choose_policy_route(
            &consensus,
            &self.config.route,
            &to.mailbox_server,
            self.config.mix_delay(),
            &mut rand::rng(),
        )?;
        let sealed = seal_message(&self.keys, to, text, now_ms(), &mut rand::rng())?;
        let packet = bastet_sphinx::build(&route.hops, &to.mailbox, &sealed.payload)?;
        send_packet(&route.entry_addr, route.entry_pin, packet.as_bytes()).await?;
        tracing::debug!(first_hop = %route.nodes[0].node.short(), "packet sent");
        Ok(SentMessage {
            message_id: sealed.message_id,
            sent_at_ms: sealed.sent_at_ms,
            route: route.nodes,
            epoch: consensus.epoch,
            signatures: consensus.signatures,
        })
    }

    /// Reads the mailbox: decrypts what is new, deletes what was read, and
    /// keeps (and reports) what could not be read. With a non-zero `wait`,
    /// polls every [`POLL_INTERVAL`] until a new message arrives or `wait`
    /// has passed.
    pub async fn inbox(&self, wait: Duration) -> Result<InboxReport> {
        let consensus = fetch_consensus(&self.config.directory).await?;
        let server = mailbox_descriptor(&consensus, &self.config.mailbox_server_id()?)?;
        let api = mailbox_client(server)?;
        let mailbox = self.keys.mailbox_id();
        let shown = self.dir.load_shown()?;
        let deadline = Instant::now() + wait;
        let plan = loop {
            let listing = self.list_all(&api).await?;
            let plan = plan_inbox(&self.keys, &listing, &shown);
            if !plan.new.is_empty() || Instant::now() >= deadline {
                break plan;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        };

        let mut report = InboxReport::default();
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

/// Writes one packet to the first mix over pinned TLS, then waits briefly
/// for the mix to close the link so that the packet is not lost to a reset
/// when this process exits.
async fn send_packet(addr: &str, pin: CertPin, packet: &[u8]) -> Result<()> {
    let failed = |why: String| Error::Send {
        addr: addr.to_string(),
        why,
    };
    let mut stream = tokio::time::timeout(SEND_TIMEOUT, async {
        let mut stream = bastet_link::connect(addr, pin).await?;
        let written = async {
            write_frame(&mut stream, packet).await?;
            stream.flush().await?;
            stream.shutdown().await
        };
        written.await.map_err(|e| failed(e.to_string()))?;
        Ok::<_, Error>(stream)
    })
    .await
    .map_err(|_| failed(format!("timed out after {} s", SEND_TIMEOUT.as_secs())))??;
    let mut sink = [0u8; 512];
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(())
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
        let to = client.address().unwrap();
        assert_send(&client.send(&to, "x"));
        assert_send(&client.inbox(Duration::ZERO));
        assert_send(&Client::init(
            DataDir::new(tmp.path()),
            client.config.directory.clone(),
            None,
        ));
    }

    #[tokio::test]
    async fn sending_to_a_closed_port_is_a_clear_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let err = send_packet(&addr, CertPin([0; 32]), &[0; bastet_sphinx::PACKET_LEN])
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&addr), "{err}");
    }
}
