//! `client.toml`: which authorities to trust, where this client's mailbox
//! is, and how long mixes hold its packets.

use std::time::Duration;

use bastet_directory::DirectoryConfig;
use bastet_sphinx::{MailboxId, NodeId};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, RoutePolicy};

/// Environment prefix for overrides: `BASTET_CLIENT__MIX_DELAY_MS=100`.
pub const ENV_PREFIX: &str = "BASTET_CLIENT";
/// Largest allowed `mix_delay_ms`.
pub const MAX_MIX_DELAY_MS: u64 = 10_000;

/// The client's configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Node id (hex) of the mailbox server that holds this client's mailbox.
    pub mailbox_server: String,
    /// This client's mailbox id (hex), derived from `mailbox.key`.
    pub mailbox_id: String,
    /// Mean per-hop mixing delay in milliseconds: each mix holds a packet
    /// for an Exp(mean) delay.
    #[serde(default = "default_mix_delay_ms")]
    pub mix_delay_ms: u64,
    /// The pinned directory authorities.
    pub directory: DirectoryConfig,
    /// The route policy (`[route]`): hop classes, template, avoid list and
    /// distinctness rules. Default: three hops in any jurisdiction with
    /// distinct operators.
    #[serde(default)]
    pub route: RoutePolicy,
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

fn default_mix_delay_ms() -> u64 {
    50
}

impl ClientConfig {
    /// A config for a freshly registered mailbox, with defaults elsewhere.
    pub fn new(directory: DirectoryConfig, mailbox_server: NodeId, mailbox: MailboxId) -> Self {
        ClientConfig {
            mailbox_server: mailbox_server.to_hex(),
            mailbox_id: mailbox.to_hex(),
            mix_delay_ms: default_mix_delay_ms(),
            directory,
            route: RoutePolicy::default(),
        }
    }

    /// Checks every key, naming the one at fault.
    pub fn validate(&self) -> Result<()> {
        self.mailbox_server_id()?;
        self.mailbox()?;
        if self.mix_delay_ms > MAX_MIX_DELAY_MS {
            return Err(Error::Config(format!(
                "mix_delay_ms: {} is more than the maximum of {MAX_MIX_DELAY_MS}",
                self.mix_delay_ms
            )));
        }
        self.directory.validate()?;
        self.route.validate("route.")?;
        Ok(())
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

    /// The mean per-hop delay.
    pub fn mix_delay(&self) -> Duration {
        Duration::from_millis(self.mix_delay_ms)
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
        Ok(format!(
            "# Bastet client configuration, written by `bastet init`.\n\
             # Environment overrides: {ENV_PREFIX}__<KEY>, e.g. {ENV_PREFIX}__MIX_DELAY_MS=100.\n\
             \n\
             # Node id (hex) of the mailbox server that holds this client's mailbox.\n\
             mailbox_server = \"{}\"\n\
             # This client's mailbox id (hex), derived from mailbox.key.\n\
             mailbox_id = \"{}\"\n\
             # Mean per-hop mixing delay in milliseconds (each mix holds a packet\n\
             # for an exponentially distributed time with this mean; at most {MAX_MIX_DELAY_MS}).\n\
             mix_delay_ms = {}\n\
             \n\
             # The directory authorities this client trusts (copied from --directory).\n\
             {directory}\n\
             {route}",
            self.mailbox_server, self.mailbox_id, self.mix_delay_ms
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
                    crate::ClientKeys::from_secrets(&[1; 32], &[1; 32], &[1; 32]).identity_public(),
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
        c.mix_delay_ms = MAX_MIX_DELAY_MS + 1;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("mix_delay_ms")
        );
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
}
