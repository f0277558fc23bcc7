//! `client.toml`: which authorities to trust, where this client's mailbox
//! is, its route policy and its traffic (Loopix) parameters.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use bastet_directory::DirectoryConfig;
use bastet_sphinx::{MailboxId, NodeId};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, RoutePolicy, TrafficParams};

/// Environment prefix for overrides: `BASTET_CLIENT__TRAFFIC__PRESET=paranoid`.
pub const ENV_PREFIX: &str = "BASTET_CLIENT";
/// Shortest allowed `traffic.poll_interval_ms`.
pub const MIN_POLL_INTERVAL_MS: u64 = 50;
/// Longest allowed `traffic.poll_interval_ms`.
pub const MAX_POLL_INTERVAL_MS: u64 = 60_000;

/// The named traffic presets, in the order `bastet status` lists them.
pub const TRAFFIC_PRESETS: [&str; 3] = ["interactive", "balanced", "paranoid"];

/// The `[traffic]` section: a named preset, and any of its values
/// overridden one by one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficConfig {
    /// `interactive`, `balanced` (default) or `paranoid`.
    #[serde(default = "default_preset")]
    pub preset: String,
    /// λ_P, packets per second (overrides the preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_rate: Option<f64>,
    /// λ_L, packets per second; 0 turns loop cover off (overrides the preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loop_rate: Option<f64>,
    /// Mean per-mix delay, ms (overrides the preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_hop_delay_ms: Option<u64>,
    /// Longest per-mix delay, ms (overrides the preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_hop_delay_ms: Option<u64>,
    /// How often the daemon lists the mailbox (acks, loops, messages), ms.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
}

fn default_preset() -> String {
    "balanced".into()
}

fn default_poll_interval_ms() -> u64 {
    1000
}

impl Default for TrafficConfig {
    fn default() -> Self {
        TrafficConfig {
            preset: default_preset(),
            payload_rate: None,
            loop_rate: None,
            mean_hop_delay_ms: None,
            max_hop_delay_ms: None,
            poll_interval_ms: default_poll_interval_ms(),
        }
    }
}

impl TrafficConfig {
    /// The preset named `name` with nothing overridden.
    pub fn preset(name: &str) -> Result<Self> {
        let config = TrafficConfig {
            preset: name.to_string(),
            ..TrafficConfig::default()
        };
        config.params()?;
        Ok(config)
    }

    /// The parameters in force: the preset, then each override; validated.
    pub fn params(&self) -> Result<TrafficParams> {
        let mut p = TrafficParams::named(&self.preset).ok_or_else(|| {
            Error::Config(format!(
                "traffic.preset: {:?} is not one of {}",
                self.preset,
                TRAFFIC_PRESETS.join(", ")
            ))
        })?;
        if let Some(r) = self.payload_rate {
            p.payload_rate = r;
        }
        if let Some(r) = self.loop_rate {
            p.loop_rate = r;
        }
        if let Some(ms) = self.mean_hop_delay_ms {
            p.mean_hop_delay = Duration::from_millis(ms);
        }
        if let Some(ms) = self.max_hop_delay_ms {
            p.max_hop_delay = Duration::from_millis(ms);
        }
        p.validate().map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("traffic.{m}")),
            other => other,
        })?;
        Ok(p)
    }

    /// How often the daemon polls the mailbox.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    fn validate(&self) -> Result<()> {
        self.params()?;
        if !(MIN_POLL_INTERVAL_MS..=MAX_POLL_INTERVAL_MS).contains(&self.poll_interval_ms) {
            return Err(Error::Config(format!(
                "traffic.poll_interval_ms: {} must be {MIN_POLL_INTERVAL_MS} to {MAX_POLL_INTERVAL_MS}",
                self.poll_interval_ms
            )));
        }
        Ok(())
    }
}

/// The client's configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Node id (hex) of the mailbox server that holds this client's mailbox.
    pub mailbox_server: String,
    /// This client's mailbox id (hex), derived from `mailbox.key`.
    pub mailbox_id: String,
    /// Traffic parameters (`[traffic]`): preset and overrides.
    #[serde(default)]
    pub traffic: TrafficConfig,
    /// The pinned directory authorities.
    pub directory: DirectoryConfig,
    /// The route policy (`[route]`): hop classes, template, avoid list and
    /// distinctness rules. Default: three hops in any jurisdiction with
    /// distinct operators.
    #[serde(default)]
    pub route: RoutePolicy,
    /// Bind outgoing packet connections to this local address (an IP
    /// address): for multi-homed hosts; the testnet uses it to tell
    /// clients apart on loopback. Default: the system's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_addr: Option<String>,
    /// Must be `true` for any `test_*` key to be accepted: a guard against
    /// a test setting reaching a real client.
    #[serde(default, skip_serializing_if = "is_false")]
    pub test_hooks: bool,
    /// Test hook (needs `test_hooks = true`): append one line per packet
    /// handed to a first mix to this file, `<unix micros> <frame id>
    /// <real|drop|loop> <recipient mailbox id or -> <message id>:<fragment
    /// or ->`. It tells real packets from cover, so never on a real client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_send_log: Option<PathBuf>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The commented-out `[route]` section `init` writes.
const ROUTE_EXAMPLE: &str = "\
# Route policy (see \"Choosing routes\" in the README). Without it, each
# message crosses one mix per layer in any jurisdiction, all run by
# different operators. `bastet route show` prints the policy in force and
# the nodes that meet it; `bastet route sample` draws routes.
#
# [route]
# template = [\"domestic\", \"neutral\", \"external\"]  # 3 or 4 mix hops; \"any\" = any class
# avoid = [\"US\"]                  # never crossed (nor by the recipient's mailbox server)
# distinct_operators = true        # no two relays of a route share an operator
# distinct_jurisdictions = false   # no two relays of a route share a jurisdiction
# allow_avoided_mailbox = false    # send (with a warning) to a mailbox server in `avoid`
# [route.classes]
# domestic = [\"DE\"]
# neutral = [\"CH\", \"IS\"]
# external = [\"NL\", \"SE\"]
";

impl ClientConfig {
    /// A config for a freshly registered mailbox, with defaults elsewhere.
    pub fn new(directory: DirectoryConfig, mailbox_server: NodeId, mailbox: MailboxId) -> Self {
        ClientConfig {
            mailbox_server: mailbox_server.to_hex(),
            mailbox_id: mailbox.to_hex(),
            traffic: TrafficConfig::default(),
            directory,
            route: RoutePolicy::default(),
            source_addr: None,
            test_hooks: false,
            test_send_log: None,
        }
    }

    /// Checks every key, naming the one at fault.
    pub fn validate(&self) -> Result<()> {
        self.mailbox_server_id()?;
        self.mailbox()?;
        self.traffic.validate()?;
        self.directory.validate()?;
        self.route.validate("route.")?;
        self.source_ip()?;
        match &self.test_send_log {
            Some(p) if p.as_os_str().is_empty() => Err(Error::Config(
                "test_send_log: must be a file path (or left out)".into(),
            )),
            Some(_) if !self.test_hooks => Err(Error::Config(
                "test_send_log: is a test hook that tells real packets from cover: it needs \
                 `test_hooks = true`"
                    .into(),
            )),
            _ => Ok(()),
        }
    }

    /// The parsed `source_addr`.
    pub fn source_ip(&self) -> Result<Option<IpAddr>> {
        self.source_addr
            .as_deref()
            .map(|a| {
                a.parse().map_err(|_| {
                    Error::Config(format!(
                        "source_addr: {a:?} is not an IP address (such as 192.0.2.7 or 2001:db8::7)"
                    ))
                })
            })
            .transpose()
    }

    /// The parsed `mailbox_server`.
    pub fn mailbox_server_id(&self) -> Result<NodeId> {
        NodeId::from_hex(&self.mailbox_server).ok_or_else(|| {
            Error::Config(format!(
                "mailbox_server: {:?} is not a node id (64 hex digits)",
                self.mailbox_server
            ))
        })
    }

    /// The parsed `mailbox_id`.
    pub fn mailbox(&self) -> Result<MailboxId> {
        MailboxId::from_hex(&self.mailbox_id)
            .ok_or_else(|| Error::Config("mailbox_id: not a mailbox id (64 hex digits)".into()))
    }

    /// The traffic parameters in force (validated at load).
    pub fn traffic_params(&self) -> TrafficParams {
        self.traffic.params().unwrap_or_default()
    }

    /// The mean per-hop delay.
    pub fn mix_delay(&self) -> Duration {
        self.traffic_params().mean_hop_delay
    }

    /// The `[traffic]` section with a comment on every key; overrides that
    /// are not set are shown commented out with the preset's value.
    fn traffic_toml(&self) -> Result<String> {
        let t = &self.traffic;
        let p = self.traffic.params()?;
        let line = |set: bool, key: &str, value: String| {
            let hash = if set { "" } else { "# " };
            format!("{hash}{key} = {value}\n")
        };
        let mut out = String::from(
            "# Traffic (Loopix). Presets: interactive (4+1 packets/s, 20 ms per mix),\n\
             # balanced (2+1 packets/s, 50 ms), paranoid (1+0.5 packets/s, 500 ms);\n\
             # see \"Traffic\" in the client README. `bastet status` shows the\n\
             # values in force, the idle bandwidth and the expected latency.\n\
             [traffic]\n",
        );
        out += &format!("preset = {:?}\n", t.preset);
        out +=
            "# λ_P: payload packets/s (a real packet when one is queued, drop cover otherwise)\n";
        out += &line(
            t.payload_rate.is_some(),
            "payload_rate",
            format!("{:?}", p.payload_rate),
        );
        out += "# λ_L: loop-cover packets/s, back to this client's own mailbox (0: off)\n";
        out += &line(
            t.loop_rate.is_some(),
            "loop_rate",
            format!("{:?}", p.loop_rate),
        );
        out += "# Mean and longest time each mix holds a packet (exponential), ms\n";
        out += &line(
            t.mean_hop_delay_ms.is_some(),
            "mean_hop_delay_ms",
            p.mean_hop_delay.as_millis().to_string(),
        );
        out += &line(
            t.max_hop_delay_ms.is_some(),
            "max_hop_delay_ms",
            p.max_hop_delay.as_millis().to_string(),
        );
        out += &format!(
            "# How often the daemon lists the mailbox, ms ({MIN_POLL_INTERVAL_MS} to {MAX_POLL_INTERVAL_MS})\n\
             poll_interval_ms = {}\n",
            t.poll_interval_ms
        );
        Ok(out)
    }

    /// The file `init` writes: this config with a comment on every key.
    pub fn to_commented_toml(&self) -> Result<String> {
        #[derive(Serialize)]
        struct Section<'a> {
            directory: &'a DirectoryConfig,
        }
        let directory = toml::to_string(&Section {
            directory: &self.directory,
        })
        .map_err(|e| Error::Config(format!("cannot write the [directory] section: {e}")))?;
        #[derive(Serialize)]
        struct Route<'a> {
            route: &'a RoutePolicy,
        }
        let route = if self.route == RoutePolicy::default() {
            ROUTE_EXAMPLE.to_string()
        } else {
            toml::to_string(&Route { route: &self.route })
                .map_err(|e| Error::Config(format!("cannot write the [route] section: {e}")))?
        };
        let traffic = self.traffic_toml()?;
        let source_addr = match &self.source_addr {
            Some(a) => format!("source_addr = {}", toml::Value::String(a.clone())),
            None => "# source_addr = \"192.0.2.7\"".to_string(),
        };
        let test_hooks = match (&self.test_send_log, self.test_hooks) {
            (Some(p), true) => format!(
                "test_hooks = true\ntest_send_log = {}",
                toml::Value::String(p.to_string_lossy().into_owned())
            ),
            (None, true) => "test_hooks = true".to_string(),
            _ => "# test_hooks = false\n# test_send_log = \"/tmp/bastet-send.log\"".to_string(),
        };
        Ok(format!(
            "# Bastet client configuration, written by `bastet init`.\n\
             # Environment overrides: {ENV_PREFIX}__<KEY>, e.g. {ENV_PREFIX}__TRAFFIC__PRESET=paranoid.\n\
             \n\
             # Node id (hex) of the mailbox server that holds this client's mailbox.\n\
             mailbox_server = \"{}\"\n\
             # This client's mailbox id (hex), derived from mailbox.key.\n\
             mailbox_id = \"{}\"\n\
             # Bind outgoing packet connections to this local address (multi-homed hosts;\n\
             # the testnet uses it to tell clients apart on loopback). Default: any.\n\
             {source_addr}\n\
             # TEST HOOKS ONLY, refused unless test_hooks = true: test_send_log appends a\n\
             # line per packet sent to a file, \"<unix micros> <frame id> <real|drop|loop>\n\
             # <recipient mailbox id or -> <message id>:<fragment or ->\" (which packets are\n\
             # real, for whom: it undoes the cover traffic). Never on a real client.\n\
             {test_hooks}\n\
             \n\
             {traffic}\n\
             # The directory authorities this client trusts (copied from --directory).\n\
             {directory}\n\
             {route}",
            self.mailbox_server, self.mailbox_id
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bastet_directory::AuthorityRef;

    fn sample() -> ClientConfig {
        let directory = DirectoryConfig {
            authorities: vec![AuthorityRef {
                url: "https://127.0.0.1:7000".into(),
                identity_key: hex::encode(
                    crate::ClientKeys::from_secrets(
                        &[1; 32],
                        &[1; 32],
                        &[1; 32],
                        &crate::DeviceSecrets::generate(&mut rand::rng()),
                    )
                    .identity_public(),
                ),
                tls_pin: hex::encode([2; 32]),
            }],
            threshold: None,
            epoch_secs: 60,
        };
        ClientConfig::new(directory, NodeId([3; 32]), MailboxId([4; 32]))
    }

    #[test]
    fn the_written_file_loads_back_and_validates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        let config = sample();
        config.validate().unwrap();
        std::fs::write(&path, config.to_commented_toml().unwrap()).unwrap();
        let loaded: ClientConfig =
            bastet_directory::load_config(&path, "BASTET_CLIENT_TEST_ROUNDTRIP").unwrap();
        assert_eq!(loaded, config);
        assert_eq!(loaded.mix_delay(), Duration::from_millis(50));
        assert_eq!(loaded.traffic_params(), TrafficParams::balanced());
    }

    fn seed_policy() -> RoutePolicy {
        RoutePolicy {
            classes: [
                ("domestic", vec!["DE"]),
                ("neutral", vec!["CH", "IS"]),
                ("external", vec!["NL", "SE"]),
            ]
            .into_iter()
            .map(|(n, c)| (n.to_string(), c.into_iter().map(String::from).collect()))
            .collect(),
            template: ["domestic", "neutral", "external"]
                .map(String::from)
                .to_vec(),
            avoid: vec!["US".into()],
            ..RoutePolicy::default()
        }
    }

    #[test]
    fn a_route_policy_loads_from_client_toml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        let text = sample().to_commented_toml().unwrap();
        assert!(text.contains("# [route]"), "init documents the section");
        std::fs::write(
            &path,
            format!(
                "{text}\n[route]\ntemplate = [\"domestic\", \"neutral\", \"external\"]\n\
                 avoid = [\"US\"]\n[route.classes]\ndomestic = [\"DE\"]\n\
                 neutral = [\"CH\", \"IS\"]\nexternal = [\"NL\", \"SE\"]\n"
            ),
        )
        .unwrap();
        let loaded: ClientConfig =
            bastet_directory::load_config(&path, "BASTET_CLIENT_TEST_ROUTE").unwrap();
        loaded.validate().unwrap();
        assert_eq!(loaded.route, seed_policy());
        assert!(loaded.route.distinct_operators, "on by default");
        assert!(!loaded.route.distinct_jurisdictions, "off by default");

        // A non-default policy is written out and read back.
        let mut c = sample();
        c.route = seed_policy();
        std::fs::write(&path, c.to_commented_toml().unwrap()).unwrap();
        let loaded: ClientConfig =
            bastet_directory::load_config(&path, "BASTET_CLIENT_TEST_ROUTE2").unwrap();
        assert_eq!(loaded, c);
    }

    #[test]
    fn bad_route_policies_name_the_key() {
        type Edit = Box<dyn Fn(&mut RoutePolicy)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "route.classes.neutral",
                Box::new(|p| {
                    p.classes.get_mut("neutral").unwrap().push("XX".into());
                }),
            ),
            (
                "route.classes.neutral",
                Box::new(|p| {
                    p.classes.get_mut("neutral").unwrap().push("ch".into());
                }),
            ),
            (
                "route.classes.domestic",
                Box::new(|p| {
                    p.classes.get_mut("domestic").unwrap().clear();
                }),
            ),
            (
                "route.classes.external",
                Box::new(|p| p.avoid.push("SE".into())),
            ),
            ("route.avoid[1]", Box::new(|p| p.avoid.push("USA".into()))),
            ("route.template", Box::new(|p| p.template.truncate(2))),
            (
                "route.template",
                Box::new(|p| {
                    p.template.extend(["any".to_string(), "any".to_string()]);
                }),
            ),
            (
                "route.template[2]",
                Box::new(|p| p.template[2] = "offshore".into()),
            ),
            (
                "route.classes.any",
                Box::new(|p| {
                    p.classes.insert("any".into(), vec!["DE".into()]);
                }),
            ),
            (
                "route.distinct_jurisdictions",
                Box::new(|p| {
                    p.distinct_jurisdictions = true;
                    p.template = ["domestic", "domestic", "external"]
                        .map(String::from)
                        .to_vec();
                }),
            ),
        ];
        for (key, edit) in cases {
            let mut c = sample();
            c.route = seed_policy();
            edit(&mut c.route);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("{key}:")), "expected {key} in: {err}");
        }
        let mut c = sample();
        c.route = seed_policy();
        c.route.template.push("any".into());
        c.validate().unwrap();
    }

    #[test]
    fn traffic_presets_and_overrides_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        for name in TRAFFIC_PRESETS {
            let mut c = sample();
            c.traffic = TrafficConfig::preset(name).unwrap();
            assert_eq!(c.traffic_params(), TrafficParams::named(name).unwrap());
            std::fs::write(&path, c.to_commented_toml().unwrap()).unwrap();
            let loaded: ClientConfig =
                bastet_directory::load_config(&path, "BASTET_CLIENT_TEST_PRESETS").unwrap();
            assert_eq!(loaded, c);
        }
        let mut c = sample();
        c.traffic = TrafficConfig {
            payload_rate: Some(7.5),
            loop_rate: Some(0.0),
            mean_hop_delay_ms: Some(30),
            max_hop_delay_ms: Some(600),
            poll_interval_ms: 250,
            ..TrafficConfig::preset("paranoid").unwrap()
        };
        c.validate().unwrap();
        let p = c.traffic_params();
        assert_eq!((p.payload_rate, p.loop_rate), (7.5, 0.0));
        assert_eq!(p.mean_hop_delay, Duration::from_millis(30));
        assert_eq!(p.max_hop_delay, Duration::from_millis(600));
        std::fs::write(&path, c.to_commented_toml().unwrap()).unwrap();
        let loaded: ClientConfig =
            bastet_directory::load_config(&path, "BASTET_CLIENT_TEST_OVERRIDES").unwrap();
        assert_eq!(loaded, c);
        // A mean above the cap is refused, naming the key.
        c.traffic.mean_hop_delay_ms = Some(700);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("traffic.mean_hop_delay"), "{err}");
    }

    #[test]
    fn unknown_and_bad_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        let text = sample().to_commented_toml().unwrap();
        std::fs::write(&path, format!("mix_delay = 3\n{text}")).unwrap();
        let err =
            bastet_directory::load_config::<ClientConfig>(&path, "BASTET_CLIENT_TEST_UNKNOWN")
                .unwrap_err();
        assert!(err.to_string().contains("mix_delay"), "{err}");

        let mut c = sample();
        c.traffic.preset = "fast".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("traffic.preset"), "{err}");
        let mut c = sample();
        c.traffic.payload_rate = Some(0.0);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("traffic.payload_rate"), "{err}");
        let mut c = sample();
        c.traffic.poll_interval_ms = 1;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("traffic.poll_interval_ms"), "{err}");
        let mut c = sample();
        c.mailbox_server = "zz".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("mailbox_server")
        );
        let mut c = sample();
        c.mailbox_id = "00".into();
        assert!(c.validate().unwrap_err().to_string().contains("mailbox_id"));
    }

    #[test]
    fn the_send_log_needs_the_test_hooks_switch_and_round_trips() {
        let mut c = sample();
        c.test_send_log = Some(PathBuf::from("/tmp/send.log"));
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("test_send_log") && err.contains("test_hooks"),
            "{err}"
        );
        c.test_hooks = true;
        c.validate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        std::fs::write(&path, c.to_commented_toml().unwrap()).unwrap();
        let loaded: ClientConfig =
            bastet_directory::load_config(&path, "BASTET_CLIENT_TEST_SENDLOG").unwrap();
        assert_eq!(loaded, c);
        let text = sample().to_commented_toml().unwrap();
        assert!(text.contains("\n# test_send_log = "), "{text}");
    }

    #[test]
    fn source_addr_is_optional_and_must_be_an_ip_address() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        let text = sample().to_commented_toml().unwrap();
        assert!(
            text.contains("# source_addr = "),
            "init documents it: {text}"
        );
        assert_eq!(sample().source_ip().unwrap(), None);

        std::fs::write(&path, format!("source_addr = \"127.0.0.2\"\n{text}")).unwrap();
        let loaded: ClientConfig =
            bastet_directory::load_config(&path, "BASTET_CLIENT_TEST_SOURCE").unwrap();
        loaded.validate().unwrap();
        assert_eq!(loaded.source_ip().unwrap(), Some([127, 0, 0, 2].into()));
        // Written back by init when set.
        std::fs::write(&path, loaded.to_commented_toml().unwrap()).unwrap();
        let again: ClientConfig =
            bastet_directory::load_config(&path, "BASTET_CLIENT_TEST_SOURCE2").unwrap();
        assert_eq!(again, loaded);

        for bad in ["127.0.0.2:4000", "localhost", ""] {
            let mut c = sample();
            c.source_addr = Some(bad.into());
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("source_addr"), "{bad}: {err}");
        }
    }
}
