//! A Bastet client driven through the `bastet` binary.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::layout::short;
use crate::network::parse_json;
use crate::process::{NodeProcess, StopOutcome, panic_lines, run_command_with_input, stop_all};
use crate::{Error, Result};

/// How long `bastet init` and `bastet send` may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `device join` waits for the admin device's answer.
const JOIN_WAIT: Duration = Duration::from_secs(120);
/// `bastet outbox --resume` runs until the client's give-up (120 s by
/// default) at most; this is added to the caller's timeout.
pub const GIVE_UP_MARGIN: Duration = Duration::from_secs(130);
/// How long one `bastet inbox --wait` call may block.
const INBOX_WAIT: Duration = Duration::from_secs(5);

/// One hop of a route as `bastet send --json` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteHop {
    /// Node id (hex).
    pub node: String,
    /// `mix1`, `mix2`, `mix3` or `mailbox`.
    pub role: String,
    /// The node's declared jurisdiction.
    pub jurisdiction: String,
}

/// What `bastet send --json` reports (and `bastet outbox --resume --json`
/// for each message).
#[derive(Clone, Debug, Deserialize)]
pub struct Sent {
    /// The message's id.
    pub message_id: String,
    /// When the client handed the packet to the first mix (Unix ms).
    pub sent_at_ms: u64,
    /// The route the packet takes.
    pub route: Vec<RouteHop>,
    /// The consensus epoch the packet was built in.
    pub epoch: u64,
    /// Authority signatures on that consensus.
    pub signatures: usize,
    /// Fragments (packets) the message was cut into.
    pub fragments: usize,
    /// Transmissions beyond the first of each fragment.
    pub retransmissions: u32,
    /// `queued`, `sent`, `stored` or `failed`.
    pub state: String,
    /// Why it failed.
    #[serde(default)]
    pub reason: Option<String>,
    /// One report per copy: a message goes to every current device of the
    /// recipient (the fields above are the first copy's, with the least
    /// advanced state of all).
    #[serde(default)]
    pub copies: Vec<SentCopy>,
}

/// One copy of a sent message, sealed to one device of the recipient.
#[derive(Clone, Debug, Deserialize)]
pub struct SentCopy {
    /// The copy's id (what that device's inbox shows).
    pub message_id: String,
    /// The device (short id).
    #[serde(default)]
    pub device: String,
    /// `queued`, `sent`, `stored` or `failed`.
    pub state: String,
}

#[derive(Deserialize)]
struct Resumed {
    messages: Vec<Sent>,
}

/// A file as `bastet inbox --json` reports it.
#[derive(Clone, Debug, Deserialize)]
pub struct ReceivedFileInfo {
    /// The name the sender gave it.
    pub name: String,
    /// Its length.
    pub size: usize,
    /// Where `--save-dir` put it.
    pub saved_to: Option<PathBuf>,
}

/// One message as `bastet inbox --json` reports it.
#[derive(Clone, Debug, Deserialize)]
pub struct Received {
    /// The message's id.
    pub message_id: String,
    /// The sender's identity key (hex).
    pub from: String,
    /// The contact it is from, if the sender is one.
    #[serde(default)]
    pub contact: Option<String>,
    /// Whether every layer opened and the signature is the contact's.
    pub verified: bool,
    /// Why it was rejected, if it was (then it has no content).
    #[serde(default)]
    pub rejected: Option<String>,
    /// The sender's timestamp (Unix ms).
    pub sent_at_ms: u64,
    /// When the mailbox server stored it (Unix ms).
    pub received_at_ms: u64,
    /// The decrypted text (empty for a file).
    pub text: String,
    /// Fragments it arrived in.
    pub fragments: u32,
    /// The file it carries, if any.
    #[serde(default)]
    pub file: Option<ReceivedFileInfo>,
    /// A notice of the client about a contact (their devices changed), not
    /// a message they wrote.
    #[serde(default)]
    pub notice: bool,
    /// A copy of a message this client's identity sent to `contact` from
    /// another of its devices.
    #[serde(default)]
    pub outgoing: bool,
}

/// What a message carries, for [`Client::send_content`].
#[derive(Clone, Copy, Debug)]
pub enum Payload<'a> {
    /// Text, given on the command line.
    Text(&'a str),
    /// A file, given with `--file`.
    File(&'a Path),
}

#[derive(Deserialize)]
struct Inbox {
    messages: Vec<Received>,
}

/// A client with its own data directory and mailbox. Until
/// [`Client::start_daemon`] it sends with `bastet send --direct` (no cover
/// traffic); after, every command goes through its daemon.
#[derive(Clone, Debug)]
pub struct Client {
    name: String,
    program: PathBuf,
    data_dir: PathBuf,
    address: String,
    via_daemon: bool,
    /// The passphrase of its compartment, if its data dir is an encrypted
    /// store (given to every command on standard input).
    passphrase: Option<String>,
}

/// How long a daemon may take to answer `bastet status` after starting.
const DAEMON_START: Duration = Duration::from_secs(30);

/// A running `bastet daemon`. Stopped (SIGTERM) when dropped; dropping it
/// panics if its log shows a panic (unless [`Daemon::panic`] reported it),
/// so that no test passes while a user would have seen one.
#[derive(Debug)]
pub struct Daemon {
    process: Option<NodeProcess>,
    log: PathBuf,
    panic_reported: bool,
}

impl Daemon {
    /// SIGTERM, then SIGKILL after the grace period; how it ended.
    pub fn stop(&mut self) -> Option<StopOutcome> {
        let mut p = self.process.take()?;
        stop_all(std::slice::from_mut(&mut p)).pop().map(|(_, o)| o)
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(NodeProcess::pid)
    }

    /// SIGKILL at once, as a crash or power loss would.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// The end of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process
            .as_ref()
            .map(|p| p.log_tail(lines))
            .unwrap_or_default()
    }

    /// The lines of the first panic in its log, if it panicked.
    pub fn panic(&mut self) -> Option<String> {
        let log = std::fs::read(&self.log).ok()?;
        let panic = panic_lines(&String::from_utf8_lossy(&log));
        self.panic_reported |= panic.is_some();
        panic
    }
}

impl Drop for Daemon {
    // A test whose daemon panicked fails, even if it never asked.
    #[allow(clippy::panic)]
    fn drop(&mut self) {
        self.stop();
        if self.panic_reported {
            return;
        }
        if let Some(panic) = self.panic() {
            let log = self.log.display();
            if std::thread::panicking() {
                eprintln!("bastet-testnet: the daemon panicked (log {log}):\n{panic}");
            } else {
                panic!(
                    "the daemon panicked (a bug: no panic may reach a user; log {log}):\n{panic}"
                );
            }
        }
    }
}

impl Client {
    /// `bastet init` in `data_dir` with a mailbox on the mailbox server
    /// `mailbox_server` (node id hex), then reads back its address.
    pub(crate) async fn init(
        name: &str,
        program: &Path,
        data_dir: &Path,
        directory_config: &Path,
        mailbox_server: &str,
    ) -> Result<Client> {
        let client = Client {
            name: name.to_string(),
            program: program.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            address: String::new(),
            via_daemon: false,
            passphrase: None,
        };
        client.init_here(directory_config, mailbox_server).await
    }

    /// Makes an encrypted store in `data_dir` (`bastet store create`) with
    /// a compartment per passphrase (least hidden first, the later ones
    /// added by `bastet store add-compartment`), then `bastet init` in the
    /// most hidden one.
    pub(crate) async fn init_encrypted(
        name: &str,
        program: &Path,
        data_dir: &Path,
        directory_config: &Path,
        mailbox_server: &str,
        passphrases: &[&str],
        size: &str,
    ) -> Result<Client> {
        let (first, more) = passphrases
            .split_first()
            .ok_or_else(|| Error::InvalidOption("an encrypted client needs a passphrase".into()))?;
        let mut client = Client {
            name: name.to_string(),
            program: program.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            address: String::new(),
            via_daemon: false,
            passphrase: Some(first.to_string()),
        };
        client
            .run(
                &[
                    OsStr::new("store"),
                    OsStr::new("create"),
                    OsStr::new("--size"),
                    OsStr::new(size),
                ],
                COMMAND_TIMEOUT,
            )
            .await?;
        let mut below = first.to_string();
        for phrase in more {
            client.passphrase = Some(format!("{below}\n{phrase}"));
            client
                .run(
                    &[OsStr::new("store"), OsStr::new("add-compartment")],
                    COMMAND_TIMEOUT,
                )
                .await?;
            below = phrase.to_string();
        }
        client.passphrase = Some(below);
        client.init_here(directory_config, mailbox_server).await
    }

    /// The same data dir opened with another passphrase (another
    /// compartment of its store); `bastet init` there if `init` gives the
    /// directory config and mailbox server.
    pub async fn in_compartment(
        &self,
        name: &str,
        passphrase: &str,
        init: Option<(&Path, &str)>,
    ) -> Result<Client> {
        let mut other = self.clone();
        other.name = name.to_string();
        other.passphrase = Some(passphrase.to_string());
        other.via_daemon = false;
        match init {
            Some((directory, server)) => other.init_here(directory, server).await,
            None => {
                other.address = other.read_address().await?;
                Ok(other)
            }
        }
    }

    /// `bastet store add-compartment`: a compartment more hidden than the
    /// one `below` opens, for `passphrase`.
    pub async fn add_compartment(&self, below: &str, passphrase: &str) -> Result<()> {
        let mut c = self.clone();
        c.passphrase = Some(format!("{below}\n{passphrase}"));
        c.run(
            &[OsStr::new("store"), OsStr::new("add-compartment")],
            COMMAND_TIMEOUT,
        )
        .await
        .map(|_| ())
    }

    /// The passphrase this client's commands unlock its store with.
    pub fn passphrase(&self) -> Option<&str> {
        self.passphrase.as_deref()
    }

    async fn init_here(mut self, directory_config: &Path, mailbox_server: &str) -> Result<Client> {
        let client = &mut self;
        client
            .run(
                &[
                    OsStr::new("init"),
                    OsStr::new("--directory"),
                    directory_config.as_os_str(),
                    OsStr::new("--mailbox-server"),
                    OsStr::new(mailbox_server),
                ],
                COMMAND_TIMEOUT,
            )
            .await?;
        client.address = client.read_address().await?;
        Ok(self)
    }

    async fn read_address(&self) -> Result<String> {
        let out = self.run(&[OsStr::new("address")], COMMAND_TIMEOUT).await?;
        Ok(out
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .ok_or_else(|| Error::UnexpectedOutput {
                command: "bastet address".into(),
                why: "no address printed".into(),
                output: out.clone(),
            })?
            .to_string())
    }

    /// Its name in the testnet.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where its inbox saves received files.
    pub fn save_dir(&self) -> PathBuf {
        self.data_dir.join("received")
    }

    /// Its address, as `bastet address` prints it.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Exchanges contact cards with `other` through files, as two people
    /// would offline: this client exports a card, `other` imports it under
    /// this client's name and answers with its own card (`export --for`),
    /// which this client imports under `other`'s name. Both can then write
    /// to each other by name.
    pub async fn befriend(&self, other: &Client) -> Result<()> {
        let card = self.data_dir.join(format!("card-for-{}.txt", other.name));
        let card_s = card.to_string_lossy().to_string();
        self.bastet(&[
            "contact",
            "export",
            "--out",
            &card_s,
            "--nickname",
            &self.name,
        ])
        .await?;
        other
            .bastet(&["contact", "import", &card_s, "--name", &self.name])
            .await?;
        let reply = other.data_dir.join(format!("card-for-{}.txt", self.name));
        let reply_s = reply.to_string_lossy().to_string();
        other
            .bastet(&[
                "contact",
                "export",
                "--for",
                &self.name,
                "--out",
                &reply_s,
                "--nickname",
                &other.name,
            ])
            .await?;
        self.bastet(&["contact", "import", &reply_s, "--name", &other.name])
            .await?;
        // A card holds half of a pre-shared key: gone once used.
        for f in [&card, &reply] {
            let _ = std::fs::remove_file(f);
        }
        Ok(())
    }

    /// `bastet device add --json [--admin]`: a one-time pairing code for a
    /// new device of this client's identity (its daemon answers the
    /// request).
    pub async fn device_add(&self, admin: bool) -> Result<String> {
        let mut args = vec!["device", "add", "--json"];
        if admin {
            args.push("--admin");
        }
        let out = self.bastet(&args).await?;
        let v: serde_json::Value = parse_json("bastet device add --json", &out)?;
        v["code"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::UnexpectedOutput {
                command: "bastet device add --json".into(),
                why: "no code".into(),
                output: out.chars().take(300).collect(),
            })
    }

    /// `bastet device join CODE --name NAME --json`: this client (fresh,
    /// its daemon running) joins the identity of `code`; returns the
    /// identity's device list as the new device sees it.
    pub async fn device_join(&self, code: &str, name: &str) -> Result<serde_json::Value> {
        let wait = JOIN_WAIT.as_secs().to_string();
        let out = self
            .run(
                &[
                    OsStr::new("device"),
                    OsStr::new("join"),
                    OsStr::new(code),
                    OsStr::new("--name"),
                    OsStr::new(name),
                    OsStr::new("--wait"),
                    OsStr::new(&wait),
                    OsStr::new("--json"),
                ],
                JOIN_WAIT + COMMAND_TIMEOUT,
            )
            .await?;
        parse_json("bastet device join --json", &out)
    }

    /// `bastet device list --json`.
    pub async fn devices(&self) -> Result<serde_json::Value> {
        let out = self.bastet(&["device", "list", "--json"]).await?;
        parse_json("bastet device list --json", &out)
    }

    /// The short id of this client's own device.
    pub async fn device_id(&self) -> Result<String> {
        let devices = self.devices().await?;
        devices["devices"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["this_device"] == true))
            .and_then(|d| d["id"].as_str())
            .map(str::to_string)
            .ok_or_else(|| Error::UnexpectedOutput {
                command: "bastet device list --json".into(),
                why: "no device is this one".into(),
                output: devices.to_string().chars().take(300).collect(),
            })
    }

    /// `bastet device revoke ID --reason REASON`.
    pub async fn device_revoke(&self, id: &str, reason: &str) -> Result<()> {
        self.bastet(&["device", "revoke", id, "--reason", reason])
            .await
            .map(|_| ())
    }

    /// [`Client::bastet`] with its own time limit (a call runs longer
    /// than a command).
    pub async fn bastet_with_timeout(&self, args: &[&str], timeout: Duration) -> Result<String> {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        self.run(&args, timeout).await
    }

    /// Runs `bastet --data-dir <its dir> ARGS...` and returns its stdout.
    pub async fn bastet(&self, args: &[&str]) -> Result<String> {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        self.run(&args, COMMAND_TIMEOUT).await
    }

    /// Gives this client `policy` as the `[route]` section of its
    /// `client.toml`, so that every later `send` follows it.
    pub fn set_route_policy(&self, policy: &bastet_client::RoutePolicy) -> Result<()> {
        #[derive(Serialize)]
        struct Section<'a> {
            route: &'a bastet_client::RoutePolicy,
        }
        let path = self.data_dir.join("client.toml");
        let err = |why: String| Error::Config {
            path: path.clone(),
            why,
        };
        let section =
            toml::to_string(&Section { route: policy }).map_err(|e| err(e.to_string()))?;
        self.edit_config(|mut text| {
            text.push_str("\n# Route policy set by bastet-testnet.\n");
            text.push_str(&section);
            Ok(text)
        })
    }

    /// Rewrites its `client.toml` with `edit` (before its daemon starts):
    /// the file itself, or through `bastet config show` and `config
    /// replace -` when the data dir is an encrypted store.
    fn edit_config(&self, edit: impl FnOnce(String) -> Result<String>) -> Result<()> {
        let path = self.data_dir.join("client.toml");
        let err = |why: String| Error::Config {
            path: path.clone(),
            why,
        };
        let Some(phrase) = &self.passphrase else {
            let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
            return std::fs::write(&path, edit(text)?).map_err(|e| err(e.to_string()));
        };
        let run = |args: &[&str], input: String| -> Result<String> {
            use std::io::Write;
            let mut child = std::process::Command::new(&self.program)
                .arg("--data-dir")
                .arg(&self.data_dir)
                .args(["--passphrase-fd", "0"])
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| err(e.to_string()))?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin
                    .write_all(input.as_bytes())
                    .map_err(|e| err(e.to_string()))?;
            }
            let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
            if let Some(panic) = panic_lines(&String::from_utf8_lossy(&out.stderr)) {
                return Err(err(format!(
                    "bastet config {} panicked: {panic}",
                    args.join(" ")
                )));
            }
            if !out.status.success() {
                return Err(err(format!(
                    "bastet config {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            String::from_utf8(out.stdout).map_err(|e| err(e.to_string()))
        };
        let text = run(&["config", "show"], format!("{phrase}\n"))?;
        let text = edit(text)?;
        run(&["config", "replace", "-"], format!("{phrase}\n{text}")).map(|_| ())
    }

    /// Sets the `[traffic]` section of its `client.toml` (before its daemon
    /// starts).
    pub fn set_traffic(&self, traffic: &bastet_client::TrafficConfig) -> Result<()> {
        let path = self.data_dir.join("client.toml");
        let err = |why: String| Error::Config {
            path: path.clone(),
            why,
        };
        self.edit_config(|text| {
            let mut doc: toml::Table = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
            let section = toml::Table::try_from(traffic).map_err(|e| err(e.to_string()))?;
            doc.insert("traffic".into(), toml::Value::Table(section));
            toml::to_string(&doc).map_err(|e| err(e.to_string()))
        })
    }

    /// Sets `source_addr` in its `client.toml`: its packet connections to
    /// first mixes leave from `ip` (any address in 127.0.0.0/8 works on
    /// loopback), so that a mixnode's ingress log can tell it apart.
    pub fn set_source_addr(&self, ip: std::net::IpAddr) -> Result<()> {
        let path = self.data_dir.join("client.toml");
        let err = |why: String| Error::Config {
            path: path.clone(),
            why,
        };
        self.edit_config(|text| {
            let mut doc: toml::Table = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
            doc.insert("source_addr".into(), toml::Value::String(ip.to_string()));
            toml::to_string(&doc).map_err(|e| err(e.to_string()))
        })
    }

    /// Turns on its `test_send_log` test hook (and `test_hooks`) in its
    /// `client.toml`: a line per packet it hands to a first mix, saying
    /// which are real and for whom.
    pub fn set_send_log(&self, log: &Path) -> Result<()> {
        let path = self.data_dir.join("client.toml");
        let err = |why: String| Error::Config {
            path: path.clone(),
            why,
        };
        self.edit_config(|text| {
            let mut doc: toml::Table = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
            doc.insert("test_hooks".into(), toml::Value::Boolean(true));
            doc.insert(
                "test_send_log".into(),
                toml::Value::String(log.to_string_lossy().into_owned()),
            );
            toml::to_string(&doc).map_err(|e| err(e.to_string()))
        })
    }

    /// Its mailbox id and its mailbox server's node id (hex), from its
    /// `client.toml`.
    pub fn mailbox(&self) -> Result<(String, String)> {
        let path = self.data_dir.join("client.toml");
        let err = |why: String| Error::Config {
            path: path.clone(),
            why,
        };
        let text = match &self.passphrase {
            None => std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?,
            Some(_) => {
                return Err(err(
                    "an encrypted client's config is read through its daemon".into(),
                ));
            }
        };
        let doc: toml::Table = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let field = |key: &str| {
            doc.get(key)
                .and_then(toml::Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| err(format!("no {key}")))
        };
        Ok((field("mailbox_id")?, field("mailbox_server")?))
    }

    /// Starts `bastet daemon` (log: `daemon.log` in its data dir) and waits
    /// until it answers `bastet status`; from now on commands go through it.
    pub async fn start_daemon(&mut self) -> Result<Daemon> {
        let log = self.data_dir.join("daemon.log");
        let level = std::env::var("BASTET_LOG").unwrap_or_else(|_| "info".into());
        let mut args = vec![OsStr::new("--data-dir"), self.data_dir.as_os_str()];
        if self.passphrase.is_some() {
            args.extend([OsStr::new("--passphrase-fd"), OsStr::new("0")]);
        }
        args.push(OsStr::new("daemon"));
        let input = self.passphrase.as_ref().map(|p| format!("{p}\n"));
        let mut process = NodeProcess::spawn_with_input(
            &format!("{}-daemon", self.name),
            &self.program,
            &args,
            &[
                ("BASTET_LOG".into(), level),
                ("NO_COLOR".into(), "1".into()),
            ],
            &log,
            input.as_deref().map(str::as_bytes),
        )?;
        let deadline = Instant::now() + DAEMON_START;
        loop {
            if let Some(status) = process.exited() {
                if let Some(panic) = process.panic() {
                    return Err(Error::UnexpectedOutput {
                        command: "bastet daemon".into(),
                        why: format!("it panicked ({status}); its log is {}", log.display()),
                        output: panic,
                    });
                }
                return Err(process.exited_error(status));
            }
            if self.status().await.is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                let mut d = Daemon {
                    process: Some(process),
                    log: log.clone(),
                    panic_reported: false,
                };
                let tail = d.log_tail(20);
                d.stop();
                return Err(Error::UnexpectedOutput {
                    command: "bastet status".into(),
                    why: format!(
                        "the daemon did not answer within {DAEMON_START:?}; its log ({}) ends",
                        log.display()
                    ),
                    output: tail,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.via_daemon = true;
        Ok(Daemon {
            process: Some(process),
            log,
            panic_reported: false,
        })
    }

    /// `bastet status --json`, as JSON.
    pub async fn status(&self) -> Result<serde_json::Value> {
        let out = self
            .run(
                &[OsStr::new("status"), OsStr::new("--json")],
                COMMAND_TIMEOUT,
            )
            .await?;
        parse_json("bastet status --json", &out)
    }

    /// `bastet send CONTACT TEXT --json`: returns once the message is
    /// stored (every fragment acknowledged); fails if it failed. A refusal
    /// because the route policy cannot be met is [`Error::RouteRefused`].
    pub async fn send(&self, to: &str, text: &str) -> Result<Sent> {
        self.send_content(to, Payload::Text(text), true).await
    }

    /// `bastet send CONTACT (TEXT | --file PATH) --json [--no-wait]`.
    pub async fn send_content(&self, to: &str, payload: Payload<'_>, wait: bool) -> Result<Sent> {
        let mut args = vec![OsStr::new("send"), OsStr::new(to)];
        match payload {
            Payload::Text(text) => args.push(OsStr::new(text)),
            Payload::File(path) => args.extend([OsStr::new("--file"), path.as_os_str()]),
        }
        args.push(OsStr::new("--json"));
        if !wait {
            args.push(OsStr::new("--no-wait"));
        }
        if !self.via_daemon {
            args.push(OsStr::new("--direct"));
        }
        // A waiting send runs until every fragment is acknowledged or the
        // client's give-up (120 s by default) passes.
        let timeout = if wait {
            GIVE_UP_MARGIN
        } else {
            COMMAND_TIMEOUT
        };
        match self.run(&args, timeout).await {
            Ok(out) => parse_json("bastet send --json", &out),
            Err(Error::CommandFailed { stderr, .. })
                if stderr.contains("route policy cannot be met") =>
            {
                Err(Error::RouteRefused(stderr))
            }
            // A message that failed (give-up) is reported, not an error.
            Err(Error::CommandFailed { stdout, .. })
                if parse_json::<Sent>("bastet send --json", &stdout)
                    .is_ok_and(|s| s.state == "failed") =>
            {
                parse_json("bastet send --json", &stdout)
            }
            Err(e) => Err(e),
        }
    }

    /// `bastet outbox --resume --json`: drives every pending message until
    /// it is stored or failed (at most `timeout`).
    pub async fn resume(&self, timeout: Duration) -> Result<Vec<Sent>> {
        let out = self
            .run(
                &[
                    OsStr::new("outbox"),
                    OsStr::new("--resume"),
                    OsStr::new("--json"),
                ],
                timeout,
            )
            .await?;
        Ok(parse_json::<Resumed>("bastet outbox --resume --json", &out)?.messages)
    }

    /// `bastet inbox --json --wait SECS`: the messages that arrived (which
    /// the client then deletes from its mailbox), waiting up to `wait` for
    /// at least one.
    pub async fn inbox(&self, wait: Duration) -> Result<Vec<Received>> {
        let secs = wait.as_secs().max(1).to_string();
        let save_dir = self.save_dir();
        let out = self
            .run(
                &[
                    OsStr::new("inbox"),
                    OsStr::new("--json"),
                    OsStr::new("--wait"),
                    OsStr::new(&secs),
                    OsStr::new("--save-dir"),
                    save_dir.as_os_str(),
                ],
                wait + COMMAND_TIMEOUT,
            )
            .await?;
        Ok(parse_json::<Inbox>("bastet inbox --json", &out)?.messages)
    }

    /// Polls the inbox until every message in `message_ids` arrived or
    /// `timeout` passed, and returns those that arrived, by id. Messages
    /// with other ids are logged and left out.
    pub async fn receive(
        &self,
        message_ids: &[String],
        timeout: Duration,
    ) -> Result<HashMap<String, Received>> {
        Ok(self.receive_counted(message_ids, timeout).await?.0)
    }

    /// [`Client::receive`], also counting how often each id was shown: a
    /// message shown more than once was not deduplicated.
    pub async fn receive_counted(
        &self,
        message_ids: &[String],
        timeout: Duration,
    ) -> Result<(HashMap<String, Received>, HashMap<String, usize>)> {
        let deadline = Instant::now() + timeout;
        let mut received = HashMap::new();
        let mut shown: HashMap<String, usize> = HashMap::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if received.len() >= message_ids.len() {
                break;
            }
            if left.is_zero() {
                tracing::warn!(
                    "{} of {} messages did not reach {} within {} s",
                    message_ids.len() - received.len(),
                    message_ids.len(),
                    self.name,
                    timeout.as_secs()
                );
                break;
            }
            for m in self.inbox(left.min(INBOX_WAIT)).await? {
                if !m.verified {
                    tracing::warn!(id = %m.message_id, "a message arrived whose signature does not verify");
                }
                if message_ids.contains(&m.message_id) {
                    tracing::info!("{} received message {}", self.name, short(&m.message_id));
                    *shown.entry(m.message_id.clone()).or_default() += 1;
                    received.insert(m.message_id.clone(), m);
                } else {
                    tracing::warn!(id = %m.message_id, "{} received a message it was not waiting for", self.name);
                }
            }
        }
        Ok((received, shown))
    }

    async fn run(&self, args: &[&OsStr], timeout: Duration) -> Result<String> {
        let mut all = vec![OsStr::new("--data-dir"), self.data_dir.as_os_str()];
        if self.passphrase.is_some() {
            all.extend([OsStr::new("--passphrase-fd"), OsStr::new("0")]);
        }
        all.extend_from_slice(args);
        let log = std::env::var_os("BASTET_LOG").unwrap_or_else(|| "warn".into());
        let no_color = OsStr::new("1");
        let input = self.passphrase.as_ref().map(|p| format!("{p}\n"));
        run_command_with_input(
            &self.program,
            &all,
            &[("BASTET_LOG", &log), ("NO_COLOR", no_color)],
            timeout,
            input.as_deref().map(str::as_bytes),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_contracts_parse() {
        let sent: Sent = parse_json(
            "send",
            r#"{"message_id":"ab","sent_at_ms":5,"route":[
                {"node":"01","role":"mix1","jurisdiction":"DE"},
                {"node":"02","role":"mailbox","jurisdiction":"CH"}],"epoch":7,"signatures":2,
                "fragments":3,"acked":3,"retransmissions":1,"state":"stored","reason":null}"#,
        )
        .unwrap();
        assert_eq!(sent.route[1].role, "mailbox");
        assert_eq!((sent.fragments, sent.retransmissions), (3, 1));
        assert_eq!(sent.state, "stored");
        let inbox: Inbox = parse_json(
            "inbox",
            r#"{"messages":[{"message_id":"ab","from":"cd","verified":true,
                "sent_at_ms":5,"received_at_ms":9,"fragments":1,"text":"hi","file":null}],"errors":0}"#,
        )
        .unwrap();
        assert_eq!(inbox.messages[0].text, "hi");
        assert!(parse_json::<Inbox>("inbox", "not json").is_err());
    }
}
