//! The `test_send_log` test hook: one line per packet this client hands to
//! a first mix, so that an end-to-end test knows the first link of each
//! real message, which the mixnodes' ingress logs see only as a frame from
//! this client's address.
//!
//! `<unix micros> <frame id> <real|drop|loop> <recipient mailbox id or -> <message id>:<fragment or ->`,
//! frame ids as every role writes them ([`bastet_link::frame_id`]). Never
//! content; but it says which of this client's packets were real and for
//! whom, which cover traffic exists to hide, so it is refused unless
//! `test_hooks = true`.

use std::path::Path;

use bastet_link::{TestLog, frame_id, unix_micros};
use bastet_sphinx::{MailboxId, Packet};

use crate::{Error, Result};

/// What a packet handed to a first mix was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SendNote {
    /// Fragment `fragment` of message `message` (hex id), for `recipient`'s
    /// mailbox.
    Real {
        recipient: MailboxId,
        message: String,
        fragment: usize,
    },
    /// Drop cover.
    Drop,
    /// Loop cover.
    Loop,
}

/// The open `test_send_log`.
#[derive(Debug)]
pub(crate) struct SendLog(TestLog);

impl SendLog {
    /// Opens the hook at `path`, loudly.
    pub(crate) fn open(path: &Path) -> Result<SendLog> {
        let log = TestLog::open(path).map_err(|e| Error::File {
            path: path.to_path_buf(),
            why: format!("test_send_log: {e}"),
        })?;
        tracing::warn!(
            path = %path.display(),
            "TEST HOOK test_send_log is on: which packets this client sends are real and \
             for whom is written to disk, undoing its cover traffic. Never use a real \
             client like this."
        );
        Ok(SendLog(log))
    }

    /// Records `packet`, handed to its first mix now.
    pub(crate) fn record(&self, packet: &Packet, note: &SendNote) {
        let micros = unix_micros();
        let id = frame_id(packet.as_bytes());
        match note {
            SendNote::Real {
                recipient,
                message,
                fragment,
            } => self.0.line(format_args!(
                "{micros} {id} real {} {message}:{fragment}",
                recipient.to_hex()
            )),
            SendNote::Drop => self.0.line(format_args!("{micros} {id} drop - -")),
            SendNote::Loop => self.0.line(format_args!("{micros} {id} loop - -")),
        }
    }

    /// Writes out every line so far.
    pub(crate) fn flush(&self) {
        self.0.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_the_frame_its_kind_and_for_real_ones_recipient_and_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("send.log");
        let log = SendLog::open(&path).unwrap();
        let packet = Packet::from_bytes(&vec![5u8; bastet_sphinx::PACKET_LEN]).unwrap();
        let note = SendNote::Real {
            recipient: MailboxId([9; 32]),
            message: "abcd".into(),
            fragment: 2,
        };
        log.record(&packet, &note);
        log.record(&packet, &SendNote::Drop);
        log.record(&packet, &SendNote::Loop);
        log.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
        let id = frame_id(packet.as_bytes()).to_string();
        let recipient = MailboxId([9; 32]).to_hex();
        assert_eq!(
            &lines[0][1..],
            [id.as_str(), "real", recipient.as_str(), "abcd:2"]
        );
        assert_eq!(&lines[1][1..], [id.as_str(), "drop", "-", "-"]);
        assert_eq!(&lines[2][1..], [id.as_str(), "loop", "-", "-"]);
        assert!(lines[0][0].parse::<u128>().unwrap() > 1_600_000_000_000_000);
    }
}
