//! The exponential draws of a Loopix mixnet: per-hop delays chosen by the
//! sender, and the gaps between the ticks of a Poisson stream.

use std::time::Duration;

use rand::{Rng, RngExt};

/// One draw from the exponential distribution with mean `mean`, by inverse
/// transform (`−ln U · mean`, U uniform in (0, 1]), cut at `cap`. The
/// exponential is memoryless, which is what makes a mix's output order
/// independent of its input order (Loopix §4.1).
pub fn exp_delay<R: Rng + ?Sized>(mean: Duration, cap: Duration, rng: &mut R) -> Duration {
    // 1 - U lies in (0, 1], so the logarithm is finite.
    let u: f64 = 1.0 - rng.random::<f64>();
    Duration::try_from_secs_f64(-u.ln() * mean.as_secs_f64())
        .unwrap_or(cap)
        .min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn draws_have_the_mean_and_respect_the_cap() {
        let rng = &mut StdRng::seed_from_u64(7);
        let mean = Duration::from_millis(50);
        let n = 20_000;
        let total: f64 = (0..n)
            .map(|_| exp_delay(mean, Duration::MAX, rng).as_secs_f64())
            .sum();
        let m = total / f64::from(n);
        // Standard error of the mean: 50 ms / √20000 ≈ 0.35 ms.
        assert!((m - 0.05).abs() < 0.002, "mean {m}");
        let cap = Duration::from_millis(60);
        assert!((0..1000).all(|_| exp_delay(mean, cap, rng) <= cap));
        assert_eq!(exp_delay(Duration::ZERO, cap, rng), Duration::ZERO);
    }
}
