//! What travels on a circuit link: one kind byte, then a body whose length
//! the kind fixes. Every message after setup is [`CELL_LEN`] bytes, control
//! and data alike.
//!
//! ```text
//! CREATE   01 | Sphinx packet (PACKET_LEN bytes)          opener → next hop, once
//! DATA     02 | body (511 bytes)                          either way
//! READY    03 | 511 zero bytes                            rendezvous → endpoint: waiting for the peer
//! JOINED   04 | 511 zero bytes                            rendezvous → endpoint: spliced to the peer
//! DESTROY  05 | reason (1 byte) | 510 zero bytes          either way: the circuit ends
//! ```

use std::fmt;

use bastet_sphinx::{PACKET_LEN, Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{Error, Result};

/// Bytes of every message on a circuit link after setup.
pub const CELL_LEN: usize = 512;
/// Bytes of a cell after its kind byte.
pub const BODY_LEN: usize = CELL_LEN - 1;
/// Bytes of application payload a data cell carries end to end.
pub const PAYLOAD_LEN: usize = 448;
/// Bytes of a CREATE message.
pub const CREATE_LEN: usize = 1 + PACKET_LEN;

const CREATE: u8 = 1;
const DATA: u8 = 2;
const READY: u8 = 3;
const JOINED: u8 = 4;
const DESTROY: u8 = 5;

/// Why a circuit ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// An endpoint hung up.
    Hangup,
    /// A peer broke the protocol (an unexpected or malformed message).
    Protocol,
    /// A relay is at its circuit limit or could not keep up.
    Overload,
    /// The peer did not reach the rendezvous in time.
    NoPeer,
    /// A relay could not reach the next hop.
    Unreachable,
    /// Two circuits already met under this rendezvous cookie.
    RendezvousTaken,
    /// The setup packet was refused (unknown key, replayed, or not for a
    /// circuit).
    Refused,
    /// A link was silent for too long.
    Timeout,
    /// A relay is shutting down.
    Shutdown,
}

impl Reason {
    fn code(self) -> u8 {
        match self {
            Reason::Hangup => 0,
            Reason::Protocol => 1,
            Reason::Overload => 2,
            Reason::NoPeer => 3,
            Reason::Unreachable => 4,
            Reason::RendezvousTaken => 5,
            Reason::Refused => 6,
            Reason::Timeout => 7,
            Reason::Shutdown => 8,
        }
    }

    fn from_code(code: u8) -> Result<Self> {
        Ok(match code {
            0 => Reason::Hangup,
            1 => Reason::Protocol,
            2 => Reason::Overload,
            3 => Reason::NoPeer,
            4 => Reason::Unreachable,
            5 => Reason::RendezvousTaken,
            6 => Reason::Refused,
            7 => Reason::Timeout,
            8 => Reason::Shutdown,
            other => return Err(Error::Malformed(format!("unknown DESTROY reason {other}"))),
        })
    }

    /// A short name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Hangup => "hangup",
            Reason::Protocol => "protocol",
            Reason::Overload => "overload",
            Reason::NoPeer => "no_peer",
            Reason::Unreachable => "unreachable",
            Reason::RendezvousTaken => "rendezvous_taken",
            Reason::Refused => "refused",
            Reason::Timeout => "timeout",
            Reason::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Hangup => "the other end hung up",
            Reason::Protocol => "a peer broke the circuit protocol",
            Reason::Overload => "a relay is overloaded or at its circuit limit",
            Reason::NoPeer => "the other end did not reach the rendezvous relay in time",
            Reason::Unreachable => "a relay could not reach the next hop",
            Reason::RendezvousTaken => "the rendezvous cookie is already in use",
            Reason::Refused => "a relay refused the setup packet (stale consensus or replay)",
            Reason::Timeout => "a circuit link was silent for too long",
            Reason::Shutdown => "a relay is shutting down",
        })
    }
}

/// One message on a circuit link.
#[derive(Clone, PartialEq, Eq)]
pub enum Message {
    /// Opens a circuit: the setup packet for the next hop.
    Create(Packet),
    /// A data cell's body.
    Data(Box<[u8; BODY_LEN]>),
    /// The rendezvous holds the circuit and waits for the peer.
    Ready,
    /// The rendezvous spliced the circuit to the peer's.
    Joined,
    /// The circuit ends.
    Destroy(Reason),
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Create(_) => f.write_str("Create"),
            Message::Data(_) => f.write_str("Data"),
            Message::Ready => f.write_str("Ready"),
            Message::Joined => f.write_str("Joined"),
            Message::Destroy(r) => write!(f, "Destroy({})", r.as_str()),
        }
    }
}

impl Message {
    /// The whole message's length for a kind byte.
    pub fn len_of_kind(kind: u8) -> Result<usize> {
        match kind {
            CREATE => Ok(CREATE_LEN),
            DATA | READY | JOINED | DESTROY => Ok(CELL_LEN),
            other => Err(Error::Malformed(format!("unknown message kind {other}"))),
        }
    }

    /// Parses exactly one message (kind byte included).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let (&kind, body) = bytes
            .split_first()
            .ok_or_else(|| Error::Malformed("empty message".into()))?;
        let len = Self::len_of_kind(kind)?;
        if bytes.len() != len {
            return Err(Error::Malformed(format!(
                "message of kind {kind} is {} bytes, must be {len}",
                bytes.len()
            )));
        }
        let zero_after = |from: usize| {
            if body[from..].iter().all(|&b| b == 0) {
                Ok(())
            } else {
                Err(Error::Malformed(format!(
                    "padding of a kind {kind} message is not zero"
                )))
            }
        };
        Ok(match kind {
            CREATE => Message::Create(Packet::from_bytes(body).map_err(Error::malformed)?),
            DATA => {
                let mut cell = Box::new([0u8; BODY_LEN]);
                cell.copy_from_slice(body);
                Message::Data(cell)
            }
            READY => {
                zero_after(0)?;
                Message::Ready
            }
            JOINED => {
                zero_after(0)?;
                Message::Joined
            }
            _ => {
                zero_after(1)?;
                Message::Destroy(Reason::from_code(body[0])?)
            }
        })
    }

    /// The message's bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::Create(packet) => {
                let mut out = Vec::with_capacity(CREATE_LEN);
                out.push(CREATE);
                out.extend_from_slice(packet.as_bytes());
                out
            }
            Message::Data(body) => {
                let mut out = Vec::with_capacity(CELL_LEN);
                out.push(DATA);
                out.extend_from_slice(body.as_slice());
                out
            }
            Message::Ready => control(READY, 0),
            Message::Joined => control(JOINED, 0),
            Message::Destroy(reason) => control(DESTROY, reason.code()),
        }
    }
}

fn control(kind: u8, first: u8) -> Vec<u8> {
    let mut out = vec![0u8; CELL_LEN];
    out[0] = kind;
    out[1] = first;
    out
}

/// Reads one message. `Ok(None)` is a clean end of stream before a
/// message; a stream that ends inside one is an error.
pub async fn read_message<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Message>> {
    let mut kind = [0u8; 1];
    match reader.read(&mut kind).await {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(Error::Io(e)),
    }
    let len = Message::len_of_kind(kind[0])?;
    let mut bytes = vec![0u8; len];
    bytes[0] = kind[0];
    reader
        .read_exact(&mut bytes[1..])
        .await
        .map_err(Error::Io)?;
    Message::decode(&bytes).map(Some)
}

/// Writes one message and flushes it: cells are latency-bound.
pub async fn write_message<W: AsyncWrite + Unpin>(writer: &mut W, message: &Message) -> Result<()> {
    writer
        .write_all(&message.encode())
        .await
        .map_err(Error::Io)?;
    writer.flush().await.map_err(Error::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip_and_bad_ones_are_errors() {
        let packet = Packet::from_bytes(&[7u8; PACKET_LEN]).unwrap();
        let all = [
            Message::Create(packet),
            Message::Data(Box::new([9u8; BODY_LEN])),
            Message::Ready,
            Message::Joined,
            Message::Destroy(Reason::NoPeer),
        ];
        let mut wire = Vec::new();
        for m in &all {
            write_message(&mut wire, m).await.unwrap();
        }
        let mut reader = &wire[..];
        for m in &all {
            assert_eq!(read_message(&mut reader).await.unwrap().as_ref(), Some(m));
        }
        assert!(read_message(&mut reader).await.unwrap().is_none());

        assert!(Message::decode(&[]).is_err());
        assert!(Message::decode(&[9; CELL_LEN]).is_err());
        assert!(Message::decode(&control(DATA, 0)[..CELL_LEN - 1]).is_err());
        let mut bad = control(DESTROY, 200);
        assert!(Message::decode(&bad).is_err());
        bad[1] = 0;
        bad[7] = 1;
        assert!(Message::decode(&bad).is_err());
        let mut cut: &[u8] = &control(READY, 0)[..100];
        assert!(read_message(&mut cut).await.is_err());
    }
}
