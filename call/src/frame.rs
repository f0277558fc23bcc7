//! Per-frame end-to-end encryption, in the manner of SFrame (RFC 9605):
//! each cell is one AEAD frame under the direction's traffic key.
//!
//! ```text
//! cell (CELL_LEN = 448 bytes) =
//!   version (1) = 1 || key epoch (u32 BE) || frame counter (u64 BE)   -- header, authenticated as AAD
//!   || ChaCha20-Poly1305 ciphertext of the plaintext (419)            -- see crate::cell for its layout
//!   || tag (16)
//! nonce = key epoch (u32 BE) || frame counter (u64 BE)
//! ```
//!
//! The counter counts every cell a direction ever sends (it does not
//! restart with an epoch), so a (key, nonce) pair is never used twice; the
//! sealer refuses to go past `u64::MAX - 1` or epoch `u32::MAX`.
//!
//! The sender moves to the next epoch after [`RATCHET_CELLS`] cells or
//! [`RATCHET_INTERVAL`] of media time, whichever comes first. The receiver
//! follows up to [`MAX_EPOCH_SKIP`] epochs ahead (only once a cell of the
//! new epoch authenticates), keeps the previous epoch's key for
//! [`PREVIOUS_EPOCH_GRACE`] cells of the new one (late, reordered cells),
//! and refuses anything older. Replays are caught by a sliding window of
//! [`REPLAY_WINDOW`] counters; anything older than the window is refused.

use std::time::Duration;

use zeroize::Zeroizing;

use crate::crypto::{self, NONCE_LEN, TAG_LEN};
use crate::keys::TrafficKey;
use crate::{Error, Result};

/// Bytes of a sealed cell, as this crate emits and accepts them.
pub const CELL_LEN: usize = 448;
/// The cell format version.
pub const FRAME_VERSION: u8 = 1;
/// Bytes of the cleartext header.
pub const HEADER_LEN: usize = 1 + 4 + 8;
/// Bytes of plaintext one cell carries.
pub const PLAINTEXT_LEN: usize = CELL_LEN - HEADER_LEN - TAG_LEN;
/// Cells per key epoch.
pub const RATCHET_CELLS: u64 = 3000;
/// Media time per key epoch.
pub const RATCHET_INTERVAL: Duration = Duration::from_secs(30);
/// How many epochs ahead of its current one a receiver follows.
pub const MAX_EPOCH_SKIP: u32 = 3;
/// Cells of a new epoch after which the previous epoch's key is erased.
pub const PREVIOUS_EPOCH_GRACE: u64 = 64;
/// Counters the replay window spans.
pub const REPLAY_WINDOW: u64 = 128;

/// The last counter a sealer will use.
const LAST_COUNTER: u64 = u64::MAX - 1;

/// The plaintext of one cell.
pub type Plaintext = Zeroizing<[u8; PLAINTEXT_LEN]>;

fn nonce(epoch: u32, counter: u64) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..4].copy_from_slice(&epoch.to_be_bytes());
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    nonce
}

fn header(epoch: u32, counter: u64) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0] = FRAME_VERSION;
    header[1..5].copy_from_slice(&epoch.to_be_bytes());
    header[5..].copy_from_slice(&counter.to_be_bytes());
    header
}

/// Seals the cells of one direction.
#[derive(Debug)]
pub struct FrameSealer {
    key: TrafficKey,
    next_counter: u64,
    epoch_first_counter: u64,
    epoch_started: Option<Duration>,
}

impl FrameSealer {
    /// A sealer starting at counter 0 with `key` (the direction's send key).
    pub fn new(key: TrafficKey) -> Self {
        FrameSealer {
            key,
            next_counter: 0,
            epoch_first_counter: 0,
            epoch_started: None,
        }
    }

    /// The counter the next cell will carry.
    pub fn next_counter(&self) -> u64 {
        self.next_counter
    }

    /// The current key epoch.
    pub fn epoch(&self) -> u32 {
        self.key.epoch()
    }

    /// Seals `plaintext` into one cell at media time `now`, first moving
    /// to the next epoch if this one is used up.
    pub fn seal(
        &mut self,
        now: Duration,
        plaintext: &[u8; PLAINTEXT_LEN],
    ) -> Result<[u8; CELL_LEN]> {
        if self.next_counter > LAST_COUNTER {
            return Err(Error::CounterExhausted);
        }
        let started = *self.epoch_started.get_or_insert(now);
        if self.next_counter - self.epoch_first_counter >= RATCHET_CELLS
            || now.saturating_sub(started) >= RATCHET_INTERVAL
        {
            self.key.ratchet()?;
            self.epoch_first_counter = self.next_counter;
            self.epoch_started = Some(now);
        }
        let counter = self.next_counter;
        let epoch = self.key.epoch();
        let header = header(epoch, counter);
        let mut cell = [0u8; CELL_LEN];
        cell[..HEADER_LEN].copy_from_slice(&header);
        let body = &mut cell[HEADER_LEN..HEADER_LEN + PLAINTEXT_LEN];
        body.copy_from_slice(plaintext);
        let tag = crypto::seal(self.key.key(), &nonce(epoch, counter), &header, body)?;
        cell[HEADER_LEN + PLAINTEXT_LEN..].copy_from_slice(&tag);
        self.next_counter = counter + 1;
        Ok(cell)
    }

    #[cfg(test)]
    pub(crate) fn set_next_counter(&mut self, counter: u64) {
        self.next_counter = counter;
        self.epoch_first_counter = counter;
    }
}

/// What a cell's cleartext header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Key epoch.
    pub epoch: u32,
    /// Frame counter.
    pub counter: u64,
}

impl FrameHeader {
    /// Parses the header of `cell`, which must be exactly [`CELL_LEN`] bytes.
    pub fn parse(cell: &[u8]) -> Result<Self> {
        if cell.len() != CELL_LEN {
            return Err(Error::WrongCellLength {
                got: cell.len(),
                expected: CELL_LEN,
            });
        }
        if cell[0] != FRAME_VERSION {
            return Err(Error::UnsupportedVersion(cell[0]));
        }
        let mut epoch = [0u8; 4];
        epoch.copy_from_slice(&cell[1..5]);
        let mut counter = [0u8; 8];
        counter.copy_from_slice(&cell[5..HEADER_LEN]);
        Ok(FrameHeader {
            epoch: u32::from_be_bytes(epoch),
            counter: u64::from_be_bytes(counter),
        })
    }
}

/// Sliding window over the counters already accepted.
#[derive(Debug, Default)]
struct ReplayWindow {
    /// Highest counter accepted, if any.
    highest: Option<u64>,
    /// Bit i set: counter `highest - i` was accepted.
    seen: u128,
}

impl ReplayWindow {
    fn check(&self, counter: u64) -> Result<()> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if counter > highest {
            return Ok(());
        }
        let age = highest - counter;
        if age >= REPLAY_WINDOW {
            return Err(Error::TooOld { counter, highest });
        }
        if self.seen & (1u128 << age) != 0 {
            return Err(Error::Replay { counter });
        }
        Ok(())
    }

    fn accept(&mut self, counter: u64) {
        match self.highest {
            None => {
                self.highest = Some(counter);
                self.seen = 1;
            }
            Some(highest) if counter > highest => {
                let shift = counter - highest;
                self.seen = if shift >= REPLAY_WINDOW {
                    0
                } else {
                    self.seen << shift
                };
                self.seen |= 1;
                self.highest = Some(counter);
            }
            Some(highest) => self.seen |= 1u128 << (highest - counter),
        }
    }
}

/// Opens the cells of one direction: bounded state (two keys, one window).
#[derive(Debug)]
pub struct FrameOpener {
    current: TrafficKey,
    previous: Option<TrafficKey>,
    accepted_in_current: u64,
    window: ReplayWindow,
}

impl FrameOpener {
    /// An opener with `key` (the direction's receive key).
    pub fn new(key: TrafficKey) -> Self {
        FrameOpener {
            current: key,
            previous: None,
            accepted_in_current: 0,
            window: ReplayWindow::default(),
        }
    }

    /// The newest epoch a cell has authenticated under.
    pub fn epoch(&self) -> u32 {
        self.current.epoch()
    }

    /// Authenticates and decrypts `cell`. Nothing changes unless it
    /// authenticates.
    pub fn open(&mut self, cell: &[u8]) -> Result<(FrameHeader, Plaintext)> {
        let header = FrameHeader::parse(cell)?;
        self.window.check(header.counter)?;
        let current = self.current.epoch();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&cell[HEADER_LEN + PLAINTEXT_LEN..]);
        let mut plaintext = Zeroizing::new([0u8; PLAINTEXT_LEN]);
        plaintext.copy_from_slice(&cell[HEADER_LEN..HEADER_LEN + PLAINTEXT_LEN]);
        let aad = &cell[..HEADER_LEN];
        let nonce = nonce(header.epoch, header.counter);

        if header.epoch == current {
            crypto::open(self.current.key(), &nonce, aad, plaintext.as_mut(), &tag)?;
            self.accepted_in_current += 1;
        } else if header.epoch < current {
            let previous = self
                .previous
                .as_ref()
                .filter(|p| p.epoch() == header.epoch)
                .ok_or(Error::StaleEpoch {
                    epoch: header.epoch,
                    current,
                })?;
            crypto::open(previous.key(), &nonce, aad, plaintext.as_mut(), &tag)?;
        } else {
            if header.epoch - current > MAX_EPOCH_SKIP {
                return Err(Error::EpochTooFarAhead {
                    epoch: header.epoch,
                    current,
                });
            }
            let mut candidate = self.current.duplicate();
            let mut before = None;
            while candidate.epoch() < header.epoch {
                before = Some(candidate.duplicate());
                candidate.ratchet()?;
            }
            crypto::open(candidate.key(), &nonce, aad, plaintext.as_mut(), &tag)?;
            // Only the epoch just before the new one may still have cells
            // in flight; older keys are erased as they drop here.
            self.previous = before;
            self.current = candidate;
            self.accepted_in_current = 1;
        }
        if self.accepted_in_current >= PREVIOUS_EPOCH_GRACE {
            self.previous = None;
        }
        self.window.accept(header.counter);
        Ok((header, plaintext))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::tests::pair;

    fn plaintext(byte: u8) -> [u8; PLAINTEXT_LEN] {
        [byte; PLAINTEXT_LEN]
    }

    fn ends() -> (FrameSealer, FrameOpener) {
        let (caller, callee) = pair();
        (
            FrameSealer::new(caller.send),
            FrameOpener::new(callee.receive),
        )
    }

    #[test]
    fn cells_round_trip_with_the_header_in_clear() {
        let (mut sealer, mut opener) = ends();
        for i in 0..10u8 {
            let cell = sealer.seal(Duration::ZERO, &plaintext(i)).unwrap();
            assert_eq!(cell.len(), CELL_LEN);
            assert_eq!(
                FrameHeader::parse(&cell).unwrap(),
                FrameHeader {
                    epoch: 0,
                    counter: u64::from(i)
                }
            );
            let (header, opened) = opener.open(&cell).unwrap();
            assert_eq!(header.counter, u64::from(i));
            assert_eq!(*opened, plaintext(i));
        }
    }

    #[test]
    fn any_altered_byte_fails_to_authenticate() {
        let (mut sealer, _) = ends();
        let cell = sealer.seal(Duration::ZERO, &plaintext(1)).unwrap();
        for position in [
            1,
            4,
            5,
            12,
            13,
            200,
            CELL_LEN - 17,
            CELL_LEN - 16,
            CELL_LEN - 1,
        ] {
            let (_, mut opener) = ends();
            let mut altered = cell;
            altered[position] ^= 0x40;
            let err = opener.open(&altered).unwrap_err();
            assert!(
                matches!(err, Error::Decrypt | Error::EpochTooFarAhead { .. }),
                "byte {position}: {err}"
            );
            // The untouched cell still opens: a forgery changed nothing.
            opener.open(&cell).unwrap();
        }
        let (_, mut opener) = ends();
        let mut wrong_version = cell;
        wrong_version[0] = 2;
        assert!(matches!(
            opener.open(&wrong_version),
            Err(Error::UnsupportedVersion(2))
        ));
        assert!(matches!(
            opener.open(&cell[..CELL_LEN - 1]),
            Err(Error::WrongCellLength { got: 447, .. })
        ));
    }

    #[test]
    fn the_wrong_direction_key_does_not_open() {
        let (caller, _) = pair();
        let mut sealer = FrameSealer::new(caller.send);
        let mut opener = FrameOpener::new(caller.receive);
        let cell = sealer.seal(Duration::ZERO, &plaintext(0)).unwrap();
        assert!(matches!(opener.open(&cell), Err(Error::Decrypt)));
    }

    #[test]
    fn replays_are_refused_and_reordering_is_not() {
        let (mut sealer, mut opener) = ends();
        let cells: Vec<_> = (0..200u8)
            .map(|i| sealer.seal(Duration::ZERO, &plaintext(i)).unwrap())
            .collect();
        opener.open(&cells[5]).unwrap();
        opener.open(&cells[3]).unwrap();
        opener.open(&cells[4]).unwrap();
        assert!(matches!(
            opener.open(&cells[5]),
            Err(Error::Replay { counter: 5 })
        ));
        assert!(matches!(opener.open(&cells[3]), Err(Error::Replay { .. })));
        opener.open(&cells[199]).unwrap();
        // 199 - 71 = 128: just outside the window.
        assert!(matches!(
            opener.open(&cells[71]),
            Err(Error::TooOld {
                counter: 71,
                highest: 199
            })
        ));
        opener.open(&cells[72]).unwrap();
        assert!(matches!(opener.open(&cells[72]), Err(Error::Replay { .. })));
    }

    #[test]
    fn epochs_advance_by_count_and_by_time_and_the_receiver_follows() {
        let (mut sealer, mut opener) = ends();
        let mut last_of_epoch_0 = None;
        for i in 0..RATCHET_CELLS + 1 {
            let cell = sealer.seal(Duration::ZERO, &plaintext(0)).unwrap();
            if i + 1 == RATCHET_CELLS {
                last_of_epoch_0 = Some(cell);
            } else {
                opener.open(&cell).unwrap();
            }
        }
        assert_eq!(sealer.epoch(), 1);
        assert_eq!(opener.epoch(), 1);
        // A late cell of the previous epoch is still accepted in the grace...
        opener.open(&last_of_epoch_0.unwrap()).unwrap();
        // ...and the time rule moves on without waiting for the count.
        let cell = sealer.seal(RATCHET_INTERVAL, &plaintext(0)).unwrap();
        assert_eq!(sealer.epoch(), 2);
        opener.open(&cell).unwrap();
        assert_eq!(opener.epoch(), 2);
    }

    #[test]
    fn the_previous_epoch_is_refused_after_its_grace() {
        let (mut sealer, mut opener) = ends();
        let late = sealer.seal(Duration::ZERO, &plaintext(0)).unwrap();
        let mut now = RATCHET_INTERVAL;
        for _ in 0..PREVIOUS_EPOCH_GRACE {
            opener
                .open(&sealer.seal(now, &plaintext(0)).unwrap())
                .unwrap();
            now += Duration::from_millis(1);
        }
        assert!(matches!(
            opener.open(&late),
            Err(Error::StaleEpoch {
                epoch: 0,
                current: 1
            })
        ));
    }

    #[test]
    fn the_receiver_skips_a_few_lost_epochs_but_not_many() {
        let (caller, callee) = pair();
        let mut sealer = FrameSealer::new(caller.send);
        let mut opener = FrameOpener::new(callee.receive);
        let mut now = Duration::ZERO;
        // Every cell lost for MAX_EPOCH_SKIP epochs.
        sealer.seal(now, &plaintext(0)).unwrap();
        for _ in 0..MAX_EPOCH_SKIP {
            now += RATCHET_INTERVAL;
            sealer.seal(now, &plaintext(0)).unwrap();
        }
        assert_eq!(sealer.epoch(), MAX_EPOCH_SKIP);
        opener
            .open(&sealer.seal(now, &plaintext(0)).unwrap())
            .unwrap();
        assert_eq!(opener.epoch(), MAX_EPOCH_SKIP);
        for _ in 0..=MAX_EPOCH_SKIP {
            now += RATCHET_INTERVAL;
            sealer.seal(now, &plaintext(0)).unwrap();
        }
        assert!(matches!(
            opener.open(&sealer.seal(now, &plaintext(0)).unwrap()),
            Err(Error::EpochTooFarAhead { .. })
        ));
    }

    #[test]
    fn the_sealer_refuses_to_reuse_a_nonce() {
        let (mut sealer, mut opener) = ends();
        sealer.set_next_counter(LAST_COUNTER);
        let cell = sealer.seal(Duration::ZERO, &plaintext(0)).unwrap();
        opener.open(&cell).unwrap();
        assert!(matches!(
            sealer.seal(Duration::ZERO, &plaintext(0)),
            Err(Error::CounterExhausted)
        ));
    }
}
