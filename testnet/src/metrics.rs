//! Reading the nodes' Prometheus text.

/// The sum of the samples of metric `name` (a counter may carry the
/// `_total` suffix) whose line contains `labels` (e.g.
/// `reason="unknown_mailbox"`; empty matches every label set).
pub fn metric_sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains(labels))
        .filter(|l| {
            let rest = l.strip_prefix(name).unwrap_or_default();
            let rest = rest.strip_prefix("_total").unwrap_or(rest);
            l.starts_with(name) && (rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP bastet_mailbox_packets_dropped Packets dropped.
# TYPE bastet_mailbox_packets_dropped counter
bastet_mailbox_packets_dropped_total{reason=\"unknown_mailbox\"} 8
bastet_mailbox_packets_dropped_total{reason=\"replay\"} 2
bastet_mailbox_packets_dropped_extra_total 100
bastet_mailbox_mailboxes 3
";

    #[test]
    fn sums_by_name_and_label() {
        assert_eq!(metric_sum(TEXT, "bastet_mailbox_packets_dropped", ""), 10.0);
        assert_eq!(
            metric_sum(
                TEXT,
                "bastet_mailbox_packets_dropped",
                "reason=\"unknown_mailbox\""
            ),
            8.0
        );
        assert_eq!(metric_sum(TEXT, "bastet_mailbox_mailboxes", ""), 3.0);
        assert_eq!(metric_sum(TEXT, "bastet_mailbox_messages_stored", ""), 0.0);
    }
}
