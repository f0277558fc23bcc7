//! Call statistics, as JSON through serde.

use std::time::Duration;

use serde::Serialize;

/// Bins of 1 ms from 0 to 10 s, and one above.
const HISTOGRAM_BINS: usize = 10_001;

/// A bounded latency histogram (1 ms bins up to 10 s).
#[derive(Clone, Debug)]
pub(crate) struct Histogram {
    bins: Vec<u64>,
    count: u64,
    max: Duration,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            bins: vec![0; HISTOGRAM_BINS],
            count: 0,
            max: Duration::ZERO,
        }
    }
}

impl Histogram {
    pub(crate) fn record(&mut self, latency: Duration) {
        let bin = usize::try_from(latency.as_millis())
            .unwrap_or(usize::MAX)
            .min(HISTOGRAM_BINS - 1);
        self.bins[bin] += 1;
        self.count += 1;
        self.max = self.max.max(latency);
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (ms, n) in self.bins.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return ms as f64;
            }
        }
        self.max.as_secs_f64() * 1000.0
    }

    pub(crate) fn summary(&self) -> Percentiles {
        Percentiles {
            count: self.count,
            p50_ms: self.quantile_ms(0.50),
            p90_ms: self.quantile_ms(0.90),
            p99_ms: self.quantile_ms(0.99),
            max_ms: self.max.as_secs_f64() * 1000.0,
        }
    }
}

/// Latency percentiles (1 ms resolution; 10 s and above in the last bin).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Largest sample, ms.
    pub max_ms: f64,
}

/// What happened to the cells that reached the receiver.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CellStats {
    /// Cells that authenticated.
    pub received: u64,
    /// Cells that failed to authenticate (altered, forged, other keys).
    pub rejected_unauthenticated: u64,
    /// Replayed cells.
    pub rejected_replay: u64,
    /// Cells refused otherwise (wrong size or version, too old, erased or
    /// far-future epoch, malformed plaintext).
    pub rejected_other: u64,
    /// Authenticated cells without media (cover, gated silence).
    pub cover: u64,
    /// Cells never received, from the gaps in the frame counter.
    pub lost: u64,
    /// `lost` over the cells the sender sent up to the highest received.
    pub loss_ratio: f64,
}

/// Audio playout.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AudioStats {
    /// Frames played out.
    pub played: u64,
    /// Decoded from their own packet.
    pub decoded: u64,
    /// Lost, then decoded from the copy of their packet in the next cell.
    pub redundant_recovered: u64,
    /// Lost, then decoded through the next packet's in-band FEC (when that
    /// packet carries no FEC data, as at the call profiles' low rates,
    /// libopus conceals the frame instead).
    pub fec_decoded: u64,
    /// Concealed (Opus PLC).
    pub concealed: u64,
    /// Silent by the sender's gate.
    pub silence: u64,
    /// Arrived after their playout time.
    pub late: u64,
    /// Opus packets that failed to decode (then concealed).
    pub decode_errors: u64,
    /// Capture to arrival of the cell.
    pub network_latency: Percentiles,
    /// Capture to playout.
    pub playout_latency: Percentiles,
}

/// Video playout.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VideoStats {
    /// Frame slots played out.
    pub played: u64,
    /// Frames decoded and shown.
    pub decoded: u64,
    /// Slots that showed the last good picture again (frame missing,
    /// or waiting for a keyframe after a loss).
    pub frozen: u64,
    /// Complete frames that arrived after their playout time.
    pub late: u64,
    /// Frames given up with fragments missing.
    pub incomplete: u64,
    /// Frames that failed to decode.
    pub decode_errors: u64,
    /// Capture to arrival of the frame's last fragment.
    pub network_latency: Percentiles,
    /// Capture to playout.
    pub playout_latency: Percentiles,
}

/// A receiver's statistics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stats {
    /// The call profile.
    pub profile: String,
    /// The profile's bits per second on the wire, per direction.
    pub wire_bitrate_bps: u64,
    /// Bits per second of circuit cells actually received.
    pub received_bitrate_bps: f64,
    /// Bits per second of media (Opus and AV1 payload) received.
    pub media_bitrate_bps: f64,
    /// From the first cell received to the last `now` seen.
    pub elapsed_s: f64,
    /// Cells.
    pub cells: CellStats,
    /// Audio.
    pub audio: AudioStats,
    /// Video, for video calls.
    pub video: Option<VideoStats>,
}

impl Stats {
    /// The statistics as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// A sender's counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SenderStats {
    /// Cells sent.
    pub cells: u64,
    /// Of which without media.
    pub cover: u64,
    /// Audio frames encoded.
    pub audio_frames: u64,
    /// Of which gated as silence.
    pub silent_frames: u64,
    /// Audio frames dropped because the queue was full (the caller pushed
    /// faster than cells left).
    pub audio_dropped: u64,
    /// Video frames encoded.
    pub video_frames: u64,
    /// Of which keyframes.
    pub keyframes: u64,
    /// Video frames dropped to keep the queue bounded (or while waiting
    /// for the keyframe that follows such a drop).
    pub video_dropped: u64,
    /// Bytes of media queued for cells.
    pub media_bytes: u64,
}

/// The two-sample Kolmogorov–Smirnov statistic of `a` and `b` (the
/// largest distance between their empirical distribution functions) and
/// its critical value at α = 0.01 (asymptotic, c(α) = 1.628): the samples
/// are told apart at that level when the statistic exceeds it. `None` if
/// either sample is empty.
pub fn ks_two_sample(a: &[f64], b: &[f64]) -> Option<(f64, f64)> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (n, m) = (a.len(), b.len());
    let (mut i, mut j, mut d) = (0, 0, 0.0f64);
    while i < n && j < m {
        let x = a[i].min(b[j]);
        while i < n && a[i] <= x {
            i += 1;
        }
        while j < m && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / n as f64 - j as f64 / m as f64).abs());
    }
    let critical = 1.628 * ((n + m) as f64 / (n * m) as f64).sqrt();
    Some((d, critical))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ks_tells_shifted_samples_apart_and_not_equal_ones() {
        let a: Vec<f64> = (0..500).map(|i| f64::from(i) / 500.0).collect();
        let b: Vec<f64> = (0..400).map(|i| f64::from(i) / 400.0).collect();
        let (d, c) = ks_two_sample(&a, &b).unwrap();
        assert!(d < c, "same distribution: {d} >= {c}");
        let shifted: Vec<f64> = b.iter().map(|x| x + 0.2).collect();
        let (d, c) = ks_two_sample(&a, &shifted).unwrap();
        assert!((d - 0.2).abs() < 0.01 && d > c, "{d} vs {c}");
        assert!(ks_two_sample(&a, &[]).is_none());
    }

    #[test]
    fn percentiles_of_a_histogram() {
        let mut h = Histogram::default();
        assert_eq!(h.summary().p50_ms, 0.0);
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        h.record(Duration::from_secs(3600));
        let s = h.summary();
        assert_eq!(s.count, 101);
        assert_eq!(s.p50_ms, 51.0);
        assert_eq!(s.p90_ms, 91.0);
        assert_eq!(s.p99_ms, 100.0);
        assert_eq!(s.max_ms, 3_600_000.0);
    }
}
