//! A fixed-depth jitter buffer: orders frames by sequence number and
//! releases one per frame interval, a fixed delay after the first frame
//! arrived. A frame that is not there at its playout time is released as
//! missing (for FEC or concealment); one arriving after it is late and
//! dropped. Bounded: it holds at most `capacity` frames ahead of playout.
//!
//! The schedule is anchored once, on the first frame (`playout(seq) =
//! first arrival + depth + (seq − first seq) × interval`), and never moves:
//! no adaptive depth, no clock-drift correction. A call long enough for
//! the two clocks to drift by the depth would need both.

use std::collections::BTreeMap;
use std::time::Duration;

/// What became of a pushed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// Held for playout.
    Accepted,
    /// Its playout time has passed: dropped.
    Late,
    /// Already held: dropped.
    Duplicate,
    /// Too far ahead of playout to hold: dropped.
    TooFarAhead,
}

/// A released frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Due<T> {
    /// Its sequence number.
    pub seq: u32,
    /// Its playout time.
    pub at: Duration,
    /// The frame, or `None` if it did not arrive in time.
    pub item: Option<T>,
}

/// Jitter buffer of frames of type `T`.
#[derive(Debug)]
pub struct JitterBuffer<T> {
    interval: Duration,
    depth: Duration,
    capacity: u32,
    /// Playout time of sequence number `anchor_seq`.
    anchor: Option<(Duration, u32)>,
    next: u32,
    items: BTreeMap<u32, T>,
}

impl<T> JitterBuffer<T> {
    /// A buffer releasing one frame per `interval`, `depth` after the first
    /// arrival, holding at most `capacity` frames.
    pub fn new(interval: Duration, depth: Duration, capacity: u32) -> Self {
        JitterBuffer {
            interval,
            depth,
            capacity: capacity.max(1),
            anchor: None,
            next: 0,
            items: BTreeMap::new(),
        }
    }

    /// The playout time of `seq`, once the schedule is anchored.
    pub fn playout_time(&self, seq: u32) -> Option<Duration> {
        let (at, anchor_seq) = self.anchor?;
        if seq >= anchor_seq {
            at.checked_add(self.interval.checked_mul(seq - anchor_seq)?)
        } else {
            Some(at.saturating_sub(self.interval.checked_mul(anchor_seq - seq)?))
        }
    }

    /// The next sequence number to be released.
    pub fn next_seq(&self) -> u32 {
        self.next
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no frame is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Offers frame `seq` arriving at `now`.
    pub fn push(&mut self, now: Duration, seq: u32, item: T) -> Push {
        if self.anchor.is_none() {
            self.anchor = Some((now.saturating_add(self.depth), seq));
            // A call starts at sequence 0; frames before the first one to
            // arrive are released as missing, unless that would be a
            // burst longer than the buffer (joining a stream late).
            if seq > self.capacity {
                self.next = seq;
            }
        }
        if seq < self.next {
            return Push::Late;
        }
        if seq - self.next >= self.capacity {
            return Push::TooFarAhead;
        }
        if self.items.contains_key(&seq) {
            return Push::Duplicate;
        }
        self.items.insert(seq, item);
        Push::Accepted
    }

    /// The frame held for `seq`, if any (e.g. the next frame, for FEC).
    pub fn peek(&self, seq: u32) -> Option<&T> {
        self.items.get(&seq)
    }

    /// Frames held for playout (received, not yet released).
    pub fn held(&self) -> usize {
        self.items.len()
    }

    /// When the next frame is due, once anchored.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.playout_time(self.next)
    }

    /// Releases the next frame if its playout time has come.
    pub fn poll(&mut self, now: Duration) -> Option<Due<T>> {
        let at = self.playout_time(self.next)?;
        if now < at {
            return None;
        }
        let seq = self.next;
        self.next = seq.checked_add(1)?;
        Some(Due {
            seq,
            at,
            item: self.items.remove(&seq),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn frames_are_reordered_and_released_on_schedule() {
        let mut jb = JitterBuffer::new(20 * MS, 60 * MS, 16);
        assert_eq!(jb.poll(Duration::from_secs(5)), None, "not anchored yet");
        assert_eq!(jb.push(100 * MS, 1, "b"), Push::Accepted);
        assert_eq!(jb.push(105 * MS, 0, "a"), Push::Accepted);
        assert_eq!(jb.push(106 * MS, 3, "d"), Push::Accepted);
        assert_eq!(jb.push(107 * MS, 3, "d"), Push::Duplicate);
        // Seq 1 plays at 100 + 60 ms; seq 0 one interval before.
        assert_eq!(jb.playout_time(1), Some(160 * MS));
        assert_eq!(jb.poll(139 * MS), None);
        let due = jb.poll(140 * MS).unwrap();
        assert_eq!((due.seq, due.item), (0, Some("a")));
        assert_eq!(jb.poll(159 * MS), None);
        assert_eq!(jb.poll(160 * MS).unwrap().item, Some("b"));
        assert_eq!(jb.peek(3), Some(&"d"));
        let missing = jb.poll(180 * MS).unwrap();
        assert_eq!((missing.seq, missing.item), (2, None));
        assert_eq!(jb.push(181 * MS, 2, "c"), Push::Late);
        assert_eq!(jb.poll(200 * MS).unwrap().item, Some("d"));
        assert!(jb.is_empty());
    }

    #[test]
    fn the_buffer_is_bounded() {
        let mut jb = JitterBuffer::new(20 * MS, 60 * MS, 4);
        assert_eq!(jb.push(Duration::ZERO, 0, ()), Push::Accepted);
        assert_eq!(jb.push(Duration::ZERO, 3, ()), Push::Accepted);
        assert_eq!(jb.push(Duration::ZERO, 4, ()), Push::TooFarAhead);
        assert_eq!(jb.push(Duration::ZERO, u32::MAX, ()), Push::TooFarAhead);
        assert_eq!(jb.len(), 2);
    }

    #[test]
    fn a_late_joiner_starts_at_its_first_frame() {
        let mut jb = JitterBuffer::new(20 * MS, 60 * MS, 8);
        jb.push(Duration::ZERO, 1000, 'x');
        assert_eq!(jb.next_seq(), 1000);
        assert_eq!(jb.poll(60 * MS).unwrap().item, Some('x'));
    }
}
