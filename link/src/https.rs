//! HTTPS for the directory and mailbox APIs, pinned like every other link.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use axum_server::tls_rustls::RustlsConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::connections::OpenConnection;
use crate::{
    CertPin, ConnectionEnd, ConnectionStats, Error, Result, TlsIdentity, client_config,
    server_config,
};

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
    serve_https_counted(listener, identity, router, Arc::default()).await
}

/// [`serve_https`], counting its connections in `connections`: open from
/// the TCP accept until closed; a failed or timed out TLS handshake ends as
/// [`ConnectionEnd::Handshake`], every other as [`ConnectionEnd::Closed`].
pub async fn serve_https_counted(
    listener: std::net::TcpListener,
    identity: &TlsIdentity,
    router: axum::Router,
    connections: Arc<ConnectionStats>,
) -> Result<()> {
    let addr = listener.local_addr().map_err(|source| Error::Serve {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let serve_err = |source| Error::Serve { addr, source };
    listener.set_nonblocking(true).map_err(serve_err)?;
    let config = RustlsConfig::from_config(server_config(identity)?);
    let mut server = axum_server::from_tcp_rustls(listener, config)
        .map_err(serve_err)?
        .map(|tls| Counting {
            inner: tls,
            connections,
        });
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

/// An acceptor around the TLS one that counts each connection open for as
/// long as its stream lives.
#[derive(Clone)]
struct Counting<A> {
    inner: A,
    connections: Arc<ConnectionStats>,
}

type Accepting<S, V> = Pin<Box<dyn Future<Output = io::Result<(Counted<S>, V)>> + Send>>;

impl<A, I, S> Accept<I, S> for Counting<A>
where
    A: Accept<I, S>,
    A::Future: Send + 'static,
    A::Stream: 'static,
    A::Service: 'static,
{
    type Stream = Counted<A::Stream>;
    type Service = A::Service;
    type Future = Accepting<A::Stream, A::Service>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let mut open = self.connections.opened();
        open.ends(ConnectionEnd::Handshake);
        let handshake = self.inner.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = handshake.await?;
            open.ends(ConnectionEnd::Closed);
            Ok((
                Counted {
                    inner: stream,
                    _open: open,
                },
                service,
            ))
        })
    }
}

/// A stream counted open until dropped.
struct Counted<S> {
    inner: S,
    _open: OpenConnection,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn api_connections_are_counted_open_until_the_client_goes() {
        let identity = TlsIdentity::generate().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(ConnectionStats::default());
        let router = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (s, pin) = (stats.clone(), identity.pin());
        tokio::spawn(async move { serve_https_counted(listener, &identity, router, s).await });
        let until = async |what: &str, ok: &dyn Fn() -> bool| {
            for _ in 0..500 {
                if ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{what}: not after 5 s");
        };

        let client = https_client(pin).unwrap();
        let body = client
            .get(format!("https://{addr}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "ok");
        // Kept alive for the next request.
        assert_eq!(stats.open(), 1);
        drop(client);
        until("the API connection closed", &|| {
            stats.open() == 0 && stats.ended(ConnectionEnd::Closed) == 1
        })
        .await;

        let mut junk = tokio::net::TcpStream::connect(addr).await.unwrap();
        junk.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        until("a failed handshake", &|| {
            stats.ended(ConnectionEnd::Handshake) == 1
        })
        .await;
        until("the junk connection gone", &|| stats.open() == 0).await;
    }
}
