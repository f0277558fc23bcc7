//! What every Bastet binary does the same way around its real work: logging,
//! the exit code, and stopping on a signal.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};

/// Logs to stderr, filtered by `BASTET_LOG` (a `tracing` filter such as
/// `debug` or `bastet_link=trace`), or by `default` when it is unset or
/// invalid. With `BASTET_LOG_FORMAT=json`, one JSON object per line
/// (`ts_ms`, `level`, `target`, `message` and the event's fields), for log
/// collectors; another value than `text` (the default) or `json` logs text
/// and warns.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BASTET_LOG")
        .unwrap_or_else(|_| default.into());
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match std::env::var("BASTET_LOG_FORMAT").as_deref() {
        Ok("json") => builder.event_format(JsonLines).init(),
        Ok("text") | Err(_) => builder.init(),
        Ok(other) => {
            builder.init();
            tracing::warn!(
                "BASTET_LOG_FORMAT={other:?} is neither \"text\" nor \"json\": logging as text"
            );
        }
    }
}

/// One JSON object per event.
struct JsonLines;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = JsonFields(serde_json::Map::new());
        event.record(&mut fields);
        // The event's fields first: the header's names win over theirs.
        let mut object = fields.0;
        let ts_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        object.insert("ts_ms".into(), ts_ms.into());
        object.insert("level".into(), event.metadata().level().as_str().into());
        object.insert("target".into(), event.metadata().target().into());
        writeln!(writer, "{}", serde_json::Value::Object(object))
    }
}

/// An event's fields as JSON values.
struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
}

/// Success, or failure after printing `{prefix}: {error}` to stderr.
pub fn exit_code<E: Display>(prefix: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{prefix}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Watches SIGTERM and SIGINT from now on (so that a signal arriving while a
/// node starts is not lost) and returns a future that completes at the first
/// of them. Must be called inside a tokio runtime.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// One line from file descriptor `fd`, without its line end; at most 1024
/// bytes. Standard input (0) is read through the process's one `stdin`
/// handle, so that a later read of it (e.g. `config replace -`) gets the
/// rest; another descriptor is opened once per process as `/dev/fd/N` (a
/// file is then read from its start, and must be readable by this user)
/// and later calls read on from there.
pub fn read_fd_line(fd: u32) -> std::io::Result<zeroize::Zeroizing<String>> {
    use std::io::BufRead;
    static OPENED: std::sync::Mutex<Vec<(u32, std::io::BufReader<std::fs::File>)>> =
        std::sync::Mutex::new(Vec::new());
    let err = |why: String| std::io::Error::other(format!("--passphrase-fd {fd}: {why}"));
    let mut line = zeroize::Zeroizing::new(Vec::new());
    let mut read = |reader: &mut dyn BufRead| -> std::io::Result<()> {
        std::io::Read::take(reader, 1025)
            .read_until(b'\n', &mut line)
            .map(|_| ())
            .map_err(|e| err(e.to_string()))
    };
    if fd == 0 {
        read(&mut std::io::stdin().lock())?;
    } else {
        let mut opened = OPENED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !opened.iter().any(|(f, _)| *f == fd) {
            let file =
                std::fs::File::open(format!("/dev/fd/{fd}")).map_err(|e| err(e.to_string()))?;
            opened.push((fd, std::io::BufReader::new(file)));
        }
        if let Some((_, reader)) = opened.iter_mut().find(|(f, _)| *f == fd) {
            read(reader)?;
        }
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > 1024 {
        return Err(err("a line longer than 1024 bytes".into()));
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let text = std::str::from_utf8(&line).map_err(|_| err("not UTF-8".into()))?;
    Ok(zeroize::Zeroizing::new(text.to_string()))
}

/// A passphrase: a line from `fd` if given, else typed at the terminal
/// (not echoed; twice if `confirm`). Without either, an error saying how
/// to give one.
pub fn read_passphrase(
    fd: Option<u32>,
    prompt: &str,
    confirm: bool,
) -> std::io::Result<zeroize::Zeroizing<String>> {
    if let Some(fd) = fd {
        return read_fd_line(fd);
    }
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Err(std::io::Error::other(
            "a passphrase is needed: type it at a terminal, or give --passphrase-fd N",
        ));
    }
    let first = zeroize::Zeroizing::new(rpassword::prompt_password(prompt)?);
    if confirm && *zeroize::Zeroizing::new(rpassword::prompt_password("Again: ")?) != *first {
        return Err(std::io::Error::other("the two passphrases differ"));
    }
    Ok(first)
}
