//! The shipped `deploy/examples/mailbox.toml`: it loads and validates as
//! `run` would load it, and it has the keys, optional keys and comments of
//! what `bastet-mailbox init` writes today.
#![cfg(feature = "server")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code may panic

#[path = "../../directory/tests/support/example_config.rs"]
mod example_config;

use bastet_mailbox::{ENV_PREFIX, InitOptions, MailboxConfig, init, read_directory_file};
use example_config::{
    REGENERATE, assert_no_env_overrides, assert_same_keys, example_path, keys_lacking_a_comment,
    read, unit_config_path,
};

const EXAMPLE: &str = "mailbox.toml";

/// What `bastet-mailbox init` writes with the values the example was made
/// with (scripts/example-configs.sh): the `--directory` file is the shipped
/// `directory.toml`, read as the binary reads it.
fn written_by_init() -> String {
    let tmp = tempfile::tempdir().unwrap();
    let info = init(InitOptions {
        dir: tmp.path().join("mailbox"),
        listen: "0.0.0.0:9000".parse().unwrap(),
        api_listen: "0.0.0.0:9443".parse().unwrap(),
        metrics_listen: "127.0.0.1:9200".parse().unwrap(),
        jurisdiction: "CH".into(),
        operator: "Example Operator".into(),
        public_addr: Some("mailbox1.example.org:9000".into()),
        public_api_addr: Some("mailbox1.example.org:9443".into()),
        directory: read_directory_file(&example_path("directory.toml")).unwrap(),
        packet_log: None,
    })
    .unwrap();
    read(&info.config)
}

#[test]
fn the_shipped_example_loads_and_validates() {
    assert_no_env_overrides(ENV_PREFIX);
    let path = example_path(EXAMPLE);
    let config = MailboxConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Only the file counts: the loader added nothing from the environment.
    let plain: MailboxConfig = toml::from_str(&read(&path)).unwrap();
    assert_eq!(config, plain);
    let unit_config = unit_config_path("bastet-mailbox");
    assert_eq!(
        Some(config.data_dir.as_path()),
        unit_config.parent(),
        "data_dir of {EXAMPLE} is not where deploy/systemd/bastet-mailbox.service keeps it"
    );
    let directory = read_directory_file(&example_path("directory.toml")).unwrap();
    assert_eq!(
        config.directory, directory,
        "the [directory] section of {EXAMPLE} is not the shipped directory.toml, which init copies: {REGENERATE}"
    );
    assert!(
        config.packet_log.is_none()
            && !config.test_hooks
            && config.test_ingress_log.is_none()
            && config.test_store_log.is_none(),
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
        "init writes these keys without a comment above them (mailbox config.rs, `commented`):\n{written}"
    );
    assert_eq!(
        keys_lacking_a_comment(&read(&example_path(EXAMPLE))),
        Vec::<String>::new(),
        "keys of deploy/examples/{EXAMPLE} without a comment above them: {REGENERATE}"
    );
}
