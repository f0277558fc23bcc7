//! The Loopix sending schedule, sans IO (DESIGN.md §6): when packets leave
//! and what each one is. The caller passes `now` and an RNG and moves bytes.
//!
//! Two independent Poisson processes: the payload stream at rate λ_P sends
//! the oldest queued real packet at each tick, or a drop-cover packet when
//! none is queued; the loop stream at rate λ_L sends a loop-cover packet
//! back to the sender's own mailbox. The tick instants are drawn from the
//! RNG alone, never from the queue, so an observer of the sender's link sees
//! the same process whether the user is writing or idle.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bastet_sphinx::{MAX_MESSAGE_LEN, PACKET_LEN};
use rand::Rng;

use crate::{Error, Result};

/// Highest rate either stream may be configured at, packets per second:
/// beyond this a "preset" is a flood, not cover.
pub const MAX_RATE: f64 = 100.0;

/// How late a tick may be served and still be sent (catch-up after a busy
/// moment). Ticks older than this, after a suspend for instance, are skipped
/// rather than sent in a burst that would mark the moment of resumption.
pub const MAX_LAG: Duration = Duration::from_secs(2);

/// Bytes one stored message costs to fetch from the mailbox API: the API
/// returns payloads base64-encoded (JSON and HTTP framing not counted).
pub const FETCHED_MESSAGE_BYTES: usize = 4 * MAX_MESSAGE_LEN.div_ceil(3);

/// Loopix rates and per-hop delays.
///
/// Presets, for 2396-byte packets (bandwidth excludes TLS and link framing,
/// about 2% more). Nym, the deployed reference, sends about 55 packets/s
/// idle (≈133 kB/s each way) at ≈15 ms per hop, a cost its users complain
/// about; Bastet trades latency for a rate a laptop on a metered or
/// monitored network can keep up all day:
///
/// | preset        | λ_P | λ_L | mean hop delay (cap) | up, idle              | one-packet message |
/// |---------------|-----|-----|----------------------|-----------------------|--------------------|
/// | `interactive` | 4/s | 1/s | 20 ms (0.4 s)        | 12.0 kB/s (≈1.0 GB/day) | ≈0.31 s + polling |
/// | `balanced`    | 2/s | 1/s | 50 ms (1 s)          | 7.2 kB/s (≈620 MB/day)  | ≈0.65 s + polling |
/// | `paranoid`    | 1/s | 0.5/s | 500 ms (10 s)      | 3.6 kB/s (≈310 MB/day)  | ≈2.5 s + polling  |
///
/// - `balanced` is the default: 3 packets/s is about 1/18 of Nym's idle
///   rate; 50 ms per mix is the existing `mix_delay_ms` default; a text
///   message waits ½ s on average for its payload slot.
/// - `interactive` doubles the payload rate, halving the wait for a slot and
///   the time to push a multi-fragment envelope (a 1 MiB envelope, 661
///   fragments, takes ≈165 s instead of ≈330 s), and shortens the hop delay
///   for chat-like round trips; it costs 1.7 × the bandwidth.
/// - `paranoid` halves the rates and multiplies the hop delay by ten: by
///   Little's law a mix then holds ten times as many packets at once for the
///   same traffic, so each packet hides among more others, and the lower
///   rate suits long-lived background use. Large envelopes become slow
///   (≈11 min per MiB).
///
/// Each hop's delay cap is 20 × its mean: the exponential tail cut off is
/// e⁻²⁰ ≈ 2·10⁻⁹, and every cap is below the mixnodes' 30 s limit.
#[derive(Clone, Debug, PartialEq)]
pub struct TrafficParams {
    /// λ_P, payload stream rate, packets per second: real packets when
    /// queued, drop cover otherwise. Must be positive.
    pub payload_rate: f64,
    /// λ_L, loop cover rate, packets per second; 0 turns loop cover off.
    pub loop_rate: f64,
    /// 1/μ, mean of each mix's Exp(μ) delay.
    pub mean_hop_delay: Duration,
    /// Longest delay asked of one hop; draws beyond it are cut to it.
    pub max_hop_delay: Duration,
}

impl Default for TrafficParams {
    fn default() -> Self {
        Self::balanced()
    }
}

/// Traffic in bytes per second, each way.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bandwidth {
    /// Client to network.
    pub up: f64,
    /// Network (the mailbox API) to client.
    pub down: f64,
}

impl TrafficParams {
    /// Chat-like latency at 12 kB/s up; see the table on [`TrafficParams`].
    pub fn interactive() -> Self {
        TrafficParams {
            payload_rate: 4.0,
            loop_rate: 1.0,
            mean_hop_delay: Duration::from_millis(20),
            max_hop_delay: Duration::from_millis(400),
        }
    }

    /// The default: 7.2 kB/s up, sub-second text messages.
    pub fn balanced() -> Self {
        TrafficParams {
            payload_rate: 2.0,
            loop_rate: 1.0,
            mean_hop_delay: Duration::from_millis(50),
            max_hop_delay: Duration::from_secs(1),
        }
    }

    /// More mixing, less bandwidth: 3.6 kB/s up, seconds of latency.
    pub fn paranoid() -> Self {
        TrafficParams {
            payload_rate: 1.0,
            loop_rate: 0.5,
            mean_hop_delay: Duration::from_millis(500),
            max_hop_delay: Duration::from_secs(10),
        }
    }

    /// The preset called `name` (see [`crate::TRAFFIC_PRESETS`]).
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "interactive" => Some(Self::interactive()),
            "balanced" => Some(Self::balanced()),
            "paranoid" => Some(Self::paranoid()),
            _ => None,
        }
    }

    /// Checks each field, naming the one out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Config(what));
        let in_range = |rate: f64, min_exclusive: bool| {
            (rate > 0.0 || (!min_exclusive && rate == 0.0)) && rate <= MAX_RATE
        };
        if !in_range(self.payload_rate, true) {
            return bad(format!(
                "payload_rate: {} must be more than 0 and at most {MAX_RATE} packets/s",
                self.payload_rate
            ));
        }
        if !in_range(self.loop_rate, false) {
            return bad(format!(
                "loop_rate: {} must be 0 to {MAX_RATE} packets/s",
                self.loop_rate
            ));
        }
        if self.max_hop_delay > crate::MAX_HOP_DELAY {
            return bad(format!(
                "max_hop_delay: {:?} is more than the mixnodes' limit of {:?}",
                self.max_hop_delay,
                crate::MAX_HOP_DELAY
            ));
        }
        if self.mean_hop_delay > self.max_hop_delay {
            return bad(format!(
                "mean_hop_delay: {:?} is more than max_hop_delay {:?}",
                self.mean_hop_delay, self.max_hop_delay
            ));
        }
        Ok(())
    }

    /// One hop's delay: Exp(μ) with mean [`TrafficParams::mean_hop_delay`],
    /// cut to [`TrafficParams::max_hop_delay`].
    pub fn sample_hop_delay<R: Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        bastet_sphinx::exp_delay(self.mean_hop_delay, self.max_hop_delay, rng)
    }

    /// Mean of one capped hop delay: for mean m and cap c,
    /// E[min(X, c)] = m·(1 − e^(−c/m)).
    pub fn mean_capped_hop_delay(&self) -> Duration {
        let m = self.mean_hop_delay.as_secs_f64();
        if m == 0.0 {
            return Duration::ZERO;
        }
        let c = self.max_hop_delay.as_secs_f64();
        Duration::try_from_secs_f64(m * (1.0 - (-c / m).exp())).unwrap_or(self.max_hop_delay)
    }

    /// Idle traffic. Up: both streams at [`PACKET_LEN`] bytes a packet. Down:
    /// every loop packet fetched back from the mailbox
    /// ([`FETCHED_MESSAGE_BYTES`] each), plus `bytes_per_poll` (request and
    /// empty response) every `poll_interval`.
    pub fn idle_bandwidth(&self, poll_interval: Duration, bytes_per_poll: f64) -> Bandwidth {
        let polls = if poll_interval.is_zero() {
            0.0
        } else {
            1.0 / poll_interval.as_secs_f64()
        };
        Bandwidth {
            up: (self.payload_rate + self.loop_rate) * PACKET_LEN as f64,
            down: self.loop_rate * FETCHED_MESSAGE_BYTES as f64 + polls * bytes_per_poll,
        }
    }

    /// Mean time from queuing an envelope of `fragments` packets, with an
    /// empty queue, to the recipient seeing it: `fragments` payload ticks
    /// (1/λ_P each), the last fragment's `mix_hops` capped delays, and half
    /// the recipient's `poll_interval`. Ignores link latency and the spread
    /// of fragments (the last to arrive may not be the last sent).
    pub fn expected_latency(
        &self,
        fragments: u32,
        mix_hops: u32,
        poll_interval: Duration,
    ) -> Duration {
        let slots = f64::from(fragments) / self.payload_rate;
        let mixing = f64::from(mix_hops) * self.mean_capped_hop_delay().as_secs_f64();
        let polling = poll_interval.as_secs_f64() / 2.0;
        Duration::try_from_secs_f64(slots + mixing + polling).unwrap_or(Duration::MAX)
    }
}

/// Which Poisson process a send belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficStream {
    /// λ_P: real or drop.
    Payload,
    /// λ_L: loop cover.
    Loop,
}

/// What to send at a tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendKind<T> {
    /// The oldest queued real packet.
    Real(T),
    /// A drop-cover packet (payload stream, nothing queued).
    Drop,
    /// A loop-cover packet back to the sender's own mailbox.
    Loop,
}

/// One packet to send now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledSend<T> {
    /// The tick it was scheduled for (at most [`MAX_LAG`] before `now`).
    pub at: Instant,
    /// Its stream.
    pub stream: TrafficStream,
    /// What to send.
    pub kind: SendKind<T>,
}

/// The two send streams and the bounded queue of real packets waiting for
/// a payload tick. Call [`Scheduler::poll`] until it returns `None`, then
/// wait until [`Scheduler::poll_timeout`].
#[derive(Debug)]
pub struct Scheduler<T> {
    params: TrafficParams,
    next_payload: Option<Instant>,
    next_loop: Option<Instant>,
    queue: VecDeque<T>,
    max_queue: usize,
    missed: u64,
}

impl<T> Scheduler<T> {
    /// Starts both streams at `now`, holding at most `max_queue` real
    /// packets.
    pub fn new<R: Rng + ?Sized>(
        params: TrafficParams,
        max_queue: usize,
        now: Instant,
        rng: &mut R,
    ) -> Result<Self> {
        params.validate()?;
        let next_payload = next_tick(now, params.payload_rate, rng);
        let next_loop = next_tick(now, params.loop_rate, rng);
        Ok(Scheduler {
            params,
            next_payload,
            next_loop,
            queue: VecDeque::new(),
            max_queue,
            missed: 0,
        })
    }

    /// The rates in force.
    pub fn params(&self) -> &TrafficParams {
        &self.params
    }

    /// Queues a real packet for the next payload tick; gives it back if the
    /// queue is full.
    pub fn enqueue(&mut self, packet: T) -> std::result::Result<(), T> {
        if self.queue.len() >= self.max_queue {
            return Err(packet);
        }
        self.queue.push_back(packet);
        Ok(())
    }

    /// Real packets waiting.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Ticks skipped because they were served more than [`MAX_LAG`] late.
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// When the next tick is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.next_payload, self.next_loop) {
            (Some(p), Some(l)) => Some(p.min(l)),
            (p, l) => p.or(l),
        }
    }

    /// The next send due at `now`, earliest first, or `None` when nothing
    /// is due. The next tick of its stream is drawn from the tick's own
    /// instant, so serving late does not slow the process down.
    pub fn poll<R: Rng + ?Sized>(&mut self, now: Instant, rng: &mut R) -> Option<ScheduledSend<T>> {
        loop {
            let (stream, at) = match (self.next_payload, self.next_loop) {
                (Some(p), Some(l)) if l < p => (TrafficStream::Loop, l),
                (Some(p), _) => (TrafficStream::Payload, p),
                (None, Some(l)) => (TrafficStream::Loop, l),
                (None, None) => return None,
            };
            if at > now {
                return None;
            }
            let (rate, slot) = match stream {
                TrafficStream::Payload => (self.params.payload_rate, &mut self.next_payload),
                TrafficStream::Loop => (self.params.loop_rate, &mut self.next_loop),
            };
            if now.saturating_duration_since(at) > MAX_LAG {
                // Memoryless: restarting the stream at `now` is as Poisson
                // as continuing it.
                self.missed += 1;
                *slot = next_tick(now, rate, rng);
                continue;
            }
            *slot = next_tick(at, rate, rng);
            let kind = match stream {
                TrafficStream::Loop => SendKind::Loop,
                TrafficStream::Payload => self
                    .queue
                    .pop_front()
                    .map_or(SendKind::Drop, SendKind::Real),
            };
            return Some(ScheduledSend { at, stream, kind });
        }
    }
}

/// `from` plus one Exp(`rate`) draw; `None` for a stream turned off or a
/// tick beyond what `Instant` can hold.
fn next_tick<R: Rng + ?Sized>(from: Instant, rate: f64, rng: &mut R) -> Option<Instant> {
    if rate <= 0.0 {
        return None;
    }
    let mean = Duration::try_from_secs_f64(1.0 / rate).ok()?;
    from.checked_add(bastet_sphinx::exp_delay(mean, Duration::MAX, rng))
}

/// A one-sample Kolmogorov–Smirnov test of samples against Exp(`rate`), to
/// check that observed send gaps (in a test, a simulation or a capture) are
/// what the schedule promises.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KsTest {
    /// Samples tested.
    pub n: usize,
    /// Largest distance between the empirical and the exponential CDF.
    pub d: f64,
    /// Asymptotic critical value at α = 0.01: 1.628 / √n (good for n ≳ 35).
    pub critical: f64,
}

impl KsTest {
    /// Tests `samples` (seconds) against Exp(`rate`); `None` without
    /// samples or with a rate that is not positive.
    pub fn exponential(samples: &[f64], rate: f64) -> Option<Self> {
        if samples.is_empty() || rate.is_nan() || rate <= 0.0 {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        let d = sorted
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let cdf = if x <= 0.0 {
                    0.0
                } else {
                    1.0 - (-rate * x).exp()
                };
                let below = cdf - i as f64 / n;
                let above = (i as f64 + 1.0) / n - cdf;
                below.max(above)
            })
            .fold(0.0, f64::max);
        Some(KsTest {
            n: sorted.len(),
            d,
            critical: 1.628 / n.sqrt(),
        })
    }

    /// Whether the samples are unlikely (α = 0.01) to come from the
    /// distribution.
    pub fn rejects(&self) -> bool {
        self.d > self.critical
    }

    /// The asymptotic critical value at significance `alpha` (0 < α < 1):
    /// √(−ln(α/2) / 2) / √n, e.g. 1.949 / √n at α = 0.001.
    pub fn critical_at(&self, alpha: f64) -> f64 {
        (-(alpha / 2.0).ln() / 2.0).sqrt() / (self.n as f64).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;

    const TICKS: usize = 3000;

    /// Serves `s` exactly at each timeout until `ticks` payload sends,
    /// topping the queue up to `backlog` before each; returns every send.
    fn run(
        s: &mut Scheduler<u32>,
        rng: &mut StdRng,
        ticks: usize,
        backlog: usize,
    ) -> Vec<ScheduledSend<u32>> {
        let mut sends = Vec::new();
        let mut next_item = 0;
        let mut payload = 0;
        while payload < ticks {
            while s.queued() < backlog {
                s.enqueue(next_item).unwrap();
                next_item += 1;
            }
            let now = s.poll_timeout().unwrap();
            while let Some(send) = s.poll(now, rng) {
                payload += usize::from(send.stream == TrafficStream::Payload);
                sends.push(send);
            }
        }
        sends
    }

    fn gaps(sends: &[ScheduledSend<u32>], stream: TrafficStream) -> Vec<f64> {
        let at: Vec<Instant> = sends
            .iter()
            .filter(|s| s.stream == stream)
            .map(|s| s.at)
            .collect();
        at.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect()
    }

    fn scheduler(seed: u64, t0: Instant) -> (Scheduler<u32>, StdRng) {
        let mut rng = StdRng::seed_from_u64(seed);
        let s = Scheduler::new(TrafficParams::balanced(), 1000, t0, &mut rng).unwrap();
        (s, rng)
    }

    #[test]
    fn idle_sends_are_poisson_at_the_configured_rates() {
        let p = TrafficParams::balanced();
        let (mut s, mut rng) = scheduler(1, Instant::now());
        let sends = run(&mut s, &mut rng, TICKS, 0);
        assert!(sends.iter().all(|s| match s.stream {
            TrafficStream::Payload => s.kind == SendKind::Drop,
            TrafficStream::Loop => s.kind == SendKind::Loop,
        }));
        let payload = gaps(&sends, TrafficStream::Payload);
        let looped = gaps(&sends, TrafficStream::Loop);
        let ks = KsTest::exponential(&payload, p.payload_rate).unwrap();
        assert!(!ks.rejects(), "payload stream {ks:?}");
        let ks = KsTest::exponential(&looped, p.loop_rate).unwrap();
        assert!(looped.len() > 1000 && !ks.rejects(), "loop stream {ks:?}");
        // The test has power: the same gaps are not Exp(1.2 λ_P), and the
        // two streams are not each other's rate.
        assert!(
            KsTest::exponential(&payload, 1.2 * p.payload_rate)
                .unwrap()
                .rejects()
        );
        assert!(
            KsTest::exponential(&looped, p.payload_rate)
                .unwrap()
                .rejects()
        );
        assert_eq!(s.missed(), 0);
    }

    #[test]
    fn a_steady_backlog_is_sent_on_the_same_schedule_as_idle_cover() {
        let t0 = Instant::now();
        let (mut idle, mut idle_rng) = scheduler(2, t0);
        let (mut busy, mut busy_rng) = scheduler(2, t0);
        let idle_sends = run(&mut idle, &mut idle_rng, TICKS, 0);
        let busy_sends = run(&mut busy, &mut busy_rng, TICKS, 5);
        let timing =
            |v: &[ScheduledSend<u32>]| v.iter().map(|s| (s.at, s.stream)).collect::<Vec<_>>();
        // Same seed, same instants and streams: the queue never moves a tick.
        assert_eq!(timing(&idle_sends), timing(&busy_sends));
        // Every payload tick carried a real packet, in queue order.
        let real: Vec<u32> = busy_sends
            .iter()
            .filter_map(|s| match s.kind {
                SendKind::Real(i) => Some(i),
                SendKind::Drop => panic!("drop sent with a backlog"),
                SendKind::Loop => None,
            })
            .collect();
        assert_eq!(real.len(), TICKS);
        assert!(real.windows(2).all(|w| w[1] == w[0] + 1));
        let ks = KsTest::exponential(&gaps(&busy_sends, TrafficStream::Payload), 2.0).unwrap();
        assert!(!ks.rejects(), "backlogged payload stream {ks:?}");
    }

    #[test]
    fn messages_arriving_at_random_fill_drop_slots_without_moving_them() {
        let t0 = Instant::now();
        let (mut a, mut rng_a) = scheduler(3, t0);
        let (mut b, mut rng_b) = scheduler(3, t0);
        let mut queue_rng = StdRng::seed_from_u64(99);
        let mut sends_b = Vec::new();
        for i in 0..2000u32 {
            if queue_rng.random_bool(0.3) {
                b.enqueue(i).unwrap();
            }
            let now = b.poll_timeout().unwrap();
            while let Some(s) = b.poll(now, &mut rng_b) {
                sends_b.push(s);
            }
        }
        let sends_a = run(&mut a, &mut rng_a, TICKS, 0);
        let n = sends_b.len();
        assert!(sends_b.iter().any(|s| matches!(s.kind, SendKind::Real(_))));
        assert!(sends_b.iter().any(|s| s.kind == SendKind::Drop));
        let timing =
            |v: &[ScheduledSend<u32>]| v.iter().map(|s| (s.at, s.stream)).collect::<Vec<_>>();
        assert_eq!(timing(&sends_a[..n]), timing(&sends_b));
    }

    #[test]
    fn late_service_catches_up_but_a_long_suspend_is_skipped_not_burst() {
        let t0 = Instant::now();
        let (mut s, mut rng) = scheduler(4, t0);
        // Served 1 s late: every tick due is still sent, at its own instant.
        let first = s.poll_timeout().unwrap();
        let late = first + Duration::from_secs(1);
        let mut caught = Vec::new();
        while let Some(send) = s.poll(late, &mut rng) {
            assert!(send.at <= late && late - send.at <= MAX_LAG);
            caught.push(send.at);
        }
        assert!(!caught.is_empty());
        assert!(caught.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(s.missed(), 0);
        // An hour asleep: about 3 × 3600 ticks are due, but only what falls
        // within MAX_LAG of waking is sent.
        let wake = late + Duration::from_secs(3600);
        let mut burst = 0;
        while let Some(send) = s.poll(wake, &mut rng) {
            assert!(wake - send.at <= MAX_LAG);
            burst += 1;
        }
        assert!(burst < 40, "{burst} packets sent at once after a suspend");
        assert_eq!(s.missed(), 2);
        assert!(s.poll_timeout().unwrap() > wake);
    }

    #[test]
    fn the_queue_is_bounded_and_loop_cover_can_be_off() {
        let mut rng = StdRng::seed_from_u64(5);
        let params = TrafficParams {
            loop_rate: 0.0,
            ..TrafficParams::balanced()
        };
        let t0 = Instant::now();
        let mut s = Scheduler::new(params, 2, t0, &mut rng).unwrap();
        assert_eq!(s.enqueue(1), Ok(()));
        assert_eq!(s.enqueue(2), Ok(()));
        assert_eq!(s.enqueue(3), Err(3));
        let mut kinds = Vec::new();
        while kinds.len() < 50 {
            let now = s.poll_timeout().unwrap();
            while let Some(send) = s.poll(now, &mut rng) {
                kinds.push(send.kind);
            }
        }
        assert_eq!(kinds[..2], [SendKind::Real(1), SendKind::Real(2)]);
        assert!(kinds[2..].iter().all(|k| *k == SendKind::Drop));
    }

    #[test]
    fn hop_delays_are_exponential_with_the_configured_mean_and_cap() {
        let mut rng = StdRng::seed_from_u64(6);
        let p = TrafficParams {
            max_hop_delay: Duration::from_secs(30),
            ..TrafficParams::balanced()
        };
        let samples: Vec<f64> = (0..5000)
            .map(|_| p.sample_hop_delay(&mut rng).as_secs_f64())
            .collect();
        let rate = 1.0 / p.mean_hop_delay.as_secs_f64();
        let ks = KsTest::exponential(&samples, rate).unwrap();
        assert!(!ks.rejects(), "{ks:?}");
        assert!(KsTest::exponential(&samples, 1.2 * rate).unwrap().rejects());

        let capped = TrafficParams::balanced();
        let draws: Vec<Duration> = (0..20_000)
            .map(|_| {
                TrafficParams {
                    max_hop_delay: Duration::from_millis(60),
                    ..capped.clone()
                }
                .sample_hop_delay(&mut rng)
            })
            .collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_millis(60)));
        // About e^(-60/50) ≈ 30% of draws hit the cap.
        let at_cap = draws
            .iter()
            .filter(|d| **d == Duration::from_millis(60))
            .count();
        assert!((5000..7000).contains(&at_cap), "{at_cap}");
    }

    #[test]
    fn ks_rejects_what_is_not_exponential() {
        let constant = vec![0.5; 200];
        assert!(KsTest::exponential(&constant, 2.0).unwrap().rejects());
        let mut rng = StdRng::seed_from_u64(7);
        let uniform: Vec<f64> = (0..500).map(|_| rng.random::<f64>()).collect();
        assert!(KsTest::exponential(&uniform, 2.0).unwrap().rejects());
        assert!(KsTest::exponential(&[], 1.0).is_none());
        assert!(KsTest::exponential(&[1.0], 0.0).is_none());
        assert!(KsTest::exponential(&[1.0], f64::NAN).is_none());
        let ks = KsTest::exponential(&[1.0; 100], 1.0).unwrap();
        assert!((ks.critical - 0.1628).abs() < 1e-12);
        // The closed form agrees with the tabulated coefficients.
        assert!((ks.critical_at(0.01) - 0.1628).abs() < 1e-3);
        assert!((ks.critical_at(0.001) - 0.1949).abs() < 1e-3);
    }

    #[test]
    fn presets_cost_what_their_documentation_says() {
        let poll = Duration::from_millis(200);
        let up = |p: TrafficParams| p.idle_bandwidth(poll, 0.0).up;
        assert_eq!(up(TrafficParams::interactive()), 5.0 * 2396.0);
        assert_eq!(up(TrafficParams::balanced()), 3.0 * 2396.0);
        assert_eq!(up(TrafficParams::paranoid()), 1.5 * 2396.0);
        assert_eq!(FETCHED_MESSAGE_BYTES, 2708);
        let b = TrafficParams::balanced().idle_bandwidth(poll, 500.0);
        assert_eq!(b.down, 2708.0 + 5.0 * 500.0);

        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let one = |p: TrafficParams| ms(p.expected_latency(1, 3, Duration::ZERO));
        assert!((one(TrafficParams::interactive()) - 310.0).abs() < 1.0);
        assert!((one(TrafficParams::balanced()) - 650.0).abs() < 1.0);
        assert!((one(TrafficParams::paranoid()) - 2500.0).abs() < 1.0);
        // A 1 MiB envelope, 661 fragments, at the balanced rate.
        let mib = TrafficParams::balanced().expected_latency(661, 3, poll);
        assert!((330.0..331.0).contains(&mib.as_secs_f64()));

        for p in [
            TrafficParams::interactive(),
            TrafficParams::balanced(),
            TrafficParams::paranoid(),
        ] {
            p.validate().unwrap();
            assert_eq!(p.max_hop_delay, p.mean_hop_delay * 20);
        }
        assert_eq!(TrafficParams::default(), TrafficParams::balanced());
    }

    #[test]
    fn capped_mean_is_below_the_mean() {
        let p = TrafficParams {
            mean_hop_delay: Duration::from_millis(100),
            max_hop_delay: Duration::from_millis(100),
            ..TrafficParams::balanced()
        };
        // m (1 - e^-1) = 63.2 ms.
        assert_eq!(p.mean_capped_hop_delay().as_micros(), 63_212);
        let mut rng = StdRng::seed_from_u64(8);
        let mean: f64 = (0..20_000)
            .map(|_| p.sample_hop_delay(&mut rng).as_secs_f64())
            .sum::<f64>()
            / 20_000.0;
        assert!((mean - 0.0632).abs() < 0.002, "{mean}");
    }

    #[test]
    fn invalid_parameters_name_their_field() {
        let b = TrafficParams::balanced;
        let cases = [
            (
                TrafficParams {
                    payload_rate: 0.0,
                    ..b()
                },
                "payload_rate",
            ),
            (
                TrafficParams {
                    payload_rate: f64::NAN,
                    ..b()
                },
                "payload_rate",
            ),
            (
                TrafficParams {
                    payload_rate: f64::INFINITY,
                    ..b()
                },
                "payload_rate",
            ),
            (
                TrafficParams {
                    loop_rate: -1.0,
                    ..b()
                },
                "loop_rate",
            ),
            (
                TrafficParams {
                    loop_rate: MAX_RATE + 1.0,
                    ..b()
                },
                "loop_rate",
            ),
            (
                TrafficParams {
                    max_hop_delay: Duration::from_secs(31),
                    ..b()
                },
                "max_hop_delay",
            ),
            (
                TrafficParams {
                    mean_hop_delay: Duration::from_secs(2),
                    ..b()
                },
                "mean_hop_delay",
            ),
        ];
        for (p, key) in cases {
            let mut rng = StdRng::seed_from_u64(9);
            match Scheduler::<u32>::new(p.clone(), 1, Instant::now(), &mut rng) {
                Err(Error::Config(m)) => assert!(m.starts_with(key), "{m}"),
                other => panic!("{p:?} accepted: {other:?}"),
            }
        }
    }
}
