//! The mailbox server's Prometheus metrics (prefix `bastet_mailbox`).

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};
use rocksdb::properties::{self, PropName};

use crate::store::{COLUMN_FAMILIES, Store};

/// A `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why.
    pub reason: String,
}

/// An `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// How the request ended.
    pub outcome: String,
}

/// Every reason a packet is dropped, listed so each series exists from the
/// start.
pub const DROP_REASONS: [&str; 10] = [
    "replay",
    "malformed",
    "wrong_length",
    "unknown_mailbox",
    "quota",
    "not_final_hop",
    "overload",
    "store_error",
    "unknown_key",
    "disk_full",
];

/// Handles to every metric; cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics {
    /// Packets taken off the link.
    pub packets_received: Counter,
    /// Payloads durably stored.
    pub messages_stored: Counter,
    /// Cover packets (addressed to the drop mailbox) discarded unstored.
    pub cover_received: Counter,
    /// Packets dropped, by reason.
    pub packets_dropped: Family<Reason, Counter>,
    /// API requests, by outcome.
    pub api_requests: Family<Outcome, Counter>,
    /// API authentication failures, by reason.
    pub auth_failures: Family<Reason, Counter>,
    /// Mailboxes registered.
    pub mailboxes: Gauge,
    /// Sphinx keys packets are processed under now.
    pub sphinx_keys: Gauge,
    /// The newest epoch whose key is in force.
    pub sphinx_key_epoch: Gauge,
    /// Replay tags in the fullest filter's current generation.
    pub replay_filter_entries: Gauge,
    /// Tags a replay filter generation holds.
    pub replay_filter_capacity: Gauge,
    /// Acks sent back into the mixnet for stored fragments.
    pub acks_sent: Counter,
    /// Acks not sent, by reason.
    pub acks_dropped: Family<Reason, Counter>,
}

/// Every reason an ack is not sent, listed so each series exists from the
/// start.
pub const ACK_DROP_REASONS: [&str; 4] = ["no_consensus", "bad_first_hop", "bad_surb", "queue_full"];

impl Metrics {
    /// Fresh metrics registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        registry.register(
            "packets_received",
            "Packets received on the packet link",
            m.packets_received.clone(),
        );
        registry.register(
            "messages_stored",
            "Payloads durably stored in a mailbox",
            m.messages_stored.clone(),
        );
        registry.register(
            "cover_received",
            "Cover packets (addressed to the drop mailbox) authenticated, replay-checked and discarded",
            m.cover_received.clone(),
        );
        registry.register(
            "packets_dropped",
            "Packets dropped, by reason",
            m.packets_dropped.clone(),
        );
        registry.register(
            "api_requests",
            "Mailbox API requests, by outcome",
            m.api_requests.clone(),
        );
        registry.register(
            "auth_failures",
            "Mailbox API authentication failures, by reason",
            m.auth_failures.clone(),
        );
        registry.register("mailboxes", "Mailboxes registered", m.mailboxes.clone());
        registry.register(
            "sphinx_keys",
            "Sphinx keys packets are processed under now (current, next, previous in grace)",
            m.sphinx_keys.clone(),
        );
        registry.register(
            "sphinx_key_epoch",
            "The newest epoch whose Sphinx key packets are processed under",
            m.sphinx_key_epoch.clone(),
        );
        registry.register(
            "replay_filter_entries",
            "Replay tags in the fullest filter's current generation (it turns over at replay_filter_capacity)",
            m.replay_filter_entries.clone(),
        );
        registry.register(
            "replay_filter_capacity",
            "Tags a replay filter generation holds (replay_filter_capacity)",
            m.replay_filter_capacity.clone(),
        );
        registry.register(
            "acks_sent",
            "Acks sent back through the sender's SURB once a fragment was stored",
            m.acks_sent.clone(),
        );
        registry.register(
            "acks_dropped",
            "Acks not sent (the fragment is stored all the same), by reason",
            m.acks_dropped.clone(),
        );
        for reason in ACK_DROP_REASONS {
            m.acks_dropped
                .get_or_create(&reason_label(reason))
                .inc_by(0);
        }
        for reason in DROP_REASONS {
            m.packets_dropped
                .get_or_create(&reason_label(reason))
                .inc_by(0);
        }
        m
    }

    /// Counts `n` packets dropped for `reason`.
    pub fn dropped(&self, reason: &str, n: u64) {
        self.packets_dropped
            .get_or_create(&reason_label(reason))
            .inc_by(n);
    }

    /// Counts one ack not sent.
    pub fn ack_dropped(&self, reason: &str) {
        self.acks_dropped.get_or_create(&reason_label(reason)).inc();
    }

    /// Counts one API request that ended with `outcome`.
    pub fn request(&self, outcome: &str) {
        self.api_requests
            .get_or_create(&Outcome {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Counts one authentication failure.
    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures
            .get_or_create(&reason_label(reason))
            .inc();
    }
}

fn reason_label(reason: &str) -> Reason {
    Reason {
        reason: reason.to_string(),
    }
}

/// A RocksDB property exported as a gauge.
struct DbGauge {
    name: &'static str,
    help: &'static str,
    bytes: bool,
    property: &'static PropName,
}

/// Exported per column family (`column_family` label).
const PER_COLUMN_FAMILY: [DbGauge; 5] = [
    DbGauge {
        name: "rocksdb_estimate_num_keys",
        help: "RocksDB's estimate of the keys in a column family (rocksdb.estimate-num-keys; deleted messages linger until compaction)",
        bytes: false,
        property: properties::ESTIMATE_NUM_KEYS,
    },
    DbGauge {
        name: "rocksdb_total_sst_files_size",
        help: "Size of all SST files of a column family, obsolete ones not yet deleted included (rocksdb.total-sst-files-size)",
        bytes: true,
        property: properties::TOTAL_SST_FILES_SIZE,
    },
    DbGauge {
        name: "rocksdb_live_sst_files_size",
        help: "Size of the SST files of a column family's current version (rocksdb.live-sst-files-size)",
        bytes: true,
        property: properties::LIVE_SST_FILES_SIZE,
    },
    DbGauge {
        name: "rocksdb_cur_size_all_mem_tables",
        help: "Memory of a column family's memtables, active and immutable (rocksdb.cur-size-all-mem-tables)",
        bytes: true,
        property: properties::CUR_SIZE_ALL_MEM_TABLES,
    },
    DbGauge {
        name: "rocksdb_estimate_pending_compaction",
        help: "Bytes RocksDB estimates compaction must rewrite to bring a column family's levels under their targets (rocksdb.estimate-pending-compaction-bytes)",
        bytes: true,
        property: properties::ESTIMATE_PENDING_COMPACTION_BYTES,
    },
];

/// Exported once for the whole database.
const WHOLE_DB: [DbGauge; 2] = [
    DbGauge {
        name: "rocksdb_num_running_compactions",
        help: "RocksDB compactions running now (rocksdb.num-running-compactions)",
        bytes: false,
        property: properties::NUM_RUNNING_COMPACTIONS,
    },
    DbGauge {
        name: "rocksdb_background_errors",
        help: "Errors in RocksDB's background flushes and compactions since the server started (rocksdb.background-errors); above 0 the store may have stopped taking writes",
        bytes: false,
        property: properties::BACKGROUND_ERRORS,
    },
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ColumnFamilyLabel {
    column_family: &'static str,
}

/// Reads the store's RocksDB properties at every scrape: a few reads of
/// RocksDB's in-memory state, no disk.
struct StoreStats(Arc<Store>);

impl std::fmt::Debug for StoreStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreStats")
    }
}

impl Collector for StoreStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        for gauge in &PER_COLUMN_FAMILY {
            let mut metric = encoder.encode_descriptor(
                gauge.name,
                gauge.help,
                gauge.bytes.then_some(&Unit::Bytes),
                MetricType::Gauge,
            )?;
            for cf in COLUMN_FAMILIES {
                if let Some(value) = self.0.property(Some(cf), gauge.property) {
                    let label = ColumnFamilyLabel { column_family: cf };
                    ConstGauge::new(gauge_value(value)).encode(metric.encode_family(&label)?)?;
                }
            }
        }
        for gauge in &WHOLE_DB {
            if let Some(value) = self.0.property(None, gauge.property) {
                let metric = encoder.encode_descriptor(
                    gauge.name,
                    gauge.help,
                    gauge.bytes.then_some(&Unit::Bytes),
                    MetricType::Gauge,
                )?;
                ConstGauge::new(gauge_value(value)).encode(metric)?;
            }
        }
        Ok(())
    }
}

/// Exports `store`'s RocksDB figures in `registry` as `rocksdb_*` gauges,
/// read at every scrape.
pub(crate) fn register_store(registry: &mut Registry, store: Arc<Store>) {
    registry.register_collector(Box::new(StoreStats(store)));
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreLimits;

    /// `name{labels} value` lines of the exported text, by series.
    fn series(registry: &Registry) -> std::collections::HashMap<String, f64> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect()
    }

    #[test]
    fn rocksdb_figures_of_a_store_with_messages_are_exported() {
        let dir = tempfile::tempdir().unwrap();
        let limits = StoreLimits {
            quota_messages: 1000,
            max_mailboxes: 10,
        };
        let store = Arc::new(Store::open(dir.path(), limits).unwrap());
        let (mailbox, _) = store.register(&[1; 32]).unwrap();
        let items: Vec<_> = (0..20u8).map(|i| (mailbox, vec![i; 100])).collect();
        store.deliver(&items, 1).unwrap();
        let mut registry = Registry::with_prefix("bastet_mailbox");
        register_store(&mut registry, store.clone());

        let before = series(&registry);
        let get = |s: &std::collections::HashMap<String, f64>, name: &str| {
            *s.get(name).unwrap_or_else(|| panic!("no {name} in {s:#?}"))
        };
        let messages = |name: &str| format!("bastet_mailbox_{name}{{column_family=\"messages\"}}");
        assert_eq!(get(&before, &messages("rocksdb_estimate_num_keys")), 20.0);
        // An estimate: the mailbox's record, written twice, counts twice
        // until a compaction.
        assert!(
            get(
                &before,
                "bastet_mailbox_rocksdb_estimate_num_keys{column_family=\"mailboxes\"}"
            ) >= 1.0
        );
        // 20 payloads of 100 bytes are in memory, none on disk yet.
        assert!(get(&before, &messages("rocksdb_cur_size_all_mem_tables_bytes")) > 2000.0);
        assert_eq!(
            get(&before, &messages("rocksdb_live_sst_files_size_bytes")),
            0.0
        );
        get(
            &before,
            &messages("rocksdb_estimate_pending_compaction_bytes"),
        );
        assert_eq!(
            get(&before, "bastet_mailbox_rocksdb_background_errors"),
            0.0
        );
        get(&before, "bastet_mailbox_rocksdb_num_running_compactions");

        // Read at the scrape, not at registration: a flush shows at once.
        store.flush().unwrap();
        let after = series(&registry);
        assert!(get(&after, &messages("rocksdb_total_sst_files_size_bytes")) > 2000.0);
        assert!(get(&after, &messages("rocksdb_live_sst_files_size_bytes")) > 2000.0);
        assert!(
            get(&after, &messages("rocksdb_cur_size_all_mem_tables_bytes"))
                < get(&before, &messages("rocksdb_cur_size_all_mem_tables_bytes"))
        );
        assert_eq!(get(&after, &messages("rocksdb_estimate_num_keys")), 20.0);
    }
}
