//! The simulator and the analysis end to end, on networks small enough
//! for the dev profile: determinism, the real-crypto cross-check, and the
//! direction of every effect the analysis is meant to show.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code may panic

use std::time::Duration;

use bastet_anonymity::sweep::SweepParam;
use bastet_anonymity::{
    AnalysisConfig, Attributor, Crypto, LinkEvent, Preset, Pruning, SimConfig, Trace, analyse,
    entropy_bits, simulate,
};

fn small(preset: &str, clients: u32, secs: u64, seed: u64) -> SimConfig {
    SimConfig {
        clients,
        layers: 3,
        per_layer: 2,
        mailboxes: 2,
        duration: Duration::from_secs(secs),
        seed,
        crypto: Crypto::None,
        preset: Preset::named(preset).unwrap(),
        messages_per_minute: 6.0,
    }
}

fn sorted(events: &[LinkEvent]) -> Vec<(u64, String, String)> {
    let mut v: Vec<_> = events
        .iter()
        .map(|e| (e.t_us, e.from.to_string(), e.to.to_string()))
        .collect();
    v.sort();
    v
}

fn analysis() -> AnalysisConfig {
    AnalysisConfig {
        max_messages: 150,
        ..AnalysisConfig::default()
    }
}

#[test]
fn a_seed_determines_the_whole_trace() {
    let a = simulate(&small("balanced", 20, 20, 7)).unwrap();
    let b = simulate(&small("balanced", 20, 20, 7)).unwrap();
    let c = simulate(&small("balanced", 20, 20, 8)).unwrap();
    assert_eq!(a.trace, b.trace);
    assert!(!a.trace.truth.messages.is_empty());
    assert_ne!(a.trace.observation.events, c.trace.observation.events);
    assert_eq!(a.stats.failures, 0);
    assert_eq!(a.stats.messages_refused, 0);
}

#[test]
fn real_sphinx_and_plain_routes_give_the_same_link_events() {
    for preset in ["balanced", "no-cover"] {
        let none = small(preset, 6, 15, 3);
        let real = SimConfig {
            crypto: Crypto::Real,
            ..none.clone()
        };
        let a = simulate(&none).unwrap();
        let b = simulate(&real).unwrap();
        assert_eq!(
            b.stats.failures, 0,
            "{preset}: a real node refused a packet"
        );
        assert!(a.stats.link_events > 50, "{:?}", a.stats);
        assert!(a.stats.acks_sent > 0 && a.stats.real_delivered > 0);
        // Same instants, same links; only the order of simultaneous
        // events may differ.
        assert_eq!(
            sorted(&a.trace.observation.events),
            sorted(&b.trace.observation.events),
            "{preset}"
        );
        assert_eq!(a.stats.real_delivered, b.stats.real_delivered);
        assert_eq!(a.stats.acks_sent, b.stats.acks_sent);
        let senders = |t: &Trace| {
            let mut v: Vec<(u32, u32, u64)> = t
                .truth
                .messages
                .iter()
                .map(|m| (m.sender, m.recipient, m.queued_us))
                .collect();
            v.sort();
            v
        };
        assert_eq!(senders(&a.trace), senders(&b.trace));
    }
}

#[test]
fn traces_survive_a_round_trip_through_a_file() {
    let out = simulate(&small("interactive", 10, 10, 1)).unwrap();
    let mut bytes = Vec::new();
    out.trace.write_jsonl(&mut bytes).unwrap();
    assert_eq!(Trace::read_jsonl(&bytes[..]).unwrap(), out.trace);
}

#[test]
fn longer_delays_give_more_sender_entropy() {
    let base = small("balanced", 60, 60, 11);
    let h = |ms: f64| {
        let preset = SweepParam::Mu.apply(&base.preset, ms).unwrap();
        let out = simulate(&SimConfig {
            preset,
            ..base.clone()
        })
        .unwrap();
        analyse(&out.trace, &analysis())
            .unwrap()
            .sender_entropy_bits
            .mean
    };
    let (short, long) = (h(2.0), h(200.0));
    assert!(
        long > short + 1.0,
        "2 ms: {short} bits, 200 ms: {long} bits"
    );
}

#[test]
fn more_cover_gives_more_sender_entropy() {
    let base = small("balanced", 60, 60, 12);
    let h = |factor: f64| {
        let preset = SweepParam::Lambda.apply(&base.preset, factor).unwrap();
        let out = simulate(&SimConfig {
            preset,
            ..base.clone()
        })
        .unwrap();
        analyse(&out.trace, &analysis())
            .unwrap()
            .sender_entropy_bits
            .mean
    };
    let (little, lots) = (h(0.1), h(4.0));
    assert!(lots > little + 0.5, "×0.1: {little} bits, ×4: {lots} bits");
}

#[test]
fn without_cover_and_delay_the_attack_wins_and_with_them_it_is_near_chance() {
    let naked = simulate(&small("no-cover-no-delay", 60, 60, 13)).unwrap();
    let naked = analyse(&naked.trace, &analysis()).unwrap();
    let bastet = simulate(&small("balanced", 60, 60, 13)).unwrap();
    let bastet = analyse(&bastet.trace, &analysis()).unwrap();
    assert!(naked.attack.messages > 20 && bastet.attack.messages > 20);
    assert!(
        naked.attack.accuracy > 0.9,
        "no cover, no delay: {:?}",
        naked.attack
    );
    assert!(naked.sender_entropy_bits.mean < 0.5);
    assert!(
        bastet.attack.accuracy < naked.attack.accuracy / 3.0,
        "balanced: {:?}",
        bastet.attack
    );
    assert!(
        bastet.sender_entropy_bits.mean > 3.0,
        "{:?}",
        bastet.sender_entropy_bits
    );
    // Following the ack can only help the adversary.
    assert!(bastet.sender_entropy_with_ack_bits.mean <= bastet.sender_entropy_bits.mean + 1e-9);
}

#[test]
fn pruning_changes_entropy_by_less_than_a_hundredth_of_a_bit_and_bounds_memory() {
    let out = simulate(&small("balanced", 40, 40, 14)).unwrap();
    let obs = &out.trace.observation;
    let eps = Pruning::default().threshold;
    let mut exact = Attributor::new(obs, Pruning { threshold: 0.0 }).unwrap();
    let mut pruned = Attributor::new(obs, Pruning::default()).unwrap();
    let mut coarse = Attributor::new(obs, Pruning { threshold: 1e-2 }).unwrap();
    let mut checked = 0;
    let mut widest_exact = 0;
    for m in out.trace.truth.messages.iter().skip(5).step_by(7).take(25) {
        let arr = m.arrival().unwrap() as u32;
        let h = |a: &mut Attributor<'_>| {
            let b = a.backward(arr).unwrap();
            (
                entropy_bits(b.clients().iter().map(|x| x.1)),
                b.peak_frontier,
            )
        };
        let (he, fe) = h(&mut exact);
        let (hp, fp) = h(&mut pruned);
        let (_, fc) = h(&mut coarse);
        assert!((he - hp).abs() < 0.01, "exact {he}, pruned {hp}");
        assert!(fp as f64 <= 1.0 / eps);
        assert!(fc <= 100, "ε = 0.01 carried {fc} events");
        widest_exact = widest_exact.max(fe);
        checked += 1;
    }
    assert!(checked > 10);
    // The coarse bound binds: exact attribution carries more than 1/ε.
    assert!(widest_exact > 100, "{widest_exact}");
}

#[test]
fn bad_parameters_are_refused_by_name() {
    let mut c = small("balanced", 10, 10, 1);
    c.clients = 1;
    assert!(simulate(&c).unwrap_err().to_string().starts_with("clients"));
    let mut c = small("balanced", 10, 10, 1);
    c.layers = 4;
    assert!(simulate(&c).unwrap_err().to_string().starts_with("layers"));
    let mut c = small("balanced", 10, 10, 1);
    c.messages_per_minute = -1.0;
    assert!(simulate(&c).is_err());
    let mut c = small("balanced", 10, 10, 1);
    c.preset.traffic.payload_rate = 0.0;
    assert!(
        simulate(&c)
            .unwrap_err()
            .to_string()
            .contains("payload_rate")
    );
    assert!(Preset::named("nope").is_err());
    assert!(SweepParam::Mu.apply(&c.preset, -5.0).is_err());
    assert!(SweepParam::Mu.apply(&c.preset, 5000.0).is_err());
}
