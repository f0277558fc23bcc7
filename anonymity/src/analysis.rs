//! The whole analysis of one trace: sender and recipient entropy of its
//! real messages, the correlation attack, and their latency.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::attack::{AttackReport, Tally, ack_destination, entropy_of, with_ack};
use crate::entropy::{Attributor, Pruning, entropy_bits};
use crate::{Endpoint, Error, Result, Trace};

/// How to analyse a trace.
#[derive(Clone, Debug, PartialEq)]
pub struct AnalysisConfig {
    /// Attribution pruning.
    pub pruning: Pruning,
    /// Most messages analysed, taken evenly over the eligible ones
    /// (attribution costs milliseconds per message).
    pub max_messages: usize,
    /// Messages arriving earlier are skipped while mixes fill up; `None`:
    /// 1 s plus 10 mean delays per layer.
    pub warmup: Option<Duration>,
    /// How long after a fragment is stored its mailbox server may send its
    /// ack (0 in the simulator; the real server acks once the write is
    /// durable, within milliseconds).
    pub ack_window: Duration,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            pruning: Pruning::default(),
            max_messages: 2000,
            warmup: None,
            ack_window: Duration::ZERO,
        }
    }
}

/// Order statistics of a sample.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Sample size.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// 5th percentile.
    pub p5: f64,
    /// Median.
    pub median: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Summary {
    /// Summarises `values` (NaNs ignored).
    pub fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return Summary::default();
        }
        v.sort_by(f64::total_cmp);
        let q = |f: f64| v[((v.len() - 1) as f64 * f).round() as usize];
        Summary {
            n: v.len(),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p5: q(0.05),
            median: q(0.5),
            p95: q(0.95),
            p99: q(0.99),
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

/// What the analysis found.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AnalysisReport {
    /// How the trace was made.
    pub description: String,
    /// Clients in the network.
    pub clients: u32,
    /// Clients that sent at least one packet.
    pub active_senders: u32,
    /// log₂ of the active senders: the most sender entropy possible.
    pub max_sender_entropy_bits: f64,
    /// Real messages in the trace's ground truth.
    pub messages_in_trace: usize,
    /// Messages analysed (eligible, sampled).
    pub messages_analysed: usize,
    /// Sender entropy from timing, bits.
    pub sender_entropy_bits: Summary,
    /// Effective sender anonymity set from timing, 2^H.
    pub sender_set: Summary,
    /// Sender entropy once the adversary also follows the ack, bits.
    pub sender_entropy_with_ack_bits: Summary,
    /// Entropy over the mailbox server a message ends at, seen from its
    /// first link, bits.
    pub recipient_server_entropy_bits: Summary,
    /// Recipient entropy over clients, bits: the server entropy plus, for
    /// each server, log₂ of its clients (assumes polling reveals nothing
    /// about which of a server's clients received it).
    pub recipient_entropy_bits: Summary,
    /// The correlation attack.
    pub attack: AttackReport,
    /// Time from queuing a message to its arrival at the mailbox server,
    /// milliseconds (every delivered message; polling not included).
    pub latency_ms: Summary,
    /// Mean probability mass dropped by pruning per attribution.
    pub mean_pruned_mass: f64,
    /// Wall-clock seconds the analysis took.
    pub analysis_secs: f64,
}

/// Analyses the real messages of `trace`: entropy, recipient entropy, the
/// attack and latency.
pub fn analyse(trace: &Trace, config: &AnalysisConfig) -> Result<AnalysisReport> {
    let started = Instant::now();
    let obs = &trace.observation;
    let meta = &obs.meta;
    if trace.truth.messages.is_empty() {
        return Err(Error::Unanalysable(
            "no real messages: the analysis needs the trace's message lines to know which arrivals to attack".into(),
        ));
    }
    if config.max_messages == 0 {
        return Err(Error::InvalidParameter {
            name: "max-messages",
            why: "must be at least 1".into(),
        });
    }
    let mut a = Attributor::new(obs, config.pruning)?;
    let layers = u64::from(meta.layers());
    let warmup_us = config
        .warmup
        .map_or(1_000_000 + 10 * layers * meta.mean_hop_delay_us, |w| {
            w.as_micros() as u64
        });
    // Forward attribution needs what follows a message: its ack and the
    // traffic it hides in, up to a few delays per hop (10 means carry all
    // but e^-10 of a hop's weight).
    let hop_us = meta.max_hop_delay_us.min(10 * meta.mean_hop_delay_us);
    let tail_us = (layers + 1) * hop_us + config.ack_window.as_micros() as u64;

    let mut latencies = Vec::with_capacity(trace.truth.messages.len());
    let mut eligible = Vec::new();
    for (i, m) in trace.truth.messages.iter().enumerate() {
        let (Some(dep), Some(arr)) = (m.departure(), m.arrival()) else {
            continue;
        };
        let (Some(dep_ev), Some(arr_ev)) =
            (obs.events.get(dep as usize), obs.events.get(arr as usize))
        else {
            return Err(Error::Unanalysable(format!(
                "message {i} names link events that do not exist"
            )));
        };
        if dep_ev.from != Endpoint::Client(m.sender) || !matches!(arr_ev.to, Endpoint::Mailbox(_)) {
            return Err(Error::Unanalysable(format!(
                "message {i}: its first link is not from its sender or its last not to a mailbox server"
            )));
        }
        latencies.push(arr_ev.t_us.saturating_sub(m.queued_us) as f64 / 1000.0);
        if arr_ev.t_us >= warmup_us && arr_ev.t_us.saturating_add(tail_us) <= meta.duration_us {
            eligible.push(i);
        }
    }
    if eligible.is_empty() {
        return Err(Error::Unanalysable(format!(
            "none of the {} messages arrived between the warm-up ({} ms) and {} ms before the end; simulate longer",
            trace.truth.messages.len(),
            warmup_us / 1000,
            tail_us / 1000
        )));
    }
    let stride = eligible.len().div_ceil(config.max_messages);
    let mut per_server = vec![0u32; meta.mailboxes as usize];
    for s in &meta.client_mailbox {
        if let Some(n) = per_server.get_mut(*s as usize) {
            *n += 1;
        }
    }

    let mut sender = Vec::new();
    let mut sender_set = Vec::new();
    let mut sender_ack = Vec::new();
    let mut server_h = Vec::new();
    let mut recipient_h = Vec::new();
    let mut pruned = 0.0;
    let mut tally = Tally::default();
    for &i in eligible.iter().step_by(stride) {
        let m = &trace.truth.messages[i];
        let (Some(dep), Some(arr)) = (m.departure(), m.arrival()) else {
            continue;
        };
        let (dep, arr) = (dep as u32, arr as u32);
        let back = a.backward(arr)?;
        pruned += back.lost;
        let timing = back.clients();
        let h = entropy_of(&timing);
        sender.push(h);
        sender_set.push(h.exp2());
        let combined = match ack_destination(&mut a, arr, config.ack_window.as_micros() as u64)? {
            Some(ack) => with_ack(&timing, &ack, &meta.client_mailbox),
            None => timing.clone(),
        };
        sender_ack.push(entropy_of(&combined));
        tally.add(&timing, &combined, m.sender);

        let fwd = a.forward(dep)?;
        pruned += fwd.lost;
        let servers = fwd.mailboxes(meta.mailboxes as usize);
        let hs = entropy_bits(servers.iter().copied());
        server_h.push(hs);
        let within: f64 = servers
            .iter()
            .zip(&per_server)
            .filter(|(_, n)| **n > 0)
            .map(|(p, n)| p * f64::from(*n).log2())
            .sum();
        recipient_h.push(hs + within);
    }
    let mut active = vec![false; meta.clients as usize];
    for e in &obs.events {
        if let Endpoint::Client(c) = e.from
            && let Some(slot) = active.get_mut(c as usize)
        {
            *slot = true;
        }
    }
    let active_senders = active.iter().filter(|x| **x).count() as u32;
    Ok(AnalysisReport {
        description: meta.description.clone(),
        clients: meta.clients,
        active_senders,
        max_sender_entropy_bits: f64::from(active_senders.max(1)).log2(),
        messages_in_trace: trace.truth.messages.len(),
        messages_analysed: sender.len(),
        sender_entropy_bits: Summary::of(&sender),
        sender_set: Summary::of(&sender_set),
        sender_entropy_with_ack_bits: Summary::of(&sender_ack),
        recipient_server_entropy_bits: Summary::of(&server_h),
        recipient_entropy_bits: Summary::of(&recipient_h),
        attack: tally.report(active_senders),
        latency_ms: Summary::of(&latencies),
        mean_pruned_mass: pruned / (2 * sender.len().max(1)) as f64,
        analysis_secs: started.elapsed().as_secs_f64(),
    })
}

/// Each delivered message's time from queuing to arrival at its mailbox
/// server, milliseconds.
pub fn latencies_ms(trace: &Trace) -> Vec<f64> {
    let events = &trace.observation.events;
    trace
        .truth
        .messages
        .iter()
        .filter_map(|m| {
            let arr = events.get(m.arrival()? as usize)?;
            Some(arr.t_us.saturating_sub(m.queued_us) as f64 / 1000.0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_are_order_statistics() {
        let s = Summary::of(&[3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!((s.n, s.min, s.median, s.max), (3, 1.0, 2.0, 3.0));
        assert_eq!(s.mean, 2.0);
        assert_eq!(Summary::of(&[]), Summary::default());
    }
}
