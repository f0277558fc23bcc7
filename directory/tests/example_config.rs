//! The shipped `deploy/examples/authority.toml` (an authority's config) and
//! `deploy/examples/directory.toml` (the network's authorities, which relays
//! and clients are given with `init --directory`): each loads and validates
//! as the product loads it, and has the keys and comments of what the
//! product writes today.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code may panic

#[path = "support/example_config.rs"]
mod example_config;

use bastet_directory::DirectoryConfig;
use bastet_directory::server::{self, AuthorityConfig};
use bastet_sphinx::NodeId;
use example_config::{
    REGENERATE, assert_no_env_overrides, assert_same_keys, commented_out_keys, example_path, keys,
    keys_lacking_a_comment, parse, read, unit_config_path,
};

const AUTHORITY: &str = "authority.toml";
const DIRECTORY: &str = "directory.toml";
const ENV_PREFIX: &str = "BASTET_DIRECTORY";

/// The placeholder node ids the example admits: what
/// scripts/example-configs.sh passes as `--allow`.
fn example_allowed_nodes() -> Vec<NodeId> {
    (1..=4u8)
        .map(|i| NodeId::from_hex(&format!("{:064x}", i)).unwrap())
        .collect()
}

/// A data directory `init` filled with the values the example was made
/// with, and the `authority.toml` it wrote there.
fn init_authority() -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().unwrap();
    server::init(
        tmp.path(),
        "0.0.0.0:7000".parse().unwrap(),
        Some("127.0.0.1:7001".parse().unwrap()),
        3600,
        &example_allowed_nodes(),
    )
    .unwrap();
    let text = read(&tmp.path().join(AUTHORITY));
    (tmp, text)
}

#[test]
fn the_shipped_authority_example_loads_and_validates() {
    assert_no_env_overrides(ENV_PREFIX);
    let path = example_path(AUTHORITY);
    let config: AuthorityConfig = bastet_directory::load_config(&path, ENV_PREFIX)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Only the file counts: the loader added nothing from the environment.
    let plain: AuthorityConfig = toml::from_str(&read(&path)).unwrap();
    assert_eq!(
        toml::Value::try_from(&config).unwrap(),
        toml::Value::try_from(&plain).unwrap()
    );
    let unit_config = unit_config_path("bastet-directory");
    assert_eq!(
        Some(config.data_dir.as_path()),
        unit_config.parent(),
        "data_dir of {AUTHORITY} is not where deploy/systemd/bastet-directory.service keeps it"
    );
    assert!(
        !config.open_admission,
        "open admission is for test networks"
    );
    // `check` is what `check-config` and `run` do first: every value, then
    // the keys. The example's data_dir holds none here, so its values are
    // checked against keys `init` made.
    let (keys_dir, _) = init_authority();
    let report = server::check(&AuthorityConfig {
        data_dir: keys_dir.path().to_path_buf(),
        ..config
    })
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(report.allowed_nodes, example_allowed_nodes().len());
}

#[test]
fn the_shipped_authority_example_has_the_keys_init_writes() {
    let (_dir, written) = init_authority();
    let example = read(&example_path(AUTHORITY));
    assert_same_keys(AUTHORITY, &example, &written);
    // The authority's `init` explains its keys in one block at the top
    // (`# key: why`) rather than above each.
    for (text, what) in [(&written, "init's output"), (&example, AUTHORITY)] {
        let unexplained: Vec<String> = keys(&parse(what, text))
            .into_iter()
            .filter(|k| !text.lines().any(|l| l.starts_with(&format!("# {k}:"))))
            .collect();
        assert!(
            unexplained.is_empty(),
            "{what} does not explain {unexplained:?} (`# key: why`):\n{text}"
        );
    }
}

#[test]
fn the_shipped_directory_example_is_what_relays_and_clients_read() {
    let path = example_path(DIRECTORY);
    let text = read(&path);
    // What `init --directory FILE` of mixnodes, mailbox servers and clients
    // does with the file.
    let directory: DirectoryConfig =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    directory
        .validate()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        directory.authorities.len() >= 3,
        "a network has three or more authorities, each run by a different party"
    );
    assert_eq!(
        directory.epoch_secs,
        parse(AUTHORITY, &read(&example_path(AUTHORITY)))["epoch_secs"]
            .as_integer()
            .and_then(|e| u64::try_from(e).ok())
            .unwrap(),
        "relays and clients must use the authorities' epoch_secs"
    );
    // A node's init copies the file into its [directory] section: the file
    // holds that section's keys, and shows the same optional ones.
    let section = directory.to_commented_section().unwrap();
    let in_section = |set: std::collections::BTreeSet<String>| -> Vec<String> {
        set.into_iter()
            .filter_map(|k| k.strip_prefix("directory.").map(str::to_string))
            .collect()
    };
    let example_keys: Vec<String> = keys(&parse(DIRECTORY, &text)).into_iter().collect();
    assert_eq!(
        example_keys,
        in_section(keys(&parse("the [directory] section", &section))),
        "deploy/examples/{DIRECTORY} no longer has the keys of a node's [directory] section \
         (DirectoryConfig::to_commented_section); update it by hand:\n{section}"
    );
    assert_eq!(
        commented_out_keys(&text).into_iter().collect::<Vec<_>>(),
        in_section(commented_out_keys(&section)),
        "deploy/examples/{DIRECTORY} does not show the optional keys a node's [directory] \
         section shows; update it by hand:\n{section}"
    );
    // The `[directory]` header itself is introduced by the node's template.
    let lacking: Vec<String> = keys_lacking_a_comment(&section)
        .into_iter()
        .filter(|k| k != "directory")
        .collect();
    assert_eq!(
        lacking,
        Vec::<String>::new(),
        "DirectoryConfig::to_commented_section writes keys without a comment:\n{section}"
    );
    assert_eq!(
        keys_lacking_a_comment(&text),
        Vec::<String>::new(),
        "keys of deploy/examples/{DIRECTORY} without a comment above them"
    );
}

#[test]
fn placeholders_are_marked_for_replacement() {
    for (name, placeholder) in [
        (AUTHORITY, format!("{:064x}", 1)),
        (DIRECTORY, "1".repeat(64)),
    ] {
        let text = read(&example_path(name));
        let line = text
            .lines()
            .position(|l| l.contains(&placeholder))
            .unwrap_or_else(|| {
                panic!("{name}: placeholder {placeholder} not found ({REGENERATE})")
            });
        assert!(
            text.lines()
                .take(line)
                .any(|l| l.starts_with('#') && l.contains("REPLACE")),
            "{name}: no REPLACE comment before the placeholder values"
        );
    }
}
