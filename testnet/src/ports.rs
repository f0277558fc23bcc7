//! Free loopback ports.
//!
//! The kernel picks a free port for `127.0.0.1:0`; we note it and close the
//! socket so the node can bind it. Between that close and the node's bind
//! another process could take the port. The window is a few milliseconds on
//! a quiet machine; when a relay still loses the race, the network starts it
//! again once on fresh ports, and an authority up to three times (on a fresh
//! metrics port, or on its pinned API port after a pause); see
//! `Network::start`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use crate::{Error, Result};

/// `n` distinct free ports on 127.0.0.1. All listeners are held until every
/// port is chosen, so the kernel cannot hand out the same port twice.
pub(crate) fn free_ports(n: usize) -> Result<Vec<SocketAddr>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(Error::io("choosing a free port on 127.0.0.1"))?;
    listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(Error::io("reading a bound port"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_loopback_and_released() {
        let ports = free_ports(20).unwrap();
        let mut unique: Vec<_> = ports.iter().map(|a| a.port()).collect();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 20);
        for a in &ports {
            assert!(a.ip().is_loopback());
            assert_ne!(a.port(), 0);
        }
        // Released: were the listeners still held, every bind would fail.
        // Other tests running in parallel may take one of these ports as an
        // ephemeral port meanwhile (the race the module comment describes),
        // so a single successful bind is the evidence, not all twenty. A
        // test in this process that spawns a child at the moment the
        // listeners exist gives the child copies of them until it execs
        // (they are close-on-exec), so the binds are retried for a while.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let rebound = ports
                .iter()
                .filter(|a| TcpListener::bind(a).is_ok())
                .count();
            if rebound > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no port could be bound again within 5 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
