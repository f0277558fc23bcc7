#![doc = include_str!("../README.md")]

use std::path::{Path, PathBuf};

fn criterion_dir(id: &str) -> PathBuf {
    std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("criterion"))
        })
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
        .join(id)
        .join("new")
}

fn read_json(id: &str, file: &str) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(criterion_dir(id).join(file)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Mean time in nanoseconds criterion recorded for benchmark `id`
/// (`group/function`) in this run, read from its `estimates.json`.
pub fn mean_ns(id: &str) -> Option<f64> {
    read_json(id, "estimates.json")?["mean"]["point_estimate"].as_f64()
}

/// Time per iteration in nanoseconds of the fastest sample criterion
/// recorded for benchmark `id` in this run (`sample.json`). On a shared
/// machine other work only ever adds time, so the fastest sample is the
/// estimate least disturbed by it; a ratio of two such figures holds up
/// better than a ratio of means when the load changes during the run.
pub fn fastest_ns(id: &str) -> Option<f64> {
    let v = read_json(id, "sample.json")?;
    let iters = v["iters"].as_array()?;
    let times = v["times"].as_array()?;
    iters
        .iter()
        .zip(times)
        .filter_map(|(n, t)| Some(t.as_f64()? / n.as_f64()?))
        .reduce(f64::min)
}

/// Prints `label: measured vs bound = ratio` for each `(label, measured id,
/// bound id, bound multiplier)`; a missing estimate is said, not skipped.
pub fn report_ratios(rows: &[(&str, &str, &str, f64)]) {
    println!("\n== ratios against the bound measured in this run ==");
    for (label, measured, bound, times) in rows {
        match (mean_ns(measured), mean_ns(bound)) {
            (Some(m), Some(b)) => println!(
                "{label}: {:.1} µs vs bound {:.1} µs ({times} × {bound}) = {:.2}×",
                m / 1e3,
                b * times / 1e3,
                m / (b * times)
            ),
            _ => println!("{label}: no estimate for {measured} or {bound} (run the whole bench)"),
        }
    }
}

/// One row of [`report_sums`]: a label, the measured id, and the bound as
/// a sum of `(id, multiplier)` terms.
pub type SumRow<'a> = (&'a str, &'a str, &'a [(&'a str, f64)]);

/// Like [`report_ratios`] for a bound made of several operations measured
/// separately in this run (say 6 Diffie-Hellmans and a fixed-base
/// multiplication): the bound is `Σ multiplier × time(id)`. Each row is
/// given twice: from the means, and from the fastest samples
/// ([`fastest_ns`]).
pub fn report_sums(rows: &[SumRow<'_>]) {
    println!("\n== ratios against the bound measured in this run (means; fastest samples) ==");
    for (label, measured, terms) in rows {
        let formula = terms
            .iter()
            .map(|(id, times)| format!("{times} × {id}"))
            .collect::<Vec<_>>()
            .join(" + ");
        let estimate = |time: fn(&str) -> Option<f64>| {
            let bound: Option<f64> = terms
                .iter()
                .map(|(id, times)| time(id).map(|b| b * times))
                .sum();
            Some((time(measured)?, bound?))
        };
        match (estimate(mean_ns), estimate(fastest_ns)) {
            (Some((m, b)), Some((fm, fb))) => println!(
                "{label}: {:.1} µs vs bound {:.1} µs = {:.2}×; fastest {:.1} µs vs {:.1} µs = {:.2}× ({formula})",
                m / 1e3,
                b / 1e3,
                m / b,
                fm / 1e3,
                fb / 1e3,
                fm / fb
            ),
            _ => println!(
                "{label}: no estimate for {measured} or part of {formula} (run the whole bench)"
            ),
        }
    }
}

/// Items per second of benchmark `id` whose every iteration handles
/// `items` items.
pub fn rate(id: &str, items: f64) -> Option<f64> {
    mean_ns(id).map(|ns| items * 1e9 / ns)
}

/// The file system type holding `path` (`ext4`, `tmpfs`, …), from the
/// longest mount point in `/proc/self/mounts` that contains it; `None` off
/// Linux or if the table cannot be read.
pub fn filesystem_type(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_device, mount_point, fs_type) = (fields.next()?, fields.next()?, fields.next()?);
            // Spaces in mount points are written as \040.
            let mount_point = PathBuf::from(mount_point.replace("\\040", " "));
            path.starts_with(&mount_point)
                .then(|| (mount_point.as_os_str().len(), fs_type.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fs_type)| fs_type)
}
