//! The soak (`bastet-testnet soak --minutes M`): the network under a steady
//! load of messages between several clients, with their cover traffic, for
//! a long time, while the resident memory and open file descriptors of
//! every process (nodes and client daemons) are sampled from `/proc`. A
//! process passes when, after a warm-up, its memory and descriptors stop
//! growing: the mean of the last third of the samples is within a bound of
//! the mean of the first third (see [`Growth`]).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::{Client, Daemon, Payload};
use crate::network::{Network, NetworkOptions};
use crate::{Error, Result};

/// How long, how much load, how often to look.
#[derive(Clone, Debug)]
pub struct SoakOptions {
    /// How long the load runs.
    pub duration: Duration,
    /// Clients in the ring (client i writes to client i+1).
    pub clients: usize,
    /// Pause between two rounds (each client sends one message a round,
    /// and reads its inbox).
    pub round_every: Duration,
    /// Pause between two samples of every process.
    pub sample_every: Duration,
}

impl SoakOptions {
    /// `minutes` of load with the defaults: 4 clients, a round every 5 s,
    /// a sample every 10 s (at least 12 samples).
    pub fn minutes(minutes: f64) -> Self {
        let duration = Duration::from_secs_f64((minutes * 60.0).max(1.0));
        SoakOptions {
            duration,
            clients: 4,
            round_every: Duration::from_secs(5),
            sample_every: Duration::from_secs(10)
                .min(duration / 12)
                .max(Duration::from_secs(1)),
        }
    }
}

/// The bound a process's growth is held to, from the first to the last
/// third of the samples after the warm-up (the first fifth).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Growth {
    /// Resident memory may grow by this fraction of its start...
    pub rss_fraction: f64,
    /// ...or by this many KiB, whichever is more.
    pub rss_kib: u64,
    /// Open descriptors may grow by this many.
    pub fds: u64,
}

/// The bound the soak applies.
pub const GROWTH: Growth = Growth {
    rss_fraction: 0.10,
    rss_kib: 8 << 10,
    fds: 8,
};

/// One process over the soak.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessSeries {
    /// Node name, or `daemon:<client>`.
    pub name: String,
    /// Resident set size (VmRSS) at each sample, KiB; `None` once gone.
    pub rss_kib: Vec<Option<u64>>,
    /// Open file descriptors at each sample.
    pub fds: Vec<Option<u64>>,
    /// Mean RSS over the first third after the warm-up, KiB.
    pub rss_start_kib: u64,
    /// Mean RSS over the last third, KiB.
    pub rss_end_kib: u64,
    /// Highest RSS seen, KiB.
    pub rss_max_kib: u64,
    /// Mean descriptors over the first third after the warm-up.
    pub fds_start: f64,
    /// Mean descriptors over the last third.
    pub fds_end: f64,
    /// Most descriptors seen.
    pub fds_max: u64,
    /// Within [`GROWTH`], and alive to the end.
    pub flat: bool,
}

/// What the soak saw.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    /// Seconds the load ran.
    pub seconds: f64,
    /// Clients in the ring.
    pub clients: usize,
    /// Messages sent.
    pub sent: usize,
    /// Messages that arrived.
    pub delivered: usize,
    /// Messages that never arrived.
    pub lost: usize,
    /// Messages shown more than once.
    pub duplicated: usize,
    /// Seconds from the start at each sample.
    pub sample_secs: Vec<f64>,
    /// The growth bound applied.
    pub growth_bound: Growth,
    /// Every process.
    pub processes: Vec<ProcessSeries>,
}

impl SoakReport {
    /// Nothing lost or duplicated, every process flat.
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.processes.iter().all(|p| p.flat)
    }

    /// A table: one line per process, then the message counts.
    pub fn to_human(&self) -> String {
        let mut s = format!(
            "{:<18} {:>10} {:>10} {:>10} {:>7} {:>7} {:>7}  flat\n",
            "process", "rss start", "rss end", "rss max", "fd start", "fd end", "fd max"
        );
        for p in &self.processes {
            s.push_str(&format!(
                "{:<18} {:>7} MiB {:>6} MiB {:>6} MiB {:>7.1} {:>7.1} {:>7}  {}\n",
                p.name,
                format_mib(p.rss_start_kib),
                format_mib(p.rss_end_kib),
                format_mib(p.rss_max_kib),
                p.fds_start,
                p.fds_end,
                p.fds_max,
                if p.flat { "yes" } else { "NO" }
            ));
        }
        s.push_str(&format!(
            "{:.0} s, {} samples, {} clients: sent {}, delivered {}, lost {}, duplicated {}\n",
            self.seconds,
            self.sample_secs.len(),
            self.clients,
            self.sent,
            self.delivered,
            self.lost,
            self.duplicated
        ));
        s
    }
}

fn format_mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// Starts a network, soaks it, stops it.
pub async fn run_soak(base: NetworkOptions, options: &SoakOptions) -> Result<SoakReport> {
    let mut net = Network::start(NetworkOptions {
        epoch_secs: 60,
        ..base
    })
    .await?;
    let report = soak_on(&mut net, options).await;
    net.stop();
    let panics = net.panics();
    if !panics.is_empty() {
        return Err(crate::chaos::node_panics_error(&panics));
    }
    report
}

/// Soaks a running network.
pub async fn soak_on(net: &mut Network, options: &SoakOptions) -> Result<SoakReport> {
    if options.clients < 2 {
        return Err(Error::InvalidOption("soak needs at least 2 clients".into()));
    }
    let n = options.clients;
    let mut clients: Vec<Client> = Vec::new();
    for i in 0..n {
        let mailbox = if i % 2 == 0 { "mailbox-a" } else { "mailbox-b" };
        clients.push(net.client(&format!("s{i}"), mailbox).await?);
    }
    let pairs = if n == 2 { 1 } else { n };
    for i in 0..pairs {
        clients[i].befriend(&clients[(i + 1) % n]).await?;
    }
    // The default preset's cover and payload rates: the soak is about the
    // steady state a user's client and the nodes live in.
    let mut daemons: Vec<Daemon> = Vec::new();
    for c in &mut clients {
        daemons.push(c.start_daemon().await?);
    }
    let mut watched: Vec<(String, u32)> = net.node_pids();
    for (c, d) in clients.iter().zip(&daemons) {
        if let Some(pid) = d.pid() {
            watched.push((format!("daemon:{}", c.name()), pid));
        }
    }

    let start = Instant::now();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(sample(
        watched.clone(),
        options.sample_every,
        start,
        stop_rx,
    ));

    let mut expected: Vec<Vec<String>> = vec![Vec::new(); n];
    let mut got: Vec<HashMap<String, usize>> = vec![HashMap::new(); n];
    let mut round = 0usize;
    let load = async {
        while start.elapsed() < options.duration {
            let began = Instant::now();
            for i in 0..n {
                let to = (i + 1) % n;
                let text = format!("soak round {round} from s{i} to s{to}");
                let sent = clients[i]
                    .send_content(clients[to].name(), Payload::Text(&text), false)
                    .await?;
                expected[to].push(sent.message_id);
            }
            for (i, c) in clients.iter().enumerate() {
                for m in c.inbox(Duration::from_millis(100)).await? {
                    *got[i].entry(m.message_id).or_default() += 1;
                }
            }
            round += 1;
            let spent = began.elapsed();
            tokio::time::sleep(options.round_every.saturating_sub(spent)).await;
        }
        Ok::<(), Error>(())
    };
    let loaded = load.await;
    let _ = stop_tx.send(true);
    let samples = sampler.await.map_err(|e| Error::Io {
        what: "the soak's sampler".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    loaded?;
    let seconds = start.elapsed().as_secs_f64();

    // The last messages: wait for them.
    let mut delivered = 0;
    let mut duplicated = 0;
    let mut lost = 0;
    for (i, c) in clients.iter().enumerate() {
        let missing: Vec<String> = expected[i]
            .iter()
            .filter(|id| !got[i].contains_key(*id))
            .cloned()
            .collect();
        if !missing.is_empty() {
            let (late, shown) = c
                .receive_counted(&missing, Duration::from_secs(120))
                .await?;
            for (id, k) in shown {
                if late.contains_key(&id) {
                    *got[i].entry(id).or_default() += k;
                }
            }
        }
        for id in &expected[i] {
            match got[i].get(id) {
                Some(k) => {
                    delivered += 1;
                    if *k > 1 {
                        duplicated += 1;
                    }
                }
                None => lost += 1,
            }
        }
    }
    drop(daemons);

    let (sample_secs, series) = samples;
    let processes = watched
        .iter()
        .map(|(name, _)| summarise(name, series.get(name)))
        .collect();
    Ok(SoakReport {
        seconds,
        clients: n,
        sent: expected.iter().map(Vec::len).sum(),
        delivered,
        lost,
        duplicated,
        sample_secs,
        growth_bound: GROWTH,
        processes,
    })
}

/// One sample of one process: (RSS KiB, descriptors), `None` once gone.
type Point = (Option<u64>, Option<u64>);

/// Per process: its points, one per sample.
type Series = BTreeMap<String, Vec<Point>>;

/// Samples every process every `every` until `stop`; the times and series.
async fn sample(
    watched: Vec<(String, u32)>,
    every: Duration,
    start: Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (Vec<f64>, Series) {
    let mut times = Vec::new();
    let mut series: Series = BTreeMap::new();
    loop {
        times.push(start.elapsed().as_secs_f64());
        for (name, pid) in &watched {
            series
                .entry(name.clone())
                .or_default()
                .push((rss_kib(*pid), fd_count(*pid)));
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => break,
        }
    }
    (times, series)
}

/// VmRSS of `pid` in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Open file descriptors of `pid`, from `/proc/PID/fd`.
pub fn fd_count(pid: u32) -> Option<u64> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(entries.count() as u64)
}

fn summarise(name: &str, samples: Option<&Vec<Point>>) -> ProcessSeries {
    let samples = samples.cloned().unwrap_or_default();
    let rss: Vec<Option<u64>> = samples.iter().map(|s| s.0).collect();
    let fds: Vec<Option<u64>> = samples.iter().map(|s| s.1).collect();
    let alive = !samples.is_empty() && samples.iter().all(|s| s.0.is_some() && s.1.is_some());
    // After the warm-up (the first fifth), the first and last thirds.
    let warm = samples.len() / 5;
    let steady = &samples[warm.min(samples.len())..];
    let third = (steady.len() / 3).max(1);
    let mean = |xs: &[Point], f: fn(&Point) -> Option<u64>| {
        let v: Vec<u64> = xs.iter().filter_map(f).collect();
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<u64>() as f64 / v.len() as f64
        }
    };
    let first = &steady[..third.min(steady.len())];
    let last = &steady[steady.len().saturating_sub(third)..];
    let rss_start = mean(first, |s| s.0);
    let rss_end = mean(last, |s| s.0);
    let fds_start = mean(first, |s| s.1);
    let fds_end = mean(last, |s| s.1);
    let rss_allowed = (rss_start * GROWTH.rss_fraction).max(GROWTH.rss_kib as f64);
    let flat =
        alive && rss_end - rss_start <= rss_allowed && fds_end - fds_start <= GROWTH.fds as f64;
    ProcessSeries {
        name: name.to_string(),
        rss_start_kib: rss_start.round() as u64,
        rss_end_kib: rss_end.round() as u64,
        rss_max_kib: rss.iter().flatten().copied().max().unwrap_or(0),
        fds_start,
        fds_end,
        fds_max: fds.iter().flatten().copied().max().unwrap_or(0),
        rss_kib: rss,
        fds,
        flat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(rss: &[u64], fds: &[u64]) -> Vec<Point> {
        rss.iter()
            .zip(fds)
            .map(|(r, f)| (Some(*r), Some(*f)))
            .collect()
    }

    #[test]
    fn flat_after_the_warm_up_passes_and_growth_fails() {
        // Warm-up growth (first fifth) is forgiven; noise within the bound.
        let s = series(
            &[
                1_000, 40_000, 50_000, 51_000, 50_500, 50_800, 51_200, 50_900, 51_100, 50_700,
            ],
            &[10, 20, 22, 22, 22, 23, 22, 22, 22, 22],
        );
        let p = summarise("mix-a", Some(&s));
        assert!(p.flat, "{p:?}");
        assert_eq!(p.rss_max_kib, 51_200);
        assert_eq!(p.fds_max, 23);

        // Memory that keeps climbing.
        let s = series(
            &[
                50_000, 50_000, 60_000, 70_000, 80_000, 90_000, 100_000, 110_000, 120_000, 130_000,
            ],
            &[22; 10],
        );
        assert!(!summarise("mix-a", Some(&s)).flat);

        // A descriptor leak.
        let s = series(&[50_000; 10], &[20, 20, 20, 30, 40, 50, 60, 70, 80, 90]);
        assert!(!summarise("mix-a", Some(&s)).flat);

        // A process that went away is not flat; nor is one never seen.
        let mut s = series(&[50_000; 10], &[20; 10]);
        s[9] = (None, None);
        assert!(!summarise("mix-a", Some(&s)).flat);
        assert!(!summarise("mix-a", None).flat);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me).is_some_and(|k| k > 0));
        assert!(fd_count(me).is_some_and(|n| n >= 3));
        assert_eq!(rss_kib(u32::MAX), None);
    }
}
