//! Talking to the authorities: fetch and verify the consensus, publish
//! descriptors.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use tokio::sync::{Notify, watch};

use crate::{
    DirectoryConfig, Error, Result, SignedConsensus, SignedDescriptor, VerifiedConsensus, epoch_of,
    unix_now,
};

struct Authority {
    url: String,
    http: reqwest::Client,
}

/// A client of the pinned authorities.
pub struct DirectoryClient {
    authorities: Vec<Authority>,
    pinned: Vec<VerifyingKey>,
    threshold: usize,
    epoch_secs: u64,
}

impl DirectoryClient {
    /// A client for the authorities in `config` (validated here).
    pub fn new(config: &DirectoryConfig) -> Result<Self> {
        config.validate()?;
        let mut authorities = Vec::new();
        let mut pinned = Vec::new();
        for a in &config.authorities {
            pinned.push(a.key()?);
            authorities.push(Authority {
                url: a.url.trim_end_matches('/').to_string(),
                http: bastet_link::https_client(a.pin()?)?,
            });
        }
        Ok(DirectoryClient {
            authorities,
            pinned,
            threshold: config.threshold(),
            epoch_secs: config.epoch_secs,
        })
    }

    /// Epoch length in seconds.
    pub fn epoch_secs(&self) -> u64 {
        self.epoch_secs
    }

    /// Fetches the current epoch's consensus from the authorities, in random
    /// order, and returns the first that carries the threshold of pinned
    /// signatures and is valid now. When none does, the error says what each
    /// authority answered.
    pub async fn fetch_consensus(&self) -> Result<VerifiedConsensus> {
        let epoch = epoch_of(unix_now(), self.epoch_secs);
        self.fetch_epoch(epoch).await
    }

    /// Fetches the consensus of `epoch` (the current or a coming one) and
    /// verifies it as of the later of now and the epoch's start: a coming
    /// epoch's document can be fetched ahead and switched to on time.
    pub async fn fetch_epoch(&self, epoch: u64) -> Result<VerifiedConsensus> {
        let mut order: Vec<&Authority> = self.authorities.iter().collect();
        rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rand::rng());
        let (valid_after, _) = crate::epoch_bounds(epoch, self.epoch_secs);
        let at = unix_now().max(valid_after);
        let mut failures = Vec::new();
        for a in order {
            match self.fetch_from(a, epoch, at).await {
                Ok(c) => return Ok(c),
                Err(e) => failures.push(e.to_string()),
            }
        }
        Err(Error::NoConsensus {
            epoch,
            threshold: self.threshold,
            details: failures.join("; "),
        })
    }

    async fn fetch_from(&self, a: &Authority, epoch: u64, at: u64) -> Result<VerifiedConsensus> {
        let err = |why: String| Error::Authority {
            url: a.url.clone(),
            why,
        };
        let url = format!("{}/v1/consensus/{epoch}", a.url);
        // One quick retry absorbs a dropped keep-alive connection.
        let resp = match a.http.get(&url).send().await {
            Ok(r) => r,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                a.http
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| err(e.to_string()))?
            }
        };
        let status = resp.status();
        let body = read_bounded(resp, crate::consensus::MAX_CONSENSUS_LEN)
            .await
            .map_err(err)?;
        if !status.is_success() {
            return Err(err(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body).trim()
            )));
        }
        let verified = SignedConsensus::from_bytes(&body)
            .and_then(|c| c.verify(&self.pinned, self.threshold, at))
            .map_err(|e| err(e.to_string()))?;
        if verified.epoch != epoch {
            return Err(err(format!(
                "asked for epoch {epoch}, got a consensus for epoch {}",
                verified.epoch
            )));
        }
        Ok(verified)
    }

    /// How many signatures a consensus needs.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// How many authorities are pinned.
    pub fn authority_count(&self) -> usize {
        self.pinned.len()
    }

    /// Publishes a descriptor to every authority. Succeeds if at least one
    /// accepted it; otherwise the error carries each authority's reason.
    pub async fn publish(&self, descriptor: &SignedDescriptor) -> Result<usize> {
        let bytes = descriptor.to_bytes();
        let mut accepted = 0;
        let mut failures = Vec::new();
        for a in &self.authorities {
            let sent = a
                .http
                .post(format!("{}/v1/descriptors", a.url))
                .header("content-type", "application/octet-stream")
                .body(bytes.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => accepted += 1,
                Ok(r) => {
                    let status = r.status();
                    let why = read_bounded(r, 4096).await.unwrap_or_default();
                    failures.push(format!(
                        "{}: {status}: {}",
                        a.url,
                        String::from_utf8_lossy(&why).trim()
                    ));
                }
                Err(e) => failures.push(format!("{}: {e}", a.url)),
            }
        }
        if accepted == 0 {
            return Err(Error::Authority {
                url: "all authorities".into(),
                why: failures.join("; "),
            });
        }
        Ok(accepted)
    }
}

pub(crate) async fn read_bounded(
    mut resp: reqwest::Response,
    max: usize,
) -> std::result::Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > max {
            return Err(format!("response larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Publishes this node's descriptors for the current and the next epoch, and
/// again every quarter epoch (at most every 30 s), until the task is dropped.
/// `sign` makes the signed descriptor for an epoch.
pub async fn publish_forever(
    client: Arc<DirectoryClient>,
    sign: impl Fn(u64) -> Result<SignedDescriptor>,
) {
    let period = Duration::from_secs((client.epoch_secs / 4).clamp(1, 30));
    loop {
        let epoch = epoch_of(unix_now(), client.epoch_secs);
        let mut ok = true;
        for e in [epoch, epoch + 1] {
            let result = match sign(e) {
                Ok(d) => client.publish(&d).await,
                Err(e) => Err(e),
            };
            if let Err(err) = result {
                ok = false;
                tracing::warn!(epoch = e, error = %err, "publishing descriptor failed");
            }
        }
        let wait = if ok { period } else { Duration::from_secs(2) };
        tokio::time::sleep(wait).await;
    }
}

pub(crate) fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Fastest refresh a [`ConsensusWatch::nudge`] can cause.
const MIN_NUDGED_REFRESH: Duration = Duration::from_secs(1);

/// The latest verified consensus, refreshed in the background. It fetches
/// the next epoch's document during the second half of an epoch and
/// [`ConsensusWatch::current`] switches to it the moment it becomes valid;
/// it never goes back to an older epoch than it holds (rollback), and holds
/// nothing once the last document expired: [`ConsensusWatch::current`] is
/// then `None` and callers must refuse to route.
#[derive(Clone)]
pub struct ConsensusWatch {
    rx: watch::Receiver<Held>,
    nudge: Arc<Notify>,
}

/// The documents a watch holds: the current epoch's and, ahead of the
/// boundary, the next one's.
#[derive(Clone, Default)]
struct Held {
    current: Option<Arc<VerifiedConsensus>>,
    next: Option<Arc<VerifiedConsensus>>,
}

impl Held {
    /// The newest document valid at `now`.
    fn valid_at(&self, now: u64) -> Option<Arc<VerifiedConsensus>> {
        [&self.next, &self.current]
            .into_iter()
            .flatten()
            .find(|c| c.valid_after <= now && now < c.valid_until)
            .cloned()
    }

    fn newest_epoch(&self) -> Option<u64> {
        [&self.next, &self.current]
            .into_iter()
            .flatten()
            .map(|c| c.epoch)
            .max()
    }
}

impl ConsensusWatch {
    /// Starts refreshing: at each epoch start, ahead of each epoch end, when
    /// nudged (at most once a second), every `refresh`, and every 2 s while
    /// it holds nothing valid.
    pub fn spawn(client: Arc<DirectoryClient>, refresh: Duration) -> Self {
        let (tx, rx) = watch::channel(Held::default());
        let nudge = Arc::new(Notify::new());
        let nudged = nudge.clone();
        tokio::spawn(async move {
            let epoch_secs = client.epoch_secs;
            let mut held = Held::default();
            let mut nudged_fetch = false;
            loop {
                let now = unix_now();
                let epoch = epoch_of(now, epoch_secs);
                // The prefetched document's epoch began: it is current now.
                if held.next.as_ref().is_some_and(|n| n.epoch <= epoch) {
                    held.current = held.next.take();
                }
                let held_epoch = held.current.as_ref().map(|c| c.epoch);
                if held_epoch.is_none_or(|h| h < epoch) || std::mem::take(&mut nudged_fetch) {
                    match client.fetch_epoch(epoch).await {
                        // Never roll back to an older epoch than held.
                        Ok(fresh) if held.newest_epoch().is_none_or(|h| fresh.epoch >= h) => {
                            held.current = Some(Arc::new(fresh));
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "fetching consensus failed"),
                    }
                }
                // Ahead of the boundary, fetch the next epoch's document.
                let (_, ends) = crate::epoch_bounds(epoch, epoch_secs);
                let second_half = ends.saturating_sub(unix_now()) * 2 <= epoch_secs;
                if held.next.is_none() && second_half {
                    match client.fetch_epoch(epoch + 1).await {
                        Ok(n) => {
                            tracing::info!(epoch = n.epoch, "next epoch's consensus fetched");
                            held.next = Some(Arc::new(n));
                        }
                        Err(e) => tracing::debug!(error = %e, "next epoch's consensus not ready"),
                    }
                }
                if held
                    .current
                    .as_ref()
                    .is_some_and(|c| unix_now() >= c.valid_until)
                    && held.next.is_none()
                {
                    tracing::warn!(
                        "the consensus held expired and no newer one could be fetched; \
                         nothing can be routed until the authorities publish one"
                    );
                    held.current = None;
                }
                tx.send_replace(held.clone());
                // Wake just after the epoch boundary, and poll for the coming
                // document every second before it.
                let until_boundary =
                    Duration::from_millis((ends * 1000).saturating_sub(unix_now_ms()) + 50);
                let wait = if held.valid_at(unix_now()).is_none() {
                    Duration::from_secs(2)
                } else if held.next.is_none() && second_half {
                    Duration::from_secs(1).min(until_boundary)
                } else {
                    refresh.min(until_boundary)
                };
                if tx.is_closed() {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    // Someone met a node the held consensus lacks; look
                    // again, but at most once a second.
                    () = nudged.notified() => {
                        tokio::time::sleep(MIN_NUDGED_REFRESH).await;
                        nudged_fetch = true;
                    }
                }
            }
        });
        ConsensusWatch { rx, nudge }
    }

    /// A watch that holds `consensus` for good and fetches nothing, for
    /// tools and tests that obtained and verified a document another way.
    pub fn fixed(consensus: Option<VerifiedConsensus>) -> Self {
        // The sender is dropped: the receiver keeps the last value.
        let (_, rx) = watch::channel(Held {
            current: consensus.map(Arc::new),
            next: None,
        });
        ConsensusWatch {
            rx,
            nudge: Arc::new(Notify::new()),
        }
    }

    /// Asks for an early refresh: the caller met a node (or needs a
    /// consensus) that the one held does not have. Cheap; rate-limited.
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// The consensus valid now: the next epoch's from the moment it starts,
    /// `None` when nothing valid is held.
    pub fn current(&self) -> Option<Arc<VerifiedConsensus>> {
        self.rx.borrow().valid_at(unix_now())
    }

    /// Waits until a consensus is held.
    pub async fn ready(&mut self) -> Arc<VerifiedConsensus> {
        loop {
            if let Some(c) = self.current() {
                return c;
            }
            if self.rx.changed().await.is_err() {
                // The refresher ended; poll slowly rather than spin.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
