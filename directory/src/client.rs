//! Talking to the authorities: fetch and verify the consensus, publish
//! descriptors.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use tokio::sync::{Notify, watch};

use crate::{
    Descriptor, DirectoryConfig, Error, Result, SignedConsensus, SignedDescriptor, SigningKey,
    VerifiedConsensus, epoch_of, unix_now,
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

    /// Fetches the current consensus from the authorities in turn and returns
    /// the first that verifies against the pinned keys and threshold.
    pub async fn fetch_consensus(&self) -> Result<VerifiedConsensus> {
        let mut failures = Vec::new();
        for a in &self.authorities {
            match self.fetch_from(a).await {
                Ok(c) => return Ok(c),
                Err(e) => failures.push(e.to_string()),
            }
        }
        Err(Error::Authority {
            url: "all authorities".into(),
            why: failures.join("; "),
        })
    }

    async fn fetch_from(&self, a: &Authority) -> Result<VerifiedConsensus> {
        let err = |why: String| Error::Authority {
            url: a.url.clone(),
            why,
        };
        let url = format!("{}/v1/consensus", a.url);
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
            return Err(err(format!("{status}: {}", String::from_utf8_lossy(&body))));
        }
        SignedConsensus::from_bytes(&body)?.verify(&self.pinned, self.threshold, unix_now())
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

async fn read_bounded(
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

/// [`publish_forever`] for a node whose descriptor changes only in its
/// epoch: `template` (whatever its `epoch`) is signed with `identity` for each
/// epoch published. The same Sphinx key serves epochs e and e+1 until keys
/// rotate.
pub async fn publish_descriptor_forever(
    client: Arc<DirectoryClient>,
    template: Descriptor,
    identity: SigningKey,
) {
    publish_forever(client, move |epoch| {
        Descriptor {
            epoch,
            ..template.clone()
        }
        .sign(&identity)
    })
    .await;
}

/// Fastest refresh a [`ConsensusWatch::nudge`] can cause.
const MIN_NUDGED_REFRESH: Duration = Duration::from_secs(1);

/// The latest verified consensus, refreshed in the background. It never goes
/// back to an older epoch than it holds, and drops a consensus once expired.
#[derive(Clone)]
pub struct ConsensusWatch {
    rx: watch::Receiver<Option<Arc<VerifiedConsensus>>>,
    nudge: Arc<Notify>,
}

impl ConsensusWatch {
    /// Starts refreshing every `refresh`, as soon as the held consensus
    /// expires, and every 2 s while it has none.
    pub fn spawn(client: Arc<DirectoryClient>, refresh: Duration) -> Self {
        let (tx, rx) = watch::channel(None);
        let nudge = Arc::new(Notify::new());
        let nudged = nudge.clone();
        tokio::spawn(async move {
            loop {
                match client.fetch_consensus().await {
                    Ok(fresh) => {
                        let newer = tx
                            .borrow()
                            .as_ref()
                            .is_none_or(|held: &Arc<VerifiedConsensus>| fresh.epoch >= held.epoch);
                        if newer {
                            tx.send_replace(Some(Arc::new(fresh)));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "fetching consensus failed"),
                }
                let expired = tx
                    .borrow()
                    .as_ref()
                    .is_some_and(|c| unix_now() >= c.valid_until);
                if expired {
                    tx.send_replace(None);
                }
                // Refresh periodically, and right after the held consensus
                // expires so that an epoch change costs no more than a fetch.
                let wait = match tx.borrow().as_ref() {
                    Some(c) => {
                        let left = c.valid_until.saturating_sub(unix_now());
                        refresh.min(Duration::from_secs(left) + Duration::from_millis(100))
                    }
                    None => Duration::from_secs(2),
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
                    }
                }
            }
        });
        ConsensusWatch { rx, nudge }
    }

    /// Asks for an early refresh: the caller met a node (or needs a
    /// consensus) that the one held does not have. Cheap; rate-limited.
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// The consensus held now, if it is still valid.
    pub fn current(&self) -> Option<Arc<VerifiedConsensus>> {
        self.rx
            .borrow()
            .clone()
            .filter(|c| unix_now() < c.valid_until)
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
