//! Child processes: finding the Bastet binaries, running one-shot commands,
//! and starting and stopping long-running nodes.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// How long a node gets to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Where the Bastet binaries are.
#[derive(Clone, Debug)]
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// The binaries the testnet runs.
    pub const NAMES: [&'static str; 4] = [
        "bastet-directory",
        "bastet-mixnode",
        "bastet-mailbox",
        "bastet",
    ];

    /// Finds the binaries in `dir`, else in `$BASTET_BIN_DIR`, else next to
    /// the running executable (for a test executable in `target/*/deps/`, in
    /// its parent, where cargo puts the workspace's binaries). Fails naming
    /// the first one missing.
    pub fn locate(dir: Option<&Path>) -> Result<Self> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => match std::env::var_os("BASTET_BIN_DIR") {
                Some(d) if !d.is_empty() => PathBuf::from(d),
                _ => beside_current_exe()?,
            },
        };
        for name in Self::NAMES {
            if !dir.join(name).is_file() {
                return Err(Error::BinaryMissing { name, dir });
            }
        }
        Ok(Binaries { dir })
    }

    /// The directory holding them.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of binary `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn beside_current_exe() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(Error::io("locating the running executable"))?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir.pop();
    }
    Ok(dir)
}

/// A command line for messages: the program's file name and its arguments,
/// each cut to a readable length.
fn describe(program: &Path, args: &[&OsStr]) -> String {
    let mut s = program
        .file_name()
        .unwrap_or(program.as_os_str())
        .to_string_lossy()
        .into_owned();
    for a in args {
        let a = a.to_string_lossy();
        s.push(' ');
        if a.chars().count() > 48 {
            s.extend(a.chars().take(45));
            s.push_str("...");
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// What Rust prints when a thread panics. No Bastet binary may show it to
/// a user or write it to a node's log: a panic is a bug.
pub(crate) const PANIC_MARKER: &str = "panicked at";

/// The lines of the first panic in `text` (the `panicked at` line and
/// the few after it, which hold the message), if there is one.
pub(crate) fn panic_lines(text: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let first = lines.iter().position(|l| l.contains(PANIC_MARKER))?;
    Some(lines[first..lines.len().min(first + 6)].join("\n"))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `program args` to completion with a time limit and returns its
/// stdout. The child is killed if the limit passes or the future is dropped
/// (Ctrl-C). A non-zero exit becomes [`Error::CommandFailed`] carrying the
/// end of its stderr; a panic message on its stderr (whatever the exit
/// status) becomes [`Error::UnexpectedOutput`], so that no test passes
/// while a user would have seen one.
pub(crate) async fn run_command(
    program: &Path,
    args: &[&OsStr],
    env: &[(&str, &OsStr)],
    timeout: Duration,
) -> Result<String> {
    run_command_with_input(program, args, env, timeout, None).await
}

/// [`run_command`], with `input` written to its standard input (then
/// closed).
pub(crate) async fn run_command_with_input(
    program: &Path,
    args: &[&OsStr],
    env: &[(&str, &OsStr)],
    timeout: Duration,
    input: Option<&[u8]>,
) -> Result<String> {
    let command = describe(program, args);
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .map_err(Error::io(format!("starting `{command}`")))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        use tokio::io::AsyncWriteExt;
        stdin
            .write_all(input)
            .await
            .map_err(Error::io(format!("writing to `{command}`")))?;
    }
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => {
            return Err(Error::CommandTimedOut {
                command,
                secs: timeout.as_secs(),
            });
        }
        Ok(r) => r.map_err(Error::io(format!("running `{command}`")))?,
    };
    if let Some(panic) = panic_lines(&String::from_utf8_lossy(&output.stderr)) {
        return Err(Error::UnexpectedOutput {
            command,
            why: format!("it panicked ({})", output.status),
            output: panic,
        });
    }
    if !output.status.success() {
        return Err(Error::CommandFailed {
            command,
            status: output.status.to_string(),
            stderr: tail(String::from_utf8_lossy(&output.stderr).trim(), 20),
            stdout: String::from_utf8_lossy(&output.stdout[..output.stdout.len().min(64 << 10)])
                .into_owned(),
        });
    }
    String::from_utf8(output.stdout).map_err(|e| Error::UnexpectedOutput {
        command,
        why: "not UTF-8".into(),
        output: String::from_utf8_lossy(e.as_bytes())
            .chars()
            .take(200)
            .collect(),
    })
}

/// How a node ended when the testnet stopped it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// It had already exited before it was asked to stop.
    AlreadyExited(String),
    /// It exited after SIGTERM, with this status.
    Exited(String),
    /// It ignored SIGTERM for [`STOP_GRACE`] and was killed.
    Killed,
}

/// A long-running node whose stdout and stderr go to its log file.
#[derive(Debug)]
pub(crate) struct NodeProcess {
    pub(crate) name: String,
    pub(crate) log: PathBuf,
    child: Child,
    done: Option<ExitStatus>,
    /// How far [`NodeProcess::new_panic`] has read the log.
    scanned: u64,
}

impl NodeProcess {
    /// Starts `program args` with stdout and stderr appended to `log`.
    pub(crate) fn spawn(
        name: &str,
        program: &Path,
        args: &[&OsStr],
        env: &[(String, String)],
        log: &Path,
    ) -> Result<Self> {
        Self::spawn_with_input(name, program, args, env, log, None)
    }

    /// [`NodeProcess::spawn`], with `input` written to its standard input
    /// (then closed).
    pub(crate) fn spawn_with_input(
        name: &str,
        program: &Path,
        args: &[&OsStr],
        env: &[(String, String)],
        log: &Path,
        input: Option<&[u8]>,
    ) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(Error::io(format!("opening {}", log.display())))?;
        let stdout = file
            .try_clone()
            .map_err(Error::io(format!("opening {}", log.display())))?;
        let mut cmd = std::process::Command::new(program);
        cmd.args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(stdout)
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(Error::io(format!(
            "starting {name} ({})",
            describe(program, args)
        )))?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            use std::io::Write;
            stdin
                .write_all(input)
                .map_err(Error::io(format!("writing to {name}")))?;
        }
        Ok(NodeProcess {
            name: name.to_string(),
            log: log.to_path_buf(),
            child,
            done: None,
            scanned: 0,
        })
    }

    /// The exit status if the process has ended (reaping it).
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        if self.done.is_none() {
            self.done = self.child.try_wait().ok().flatten();
        }
        self.done
    }

    /// [`Error::NodeExited`] for this node, with the end of its log.
    pub(crate) fn exited_error(&self, status: ExitStatus) -> Error {
        Error::NodeExited {
            name: self.name.clone(),
            status: status.to_string(),
            log: self.log.clone(),
            tail: self.log_tail(15),
        }
    }

    /// The last `lines` lines of the node's log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        std::fs::read(&self.log)
            .map(|b| tail(&String::from_utf8_lossy(&b), lines))
            .unwrap_or_default()
    }

    /// The first panic in its log, if any (reads the whole log).
    pub(crate) fn panic(&self) -> Option<String> {
        let log = std::fs::read(&self.log).ok()?;
        panic_lines(&String::from_utf8_lossy(&log))
    }

    /// The first panic written to its log since the last call: reads only
    /// what was appended, so that a watcher may call it every second.
    pub(crate) fn new_panic(&mut self) -> Option<String> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = std::fs::File::open(&self.log).ok()?;
        file.seek(SeekFrom::Start(self.scanned)).ok()?;
        let mut appended = Vec::new();
        file.take(16 << 20).read_to_end(&mut appended).ok()?;
        // Up to the last whole line: a line being written is read next time.
        let whole = appended
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        self.scanned += whole as u64;
        panic_lines(&String::from_utf8_lossy(&appended[..whole]))
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL now, and reap.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        self.done = self.child.wait().ok();
    }

    fn terminate(&mut self) {
        // SIGTERM lets the node shut down cleanly. `unsafe_code` is
        // forbidden, so rather than calling libc::kill we run kill(1); if it
        // is unavailable the node gets SIGKILL after the grace period.
        let sent = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !sent.is_ok_and(|s| s.success()) {
            tracing::debug!(node = %self.name, "kill -TERM failed; will SIGKILL");
        }
    }
}

/// Stops every node: SIGTERM to all at once, then SIGKILL to any still
/// running after [`STOP_GRACE`]. Blocks for at most about that long.
pub(crate) fn stop_all(nodes: &mut [NodeProcess]) -> Vec<(String, StopOutcome)> {
    let mut outcomes: Vec<Option<StopOutcome>> = nodes
        .iter_mut()
        .map(|n| {
            n.exited()
                .map(|s| StopOutcome::AlreadyExited(s.to_string()))
        })
        .collect();
    for (n, o) in nodes.iter_mut().zip(&outcomes) {
        if o.is_none() {
            n.terminate();
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    loop {
        for (n, o) in nodes.iter_mut().zip(outcomes.iter_mut()) {
            if o.is_none()
                && let Some(s) = n.exited()
            {
                *o = Some(StopOutcome::Exited(s.to_string()));
            }
        }
        if outcomes.iter().all(Option::is_some) {
            break;
        }
        if Instant::now() >= deadline {
            for (n, o) in nodes.iter_mut().zip(outcomes.iter_mut()) {
                if o.is_none() {
                    let _ = n.child.kill();
                    n.done = n.child.wait().ok();
                    *o = Some(StopOutcome::Killed);
                }
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    nodes
        .iter()
        .zip(outcomes)
        .map(|(n, o)| (n.name.clone(), o.unwrap_or(StopOutcome::Killed)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_arguments_are_shortened_in_messages() {
        let long = "x".repeat(200);
        let d = describe(
            Path::new("/a/b/bastet"),
            &[OsStr::new("send"), OsStr::new(&long)],
        );
        assert!(d.starts_with("bastet send xxx"), "{d}");
        assert!(d.ends_with("..."), "{d}");
        assert!(d.len() < 70, "{d}");
    }

    #[test]
    fn stop_all_terminates_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sleep.log");
        let sleeper = NodeProcess::spawn(
            "sleeper",
            Path::new("sleep"),
            &[OsStr::new("600")],
            &[],
            &log,
        );
        // `sleep` resolves through PATH; present on every Unix we run on.
        let mut nodes = vec![sleeper.unwrap()];
        assert!(nodes[0].exited().is_none());
        let started = Instant::now();
        let out = stop_all(&mut nodes);
        assert!(
            started.elapsed() < STOP_GRACE,
            "SIGTERM should end sleep at once"
        );
        assert_eq!(out.len(), 1);
        assert!(matches!(out[0].1, StopOutcome::Exited(_)), "{out:?}");
        assert!(nodes[0].exited().is_some());
        // Stopping again is harmless.
        let again = stop_all(&mut nodes);
        assert!(matches!(again[0].1, StopOutcome::AlreadyExited(_)));
    }

    #[test]
    fn a_process_that_ignores_sigterm_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stubborn.log");
        let mut nodes = vec![
            NodeProcess::spawn(
                "stubborn",
                Path::new("sh"),
                &[
                    OsStr::new("-c"),
                    OsStr::new("trap '' TERM; echo ready; while :; do sleep 0.05; done"),
                ],
                &[],
                &log,
            )
            .unwrap(),
        ];
        // Let the shell install its trap before signalling it.
        let until = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&log).unwrap_or_default().is_empty() && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = stop_all(&mut nodes);
        assert_eq!(out[0].1, StopOutcome::Killed);
    }

    #[test]
    fn panics_are_found_in_output_and_logs() {
        let text = "INFO started\nthread 'main' panicked at src/main.rs:3:5:\nboom\nnote: run with `RUST_BACKTRACE=1`\n";
        let found = panic_lines(text).unwrap();
        assert!(found.starts_with("thread 'main' panicked at"), "{found}");
        assert!(found.contains("boom"), "{found}");
        assert_eq!(panic_lines("INFO all well\nWARN a peer left\n"), None);

        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("node.log");
        let mut node = NodeProcess::spawn(
            "talker",
            Path::new("sh"),
            &[OsStr::new("-c"), OsStr::new("echo all well")],
            &[],
            &log,
        )
        .unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while node.exited().is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(node.new_panic(), None);
        assert_eq!(node.panic(), None);
        std::fs::write(&log, format!("all well\n{text}")).unwrap();
        assert!(node.new_panic().unwrap().contains("boom"));
        assert_eq!(node.new_panic(), None, "read once");
        assert!(node.panic().unwrap().contains("boom"));
    }

    #[tokio::test]
    async fn a_command_that_panics_fails_even_with_exit_status_0() {
        let script = "echo out; echo \"thread 'main' panicked at src/main.rs:1:1:\" >&2";
        let r = run_command(
            Path::new("sh"),
            &[OsStr::new("-c"), OsStr::new(script)],
            &[],
            Duration::from_secs(10),
        )
        .await;
        match r {
            Err(Error::UnexpectedOutput { why, output, .. }) => {
                assert!(why.contains("panicked"), "{why}");
                assert!(output.contains("src/main.rs"), "{output}");
            }
            other => panic!("a panic passed: {other:?}"),
        }
    }

    #[test]
    fn missing_binaries_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = Binaries::locate(Some(dir.path())).unwrap_err();
        assert!(err.to_string().contains("bastet-directory"), "{err}");
        assert!(err.to_string().contains("cargo build"), "{err}");
    }
}
