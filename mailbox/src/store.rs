//! The message store: mailboxes and their messages in RocksDB.
//!
//! Layout: column family `mailboxes` maps `mailbox_id (32)` to
//! `owner key (32) || next_seq (u64 BE)`; column family `messages` maps
//! `mailbox_id (32) || seq (u64 BE)` to `received_at_ms (u64 BE) || payload`.
//! Every write is synced to disk before it is reported done. Messages are
//! only ever deleted as a prefix (`seq <= upto`), so a mailbox's live
//! messages are exactly the seqs from its lowest remaining one to
//! `next_seq - 1`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use bastet_sphinx::MailboxId;
use rocksdb::properties::PropName;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, Options, ReadOptions, WriteBatch, WriteOptions,
};

use crate::{Error, Result, StoredMessage};

const MAILBOXES: &str = "mailboxes";
const MESSAGES: &str = "messages";
/// The column families that hold data (the default one stays empty).
pub(crate) const COLUMN_FAMILIES: [&str; 2] = [MAILBOXES, MESSAGES];
/// The first message of every mailbox has this seq, so `after=0` lists all.
const FIRST_SEQ: u64 = 1;

/// What became of one delivered payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Durably stored under `seq`.
    Stored {
        /// Its position in the mailbox.
        seq: u64,
    },
    /// No such mailbox here: dropped.
    UnknownMailbox,
    /// The mailbox holds its quota of messages: dropped.
    OverQuota,
}

#[derive(Clone, Copy, Debug)]
struct Meta {
    owner: [u8; 32],
    next_seq: u64,
    /// Lowest seq not yet deleted (== next_seq when empty).
    first_seq: u64,
}

impl Meta {
    fn count(&self) -> u64 {
        self.next_seq - self.first_seq
    }

    fn record(&self) -> [u8; 40] {
        let mut v = [0u8; 40];
        v[..32].copy_from_slice(&self.owner);
        v[32..].copy_from_slice(&self.next_seq.to_be_bytes());
        v
    }
}

/// Limits the store enforces.
#[derive(Clone, Copy, Debug)]
pub struct StoreLimits {
    /// Most messages one mailbox holds; more are dropped.
    pub quota_messages: u64,
    /// Most mailboxes registered on this server.
    pub max_mailboxes: u64,
}

/// The mailboxes of this server. Every method blocks on disk: call it from
/// a blocking thread, not from async code.
pub struct Store {
    db: DB,
    limits: StoreLimits,
    /// Mirror of the `mailboxes` column family plus each mailbox's lowest
    /// live seq; its lock also serialises writers.
    meta: Mutex<HashMap<MailboxId, Meta>>,
}

fn message_key(mailbox: &MailboxId, seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(mailbox.as_bytes());
    k[32..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn corrupt(why: String) -> Error {
    Error::CorruptStore(why)
}

fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

/// Bytes of one memtable; a column family holds at most two (one being
/// flushed), and all of them together at most four.
const MEMTABLE_BYTES: usize = 8 << 20;

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path, limits: StoreLimits) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Memory in memtables is bounded and small: every stored message
        // and every deletion (a tombstone) stays in a memtable until it is
        // flushed, and RocksDB's default of 64 MiB per column family grew a
        // server's memory for an hour under steady traffic (the soak).
        let cf_options = || {
            let mut o = Options::default();
            o.set_write_buffer_size(MEMTABLE_BYTES);
            o.set_max_write_buffer_number(2);
            o
        };
        opts.set_db_write_buffer_size(4 * MEMTABLE_BYTES);
        let cfs = [MAILBOXES, MESSAGES].map(|n| ColumnFamilyDescriptor::new(n, cf_options()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let mut meta = HashMap::new();
        {
            let mailboxes = cf(&db, MAILBOXES)?;
            let messages = cf(&db, MESSAGES)?;
            for entry in db.iterator_cf(mailboxes, rocksdb::IteratorMode::Start) {
                let (k, v) = entry?;
                let id = <[u8; 32]>::try_from(&k[..])
                    .map(MailboxId)
                    .map_err(|_| corrupt(format!("mailbox key of {} bytes", k.len())))?;
                let (owner, next) = v
                    .split_first_chunk::<32>()
                    .and_then(|(o, rest)| {
                        Some((*o, u64::from_be_bytes(<[u8; 8]>::try_from(rest).ok()?)))
                    })
                    .ok_or_else(|| corrupt(format!("mailbox record of {} bytes", v.len())))?;
                let mut it = db.raw_iterator_cf(messages);
                it.seek(message_key(&id, 0));
                let first_seq = match it.key() {
                    Some(k) if k.len() == 40 && k[..32] == id.0 => u64::from_be_bytes(
                        k[32..]
                            .try_into()
                            .map_err(|_| corrupt("message key".into()))?,
                    ),
                    _ => next,
                };
                it.status()?;
                meta.insert(
                    id,
                    Meta {
                        owner,
                        next_seq: next,
                        first_seq: first_seq.min(next),
                    },
                );
            }
        }
        Ok(Store {
            db,
            limits,
            meta: Mutex::new(meta),
        })
    }

    fn meta(&self) -> std::sync::MutexGuard<'_, HashMap<MailboxId, Meta>> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the mailbox owned by `owner` (an Ed25519 public key).
    /// Returns its id and whether it is new; registering again is a no-op.
    pub fn register(&self, owner: &[u8; 32]) -> Result<(MailboxId, bool)> {
        let id = MailboxId::from_owner_key(owner);
        let mut meta = self.meta();
        if meta.contains_key(&id) {
            return Ok((id, false));
        }
        if meta.len() as u64 >= self.limits.max_mailboxes {
            return Err(Error::TooManyMailboxes(self.limits.max_mailboxes));
        }
        let m = Meta {
            owner: *owner,
            next_seq: FIRST_SEQ,
            first_seq: FIRST_SEQ,
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, MAILBOXES)?, id.as_bytes(), m.record());
        self.db.write_opt(batch, &synced())?;
        meta.insert(id, m);
        Ok((id, true))
    }

    /// The owner key of `mailbox`, if registered.
    pub fn owner(&self, mailbox: &MailboxId) -> Option<[u8; 32]> {
        self.meta().get(mailbox).map(|m| m.owner)
    }

    /// Mailboxes registered.
    pub fn mailboxes(&self) -> u64 {
        self.meta().len() as u64
    }

    /// Messages held in `mailbox`, if registered.
    pub fn message_count(&self, mailbox: &MailboxId) -> Option<u64> {
        self.meta().get(mailbox).map(Meta::count)
    }

    /// Stores each `(mailbox, payload)` that has a registered mailbox under
    /// its quota, in one synced write. On error nothing was stored.
    pub fn deliver(
        &self,
        items: &[(MailboxId, Vec<u8>)],
        received_at_ms: u64,
    ) -> Result<Vec<Delivery>> {
        let mut meta = self.meta();
        let mut updated: HashMap<MailboxId, Meta> = HashMap::new();
        let mut batch = WriteBatch::default();
        let mut outcomes = Vec::with_capacity(items.len());
        let messages = cf(&self.db, MESSAGES)?;
        let mailboxes = cf(&self.db, MAILBOXES)?;
        for (mailbox, payload) in items {
            let Some(m) = updated.get(mailbox).or_else(|| meta.get(mailbox)).copied() else {
                outcomes.push(Delivery::UnknownMailbox);
                continue;
            };
            if m.count() >= self.limits.quota_messages {
                outcomes.push(Delivery::OverQuota);
                continue;
            }
            let seq = m.next_seq;
            let mut value = Vec::with_capacity(8 + payload.len());
            value.extend_from_slice(&received_at_ms.to_be_bytes());
            value.extend_from_slice(payload);
            batch.put_cf(messages, message_key(mailbox, seq), value);
            updated.insert(
                *mailbox,
                Meta {
                    next_seq: seq + 1,
                    ..m
                },
            );
            outcomes.push(Delivery::Stored { seq });
        }
        if updated.is_empty() {
            return Ok(outcomes);
        }
        for (id, m) in &updated {
            batch.put_cf(mailboxes, id.as_bytes(), m.record());
        }
        self.db.write_opt(batch, &synced())?;
        meta.extend(updated);
        Ok(outcomes)
    }

    /// Up to `limit` messages of `mailbox` with `seq > after` (all when
    /// `None`), in seq order, and the `after` for the next page (`None` when
    /// this page reaches the end).
    pub fn list(
        &self,
        mailbox: &MailboxId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<StoredMessage>, Option<u64>)> {
        if !self.meta().contains_key(mailbox) {
            return Err(Error::UnknownMailbox);
        }
        let start = after.map_or(0, |a| a.saturating_add(1));
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(message_key(mailbox, u64::MAX).to_vec());
        let mut it = self.db.raw_iterator_cf_opt(cf(&self.db, MESSAGES)?, opts);
        it.seek(message_key(mailbox, start));
        let mut out = Vec::new();
        let mut more = false;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if out.len() >= limit {
                more = true;
                break;
            }
            let seq = k
                .get(32..40)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt(format!("message key of {} bytes", k.len())))?;
            let (at, payload) = v
                .split_first_chunk::<8>()
                .ok_or_else(|| corrupt(format!("message record of {} bytes", v.len())))?;
            out.push(StoredMessage {
                seq,
                received_at_ms: u64::from_be_bytes(*at),
                payload: payload.to_vec(),
            });
            it.next();
        }
        it.status()?;
        let next = if more {
            out.last().map(|m| m.seq)
        } else {
            None
        };
        Ok((out, next))
    }

    /// Deletes the messages of `mailbox` with `seq <= upto` (synced);
    /// returns how many there were.
    pub fn delete_upto(&self, mailbox: &MailboxId, upto: u64) -> Result<u64> {
        let mut meta = self.meta();
        let m = *meta.get(mailbox).ok_or(Error::UnknownMailbox)?;
        let new_first = upto.saturating_add(1).clamp(m.first_seq, m.next_seq);
        let deleted = new_first - m.first_seq;
        if deleted == 0 {
            return Ok(0);
        }
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            cf(&self.db, MESSAGES)?,
            message_key(mailbox, m.first_seq),
            message_key(mailbox, new_first),
        );
        self.db.write_opt(batch, &synced())?;
        meta.insert(
            *mailbox,
            Meta {
                first_seq: new_first,
                ..m
            },
        );
        Ok(deleted)
    }

    /// One of RocksDB's integer properties, of column family `cf` or (with
    /// `None`) of the whole database; `None` if RocksDB does not answer.
    /// Unlike the other methods this reads only memory (under RocksDB's own
    /// short lock), so `/metrics` may call it at every scrape.
    pub(crate) fn property(&self, cf: Option<&str>, property: &PropName) -> Option<u64> {
        let value = match cf {
            Some(name) => self
                .db
                .property_int_value_cf(self::cf(&self.db, name).ok()?, property),
            None => self.db.property_int_value(property),
        };
        value.ok().flatten()
    }

    /// Writes the memtables out to SST files, as RocksDB does by itself
    /// when they fill.
    #[cfg(test)]
    pub(crate) fn flush(&self) -> Result<()> {
        for name in COLUMN_FAMILIES {
            self.db.flush_cf(cf(&self.db, name)?)?;
        }
        Ok(())
    }
}

fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a ColumnFamily> {
    db.cf_handle(name)
        .ok_or_else(|| corrupt(format!("column family {name} is missing")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LIMITS: StoreLimits = StoreLimits {
        quota_messages: 3,
        max_mailboxes: 2,
    };

    fn payloads(
        store: &Store,
        id: &MailboxId,
        after: Option<u64>,
        limit: usize,
    ) -> (Vec<(u64, Vec<u8>)>, Option<u64>) {
        let (msgs, next) = store.list(id, after, limit).unwrap();
        (msgs.into_iter().map(|m| (m.seq, m.payload)).collect(), next)
    }

    #[test]
    fn unknown_mailbox_and_quota_drop_and_the_rest_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), LIMITS).unwrap();
        let (a, new) = store.register(&[1; 32]).unwrap();
        assert!(new);
        assert_eq!(store.register(&[1; 32]).unwrap(), (a, false));
        let stranger = MailboxId::from_owner_key(&[9; 32]);
        let items: Vec<_> = [a, stranger, a, a, a]
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, vec![i as u8; 5]))
            .collect();
        let out = store.deliver(&items, 77).unwrap();
        assert_eq!(
            out,
            vec![
                Delivery::Stored { seq: 1 },
                Delivery::UnknownMailbox,
                Delivery::Stored { seq: 2 },
                Delivery::Stored { seq: 3 },
                Delivery::OverQuota,
            ]
        );
        assert_eq!(store.message_count(&a), Some(3));
        assert!(matches!(
            store.list(&stranger, None, 10),
            Err(Error::UnknownMailbox)
        ));
        let (msgs, _) = store.list(&a, None, 10).unwrap();
        assert_eq!(msgs[0].received_at_ms, 77);
        assert_eq!(msgs[1].payload, vec![2; 5]);
        // Deleting makes room under the quota again.
        assert_eq!(store.delete_upto(&a, 1).unwrap(), 1);
        assert_eq!(
            store.deliver(&[(a, b"x".to_vec())], 78).unwrap(),
            vec![Delivery::Stored { seq: 4 }]
        );
    }

    #[test]
    fn listing_pages_by_cursor_and_delete_upto_removes_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            StoreLimits {
                quota_messages: 100,
                max_mailboxes: 10,
            },
        )
        .unwrap();
        let (a, _) = store.register(&[1; 32]).unwrap();
        let (b, _) = store.register(&[2; 32]).unwrap();
        let items: Vec<_> = (0..5u8)
            .map(|i| (a, vec![i]))
            .chain([(b, vec![99])])
            .collect();
        store.deliver(&items, 1).unwrap();

        let (page, next) = payloads(&store, &a, None, 2);
        assert_eq!(page, vec![(1, vec![0]), (2, vec![1])]);
        assert_eq!(next, Some(2));
        let (page, next) = payloads(&store, &a, next, 2);
        assert_eq!(page, vec![(3, vec![2]), (4, vec![3])]);
        let (page, next) = payloads(&store, &a, next, 2);
        assert_eq!(page, vec![(5, vec![4])]);
        assert_eq!(next, None);
        // Another mailbox's messages never leak into this one's listing.
        assert_eq!(payloads(&store, &b, Some(0), 10).0, vec![(1, vec![99])]);

        assert_eq!(store.delete_upto(&a, 3).unwrap(), 3);
        assert_eq!(store.delete_upto(&a, 3).unwrap(), 0);
        assert_eq!(
            payloads(&store, &a, None, 10).0,
            vec![(4, vec![3]), (5, vec![4])]
        );
        assert_eq!(store.delete_upto(&a, u64::MAX).unwrap(), 2);
        assert_eq!(payloads(&store, &a, None, 10).0, vec![]);
        assert_eq!(store.message_count(&b), Some(1));
        assert!(matches!(
            store.delete_upto(&MailboxId([0; 32]), 1),
            Err(Error::UnknownMailbox)
        ));
    }

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let a = {
            let store = Store::open(dir.path(), LIMITS).unwrap();
            let (a, _) = store.register(&[1; 32]).unwrap();
            store
                .deliver(
                    &[
                        (a, b"one".to_vec()),
                        (a, b"two".to_vec()),
                        (a, b"three".to_vec()),
                    ],
                    5,
                )
                .unwrap();
            store.delete_upto(&a, 1).unwrap();
            a
        };
        let store = Store::open(dir.path(), LIMITS).unwrap();
        assert_eq!(store.owner(&a), Some([1; 32]));
        assert_eq!(store.message_count(&a), Some(2));
        assert_eq!(
            payloads(&store, &a, None, 10).0,
            vec![(2, b"two".to_vec()), (3, b"three".to_vec())]
        );
        // Seqs continue after a restart; they are never reused.
        store.delete_upto(&a, 3).unwrap();
        assert_eq!(
            store.deliver(&[(a, b"four".to_vec())], 6).unwrap(),
            vec![Delivery::Stored { seq: 4 }]
        );
    }

    #[test]
    fn mailbox_count_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), LIMITS).unwrap();
        store.register(&[1; 32]).unwrap();
        store.register(&[2; 32]).unwrap();
        assert!(matches!(
            store.register(&[3; 32]),
            Err(Error::TooManyMailboxes(2))
        ));
        assert!(store.register(&[2; 32]).is_ok());
        assert_eq!(store.mailboxes(), 2);
    }
}
