//! What the `example_config` tests of the mixnode, mailbox and directory
//! crates share: where the shipped examples (`deploy/examples/`) and the
//! systemd units are, and reading a config file's keys and comments, so that
//! each test can hold its example to what `init` writes today.
//!
//! Included by path (`#[path = ...] mod example_config;`), so that the three
//! tests check the same way.
#![allow(dead_code)] // each test uses part of it

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// How to bring the examples back in step with `init`.
pub const REGENERATE: &str = "regenerate it with scripts/example-configs.sh, which runs each \
    role's `init` with the example values";

/// `deploy/examples/<name>`.
pub fn example_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples")
        .join(name)
}

/// The text of a file, or a panic naming it.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The config file `deploy/systemd/<unit>.service` runs the node with
/// (`ExecStart=... --config FILE`).
pub fn unit_config_path(unit: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/systemd")
        .join(format!("{unit}.service"));
    let text = read(&path);
    let exec = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("{}: no ExecStart=", path.display()));
    let config = exec
        .split_whitespace()
        .skip_while(|w| *w != "--config")
        .nth(1)
        .unwrap_or_else(|| panic!("{}: ExecStart has no --config", path.display()));
    PathBuf::from(config)
}

/// Fails if the environment holds an override (`{prefix}__KEY`, matched
/// without regard to case, as the loader does) that would change what the
/// loader reads from the example. Tests cannot unset variables safely
/// (`unsafe_code` is forbidden), so they refuse to run instead.
pub fn assert_no_env_overrides(prefix: &str) {
    let pattern = format!("{}__", prefix.to_lowercase());
    let set: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.to_lowercase().starts_with(&pattern))
        .collect();
    assert!(
        set.is_empty(),
        "{set:?} would override values of the example config: unset them to run this test"
    );
}

/// Dotted paths of every key in `table`, tables included; the tables of an
/// array of tables share one path (`directory.authorities.url`).
pub fn keys(table: &toml::Table) -> BTreeSet<String> {
    fn collect(prefix: &str, table: &toml::Table, out: &mut BTreeSet<String>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(t) => collect(&path, t, out),
                toml::Value::Array(a) if !a.is_empty() && a.iter().all(toml::Value::is_table) => {
                    for t in a.iter().filter_map(toml::Value::as_table) {
                        collect(&path, t, out);
                    }
                }
                _ => {}
            }
            out.insert(path);
        }
    }
    let mut out = BTreeSet::new();
    collect("", table, &mut out);
    out
}

/// One line of a config file, as far as keys and comments go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line<'a> {
    Blank,
    /// A comment that explains.
    Prose,
    /// `# key = value`: an optional key shown with its default or an example.
    CommentedKey(&'a str),
    /// `key = value`.
    Key(&'a str),
    /// `[table]` or `[[array.of.tables]]`.
    Header(&'a str),
    /// The rest of a value spanning lines.
    Other,
}

fn bare_key(text: &str) -> Option<&str> {
    let key = text.split_once('=')?.0.trim();
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    bare.then_some(key)
}

fn classify(line: &str) -> Line<'_> {
    let t = line.trim();
    if t.is_empty() {
        Line::Blank
    } else if let Some(comment) = t.strip_prefix('#') {
        let comment = comment.trim();
        // Only what would parse as a key once uncommented, not prose that
        // happens to hold an `=`.
        match bare_key(comment) {
            Some(key) if comment.parse::<toml::Table>().is_ok() => Line::CommentedKey(key),
            _ => Line::Prose,
        }
    } else if line.starts_with('[') {
        Line::Header(t.trim_start_matches('[').trim_end_matches(']').trim())
    } else if line.starts_with(char::is_whitespace) {
        Line::Other
    } else {
        bare_key(t).map_or(Line::Other, Line::Key)
    }
}

/// The lines of `text`, and where each key and table header is: its dotted
/// path and line number, in order.
fn key_lines(text: &str) -> (Vec<Line<'_>>, Vec<(String, usize)>) {
    let lines: Vec<Line> = text.lines().map(classify).collect();
    let mut table = String::new();
    let mut keys = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let path = match *line {
            Line::Header(h) => {
                table = h.to_string();
                h.to_string()
            }
            Line::Key(k) | Line::CommentedKey(k) if table.is_empty() => k.to_string(),
            Line::Key(k) | Line::CommentedKey(k) => format!("{table}.{k}"),
            _ => continue,
        };
        keys.push((path, i));
    }
    (lines, keys)
}

/// Dotted paths of the keys `text` shows commented out (`# key = value`):
/// optional keys, documented with their default or an example value.
pub fn commented_out_keys(text: &str) -> BTreeSet<String> {
    let (lines, keys) = key_lines(text);
    keys.into_iter()
        .filter(|(_, i)| matches!(lines[*i], Line::CommentedKey(_)))
        .map(|(path, _)| path)
        .collect()
}

/// Keys and table headers of `text` (first occurrence of each path) with no
/// comment explaining them: the line above a key or header must be prose;
/// above a commented-out key, after any other commented-out keys, too.
pub fn keys_lacking_a_comment(text: &str) -> Vec<String> {
    let (lines, keys) = key_lines(text);
    let mut seen = BTreeSet::new();
    let mut lacking = Vec::new();
    for (path, i) in keys {
        if !seen.insert(path.clone()) {
            continue;
        }
        let above = match lines[i] {
            Line::CommentedKey(_) => lines[..i]
                .iter()
                .rev()
                .find(|l| !matches!(l, Line::CommentedKey(_))),
            _ => i.checked_sub(1).map(|j| &lines[j]),
        };
        if above != Some(&Line::Prose) {
            lacking.push(path);
        }
    }
    lacking
}

/// Parses `text` as TOML, or panics naming `what`.
pub fn parse(what: &str, text: &str) -> toml::Table {
    text.parse()
        .unwrap_or_else(|e| panic!("{what} is not TOML: {e}"))
}

/// Fails, saying to regenerate `deploy/examples/<name>`, unless `example`
/// sets the same keys as `written` (what `init` writes today) and shows the
/// same optional keys commented out.
pub fn assert_same_keys(name: &str, example: &str, written: &str) {
    let sets = |text: &str, what: &str| (keys(&parse(what, text)), commented_out_keys(text));
    let (example_keys, example_optional) = sets(example, name);
    let (init_keys, init_optional) = sets(written, "init's output");
    let mut why = String::new();
    let mut differ = |kind: &str, example: &BTreeSet<String>, init: &BTreeSet<String>| {
        let only_init: Vec<_> = init.difference(example).collect();
        let only_example: Vec<_> = example.difference(init).collect();
        if !only_init.is_empty() {
            why.push_str(&format!("\n  {kind} only in init's output: {only_init:?}"));
        }
        if !only_example.is_empty() {
            why.push_str(&format!("\n  {kind} only in the example: {only_example:?}"));
        }
    };
    differ("keys", &example_keys, &init_keys);
    differ("commented-out keys", &example_optional, &init_optional);
    assert!(
        why.is_empty(),
        "deploy/examples/{name} no longer has the keys `init` writes:{why}\n\
         The example is what operators copy: {REGENERATE}.\n\
         init wrote:\n{written}"
    );
}
