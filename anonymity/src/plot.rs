//! The SVG figures: entropy against a swept parameter, latency
//! distributions and attack accuracy per preset.

use std::path::Path;

use plotters::prelude::*;

use crate::sweep::{Point, SweepParam};
use crate::{Error, Result};

const COLORS: [RGBColor; 6] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x94, 0x67, 0xbd),
];

/// A line to draw: its points, colour and legend.
type Line = (Vec<(f64, f64)>, RGBColor, &'static str);
/// A bar series: the value of each point, colour and legend.
type Bars = (fn(&Point) -> f64, RGBColor, &'static str);

fn err(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> Error + '_ {
    move |e| Error::Plot {
        path: path.into(),
        why: e.to_string(),
    }
}

/// Entropy (top) and the mean mix pool λ/μ (bottom) against the swept
/// parameter.
pub fn sweep(path: &Path, param: SweepParam, points: &[Point], title: &str) -> Result<()> {
    let e = err(path);
    if points.is_empty() {
        return Err(e(&"no points"));
    }
    let root = SVGBackend::new(path, (900, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (top, bottom) = root.split_vertically(520);
    let xs: Vec<f64> = points.iter().map(|p| p.x).collect();
    let xmin = xs.iter().copied().fold(f64::INFINITY, f64::min) / 1.5;
    let xmax = xs.iter().copied().fold(0.0, f64::max) * 1.5;
    let hmax = points
        .iter()
        .map(|p| p.report.max_sender_entropy_bits)
        .fold(1.0, f64::max)
        .ceil()
        + 0.5;
    let series =
        |f: fn(&Point) -> f64| -> Vec<(f64, f64)> { points.iter().map(|p| (p.x, f(p))).collect() };
    let mut chart = ChartBuilder::on(&top)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((xmin..xmax).log_scale(), 0f64..hmax)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc(param.axis_label())
        .y_desc("entropy (bits), mean over messages")
        .x_label_formatter(&|v| format!("{v}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|x| e(&x))?;
    let lines: [Line; 4] = [
        (
            series(|p| p.report.sender_entropy_bits.mean),
            COLORS[4],
            "sender, timing",
        ),
        (
            series(|p| p.report.sender_entropy_with_ack_bits.mean),
            COLORS[0],
            "sender, timing + ack",
        ),
        (
            series(|p| p.report.recipient_entropy_bits.mean),
            COLORS[3],
            "recipient (polling assumed silent)",
        ),
        (
            series(|p| p.report.max_sender_entropy_bits),
            RGBColor(0x80, 0x80, 0x80),
            "log2(active senders)",
        ),
    ];
    for (data, color, label) in lines {
        chart
            .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(data.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|x| e(&x))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(|x| e(&x))?;

    let pools = series(|p| p.sim.mean_mix_pool.max(0.01));
    let pmax = pools.iter().map(|p| p.1).fold(2.0, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "packets in a mix (λ/μ, Little's law; Loopix: ≥ 2 is good)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((xmin..xmax).log_scale(), (0.01f64..pmax).log_scale())
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc(param.axis_label())
        .y_desc("mean packets held (log)")
        .x_label_formatter(&|v| format!("{v}"))
        .y_label_formatter(&|v| format!("{v}"))
        .draw()
        .map_err(|x| e(&x))?;
    chart
        .draw_series(LineSeries::new(pools.clone(), COLORS[4].stroke_width(2)))
        .map_err(|x| e(&x))?;
    chart
        .draw_series(pools.iter().map(|&p| Circle::new(p, 4, COLORS[4].filled())))
        .map_err(|x| e(&x))?;
    chart
        .draw_series(LineSeries::new(vec![(xmin, 2.0), (xmax, 2.0)], RED))
        .map_err(|x| e(&x))?
        .label("λ/μ = 2")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// The latency distribution (CDF) of each preset.
pub fn latency(path: &Path, points: &[Point]) -> Result<()> {
    let e = err(path);
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let xmax = points
        .iter()
        .flat_map(|p| p.latencies_ms.iter().copied())
        .fold(10.0, f64::max)
        * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "time from queuing a message to its mailbox server (polling not included)",
            ("sans-serif", 17),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((1f64..xmax).log_scale(), 0f64..1.0)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("fraction of messages")
        .x_label_formatter(&|v| format!("{v}"))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .draw()
        .map_err(|x| e(&x))?;
    for (i, p) in points.iter().enumerate() {
        let mut v = p.latencies_ms.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len().max(1) as f64;
        let cdf: Vec<(f64, f64)> = v
            .iter()
            .enumerate()
            .map(|(k, x)| (x.max(1.0), (k + 1) as f64 / n))
            .collect();
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(cdf, color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(format!(
                "{} (median {:.0} ms)",
                p.preset, p.report.latency_ms.median
            ))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// Attack accuracy per preset against the random-guess baseline (bars,
/// log scale).
pub fn attack(path: &Path, points: &[Point]) -> Result<()> {
    let e = err(path);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let floor = 1e-4;
    let n = points.len() as f64;
    let names: Vec<String> = points.iter().map(|p| p.preset.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "who sent it? a global passive adversary's guess per message",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..n - 0.5, (floor..1.5f64).log_scale())
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(points.len())
        .x_label_formatter(&|v| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("fraction guessed right (log scale)")
        .y_label_formatter(&|v| format!("{v}"))
        .draw()
        .map_err(|x| e(&x))?;
    let bars: [Bars; 3] = [
        (|p| p.report.attack.accuracy, COLORS[4], "timing"),
        (
            |p| p.report.attack.accuracy_with_ack,
            COLORS[0],
            "timing + ack",
        ),
        (
            |p| p.report.attack.baseline,
            RGBColor(0x80, 0x80, 0x80),
            "random guess (1/active senders)",
        ),
    ];
    let width = 0.25;
    for (k, (f, color, label)) in bars.into_iter().enumerate() {
        let offset = (k as f64 - 1.0) * width;
        chart
            .draw_series(points.iter().enumerate().map(|(i, p)| {
                let x = i as f64 + offset;
                Rectangle::new(
                    [(x - width / 2.0, floor), (x + width / 2.0, f(p).max(floor))],
                    color.filled(),
                )
            }))
            .map_err(|x| e(&x))?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
