//! The way in for users and operators, over the real binaries (nothing is
//! started, no port is opened): every binary's `--help`, and that of every
//! subcommand two levels down, succeeds without a panic; the top-level
//! help names the first steps and the guide; `completions SHELL` prints a
//! script for each shell; and the errors a newcomer meets first name what
//! to do next. Needs the workspace binaries (`cargo build --workspace
//! --bins`; `scripts/test.sh` does).

// This whole file is test code; its helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Each binary and the guide its help points to.
const BINARIES: [(&str, &str); 4] = [
    ("bastet", "docs/users.md"),
    ("bastet-mixnode", "docs/operators.md"),
    ("bastet-mailbox", "docs/operators.md"),
    ("bastet-directory", "docs/operators.md"),
];

fn bin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_bastet-testnet"))
        .parent()
        .unwrap()
        .join(name)
}

/// Runs `name args` with no terminal and an empty standard input;
/// (success, stdout, stderr). Fails the test if either output shows a
/// panic.
fn run(name: &str, args: &[&str], env: &[(&str, &Path)]) -> (bool, String, String) {
    let out = Command::new(bin(name))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{name}: {e} (build it: cargo build --workspace --bins)"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stdout.contains("panicked") && !stderr.contains("panicked"),
        "{name} {args:?} panicked:\n{stdout}\n{stderr}"
    );
    (out.status.success(), stdout, stderr)
}

/// `name path... --help`: must succeed and say something.
fn help(name: &str, path: &[&str]) -> String {
    let mut args = path.to_vec();
    args.push("--help");
    let (ok, out, err) = run(name, &args, &[]);
    assert!(ok, "{name} {args:?} failed: {err}");
    assert!(
        out.contains("Usage:"),
        "{name} {args:?} printed no usage:\n{out}"
    );
    out
}

/// The subcommands listed under "Commands:" (without clap's `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        // A command's line is indented by two spaces; a wrapped
        // description, by more.
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn every_help_works_and_the_top_level_names_the_first_steps_and_the_guide() {
    for (name, guide) in BINARIES {
        let top = help(name, &[]);
        assert!(top.contains("First steps"), "{name} --help:\n{top}");
        assert!(top.contains(guide), "{name} --help names no guide:\n{top}");
        // `-h` (the short help) shows them too.
        let (ok, short, _) = run(name, &["-h"], &[]);
        assert!(ok && short.contains(guide), "{name} -h:\n{short}");

        let commands = subcommands(&top);
        assert!(
            commands.len() >= 4,
            "{name}: too few commands found in:\n{top}"
        );
        assert!(
            commands.iter().any(|c| c == "completions"),
            "{name}: {commands:?}"
        );
        for command in &commands {
            let first = help(name, &[command]);
            for sub in subcommands(&first) {
                let second = help(name, &[command, &sub]);
                for leaf in subcommands(&second) {
                    help(name, &[command, &sub, &leaf]);
                }
            }
        }
    }
    // The client's groups were walked into, not just listed.
    let contact = subcommands(&help("bastet", &["contact"]));
    for c in ["export", "import", "list", "show", "psk", "remove"] {
        assert!(contact.iter().any(|x| x == c), "{contact:?}");
    }
}

#[test]
fn completions_print_a_script_for_every_shell() {
    for (name, _) in BINARIES {
        let (ok, out, err) = run(name, &["completions", "bash"], &[]);
        assert!(ok, "{name} completions bash: {err}");
        assert!(out.contains("complete"), "{name}:\n{out}");
        assert!(out.contains(name), "{name}:\n{out}");
        // The subcommands are offered.
        assert!(out.contains("check-config") || name == "bastet", "{name}");
        assert!(out.contains("contact") || name != "bastet", "{name}");
        for shell in ["zsh", "fish", "elvish", "powershell"] {
            let (ok, out, err) = run(name, &["completions", shell], &[]);
            assert!(
                ok && out.contains(name),
                "{name} completions {shell}: {err}"
            );
        }
        let (_, help, _) = run(name, &["completions", "--help"], &[]);
        assert!(
            help.contains(&format!(
                "{name} completions bash > ~/.local/share/bash-completion/completions/{name}"
            )),
            "{name} completions --help says not where to put it:\n{help}"
        );
        let (ok, _, err) = run(name, &["completions", "tcsh"], &[]);
        assert!(!ok && err.contains("possible values"), "{name}: {err}");
    }
    // Made without a data dir or HOME, as a package build would.
    let out = Command::new(bin("bastet"))
        .args(["completions", "zsh"])
        .env_remove("HOME")
        .env_remove("BASTET_DATA_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("#compdef bastet"));
}

#[test]
fn a_newcomers_first_errors_name_the_next_step() {
    let tmp = tempfile::tempdir().unwrap();
    let fresh = tmp.path().join("fresh");
    let data_dir = [("BASTET_DATA_DIR", fresh.as_path())];
    // (arguments, what the error must say to do)
    let cases: &[(&[&str], &str)] = &[
        (&["status"], "`bastet init --directory FILE`"),
        (&["contact", "list"], "`bastet init --directory FILE`"),
        (&["send", "bob", "hi"], "daemon`"),
        (&["store", "add-compartment"], "`bastet store create`"),
        (&["store", "info"], "store create`"),
        (
            &["init", "--directory", "/nonexistent/directory.toml"],
            "your network's operators",
        ),
        (&["store", "create", "--size", "12XB"], "MiB"),
        (&["send", "bob"], "--help"),
    ];
    for (args, step) in cases {
        let (ok, out, err) = run("bastet", args, &data_dir);
        assert!(!ok, "bastet {args:?} passed: {out}");
        assert!(
            err.contains(step),
            "bastet {args:?} does not say what to do ({step}):\n{err}"
        );
    }
    for (name, _) in &BINARIES[1..] {
        for command in ["check-config", "run"] {
            let (ok, _, err) = run(name, &[command, "--config", "/nonexistent/node.toml"], &[]);
            assert!(!ok, "{name} {command}");
            assert!(err.contains("`init`"), "{name} {command}: {err}");
        }
    }
}
