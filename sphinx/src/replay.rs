//! The replay filter: remembers the replay tags of packets already processed,
//! for the relays (mixnodes and mailbox servers) that keep one.

use bloomfilter::Bloom;

use crate::ReplayTag;

/// False-positive rate of each of the two generations of a [`ReplayFilter`];
/// a lookup checks both, so a fresh packet is wrongly taken for a replay with
/// probability at most twice this, 1e-6.
pub const REPLAY_FILTER_FP_RATE: f64 = 5e-7;

/// Two Bloom filter generations of `capacity` tags each. Tags go into the
/// current generation; when it holds `capacity` tags the older one is
/// forgotten and a fresh one started. So the last `capacity` tags (and up to
/// `2 * capacity`) are always remembered, memory stays fixed (about 7.5 bytes
/// per unit of capacity in all), and the false-positive rate never exceeds
/// the one documented, however many packets arrive.
///
/// Record only the tags of packets that authenticate, so that garbage cannot
/// push real tags out.
pub struct ReplayFilter {
    current: Bloom<ReplayTag>,
    previous: Bloom<ReplayTag>,
    in_current: usize,
    capacity: usize,
    turnovers: u64,
}

impl ReplayFilter {
    /// An empty filter remembering at least `capacity` tags.
    pub fn new(capacity: usize) -> Result<Self, &'static str> {
        let capacity = capacity.max(1);
        Ok(ReplayFilter {
            current: generation(capacity)?,
            previous: generation(capacity)?,
            in_current: 0,
            capacity,
            turnovers: 0,
        })
    }

    /// Tags recorded in the current generation (it turns over at the
    /// capacity): with [`ReplayFilter::capacity`], how full the filter is.
    pub fn len(&self) -> usize {
        self.in_current
    }

    /// Whether no tag was recorded in the current generation.
    pub fn is_empty(&self) -> bool {
        self.in_current == 0
    }

    /// Tags a generation holds before the next one starts.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many times a full generation was replaced by a fresh one, each
    /// time forgetting the tags of the one before.
    pub fn turnovers(&self) -> u64 {
        self.turnovers
    }

    /// Records `tag`; true if it was (probably) seen before.
    pub fn check_and_insert(&mut self, tag: &ReplayTag) -> bool {
        if self.previous.check(tag) || self.current.check(tag) {
            return true;
        }
        if self.in_current >= self.capacity {
            // A fresh seed (SipHash key) per generation, so a peer cannot
            // reuse collisions it found in an earlier one.
            match generation(self.capacity) {
                Ok(fresh) => self.previous = std::mem::replace(&mut self.current, fresh),
                // The same parameters were accepted at start; should the
                // constructor ever refuse them, recycle the oldest generation.
                Err(_) => {
                    self.previous.clear();
                    std::mem::swap(&mut self.previous, &mut self.current);
                }
            }
            self.in_current = 0;
            self.turnovers += 1;
        }
        self.current.set(tag);
        self.in_current += 1;
        false
    }
}

fn generation(capacity: usize) -> Result<Bloom<ReplayTag>, &'static str> {
    let mut seed = [0u8; 32];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut seed);
    Bloom::new_for_fp_rate_with_seed(capacity, REPLAY_FILTER_FP_RATE, &seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(i: u32) -> ReplayTag {
        let mut t = [0u8; 32];
        t[..4].copy_from_slice(&i.to_be_bytes());
        ReplayTag(t)
    }

    #[test]
    fn a_tag_is_a_replay_the_second_time_only() {
        let mut f = ReplayFilter::new(100).unwrap();
        assert!(!f.check_and_insert(&tag(1)));
        assert!(f.check_and_insert(&tag(1)));
        assert!(!f.check_and_insert(&tag(2)));
    }

    // Filters are sized in the hundreds below: the bloomfilter crate derives
    // its bit positions by double hashing, and in a filter of a few hundred
    // bits an unlucky second hash cycles through few positions, so tiny
    // filters show false positives far above the configured rate (real
    // filters hold millions of bits). Fresh tags may still be false
    // positives now and then; remembered tags are never missed.

    #[test]
    fn the_last_capacity_tags_survive_rotation_and_older_ones_are_forgotten() {
        let n: u32 = 500;
        let mut f = ReplayFilter::new(n as usize).unwrap();
        let mut false_positives = 0;
        for i in 0..n {
            false_positives += usize::from(f.check_and_insert(&tag(i)));
        }
        assert_eq!(f.turnovers(), 0, "full, but not turned over yet");
        // Rotates: tags 0..n move to the previous generation, still known.
        for i in n..2 * n {
            false_positives += usize::from(f.check_and_insert(&tag(i)));
        }
        assert!(false_positives <= 2, "{false_positives} false positives");
        assert_eq!(f.turnovers(), 1);
        for i in 0..2 * n {
            assert!(f.check_and_insert(&tag(i)), "tag {i} forgotten too early");
        }
        // Another rotation drops 0..n.
        for i in 2 * n..3 * n + 1 {
            let _ = f.check_and_insert(&tag(i));
        }
        let forgotten = (0..n).filter(|i| !f.check_and_insert(&tag(*i))).count();
        assert!(
            forgotten >= 495,
            "only {forgotten} of {n} old tags forgotten"
        );
    }

    #[test]
    fn replay_filter_stays_bounded_and_remembers_the_last_generation() {
        let mut filter = ReplayFilter::new(200).unwrap();
        let mut false_positives = 0;
        for i in 0..200 {
            false_positives += usize::from(filter.check_and_insert(&tag(i)));
        }
        assert!(filter.check_and_insert(&tag(0)));
        for i in 200..400 {
            false_positives += usize::from(filter.check_and_insert(&tag(i)));
        }
        assert!(false_positives <= 2, "{false_positives} false positives");
        // The first generation rotated out of `current` but is still checked.
        assert!(filter.previous.check(&tag(0)));
        assert!(filter.check_and_insert(&tag(0)));
        assert!(filter.check_and_insert(&tag(399)));
        assert!(filter.in_current <= filter.capacity);
    }
}
