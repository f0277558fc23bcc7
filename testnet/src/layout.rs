//! What the testnet is made of: the fixed plan of nodes, where each one
//! listens and keeps its files, and the small config edits the testnet makes
//! to what `init` wrote. No processes here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bastet_directory::{AuthorityRef, DirectoryConfig, Role};
use serde::{Deserialize, Serialize};

/// One relay the testnet runs.
pub(crate) struct Plan {
    pub(crate) name: String,
    pub(crate) role: Role,
    pub(crate) jurisdiction: String,
    pub(crate) operator: String,
}

/// Six mixnodes in six jurisdictions (the consensus deals them into three
/// layers of two each epoch) and two mailbox servers: every route's three
/// mixes are in three different countries.
#[rustfmt::skip]
const RELAYS: [(&str, Role, &str, &str); 8] = [
    ("mix-a", Role::Mix, "DE", "Testnet Operator A"),
    ("mix-b", Role::Mix, "CH", "Testnet Operator B"),
    ("mix-c", Role::Mix, "IS", "Testnet Operator C"),
    ("mix-d", Role::Mix, "NL", "Testnet Operator D"),
    ("mix-e", Role::Mix, "SE", "Testnet Operator E"),
    ("mix-f", Role::Mix, "FR", "Testnet Operator F"),
    ("mailbox-a", Role::Mailbox, "CH", "Testnet Operator G"),
    ("mailbox-b", Role::Mailbox, "IS", "Testnet Operator H"),
];

/// Most mixnodes a testnet runs.
pub const MAX_MIXES: usize = 60;

/// The relays to run: the six of [`RELAYS`] by default; with
/// `jurisdictions`, `per_jurisdiction` mixes in each (`mix-de-1`, ...),
/// each with its own operator. Three per jurisdiction put one in every
/// layer in every epoch (the consensus spreads a jurisdiction's mixes over
/// the layers). The two mailbox servers stay in CH and IS.
pub(crate) fn relay_plan(jurisdictions: Option<&[String]>, per_jurisdiction: usize) -> Vec<Plan> {
    let plan = |(name, role, jurisdiction, operator): (String, Role, String, String)| Plan {
        name,
        role,
        jurisdiction,
        operator,
    };
    let owned =
        |(n, r, j, o): &(&str, Role, &str, &str)| (n.to_string(), *r, j.to_string(), o.to_string());
    let Some(jurisdictions) = jurisdictions else {
        return RELAYS.iter().map(owned).map(plan).collect();
    };
    let mut out = Vec::new();
    for j in jurisdictions {
        for i in 1..=per_jurisdiction {
            out.push(plan((
                format!("mix-{}-{i}", j.to_ascii_lowercase()),
                Role::Mix,
                j.clone(),
                format!("Testnet Operator {j}-{i}"),
            )));
        }
    }
    out.extend(
        RELAYS
            .iter()
            .filter(|r| r.1 == Role::Mailbox)
            .map(owned)
            .map(plan),
    );
    out
}

/// A directory authority of a running testnet.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuthorityNode {
    /// Its name in the testnet: `authority-1`, `authority-2`, ...
    pub name: String,
    /// `https://` URL of its API.
    pub url: String,
    /// Its Ed25519 key (hex), pinned by every node and client.
    pub identity_key: String,
    /// Its TLS certificate pin (hex).
    pub tls_pin: String,
    /// HTTPS API address.
    pub listen: SocketAddr,
    /// Plain-HTTP `/health` and `/metrics` address.
    pub metrics_listen: SocketAddr,
    /// Data directory.
    pub dir: PathBuf,
    /// `authority.toml`.
    pub config: PathBuf,
    /// stdout and stderr of the process.
    pub log: PathBuf,
}

/// A mixnode or mailbox server of a running testnet.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RelayNode {
    /// Its name in the testnet, e.g. `mix2a` or `mailbox-b`.
    pub name: String,
    /// `mix1`, `mix2`, `mix3` or `mailbox`.
    #[serde(with = "role_text")]
    pub role: Role,
    /// Node id (hex).
    pub node_id: String,
    /// ISO 3166-1 alpha-2 jurisdiction it declares.
    pub jurisdiction: String,
    /// Operator name it declares.
    pub operator: String,
    /// Packet link (TLS) address.
    pub listen: SocketAddr,
    /// Mailbox HTTPS API address (mailbox servers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_listen: Option<SocketAddr>,
    /// Plain-HTTP `/health` and `/metrics` address.
    pub metrics_listen: SocketAddr,
    /// Data directory (keys, config, the mailbox's RocksDB under `db/`).
    pub dir: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    /// stdout and stderr of the process.
    pub log: PathBuf,
    /// Test hook: raw bytes of every packet it forwarded or payload it stored.
    pub packet_log: PathBuf,
    /// Test hook (mixnodes with [`crate::NetworkOptions::ingress_log`],
    /// every relay with [`crate::NetworkOptions::trace`]): a line per
    /// packet received, `<unix micros> <peer ip> <frame length> <frame id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_log: Option<PathBuf>,
    /// Test hook (mixnodes, with [`crate::NetworkOptions::trace`]): a line
    /// per packet held, `<in frame id> <out frame id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hop_log: Option<PathBuf>,
    /// Test hook (mailbox servers, with [`crate::NetworkOptions::trace`]): a
    /// line per packet opened, `<frame id> <message|reply|cover> <mailbox>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_log: Option<PathBuf>,
    /// The loopback address its connections to other relays leave from
    /// (with [`crate::NetworkOptions::trace`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_addr: Option<std::net::IpAddr>,
    /// Call circuit listener (mixnodes; every testnet mixnode relays calls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_listen: Option<SocketAddr>,
    /// Test hook (mixnodes, with [`crate::NetworkOptions::cell_log`]): a
    /// line per call cell read, `<unix micros> <circuit> <out|back> <bytes>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell_log: Option<PathBuf>,
}

/// Where everything in a testnet is; also written to `network.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Layout {
    /// The network's directory.
    pub dir: PathBuf,
    /// `directory.toml`: the `[directory]` section nodes and clients use.
    pub directory_config: PathBuf,
    /// Its contents.
    pub directory: DirectoryConfig,
    /// The directory authorities.
    pub authorities: Vec<AuthorityNode>,
    /// Signatures a consensus needs.
    pub threshold: usize,
    /// Mixnodes then mailbox servers.
    pub relays: Vec<RelayNode>,
}

impl Layout {
    /// The authority called `name`.
    pub fn authority(&self, name: &str) -> Option<&AuthorityNode> {
        self.authorities.iter().find(|a| a.name == name)
    }

    /// The relay called `name`.
    pub fn relay(&self, name: &str) -> Option<&RelayNode> {
        self.relays.iter().find(|r| r.name == name)
    }

    /// The relay with node id `node_id` (hex).
    pub fn relay_by_id(&self, node_id: &str) -> Option<&RelayNode> {
        self.relays.iter().find(|r| r.node_id == node_id)
    }

    /// The mailbox servers, in plan order.
    pub fn mailboxes(&self) -> impl Iterator<Item = &RelayNode> {
        self.relays.iter().filter(|r| r.role == Role::Mailbox)
    }

    /// A human table of where each node listens.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{:<12} {:<8} {:<8} {:<3} {:<24} {:<36} log\n",
            "node", "id", "role", "", "packets", "api / metrics"
        );
        for a in &self.authorities {
            s.push_str(&format!(
                "{:<12} {:<8} {:<8} {:<3} {:<24} {:<36} {}\n",
                a.name,
                short(&a.identity_key),
                "dir",
                "",
                a.url,
                format!("http://{}/metrics", a.metrics_listen),
                a.log.display()
            ));
        }
        for r in &self.relays {
            s.push_str(&format!(
                "{:<12} {:<8} {:<8} {:<3} {:<24} {:<36} {}\n",
                r.name,
                short(&r.node_id),
                r.role.to_string(),
                r.jurisdiction,
                r.listen.to_string(),
                format!("http://{}/metrics", r.metrics_listen),
                r.log.display()
            ));
            if let Some(api) = r.api_listen {
                s.push_str(&format!(
                    "{:<58}{:<36}\n",
                    "",
                    format!("https://{api} (mailbox API)")
                ));
            }
        }
        s
    }
}

/// The first 8 hex digits of an id, as the summaries show it.
pub(crate) fn short(hex_id: &str) -> &str {
    hex_id.get(..8).unwrap_or(hex_id)
}

mod role_text {
    use bastet_directory::Role;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(role: &Role, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(role)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "mailbox" => Ok(Role::Mailbox),
            "mix" => Ok(Role::Mix),
            _ => Err(D::Error::custom(format!("unknown role {text:?}"))),
        }
    }
}

/// `text` with top-level `key` set to `value`: an existing uncommented
/// `key = ...` line before the first table is replaced, otherwise the line
/// (after `comment`, if any) goes just before the first table header, so
/// comments written by `init` survive. The result is parsed back to check
/// the key now holds `value`.
pub(crate) fn set_top_level(
    text: &str,
    key: &str,
    value: toml::Value,
    comment: &str,
) -> std::result::Result<String, String> {
    let line = format!("{key} = {value}");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let first_table = lines
        .iter()
        .position(|l| l.trim_start().starts_with('['))
        .unwrap_or(lines.len());
    let existing = lines[..first_table].iter().position(|l| {
        l.trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    });
    match existing {
        Some(i) => lines[i] = line,
        None => {
            // Before the comment block that introduces the first table, if any.
            let mut at = first_table;
            while at > 0 && lines[at - 1].trim_start().starts_with('#') {
                at -= 1;
            }
            let mut insert: Vec<String> = comment.lines().map(|c| format!("# {c}")).collect();
            insert.push(line);
            insert.push(String::new());
            lines.splice(at..at, insert);
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    let parsed: toml::Table = out
        .parse()
        .map_err(|e| format!("after setting `{key}` the file no longer parses: {e}"))?;
    if parsed.get(key) != Some(&value) {
        return Err(format!("could not set top-level `{key}`"));
    }
    Ok(out)
}

/// Rewrites the config file at `path` with [`set_top_level`].
pub(crate) fn edit_config(
    path: &Path,
    key: &str,
    value: toml::Value,
    comment: &str,
) -> crate::Result<()> {
    let err = |why: String| crate::Error::Config {
        path: path.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let edited = set_top_level(&text, key, value, comment).map_err(err)?;
    std::fs::write(path, edited).map_err(|e| err(e.to_string()))
}

/// Appends one `[[peers]]` table per authority in `peers` to the authority
/// config at `path` (its other keys are all top-level, so the tables go at
/// the end), and checks the result parses.
pub(crate) fn add_peers(path: &Path, peers: &[&AuthorityRef]) -> crate::Result<()> {
    let err = |why: String| crate::Error::Config {
        path: path.to_path_buf(),
        why,
    };
    let mut text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    #[derive(Serialize)]
    struct Peers<'a> {
        peers: &'a [&'a AuthorityRef],
    }
    let tables = toml::to_string(&Peers { peers }).map_err(|e| err(e.to_string()))?;
    text.push_str("\n# The other authorities of this testnet.\n");
    text.push_str(&tables);
    text.parse::<toml::Table>()
        .map_err(|e| err(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| err(e.to_string()))
}

/// The text of `directory.toml`.
pub(crate) fn directory_toml(config: &DirectoryConfig) -> std::result::Result<String, String> {
    let body = toml::to_string(config).map_err(|e| e.to_string())?;
    Ok(format!(
        "# The directory authorities of this testnet, pinned by key and TLS certificate.\n\
         # Nodes: `init --directory` copies this into their [directory] section.\n\
         # Clients: `bastet init --directory` reads it.\n\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE_TOML: &str = "\
# Bastet mixnode.
# listen: packet link address.
data_dir = \"/tmp/x\"
listen = \"127.0.0.1:1000\"
# packet_log = \"/path\"   (tests only)

# The authorities.
[directory]
epoch_secs = 3600
";

    #[test]
    fn a_missing_key_goes_before_the_first_table_with_its_comment() {
        let out =
            set_top_level(NODE_TOML, "packet_log", "/d/packet.log".into(), "test hook").unwrap();
        let t: toml::Table = out.parse().unwrap();
        assert_eq!(t["packet_log"].as_str(), Some("/d/packet.log"));
        assert!(t["directory"].get("packet_log").is_none());
        assert!(
            out.contains(
                "# test hook\npacket_log = \"/d/packet.log\"\n\n# The authorities.\n[directory]"
            ),
            "{out}"
        );
        assert!(out.contains("# Bastet mixnode."), "comments survive");
        assert!(
            out.contains("# packet_log = \"/path\""),
            "commented lines are left alone"
        );
    }

    #[test]
    fn an_existing_key_is_replaced_in_place() {
        let out = set_top_level(NODE_TOML, "listen", "127.0.0.1:2000".into(), "unused").unwrap();
        let t: toml::Table = out.parse().unwrap();
        assert_eq!(t["listen"].as_str(), Some("127.0.0.1:2000"));
        assert!(!out.contains("1000"));
        assert!(!out.contains("unused"));
    }

    #[test]
    fn arrays_are_written_inline() {
        let text = "data_dir = \"/a\"\nallowed_nodes = []\nmax_nodes = 1000\n";
        let ids = toml::Value::Array(vec!["aa".into(), "bb".into()]);
        let out = set_top_level(text, "allowed_nodes", ids.clone(), "").unwrap();
        let t: toml::Table = out.parse().unwrap();
        assert_eq!(t["allowed_nodes"], ids);
        assert_eq!(t["max_nodes"].as_integer(), Some(1000));
    }

    #[test]
    fn a_file_without_tables_gets_the_key_appended() {
        let out = set_top_level("a = 1\n", "b", 2.into(), "").unwrap();
        let t: toml::Table = out.parse().unwrap();
        assert_eq!(t["b"].as_integer(), Some(2));
    }

    #[test]
    fn the_plan_spans_layers_and_jurisdictions() {
        let relays = relay_plan(None, 3);
        let mut juris: Vec<_> = relays
            .iter()
            .filter(|p| p.role == Role::Mix)
            .map(|p| p.jurisdiction.as_str())
            .collect();
        juris.sort_unstable();
        juris.dedup();
        // Six mixes in six countries: whatever layers the consensus deals,
        // every route crosses three jurisdictions.
        assert_eq!(juris.len(), 6);
        assert_eq!(relays.iter().filter(|p| p.role == Role::Mix).count(), 6);
        assert_eq!(relays.iter().filter(|p| p.role == Role::Mailbox).count(), 2);

        let js = ["DE".to_string(), "US".to_string()];
        let relays = relay_plan(Some(&js), 3);
        let names: Vec<&str> = relays.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "mix-de-1",
                "mix-de-2",
                "mix-de-3",
                "mix-us-1",
                "mix-us-2",
                "mix-us-3",
                "mailbox-a",
                "mailbox-b"
            ]
        );
        let mut operators: Vec<&str> = relays.iter().map(|p| p.operator.as_str()).collect();
        operators.sort_unstable();
        operators.dedup();
        assert_eq!(operators.len(), 8, "every relay has its own operator");
    }

    #[test]
    fn roles_round_trip_as_text() {
        #[derive(Serialize, Deserialize)]
        struct R {
            #[serde(with = "role_text")]
            role: Role,
        }
        for role in [Role::Mix, Role::Mailbox] {
            let j = serde_json::to_string(&R { role }).unwrap();
            assert_eq!(j, format!("{{\"role\":\"{role}\"}}"));
            assert_eq!(serde_json::from_str::<R>(&j).unwrap().role, role);
        }
    }
}
