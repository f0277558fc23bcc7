//! HTTPS for the directory and mailbox APIs, pinned like every other link.

use std::net::SocketAddr;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;

use crate::{CertPin, Error, Result, TlsIdentity, client_config, server_config};

/// An HTTPS client that trusts only the server certificate with `pin`.
pub fn https_client(pin: CertPin) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(client_config(pin)?)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()?)
}

/// Serves `router` over TLS on an already bound `listener` until the task is
/// dropped or the listener fails.
pub async fn serve_https(
    listener: std::net::TcpListener,
    identity: &TlsIdentity,
    router: axum::Router,
) -> Result<()> {
    let addr = listener.local_addr().map_err(|source| Error::Serve {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let serve_err = |source| Error::Serve { addr, source };
    listener.set_nonblocking(true).map_err(serve_err)?;
    let config = RustlsConfig::from_config(server_config(identity)?);
    let mut server = axum_server::from_tcp_rustls(listener, config).map_err(serve_err)?;
    // A client that opens a connection and dribbles its headers must not hold
    // a descriptor forever (slow-loris); nor may an idle HTTP/2 connection.
    server
        .http_builder()
        .http1()
        .header_read_timeout(Some(Duration::from_secs(10)));
    server
        .http_builder()
        .http2()
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    server
        .serve(router.into_make_service_with_connect_info::<SocketAddr>())
        .await
        .map_err(serve_err)
}
