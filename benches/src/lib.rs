#![doc = include_str!("../README.md")]

use std::path::PathBuf;

/// Mean time in nanoseconds criterion recorded for benchmark `id`
/// (`group/function`) in this run, read from its `estimates.json`.
pub fn mean_ns(id: &str) -> Option<f64> {
    let root = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("criterion"))
        })
        .unwrap_or_else(|| PathBuf::from("target/criterion"));
    let text = std::fs::read_to_string(root.join(id).join("new/estimates.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["mean"]["point_estimate"].as_f64()
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
