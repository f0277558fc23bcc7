//! Bringing a whole network up on loopback, watching it, and taking it down.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bastet_directory::{AuthorityRef, DirectoryClient, DirectoryConfig, Role, VerifiedConsensus};
use bastet_sphinx::NodeId;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::Client;
use crate::layout::{self, AuthorityNode, Layout, MAX_MIXES, RelayNode, relay_plan};
use crate::ports::free_ports;
use crate::probe::probe_every_route;
use crate::process::{Binaries, NodeProcess, StopOutcome, run_command, stop_all};
use crate::{Error, Result};

/// How long one `init` may take.
const INIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between readiness checks.
const POLL: Duration = Duration::from_millis(200);
/// Most directory authorities a testnet runs.
pub const MAX_AUTHORITIES: usize = 9;

/// How to start a network.
#[derive(Clone, Debug)]
pub struct NetworkOptions {
    /// Put everything here (created if missing; must be empty). Such a
    /// directory is never deleted. `None`: a fresh temporary directory,
    /// deleted when the network is dropped unless `keep` is set.
    pub dir: Option<PathBuf>,
    /// Leave the temporary directory in place.
    pub keep: bool,
    /// Where the Bastet binaries are (`None`: see [`Binaries::locate`]).
    pub bin_dir: Option<PathBuf>,
    /// Epoch length for the authorities, nodes and clients.
    pub epoch_secs: u64,
    /// Directory authorities (at least 1).
    pub authorities: usize,
    /// Signatures a consensus needs (`None`: a majority).
    pub threshold: Option<usize>,
    /// How long to wait for the authority and for a consensus listing
    /// every node.
    pub ready_timeout: Duration,
    /// Run `mixes_per_jurisdiction` mixnodes in each of these
    /// jurisdictions instead of the default six (`--jurisdictions`).
    pub jurisdictions: Option<Vec<String>>,
    /// Mixnodes per jurisdiction with `jurisdictions` (3 puts one in every
    /// layer in every epoch).
    pub mixes_per_jurisdiction: usize,
    /// Fault injection: the fraction of received packets that every other
    /// mixnode (`mix-a`, `mix-c`, `mix-e`: half of them) drops, through
    /// its `test_drop_fraction` hook. Layers are dealt per epoch, so no
    /// fixed choice puts one lossy mix in each layer; with half of them
    /// lossy, a route crosses 1.5 lossy mixes on average.
    pub loss: f64,
    /// Turn on every mixnode's `test_ingress_log` hook (`ingress.log` in its
    /// directory; see [`RelayNode::ingress_log`]): the time, peer address and
    /// length of every packet it receives, to measure a client's traffic as
    /// the first mix sees it (tell clients apart with
    /// [`Client::set_source_addr`]).
    pub ingress_log: bool,
    /// Record what a global passive observer sees and the ground truth
    /// only the relays know, for `bastet-testnet anonymity`: every relay's
    /// `test_ingress_log`, each mixnode's `test_hop_log` and each mailbox
    /// server's `test_store_log` (in its directory; see [`RelayNode`]), and
    /// each relay's connections leaving from its own loopback address
    /// ([`RelayNode::source_addr`], `source_addr` in its config) so that
    /// the ingress logs name the sending relay.
    pub trace: bool,
    /// Every mixnode's `cover_rate` (λ_M, per second) and
    /// `cover_mix_delay_ms`; `None`: their defaults.
    pub mix_cover: Option<(f64, u64)>,
    /// Fault injection for calls: the fraction of call cells the first
    /// mixnode (in plan order, [`Network::call_relay`]) corrupts through
    /// its `test_cell_loss` hook, so that they are lost.
    pub cell_loss: f64,
    /// Turn on every mixnode's `test_cell_log` hook (`cells.log` in its
    /// directory; see [`RelayNode::cell_log`]).
    pub cell_log: bool,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        NetworkOptions {
            dir: None,
            keep: false,
            bin_dir: None,
            epoch_secs: 30,
            authorities: 3,
            threshold: None,
            ready_timeout: Duration::from_secs(60),
            jurisdictions: None,
            mixes_per_jurisdiction: 3,
            loss: 0.0,
            ingress_log: false,
            trace: false,
            mix_cover: None,
            cell_loss: 0.0,
            cell_log: false,
        }
    }
}

/// The loopback address relay number `index` (in plan order) sends from
/// with [`NetworkOptions::trace`]: `127.1.x.y`, one per relay.
pub fn relay_source_addr(index: usize) -> std::net::IpAddr {
    loopback(1, index)
}

/// A distinct loopback address for client number `index` to send from
/// (see [`Client::set_source_addr`]): `127.2.x.y`, one per client.
pub fn client_source_addr(index: usize) -> std::net::IpAddr {
    loopback(2, index)
}

fn loopback(second: u8, index: usize) -> std::net::IpAddr {
    // 250 hosts per /24, never .0 or .255.
    let third = u8::try_from(index / 250).unwrap_or(u8::MAX);
    let fourth = (index % 250) as u8 + 1;
    std::net::IpAddr::from([127, second, third, fourth])
}

/// The node processes of a network; stopping them on drop is what makes
/// every exit path (error, panic, Ctrl-C dropping the future) clean up.
#[derive(Default)]
struct Processes {
    nodes: Vec<NodeProcess>,
    /// Whether a panic in a node's log was reported already (by
    /// [`Network::panics`] or [`Network::check_alive`]).
    panics_reported: std::sync::atomic::AtomicBool,
}

impl Processes {
    /// (node, the lines of its first panic) for each node whose log has one.
    fn panics(&self) -> Vec<(String, String)> {
        self.nodes
            .iter()
            .filter_map(|n| Some((n.name.clone(), n.panic()?)))
            .collect()
    }
}

impl Drop for Processes {
    // A node that panicked fails the test that ran it, even one that never
    // asked (`Network::panics`): a panic is a bug an operator would see.
    #[allow(clippy::panic)]
    fn drop(&mut self) {
        for (name, outcome) in stop_all(&mut self.nodes) {
            if outcome == StopOutcome::Killed {
                tracing::warn!(node = %name, "did not exit on SIGTERM; killed");
            }
        }
        let panics = self.panics();
        if panics.is_empty() || self.panics_reported.load(Ordering::Relaxed) {
            return;
        }
        let report: String = panics
            .iter()
            .map(|(name, lines)| format!("--- {name}:\n{lines}\n"))
            .collect();
        if std::thread::panicking() {
            eprintln!("bastet-testnet: nodes panicked:\n{report}");
        } else {
            panic!("nodes panicked (a bug: no panic may reach an operator):\n{report}");
        }
    }
}

/// A running testnet: three directory authorities (by default), six
/// mixnodes (dealt two per layer each epoch)
/// and two mailbox servers, each a child process on 127.0.0.1.
///
/// Dropping it stops every process (SIGTERM, then SIGKILL after
/// [`crate::STOP_GRACE`]) and deletes its temporary directory unless told
/// to keep it.
pub struct Network {
    // Field order is drop order: processes stop before their files go.
    processes: Processes,
    temp: Option<tempfile::TempDir>,
    layout: Layout,
    bins: Binaries,
}

impl Network {
    /// Creates keys and configs, starts every node, and returns once the
    /// authority's consensus lists all of them with the roles and
    /// jurisdictions planned, every node answers `/health`, and a probe
    /// packet has crossed every possible route (see `probe`).
    ///
    /// On failure every process started is stopped and the directory is
    /// kept, so that the node logs named in the error can be read.
    pub async fn start(options: NetworkOptions) -> Result<Network> {
        if options.epoch_secs < 10 {
            return Err(Error::InvalidOption(
                "epoch length must be at least 10 seconds".into(),
            ));
        }
        if !(1..=MAX_AUTHORITIES).contains(&options.authorities) {
            return Err(Error::InvalidOption(format!(
                "--authorities must be between 1 and {MAX_AUTHORITIES}"
            )));
        }
        if let Some(k) = options.threshold
            && !(1..=options.authorities).contains(&k)
        {
            return Err(Error::InvalidOption(format!(
                "--threshold {k} must be between 1 and the number of authorities ({})",
                options.authorities
            )));
        }
        if !(0.0..1.0).contains(&options.loss) {
            return Err(Error::InvalidOption(
                "--loss must be at least 0 and less than 1".into(),
            ));
        }
        if let Some(js) = &options.jurisdictions {
            if let Some(bad) = js.iter().find(|j| !bastet_client::is_country_code(j)) {
                return Err(Error::InvalidOption(format!(
                    "--jurisdictions: {bad:?} is not an ISO 3166-1 alpha-2 country code"
                )));
            }
            let mixes = js.len() * options.mixes_per_jurisdiction;
            if js.is_empty() || !(1..=MAX_MIXES).contains(&mixes) {
                return Err(Error::InvalidOption(format!(
                    "--jurisdictions × --mixes-per-jurisdiction must make between 1 and {MAX_MIXES} mixnodes"
                )));
            }
        }
        let bins = Binaries::locate(options.bin_dir.as_deref())?;
        let (dir, mut temp) = prepare_dir(options.dir.as_deref())?;
        if let Some(t) = temp.as_mut() {
            t.disable_cleanup(options.keep);
        }
        let mut processes = Processes::default();
        match launch(&bins, &dir, &options, &mut processes).await {
            Ok(layout) => Ok(Network {
                processes,
                temp,
                layout,
                bins,
            }),
            Err(e) => {
                drop(processes);
                if let Some(t) = temp {
                    let kept = t.keep();
                    tracing::warn!("network files kept for inspection in {}", kept.display());
                }
                Err(e)
            }
        }
    }

    /// Where every node is.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The network's directory.
    pub fn dir(&self) -> &Path {
        &self.layout.dir
    }

    /// The binaries it runs.
    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }

    /// Leaves the directory in place when the network is dropped and
    /// returns it.
    pub fn keep_files(&mut self) -> PathBuf {
        if let Some(t) = self.temp.as_mut() {
            t.disable_cleanup(true);
        }
        self.layout.dir.clone()
    }

    /// The data directories of the relays (mixnodes and mailbox servers):
    /// keys, config, RocksDB, `node.log` and `packet.log`.
    pub fn relay_dirs(&self) -> Vec<PathBuf> {
        self.layout.relays.iter().map(|r| r.dir.clone()).collect()
    }

    /// Creates a client `name` under `<dir>/clients/` with a mailbox on the
    /// mailbox server called `mailbox` (e.g. `mailbox-a`).
    pub async fn client(&self, name: &str, mailbox: &str) -> Result<Client> {
        let server = self
            .layout
            .relay(mailbox)
            .filter(|r| r.role == Role::Mailbox)
            .ok_or_else(|| Error::InvalidOption(format!("{mailbox} is not a mailbox server")))?;
        Client::init(
            name,
            &self.bins.path("bastet"),
            &self.layout.dir.join("clients").join(name),
            &self.layout.directory_config,
            &server.node_id,
        )
        .await
    }

    /// Creates a client `name` whose data dir is an encrypted store of
    /// `size` (e.g. `8MiB`) with a compartment per passphrase (least hidden
    /// first); the client lives in the most hidden one.
    pub async fn encrypted_client(
        &self,
        name: &str,
        mailbox: &str,
        passphrases: &[&str],
        size: &str,
    ) -> Result<Client> {
        let server = self.mailbox_server(mailbox)?;
        Client::init_encrypted(
            name,
            &self.bins.path("bastet"),
            &self.layout.dir.join("clients").join(name),
            &self.layout.directory_config,
            &server,
            passphrases,
            size,
        )
        .await
    }

    /// The directory config file clients are made with.
    pub fn directory_config(&self) -> &Path {
        &self.layout.directory_config
    }

    /// The node id (hex) of mailbox server `mailbox`.
    pub fn mailbox_server(&self, mailbox: &str) -> Result<String> {
        self.layout
            .relay(mailbox)
            .filter(|r| r.role == Role::Mailbox)
            .map(|r| r.node_id.clone())
            .ok_or_else(|| Error::InvalidOption(format!("{mailbox} is not a mailbox server")))
    }

    /// Stops node `name` (SIGTERM, then SIGKILL after the grace period),
    /// keeping its files, as a failure or an operator would.
    pub fn stop_node(&mut self, name: &str) -> Result<StopOutcome> {
        let node = self
            .processes
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or_else(|| Error::InvalidOption(format!("no node called {name}")))?;
        let outcome = stop_all(std::slice::from_mut(node));
        Ok(outcome
            .into_iter()
            .next()
            .map_or(StopOutcome::Killed, |(_, o)| o))
    }

    /// Kills node `name` at once (SIGKILL), keeping its files, as a crash
    /// or a power loss would.
    pub fn kill_node(&mut self, name: &str) -> Result<()> {
        let node = self
            .processes
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or_else(|| Error::InvalidOption(format!("no node called {name}")))?;
        node.kill();
        Ok(())
    }

    /// Every node's name and process id (a node that exited is left out).
    pub fn node_pids(&mut self) -> Vec<(String, u32)> {
        self.processes
            .nodes
            .iter_mut()
            .filter_map(|n| n.exited().is_none().then(|| (n.name.clone(), n.pid())))
            .collect()
    }

    /// Freezes node `name` (SIGSTOP): it neither reads nor answers until
    /// [`Network::resume_node`], as a node cut off the network would seem
    /// to its peers.
    pub fn pause_node(&mut self, name: &str) -> Result<()> {
        self.signal_node(name, "-STOP")
    }

    /// Lets a node frozen by [`Network::pause_node`] go on (SIGCONT).
    pub fn resume_node(&mut self, name: &str) -> Result<()> {
        self.signal_node(name, "-CONT")
    }

    fn signal_node(&mut self, name: &str, signal: &str) -> Result<()> {
        let node = self
            .processes
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or_else(|| Error::InvalidOption(format!("no node called {name}")))?;
        if let Some(status) = node.exited() {
            return Err(node.exited_error(status));
        }
        // `unsafe_code` is forbidden, so kill(1) rather than libc::kill.
        let status = std::process::Command::new("kill")
            .arg(signal)
            .arg(node.pid().to_string())
            .stdin(std::process::Stdio::null())
            .status()
            .map_err(|e| Error::Io {
                what: format!("kill {signal} {name}"),
                source: e,
            })?;
        if !status.success() {
            return Err(Error::Io {
                what: format!("kill {signal} {name}"),
                source: std::io::Error::other(status.to_string()),
            });
        }
        Ok(())
    }

    /// Starts node `name` again with its config and data directory, after
    /// [`Network::stop_node`] (or a crash).
    pub fn start_node(&mut self, name: &str) -> Result<()> {
        self.start_node_with_env(name, &[])
    }

    /// [`Network::start_node`] with extra environment variables for the
    /// node (e.g. libfaketime's `LD_PRELOAD` and `FAKETIME` to skew its
    /// clock).
    pub fn start_node_with_env(&mut self, name: &str, env: &[(String, String)]) -> Result<()> {
        let i = self
            .processes
            .nodes
            .iter_mut()
            .position(|n| n.name == name)
            .ok_or_else(|| Error::InvalidOption(format!("no node called {name}")))?;
        if self.processes.nodes[i].exited().is_none() {
            return Err(Error::InvalidOption(format!("{name} is still running")));
        }
        let fresh = if let Some(a) = self.layout.authority(name) {
            spawn_authority(&self.bins, a, env)?
        } else if let Some(r) = self.layout.relay(name) {
            spawn_relay(&self.bins, r, env)?
        } else {
            return Err(Error::InvalidOption(format!("no node called {name}")));
        };
        self.processes.nodes[i] = fresh;
        Ok(())
    }

    /// The Prometheus text of node `name`'s `/metrics`.
    pub async fn metrics(&self, name: &str) -> Result<String> {
        let addr = if let Some(a) = self.layout.authority(name) {
            a.metrics_listen
        } else {
            self.layout
                .relay(name)
                .ok_or_else(|| Error::InvalidOption(format!("no node called {name}")))?
                .metrics_listen
        };
        match http_get(addr, "/metrics").await {
            Some((200, body)) => Ok(body),
            other => Err(Error::Io {
                what: format!("GET http://{addr}/metrics of {name}"),
                source: std::io::Error::other(format!("{other:?}")),
            }),
        }
    }

    /// Each relay's non-zero packet counters, one line per relay (e.g.
    /// `mix2b: packets_received=3 packets_dropped{reason="unknown_next_hop"}=1`),
    /// to say where messages went when some are lost.
    pub async fn counters(&self) -> String {
        let mut out = String::new();
        for r in &self.layout.relays {
            let line = match http_get(r.metrics_listen, "/metrics").await {
                Some((200, text)) => text
                    .lines()
                    .filter(|l| !l.starts_with('#'))
                    .filter(|l| l.contains("packets_") || l.contains("messages_stored"))
                    .filter_map(|l| {
                        let (name, value) = l.rsplit_once(' ')?;
                        let name = name.split_once('_').map_or(name, |(_, n)| n);
                        let name = name.split_once('_').map_or(name, |(_, n)| n);
                        (value != "0")
                            .then(|| format!("{}={value}", name.replacen("_total", "", 1)))
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => "metrics unreachable".into(),
            };
            out.push_str(&format!("{}: {line}\n", r.name));
        }
        out
    }

    /// Fails with the node's log tail if any node has exited, or with the
    /// panic if a node's log shows one (a node may outlive a panicked task).
    pub fn check_alive(&mut self) -> Result<()> {
        for n in &mut self.processes.nodes {
            if let Some(status) = n.exited() {
                return Err(n.exited_error(status));
            }
            if let Some(panic) = n.new_panic() {
                self.processes
                    .panics_reported
                    .store(true, Ordering::Relaxed);
                return Err(Error::UnexpectedOutput {
                    command: n.name.clone(),
                    why: format!("it panicked; its log is {}", n.log.display()),
                    output: panic,
                });
            }
        }
        Ok(())
    }

    /// Every node whose log shows a panic, with the lines saying where and
    /// why; empty when none did. Dropping the network panics with the
    /// same report unless this (or [`Network::check_alive`]) reported it.
    pub fn panics(&self) -> Vec<(String, String)> {
        let panics = self.processes.panics();
        if !panics.is_empty() {
            self.processes
                .panics_reported
                .store(true, Ordering::Relaxed);
        }
        panics
    }

    /// The last `lines` lines of every node's log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        self.processes
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "--- {} ({})\n{}\n",
                    n.name,
                    n.log.display(),
                    n.log_tail(lines)
                )
            })
            .collect()
    }

    /// Stops every node (SIGTERM, then SIGKILL after the grace period) and
    /// says how each one ended. The files stay until the network is dropped.
    pub fn stop(&mut self) -> Vec<(String, StopOutcome)> {
        let outcomes = stop_all(&mut self.processes.nodes);
        for (name, lines) in self.processes.panics() {
            tracing::error!(node = %name, "the node panicked:\n{lines}");
        }
        outcomes
    }
}

fn prepare_dir(dir: Option<&Path>) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(Error::io(format!("creating {}", d.display())))?;
            let mut entries =
                std::fs::read_dir(d).map_err(Error::io(format!("reading {}", d.display())))?;
            if entries.next().is_some() {
                return Err(Error::DirNotEmpty(d.to_path_buf()));
            }
            let d = std::fs::canonicalize(d)
                .map_err(Error::io(format!("resolving {}", d.display())))?;
            Ok((d, None))
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("bastet-testnet-")
                .tempdir()
                .map_err(Error::io("creating a temporary directory"))?;
            Ok((t.path().to_path_buf(), Some(t)))
        }
    }
}

/// What `bastet-directory init` prints.
#[derive(Deserialize)]
struct AuthorityInit {
    url: String,
    identity_key: String,
    tls_pin: String,
}

/// What `bastet-mixnode init` and `bastet-mailbox init` print.
#[derive(Deserialize)]
struct NodeInit {
    node_id: String,
    config: PathBuf,
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(command: &str, out: &str) -> Result<T> {
    serde_json::from_str(out.trim()).map_err(|e| Error::UnexpectedOutput {
        command: command.to_string(),
        why: e.to_string(),
        output: out.chars().take(300).collect(),
    })
}

fn os<S: AsRef<OsStr> + ?Sized>(s: &S) -> &OsStr {
    s.as_ref()
}

async fn launch(
    bins: &Binaries,
    dir: &Path,
    options: &NetworkOptions,
    processes: &mut Processes,
) -> Result<Layout> {
    let n_auth = options.authorities;
    let plan = relay_plan(
        options.jurisdictions.as_deref(),
        options.mixes_per_jurisdiction,
    );
    let mut ports = free_ports(2 * n_auth + 3 * plan.len())?.into_iter();
    let mut next_port = move || {
        ports
            .next()
            .ok_or_else(|| Error::InvalidOption("ran out of allocated ports".into()))
    };

    tracing::info!("creating keys and configs in {}", dir.display());
    let epoch_secs = options.epoch_secs.to_string();
    let mut authorities = Vec::new();
    for i in 1..=n_auth {
        let name = format!("authority-{i}");
        let authority_dir = dir.join(&name);
        let (listen, metrics_listen) = (next_port()?, next_port()?);
        let (listen_s, metrics_s) = (listen.to_string(), metrics_listen.to_string());
        let out = run_command(
            &bins.path("bastet-directory"),
            &[
                os("init"),
                os("--dir"),
                authority_dir.as_os_str(),
                os("--listen"),
                os(&listen_s),
                os("--metrics-listen"),
                os(&metrics_s),
                os("--epoch-secs"),
                os(&epoch_secs),
            ],
            &[],
            INIT_TIMEOUT,
        )
        .await?;
        let info: AuthorityInit = parse_json("bastet-directory init", &out)?;
        authorities.push(AuthorityNode {
            name,
            url: info.url,
            identity_key: info.identity_key,
            tls_pin: info.tls_pin,
            listen,
            metrics_listen,
            config: authority_dir.join("authority.toml"),
            log: authority_dir.join("node.log"),
            dir: authority_dir,
        });
    }
    let refs: Vec<AuthorityRef> = authorities
        .iter()
        .map(|a| AuthorityRef {
            url: a.url.clone(),
            identity_key: a.identity_key.clone(),
            tls_pin: a.tls_pin.clone(),
        })
        .collect();
    let directory = DirectoryConfig {
        authorities: refs.clone(),
        threshold: options.threshold,
        epoch_secs: options.epoch_secs,
    };
    let threshold = directory.threshold();
    // Each authority lists the others as peers and uses the same threshold.
    for a in &authorities {
        let peers: Vec<&AuthorityRef> = refs
            .iter()
            .filter(|r| r.identity_key != a.identity_key)
            .collect();
        layout::add_peers(&a.config, &peers)?;
        layout::edit_config(
            &a.config,
            "threshold",
            toml::Value::Integer(i64::try_from(threshold).unwrap_or(i64::MAX)),
            "",
        )?;
    }
    let directory_config = dir.join("directory.toml");
    let text = layout::directory_toml(&directory).map_err(|why| Error::Config {
        path: directory_config.clone(),
        why,
    })?;
    std::fs::write(&directory_config, text)
        .map_err(Error::io(format!("writing {}", directory_config.display())))?;

    let mut relays = Vec::new();
    let mut mixes_seen = 0usize;
    for plan in &plan {
        let node_dir = dir.join(&plan.name);
        let (listen, metrics_listen) = (next_port()?, next_port()?);
        let api_listen = match plan.role {
            Role::Mailbox => Some(next_port()?),
            Role::Mix => None,
        };
        let (program, command) = match plan.role {
            Role::Mailbox => ("bastet-mailbox", "bastet-mailbox init"),
            Role::Mix => ("bastet-mixnode", "bastet-mixnode init"),
        };
        let (listen_s, metrics_s) = (listen.to_string(), metrics_listen.to_string());
        let mut args: Vec<&OsStr> = vec![
            os("init"),
            os("--dir"),
            node_dir.as_os_str(),
            os("--listen"),
            os(&listen_s),
            os("--metrics-listen"),
            os(&metrics_s),
            os("--jurisdiction"),
            os(&plan.jurisdiction),
            os("--operator"),
            os(&plan.operator),
            os("--directory"),
            directory_config.as_os_str(),
        ];
        let api_s;
        match (plan.role, api_listen) {
            (Role::Mix, _) => {}
            (Role::Mailbox, Some(api)) => {
                api_s = api.to_string();
                args.extend([os("--api-listen"), os(&api_s)]);
            }
            (Role::Mailbox, None) => {}
        }
        let out = run_command(&bins.path(program), &args, &[], INIT_TIMEOUT).await?;
        let init: NodeInit = parse_json(command, &out)?;
        let config = init.config;
        let packet_log = node_dir.join("packet.log");
        layout::edit_config(
            &config,
            "packet_log",
            packet_log.to_string_lossy().into_owned().into(),
            "Test hook set by bastet-testnet: raw bytes of every packet sent on\n\
             (mixnode) or payload stored (mailbox), scanned by the end-to-end tests.",
        )?;
        let mut ingress_log = None;
        let (mut hop_log, mut store_log, mut source_addr) = (None, None, None);
        let (mut circuit_listen, mut cell_log) = (None, None);
        if plan.role == Role::Mix {
            let port = next_port()?;
            layout::edit_config(
                &config,
                "circuit_listen",
                port.to_string().into(),
                "Set by bastet-testnet: this mixnode relays calls.",
            )?;
            circuit_listen = Some(port);
            if options.cell_loss > 0.0 && mixes_seen == 0 {
                layout::edit_config(
                    &config,
                    "test_hooks",
                    true.into(),
                    "Test hooks set by bastet-testnet: call cell loss.",
                )?;
                layout::edit_config(&config, "test_cell_loss", options.cell_loss.into(), "")?;
            }
            if options.cell_log {
                let path = node_dir.join("cells.log");
                layout::edit_config(&config, "test_hooks", true.into(), "")?;
                layout::edit_config(
                    &config,
                    "test_cell_log",
                    path.to_string_lossy().into_owned().into(),
                    "",
                )?;
                cell_log = Some(path);
            }
            mixes_seen += 1;
            if options.loss > 0.0 && mixes_seen % 2 == 1 {
                set_loss(&config, options.loss)?;
            }
            if let Some((rate, delay_ms)) = options.mix_cover {
                layout::edit_config(&config, "cover_rate", rate.into(), "")?;
                let delay = i64::try_from(delay_ms).unwrap_or(i64::MAX);
                layout::edit_config(&config, "cover_mix_delay_ms", delay.into(), "")?;
            }
        }
        if options.trace || (options.ingress_log && plan.role == Role::Mix) {
            let path = node_dir.join("ingress.log");
            set_ingress_log(&config, &path)?;
            ingress_log = Some(path);
        }
        if options.trace {
            let (key, file) = match plan.role {
                Role::Mix => ("test_hop_log", "hop.log"),
                Role::Mailbox => ("test_store_log", "store.log"),
            };
            let path = node_dir.join(file);
            layout::edit_config(&config, key, path.to_string_lossy().into_owned().into(), "")?;
            match plan.role {
                Role::Mix => hop_log = Some(path),
                Role::Mailbox => store_log = Some(path),
            }
            let ip = relay_source_addr(relays.len());
            layout::edit_config(&config, "source_addr", ip.to_string().into(), "")?;
            source_addr = Some(ip);
        }
        relays.push(RelayNode {
            name: plan.name.clone(),
            role: plan.role,
            node_id: init.node_id,
            jurisdiction: plan.jurisdiction.clone(),
            operator: plan.operator.clone(),
            listen,
            api_listen,
            metrics_listen,
            log: node_dir.join("node.log"),
            dir: node_dir,
            config,
            packet_log,
            ingress_log,
            hop_log,
            store_log,
            source_addr,
            circuit_listen,
            cell_log,
        });
    }
    // Only now are the node ids known: admit exactly these nodes.
    for a in &authorities {
        layout::edit_config(
            &a.config,
            "allowed_nodes",
            toml::Value::Array(relays.iter().map(|r| r.node_id.clone().into()).collect()),
            "",
        )?;
    }
    let mut layout = Layout {
        dir: dir.to_path_buf(),
        directory_config,
        directory,
        authorities,
        threshold,
        relays,
    };
    write_layout(&layout)?;

    tracing::info!("starting {n_auth} directory authorities (threshold {threshold})");
    for a in &layout.authorities {
        processes.nodes.push(spawn_authority(bins, a, &[])?);
    }
    let deadline = Instant::now() + options.ready_timeout;
    for i in 0..layout.authorities.len() {
        let mut restarts = 0;
        while !health_ok(layout.authorities[i].metrics_listen).await {
            let name = layout.authorities[i].name.clone();
            let Some(n) = processes.nodes.iter().position(|p| p.name == name) else {
                return Err(Error::InvalidOption(format!("{name} was not started")));
            };
            if let Some(status) = processes.nodes[n].exited() {
                let tail = processes.nodes[n].log_tail(30);
                if restarts >= AUTHORITY_PORT_RETRIES || !lost_port_race(&tail) {
                    return Err(processes.nodes[n].exited_error(status));
                }
                restarts += 1;
                let a = &mut layout.authorities[i];
                if tail.contains("metrics_listen") {
                    // Nobody else knows the metrics port: move it.
                    tracing::warn!(node = %name, "metrics port taken by another process; restarting on a fresh one");
                    let fresh = free_ports(1)?[0];
                    layout::edit_config(&a.config, "metrics_listen", fresh.to_string().into(), "")?;
                    a.metrics_listen = fresh;
                } else {
                    // Every client and node pins the authority's address:
                    // wait for the port to be free again.
                    tracing::warn!(node = %name, "port taken by another process; restarting on it shortly");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                processes.nodes[n] = spawn_authority(bins, &layout.authorities[i], &[])?;
                write_layout(&layout)?;
                continue;
            }
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    secs: options.ready_timeout.as_secs(),
                    waiting_for: format!("{name}'s /health"),
                    dir: layout.dir.clone(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    let mixes = layout.relays.iter().filter(|r| r.role == Role::Mix).count();
    tracing::info!(
        "starting {mixes} mixnodes and {} mailbox servers",
        layout.relays.len() - mixes
    );
    for r in &layout.relays {
        processes.nodes.push(spawn_relay(bins, r, &[])?);
    }
    let consensus = wait_ready(
        bins,
        &mut layout,
        processes,
        deadline,
        options.ready_timeout,
    )
    .await?;
    tracing::info!(
        epoch = consensus.epoch,
        signatures = consensus.signatures,
        "all {} relays are in the consensus; probing every route",
        layout.relays.len()
    );
    probe_every_route(&layout, &consensus, deadline, options.ready_timeout).await?;
    tracing::info!("network ready: packets cross every route");
    Ok(layout)
}

/// Turns on the relay's ingress log test hook.
fn set_ingress_log(config: &Path, path: &Path) -> Result<()> {
    layout::edit_config(
        config,
        "test_hooks",
        true.into(),
        "Test hooks set by bastet-testnet.",
    )?;
    layout::edit_config(
        config,
        "test_ingress_log",
        path.to_string_lossy().into_owned().into(),
        "",
    )
}

/// Turns on the mixnode's packet-dropping test hook.
fn set_loss(config: &Path, loss: f64) -> Result<()> {
    layout::edit_config(
        config,
        "test_hooks",
        true.into(),
        "Test hooks set by bastet-testnet --loss: fault injection.",
    )?;
    layout::edit_config(config, "test_drop_fraction", loss.into(), "")
}

fn node_env() -> Vec<(String, String)> {
    let log = std::env::var("BASTET_LOG").unwrap_or_else(|_| "info".into());
    // The logs are files: no terminal colour codes in them.
    let mut env = vec![("BASTET_LOG".into(), log), ("NO_COLOR".into(), "1".into())];
    // As the systemd units do: relays replace their replay filters (a few
    // MiB each) every epoch, and glibc's dynamic mmap threshold would keep
    // the freed ones in the heap (RELIABILITY.md, "Soak").
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        env.push((
            "GLIBC_TUNABLES".into(),
            "glibc.malloc.mmap_threshold=131072".into(),
        ));
    }
    env
}

fn spawn_authority(
    bins: &Binaries,
    a: &AuthorityNode,
    extra_env: &[(String, String)],
) -> Result<NodeProcess> {
    let mut env = node_env();
    env.extend_from_slice(extra_env);
    NodeProcess::spawn(
        &a.name,
        &bins.path("bastet-directory"),
        &[os("run"), os("--config"), a.config.as_os_str()],
        &env,
        &a.log,
    )
}

fn spawn_relay(
    bins: &Binaries,
    r: &RelayNode,
    extra_env: &[(String, String)],
) -> Result<NodeProcess> {
    let mut env = node_env();
    env.extend_from_slice(extra_env);
    let program = match r.role {
        Role::Mailbox => "bastet-mailbox",
        Role::Mix => "bastet-mixnode",
    };
    NodeProcess::spawn(
        &r.name,
        &bins.path(program),
        &[os("run"), os("--config"), r.config.as_os_str()],
        &env,
        &r.log,
    )
}

fn write_layout(layout: &Layout) -> Result<()> {
    let path = layout.dir.join("network.json");
    let text = serde_json::to_string_pretty(layout).map_err(|e| Error::Config {
        path: path.clone(),
        why: e.to_string(),
    })?;
    std::fs::write(&path, text + "\n").map_err(Error::io(format!("writing {}", path.display())))
}

/// How often an authority that lost the race for a port is started again.
const AUTHORITY_PORT_RETRIES: u32 = 3;

/// Whether a log shows the process lost the race for its port.
fn lost_port_race(log_tail: &str) -> bool {
    log_tail.contains("Address already in use") || log_tail.contains("os error 98")
}

/// Waits until the consensus lists every relay as planned and every relay
/// answers `/health` (and every mailbox API accepts connections). A relay
/// that exits because its port was taken meanwhile is moved to fresh ports
/// and started again, once.
async fn wait_ready(
    bins: &Binaries,
    layout: &mut Layout,
    processes: &mut Processes,
    deadline: Instant,
    timeout: Duration,
) -> Result<VerifiedConsensus> {
    let client = DirectoryClient::new(&layout.directory)?;
    let mut restarted = HashSet::new();
    loop {
        for i in 0..processes.nodes.len() {
            let Some(status) = processes.nodes[i].exited() else {
                continue;
            };
            let name = processes.nodes[i].name.clone();
            let relay = layout.relays.iter_mut().find(|r| r.name == name);
            match relay {
                Some(r)
                    if !restarted.contains(&name)
                        && lost_port_race(&processes.nodes[i].log_tail(30)) =>
                {
                    tracing::warn!(node = %name, "port taken by another process; restarting on fresh ports");
                    rebind(r)?;
                    processes.nodes[i] = spawn_relay(bins, r, &[])?;
                    restarted.insert(name);
                    write_layout(layout)?;
                }
                _ => return Err(processes.nodes[i].exited_error(status)),
            }
        }
        let waiting_for = match readiness(&client, layout).await? {
            Ok(consensus) => return Ok(consensus),
            Err(w) => w,
        };
        if Instant::now() >= deadline {
            return Err(Error::NotReady {
                secs: timeout.as_secs(),
                waiting_for,
                dir: layout.dir.clone(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The complete consensus when ready, else what is still missing.
async fn readiness(
    client: &DirectoryClient,
    layout: &Layout,
) -> Result<std::result::Result<VerifiedConsensus, String>> {
    let consensus =
        match tokio::time::timeout(Duration::from_secs(3), client.fetch_consensus()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Ok(Err(format!("no consensus yet ({e})"))),
            Err(_) => {
                return Ok(Err(
                    "no consensus yet (the authority did not answer in 3 s)".into(),
                ));
            }
        };
    let mut missing = Vec::new();
    for r in &layout.relays {
        let Some(d) = NodeId::from_hex(&r.node_id).and_then(|id| consensus.node(&id)) else {
            missing.push(r.name.as_str());
            continue;
        };
        if d.role != r.role || d.jurisdiction != r.jurisdiction {
            return Err(Error::WrongDescriptor {
                name: r.name.clone(),
                why: format!(
                    "role {} in {}, expected {} in {}",
                    d.role, d.jurisdiction, r.role, r.jurisdiction
                ),
            });
        }
        if d.addr != r.listen.to_string() {
            // A restarted relay's old descriptor: wait for the new one.
            missing.push(r.name.as_str());
        }
    }
    if !missing.is_empty() {
        return Ok(Err(format!(
            "the consensus for epoch {} lacks {}",
            consensus.epoch,
            missing.join(", ")
        )));
    }
    for r in &layout.relays {
        if !health_ok(r.metrics_listen).await {
            return Ok(Err(format!(
                "{} does not answer /health on {}",
                r.name, r.metrics_listen
            )));
        }
        if let Some(api) = r.api_listen {
            let up =
                tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(api))
                    .await
                    .is_ok_and(|c| c.is_ok());
            if !up {
                return Ok(Err(format!(
                    "{}'s mailbox API {api} refuses connections",
                    r.name
                )));
            }
        }
    }
    Ok(Ok(consensus))
}

/// Moves a relay to fresh ports in its config file.
fn rebind(r: &mut RelayNode) -> Result<()> {
    let ports = free_ports(3)?;
    let (listen, metrics) = (ports[0], ports[1]);
    let api = r.api_listen.map(|_| ports[2]);
    // A node has an API or a circuit listener, never both.
    let circuit = r.circuit_listen.map(|_| ports[2]);
    let current: toml::Table = std::fs::read_to_string(&r.config)
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_default();
    let mut edits: Vec<(&str, SocketAddr)> = vec![("listen", listen), ("metrics_listen", metrics)];
    if current.contains_key("public_addr") {
        edits.push(("public_addr", listen));
    }
    if let Some(api) = api {
        edits.push(("api_listen", api));
        if current.contains_key("public_api_addr") {
            edits.push(("public_api_addr", api));
        }
    }
    if let Some(circuit) = circuit {
        edits.push(("circuit_listen", circuit));
    }
    for (key, addr) in edits {
        layout::edit_config(&r.config, key, addr.to_string().into(), "")?;
    }
    r.listen = listen;
    r.metrics_listen = metrics;
    r.api_listen = api;
    r.circuit_listen = circuit;
    Ok(())
}

async fn health_ok(addr: SocketAddr) -> bool {
    matches!(http_get(addr, "/health").await, Some((200, _)))
}

/// A plain HTTP/1.0 GET (the metrics endpoints are plain HTTP on loopback):
/// status and body, or `None` if the node does not answer within 2 s.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    const MAX_RESPONSE: u64 = 4 << 20;
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut response = Vec::new();
        stream
            .take(MAX_RESPONSE)
            .read_to_end(&mut response)
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_that_lost_its_port_moves_to_fresh_ones() {
        let d = tempfile::tempdir().unwrap();
        let config = d.path().join("mailbox.toml");
        std::fs::write(
            &config,
            "listen = \"127.0.0.1:1\"\napi_listen = \"127.0.0.1:2\"\n\
             public_api_addr = \"127.0.0.1:2\"\nmetrics_listen = \"127.0.0.1:3\"\n\
             [directory]\nepoch_secs = 3600\n",
        )
        .unwrap();
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let mut relay = RelayNode {
            name: "mailbox-a".into(),
            role: Role::Mailbox,
            node_id: "00".into(),
            jurisdiction: "CH".into(),
            operator: "x".into(),
            listen: addr(1),
            api_listen: Some(addr(2)),
            metrics_listen: addr(3),
            dir: d.path().to_path_buf(),
            config: config.clone(),
            log: d.path().join("node.log"),
            packet_log: d.path().join("packet.log"),
            ingress_log: None,
            hop_log: None,
            store_log: None,
            source_addr: None,
            circuit_listen: None,
            cell_log: None,
        };
        rebind(&mut relay).unwrap();
        let t: toml::Table = std::fs::read_to_string(&config).unwrap().parse().unwrap();
        let api = relay.api_listen.unwrap().to_string();
        assert_eq!(
            t["listen"].as_str(),
            Some(relay.listen.to_string().as_str())
        );
        assert_eq!(
            t["metrics_listen"].as_str(),
            Some(relay.metrics_listen.to_string().as_str())
        );
        assert_eq!(t["api_listen"].as_str(), Some(api.as_str()));
        assert_eq!(t["public_api_addr"].as_str(), Some(api.as_str()));
        assert!(t.get("public_addr").is_none(), "absent keys stay absent");
        assert_ne!(relay.listen, addr(1));
    }

    #[test]
    fn port_races_are_recognised_from_the_log() {
        assert!(lost_port_race(
            "bastet-mixnode: listen 127.0.0.1:4000: Address already in use (os error 98)"
        ));
        assert!(!lost_port_race(
            "bastet-mixnode: directory.epoch_secs: must be at least 10"
        ));
    }

    #[tokio::test]
    async fn a_given_dir_must_be_empty() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x"), "").unwrap();
        assert!(matches!(
            prepare_dir(Some(d.path())),
            Err(Error::DirNotEmpty(_))
        ));
        let fresh = d.path().join("new");
        let (p, temp) = prepare_dir(Some(&fresh)).unwrap();
        assert!(p.is_dir() && temp.is_none());
    }

    #[tokio::test]
    async fn http_get_reads_status_and_body() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                .await
                .unwrap();
        });
        assert_eq!(http_get(addr, "/health").await, Some((200, "ok\n".into())));
        let closed = free_ports(1).unwrap()[0];
        assert_eq!(http_get(closed, "/health").await, None);
    }
}
