//! A per-message correlation attack by a global passive adversary: for
//! each real message arriving at a mailbox server, guess who sent it from
//! the link trace alone.
//!
//! Two guesses, each the most likely client under the adversary's belief:
//!
//! - **timing**: the backward attribution of the arrival (see
//!   [`crate::entropy`]);
//! - **timing + ack**: a real fragment asks its recipient's mailbox server
//!   for an ack, which the server sends back through the mixnet to the
//!   *sender's* mailbox server as soon as the fragment is stored. The
//!   adversary takes the packets the server sent into layer 1 within
//!   `ack_window` of the arrival as the possible acks, follows them
//!   forward to the mailbox servers, and weighs each candidate sender by
//!   the probability that the ack went to the server that client polls.
//!   Independent evidence, so the two beliefs multiply.
//!
//! The baseline is a guess without the trace: one of the clients that sent
//! anything, uniformly (1/n).

use serde::Serialize;

use crate::entropy::{Attributor, entropy_bits};
use crate::{Endpoint, Result};

/// The most likely client, highest probability first, lowest index on
/// ties; `None` for an empty distribution.
pub fn most_likely(dist: &[(u32, f64)]) -> Option<u32> {
    dist.iter()
        .fold(None::<(u32, f64)>, |best, &(c, p)| match best {
            Some((_, bp)) if bp >= p => best,
            _ => Some((c, p)),
        })
        .map(|(c, _)| c)
}

/// The probability `dist` gives `client`.
pub fn probability_of(dist: &[(u32, f64)], client: u32) -> f64 {
    dist.iter()
        .find(|(c, _)| *c == client)
        .map_or(0.0, |(_, p)| *p)
}

/// The packets mailbox server `server` sent into the mixnet within
/// `window_us` after link event `arrival` reached it: the candidates for
/// the ack it triggered.
pub fn ack_candidates(a: &Attributor<'_>, arrival: u32, window_us: u64) -> Vec<u32> {
    let events = a.events();
    let Some(arr) = events.get(arrival as usize) else {
        return Vec::new();
    };
    let Endpoint::Mailbox(_) = arr.to else {
        return Vec::new();
    };
    a.departures(arr.to, arr.t_us, arr.t_us.saturating_add(window_us))
        .into_iter()
        .filter(|&o| matches!(events[o as usize].to, Endpoint::Mix(_)))
        .collect()
}

/// Combines the timing belief `dist` with where the ack went: `ack[s]` is
/// the probability the ack reached mailbox server `s`, and client `c`'s
/// server is `client_mailbox[c]`. Falls back to `dist` if the two
/// contradict each other everywhere.
pub fn with_ack(dist: &[(u32, f64)], ack: &[f64], client_mailbox: &[u32]) -> Vec<(u32, f64)> {
    let mut out: Vec<(u32, f64)> = dist
        .iter()
        .map(|&(c, p)| {
            let server = client_mailbox.get(c as usize).copied().unwrap_or(u32::MAX);
            (c, p * ack.get(server as usize).copied().unwrap_or(0.0))
        })
        .filter(|x| x.1 > 0.0)
        .collect();
    let total: f64 = out.iter().map(|x| x.1).sum();
    if total <= 0.0 {
        return dist.to_vec();
    }
    out.iter_mut().for_each(|x| x.1 /= total);
    out
}

/// Where the ack of the message that arrived in link event `arrival` went,
/// by mailbox server; `None` if no candidate ack was seen.
pub fn ack_destination(
    a: &mut Attributor<'_>,
    arrival: u32,
    window_us: u64,
) -> Result<Option<Vec<f64>>> {
    let cands = ack_candidates(a, arrival, window_us);
    if cands.is_empty() {
        return Ok(None);
    }
    let mut p = vec![0.0; a.mailboxes()];
    for &c in &cands {
        let f = a.forward(c)?.mailboxes(p.len());
        for (slot, x) in p.iter_mut().zip(f) {
            *slot += x / cands.len() as f64;
        }
    }
    Ok(Some(p))
}

/// How well the attack did over the messages it was run on.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AttackReport {
    /// Messages attacked.
    pub messages: usize,
    /// Fraction guessed right from timing alone.
    pub accuracy: f64,
    /// Fraction guessed right from timing and the ack's destination.
    pub accuracy_with_ack: f64,
    /// Mean probability the timing belief gives the true sender.
    pub mean_posterior_of_sender: f64,
    /// Clients that sent at least one packet (the a-priori candidates).
    pub active_senders: u32,
    /// Accuracy of a guess without the trace: 1 / active senders.
    pub baseline: f64,
    /// `accuracy / baseline`.
    pub advantage: f64,
    /// `accuracy_with_ack / baseline`.
    pub advantage_with_ack: f64,
}

/// Tallies guesses into an [`AttackReport`].
#[derive(Default)]
pub struct Tally {
    messages: usize,
    right: usize,
    right_with_ack: usize,
    posterior: f64,
}

impl Tally {
    /// Scores one message: the timing belief, the belief with the ack, and
    /// the true sender.
    pub fn add(&mut self, timing: &[(u32, f64)], with_ack: &[(u32, f64)], sender: u32) {
        self.messages += 1;
        self.right += usize::from(most_likely(timing) == Some(sender));
        self.right_with_ack += usize::from(most_likely(with_ack) == Some(sender));
        self.posterior += probability_of(timing, sender);
    }

    /// The report, against a baseline of `active_senders`.
    pub fn report(&self, active_senders: u32) -> AttackReport {
        let n = self.messages.max(1) as f64;
        let baseline = 1.0 / f64::from(active_senders.max(1));
        let accuracy = self.right as f64 / n;
        let accuracy_with_ack = self.right_with_ack as f64 / n;
        AttackReport {
            messages: self.messages,
            accuracy,
            accuracy_with_ack,
            mean_posterior_of_sender: self.posterior / n,
            active_senders,
            baseline,
            advantage: accuracy / baseline,
            advantage_with_ack: accuracy_with_ack / baseline,
        }
    }
}

/// Entropy in bits of a `(client, probability)` distribution.
pub fn entropy_of(dist: &[(u32, f64)]) -> f64 {
    entropy_bits(dist.iter().map(|x| x.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_likely_client_wins_and_ties_go_to_the_lowest_index() {
        assert_eq!(most_likely(&[]), None);
        assert_eq!(most_likely(&[(3, 0.2), (5, 0.7), (9, 0.1)]), Some(5));
        assert_eq!(most_likely(&[(3, 0.5), (5, 0.5)]), Some(3));
        assert_eq!(probability_of(&[(3, 0.5)], 4), 0.0);
    }

    #[test]
    fn the_ack_destination_reweighs_candidates_by_their_server() {
        // Clients 0 and 1 on server 0, client 2 on server 1; the ack went
        // to server 1 with probability 0.9.
        let dist = [(0, 0.4), (1, 0.4), (2, 0.2)];
        let servers = [0, 0, 1];
        let post = with_ack(&dist, &[0.1, 0.9], &servers);
        // 0.04, 0.04, 0.18 normalised.
        assert!((probability_of(&post, 2) - 0.18 / 0.26).abs() < 1e-12);
        assert_eq!(most_likely(&post), Some(2));
        // Evidence that contradicts every candidate is ignored.
        assert_eq!(with_ack(&dist, &[0.0, 0.0], &servers), dist.to_vec());
    }

    #[test]
    fn the_report_compares_with_the_baseline() {
        let mut t = Tally::default();
        t.add(&[(0, 0.9), (1, 0.1)], &[(0, 1.0)], 0);
        t.add(&[(0, 0.6), (1, 0.4)], &[(1, 1.0)], 1);
        let r = t.report(4);
        assert_eq!((r.messages, r.accuracy, r.accuracy_with_ack), (2, 0.5, 1.0));
        assert!((r.mean_posterior_of_sender - 0.65).abs() < 1e-12);
        assert_eq!((r.baseline, r.advantage), (0.25, 2.0));
    }
}
