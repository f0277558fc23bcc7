//! The bounded buffers between a device's thread and the call.

use std::collections::VecDeque;
use std::sync::Mutex;

use bastet_call::I420Frame;

use crate::DeviceStats;

/// Samples between an audio device's callback and the call, bounded.
///
/// The device side [`push`](Self::push)es what it captured or
/// [`pop_into`](Self::pop_into)s what it plays; the call side does the
/// other. Beyond `capacity` the oldest samples are dropped; a pop that
/// finds too few fills the rest with silence. Both are counted. A poisoned
/// lock (a panic on the other side) is taken over, never propagated: the
/// worst it can hold is a half-written block of samples.
#[derive(Debug)]
pub struct AudioRing {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Inner {
    samples: VecDeque<i16>,
    stats: DeviceStats,
    /// Pops before the first sample arrived are the device starting up,
    /// not missing samples.
    started: bool,
}

impl AudioRing {
    /// A ring holding at most `capacity` samples (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        AudioRing {
            inner: Mutex::new(Inner {
                samples: VecDeque::with_capacity(capacity),
                ..Inner::default()
            }),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends `samples`, dropping the oldest beyond the capacity.
    pub fn push(&self, samples: impl IntoIterator<Item = i16>) {
        let mut inner = self.lock();
        inner.started = true;
        for s in samples {
            if inner.samples.len() == self.capacity {
                inner.samples.pop_front();
                inner.stats.dropped += 1;
            }
            inner.samples.push_back(s);
            inner.stats.delivered += 1;
        }
    }

    /// Takes the oldest samples into `out`; what is missing is silence.
    /// Returns how many samples were real.
    pub fn pop_into(&self, out: &mut [i16]) -> usize {
        let mut inner = self.lock();
        let real = out.len().min(inner.samples.len());
        for (slot, s) in out.iter_mut().zip(inner.samples.drain(..real)) {
            *slot = s;
        }
        out[real..].fill(0);
        if inner.started {
            inner.stats.missing += (out.len() - real) as u64;
        }
        real
    }

    /// Drops the oldest samples until at most `keep` are left (counted):
    /// how a consumer keeps the latency bounded when the producer's clock
    /// runs fast.
    pub fn trim_to(&self, keep: usize) {
        let mut inner = self.lock();
        let excess = inner.samples.len().saturating_sub(keep);
        inner.samples.drain(..excess);
        inner.stats.dropped += excess as u64;
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.lock().samples.len()
    }

    /// Whether no sample is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts one error the device reported.
    pub fn count_error(&self) {
        self.lock().stats.errors += 1;
    }

    /// The counters so far.
    pub fn stats(&self) -> DeviceStats {
        self.lock().stats
    }
}

/// The newest picture from a camera's thread: one slot, a newer picture
/// replaces an older one nobody took (counted as dropped).
#[derive(Debug, Default)]
pub struct LatestPicture {
    inner: Mutex<(Option<I420Frame>, DeviceStats)>,
}

impl LatestPicture {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<I420Frame>, DeviceStats)> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Puts `picture` in the slot.
    pub fn put(&self, picture: I420Frame) {
        let mut inner = self.lock();
        inner.1.delivered += 1;
        if inner.0.replace(picture).is_some() {
            inner.1.dropped += 1;
        }
    }

    /// Takes the picture, if a new one came; counts a miss otherwise.
    pub fn take(&self) -> Option<I420Frame> {
        let mut inner = self.lock();
        let picture = inner.0.take();
        if picture.is_none() {
            inner.1.missing += 1;
        }
        picture
    }

    /// Counts one error the camera reported.
    pub fn count_error(&self) {
        self.lock().1.errors += 1;
    }

    /// The counters so far.
    pub fn stats(&self) -> DeviceStats {
        self.lock().1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_ring_drops_the_oldest_and_counts_them() {
        let ring = AudioRing::new(4);
        ring.push([1, 2, 3, 4, 5, 6]);
        let mut out = [0; 4];
        assert_eq!(ring.pop_into(&mut out), 4);
        assert_eq!(out, [3, 4, 5, 6]);
        let stats = ring.stats();
        assert_eq!((stats.delivered, stats.dropped, stats.missing), (6, 2, 0));
    }

    #[test]
    fn a_short_ring_pads_with_silence_and_counts_it_once_started() {
        let ring = AudioRing::new(8);
        let mut out = [9; 3];
        // Before the device delivered anything: silence, not counted.
        assert_eq!(ring.pop_into(&mut out), 0);
        assert_eq!(out, [0, 0, 0]);
        assert_eq!(ring.stats().missing, 0);
        ring.push([7]);
        let mut out = [9; 3];
        assert_eq!(ring.pop_into(&mut out), 1);
        assert_eq!(out, [7, 0, 0]);
        assert_eq!(ring.stats().missing, 2);
    }

    #[test]
    fn trimming_keeps_the_newest() {
        let ring = AudioRing::new(10);
        ring.push(0..10);
        ring.trim_to(3);
        let mut out = [0; 3];
        ring.pop_into(&mut out);
        assert_eq!(out, [7, 8, 9]);
        assert_eq!(ring.stats().dropped, 7);
        assert!(ring.is_empty());
    }

    #[test]
    fn the_latest_picture_replaces_one_not_taken() {
        let slot = LatestPicture::default();
        assert!(slot.take().is_none());
        let black = I420Frame::black(4, 4).unwrap();
        let white = I420Frame::new(4, 4, vec![255; black.data().len()]).unwrap();
        slot.put(black);
        slot.put(white.clone());
        assert_eq!(slot.take().unwrap().data(), white.data());
        let stats = slot.stats();
        assert_eq!((stats.delivered, stats.dropped, stats.missing), (2, 1, 1));
    }
}
