//! The endpoint side: open a circuit to a rendezvous relay, wait for the
//! peer's circuit to join it, then send and receive fixed-size cells.

use std::net::IpAddr;
use std::time::Duration;

use bastet_directory::VerifiedConsensus;
use bastet_link::connect_from;
use bastet_sphinx::NodeId;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::onion::{EndpointOnion, OnionReceiver, OnionSender};
use crate::setup::{CircuitHop, Cookie, build_setup};
use crate::wire::{Message, PAYLOAD_LEN, Reason, read_message, write_message};
use crate::{Error, Result};

type Link = TlsStream<TcpStream>;

/// The circuit hops for `nodes` (the rendezvous last) from the consensus:
/// each must be in it and publish a circuit listener.
pub fn hops_from_consensus(
    consensus: &VerifiedConsensus,
    nodes: &[NodeId],
) -> Result<Vec<CircuitHop>> {
    nodes
        .iter()
        .map(|node| {
            let d = consensus.node(node).ok_or_else(|| {
                Error::BadRoute(format!("relay {} is not in the consensus", node.short()))
            })?;
            let addr = d.circuit_addr.clone().ok_or_else(|| {
                Error::BadRoute(format!(
                    "relay {} does not relay calls (no circuit_addr in its descriptor)",
                    node.short()
                ))
            })?;
            Ok(CircuitHop {
                node: *node,
                sphinx_key: d.sphinx_public(),
                addr,
                pin: d.pin(),
            })
        })
        .collect()
}

/// A circuit whose setup reached the first hop, not yet joined to the
/// peer's.
pub struct PendingCircuit {
    link: Link,
    onion: EndpointOnion,
}

impl std::fmt::Debug for PendingCircuit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingCircuit")
    }
}

/// Connects to the first hop and sends the setup packet through `hops` to
/// the rendezvous (the last hop), within `timeout`.
pub async fn open_circuit(
    hops: &[CircuitHop],
    cookie: &Cookie,
    source_addr: Option<IpAddr>,
    timeout: Duration,
) -> Result<PendingCircuit> {
    let (packet, onion) = build_setup(hops, cookie)?;
    let first = &hops[0];
    let connect = async {
        let mut link = connect_from(source_addr, &first.addr, first.pin).await?;
        write_message(&mut link, &Message::Create(packet)).await?;
        Ok::<_, Error>(link)
    };
    let link = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| Error::Timeout {
            what: "connecting to the circuit's first relay",
            secs: timeout.as_secs(),
        })??;
    Ok(PendingCircuit { link, onion })
}

impl PendingCircuit {
    /// Waits until the rendezvous relay has spliced this circuit to the
    /// peer's (at most `wait`), then splits it for sending and receiving.
    pub async fn joined(mut self, wait: Duration) -> Result<(CircuitWriter, CircuitReader)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = tokio::time::timeout_at(deadline, read_message(&mut self.link))
                .await
                .map_err(|_| Error::Timeout {
                    what: "the other end joining the call circuit",
                    secs: wait.as_secs(),
                })??;
            match message {
                Some(Message::Ready) => continue,
                Some(Message::Joined) => break,
                Some(Message::Destroy(reason)) => return Err(Error::Destroyed(reason)),
                Some(other) => {
                    return Err(Error::Malformed(format!(
                        "{other:?} before the circuit was joined"
                    )));
                }
                None => {
                    return Err(Error::Malformed(
                        "the first relay closed the link during setup".into(),
                    ));
                }
            }
        }
        let (reader, writer) = tokio::io::split(self.link);
        let (sender, receiver) = self.onion.split();
        Ok((
            CircuitWriter {
                writer,
                onion: sender,
            },
            CircuitReader {
                reader,
                onion: receiver,
            },
        ))
    }
}

/// Sends cells into a joined circuit.
pub struct CircuitWriter<S = Link> {
    writer: WriteHalf<S>,
    onion: OnionSender,
}

impl<S: AsyncRead + AsyncWrite> CircuitWriter<S> {
    /// Wraps and sends one cell carrying `payload`.
    pub async fn send(&mut self, payload: &[u8; PAYLOAD_LEN]) -> Result<()> {
        let body = self.onion.wrap(payload)?;
        write_message(&mut self.writer, &Message::Data(Box::new(body))).await
    }

    /// Cells sent so far.
    pub fn sent(&self) -> u64 {
        self.onion.sent()
    }

    /// Ends the circuit (and the call) for both ends.
    pub async fn hang_up(mut self) -> Result<()> {
        write_message(&mut self.writer, &Message::Destroy(Reason::Hangup)).await
    }
}

/// What arrived on a joined circuit.
#[derive(Debug)]
pub enum Incoming {
    /// A cell's payload.
    Cell(Box<[u8; PAYLOAD_LEN]>),
    /// A cell that did not authenticate (corrupted on the way); it is lost.
    Corrupt,
    /// The circuit ended.
    Ended(Reason),
}

/// Receives cells from a joined circuit.
pub struct CircuitReader<S = Link> {
    reader: ReadHalf<S>,
    onion: OnionReceiver,
}

impl<S: AsyncRead + AsyncWrite> CircuitReader<S> {
    /// The next cell or the circuit's end.
    pub async fn recv(&mut self) -> Result<Incoming> {
        match read_message(&mut self.reader).await? {
            Some(Message::Data(body)) => Ok(match self.onion.unwrap(&body) {
                Ok(payload) => Incoming::Cell(Box::new(payload)),
                Err(Error::CellAuthentication) => Incoming::Corrupt,
                Err(e) => return Err(e),
            }),
            Some(Message::Destroy(reason)) => Ok(Incoming::Ended(reason)),
            Some(other) => Err(Error::Malformed(format!("{other:?} on a joined circuit"))),
            None => Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the first relay closed the circuit link without a reason",
            ))),
        }
    }

    /// Cells received so far.
    pub fn received(&self) -> u64 {
        self.onion.received()
    }
}

impl<S> std::fmt::Debug for CircuitWriter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitWriter")
            .field("sent", &self.onion.sent())
            .finish_non_exhaustive()
    }
}

impl<S> std::fmt::Debug for CircuitReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitReader")
            .field("received", &self.onion.received())
            .finish_non_exhaustive()
    }
}
