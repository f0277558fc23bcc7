//! The shipped `deploy/examples/mixnode.toml`: it loads and validates as
//! `run` would load it, and it has the keys, optional keys and comments of
//! what `bastet-mixnode init` writes today.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code may panic

#[path = "../../directory/tests/support/example_config.rs"]
mod example_config;

use bastet_directory::DirectoryConfig;
use bastet_mixnode::{ENV_PREFIX, InitOptions, MixnodeConfig, init};
use example_config::{
    REGENERATE, assert_no_env_overrides, assert_same_keys, example_path, keys_lacking_a_comment,
    read, unit_config_path,
};

const EXAMPLE: &str = "mixnode.toml";

/// What `bastet-mixnode init` writes with the values the example was made
/// with (scripts/example-configs.sh): the `--directory` file is the shipped
/// `directory.toml`.
fn written_by_init() -> String {
    let tmp = tempfile::tempdir().unwrap();
    let report = init(&InitOptions {
        dir: tmp.path().join("mixnode"),
        listen: "0.0.0.0:4100".parse().unwrap(),
        public_addr: Some("mix1.example.org:4100".into()),
        metrics_listen: "127.0.0.1:9100".parse().unwrap(),
        jurisdiction: "CH".into(),
        operator: "Example Operator".into(),
        directory_file: example_path("directory.toml"),
    })
    .unwrap();
    read(&report.config)
}

#[test]
fn the_shipped_example_loads_and_validates() {
    assert_no_env_overrides(ENV_PREFIX);
    let path = example_path(EXAMPLE);
    let config = MixnodeConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Only the file counts: the loader added nothing from the environment.
    let plain: MixnodeConfig = toml::from_str(&read(&path)).unwrap();
    assert_eq!(config, plain);
    let unit_config = unit_config_path("bastet-mixnode");
    assert_eq!(
        Some(config.data_dir.as_path()),
        unit_config.parent(),
        "data_dir of {EXAMPLE} is not where deploy/systemd/bastet-mixnode.service keeps it"
    );
    let directory: DirectoryConfig =
        toml::from_str(&read(&example_path("directory.toml"))).unwrap();
    assert_eq!(
        config.directory, directory,
        "the [directory] section of {EXAMPLE} is not the shipped directory.toml, which init copies: {REGENERATE}"
    );
    assert!(
        !config.test_hooks
            && config.packet_log.is_none()
            && config.test_ingress_log.is_none()
            && config.test_hop_log.is_none(),
        "an example for operators turns on no test hook"
    );
}

#[test]
fn the_shipped_example_has_the_keys_init_writes() {
    let example = read(&example_path(EXAMPLE));
    assert_same_keys(EXAMPLE, &example, &written_by_init());
}

#[test]
fn every_key_init_writes_and_the_example_holds_is_commented() {
    let written = written_by_init();
    assert_eq!(
        keys_lacking_a_comment(&written),
        Vec::<String>::new(),
        "init writes these keys without a comment above them (MixnodeConfig::to_commented_toml):\n{written}"
    );
    assert_eq!(
        keys_lacking_a_comment(&read(&example_path(EXAMPLE))),
        Vec::<String>::new(),
        "keys of deploy/examples/{EXAMPLE} without a comment above them: {REGENERATE}"
    );
}
