//! HTTPS for the directory and mailbox APIs, pinned like every other link.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
/// dropped or the listener fails, with the limits [`serve_https_counted`]
/// names.
pub async fn serve_https(
    listener: std::net::TcpListener,
    identity: &TlsIdentity,
    router: axum::Router,
) -> Result<()> {
    serve_https_counted(listener, identity, router, Arc::default()).await
}

/// Limits on what HTTPS clients may hold open.
#[derive(Clone, Copy, Debug)]
struct ApiLimits {
    /// Most connections open at once; further ones are closed at accept.
    max_connections: usize,
    /// A TLS handshake that takes longer is abandoned.
    handshake_timeout: Duration,
    /// After the handshake, the first whole request must come within this
    /// (hyper reads the protocol preface with no timer of its own).
    first_request_timeout: Duration,
    /// HTTP/1 headers must be complete this long after a request starts,
    /// and an idle keep-alive connection is closed after it.
    header_read_timeout: Duration,
    /// An HTTP/1 request must be whole, and answered, this long after its
    /// first byte: hyper times headers but not bodies.
    request_timeout: Duration,
}

/// The limits [`serve_https`] and [`serve_https_counted`] enforce: the
/// packet listener's connection limit, 10 s for each step a client could
/// otherwise stall, and for a whole exchange the 30 s [`https_client`]
/// waits for an answer.
const API_LIMITS: ApiLimits = ApiLimits {
    max_connections: 1024,
    handshake_timeout: Duration::from_secs(10),
    first_request_timeout: Duration::from_secs(10),
    header_read_timeout: Duration::from_secs(10),
    request_timeout: Duration::from_secs(30),
};

/// [`serve_https`], counting its connections in `connections`: open from
/// the TCP accept until closed. At most 1024 are open at once (more are
/// closed at accept and end as [`ConnectionEnd::Limit`]); a TLS handshake
/// that fails or takes over 10 s ends as [`ConnectionEnd::Handshake`]. A
/// client that sends no whole request within 10 s of the handshake, takes
/// over 10 s for a request's headers or over 30 s for a whole HTTP/1
/// request (a slow-loris, dribbling its headers or its body), or takes no
/// byte of an answer for 30 s, is cut off; a connection that ends with a
/// request unanswered or an answer not taken (cut off so, or left before
/// its answer) ends as [`ConnectionEnd::Idle`], every other as
/// [`ConnectionEnd::Closed`].
pub async fn serve_https_counted(
    listener: std::net::TcpListener,
    identity: &TlsIdentity,
    router: axum::Router,
    connections: Arc<ConnectionStats>,
) -> Result<()> {
    serve_limited(listener, identity, router, connections, API_LIMITS).await
}

async fn serve_limited(
    listener: std::net::TcpListener,
    identity: &TlsIdentity,
    router: axum::Router,
    connections: Arc<ConnectionStats>,
    limits: ApiLimits,
) -> Result<()> {
    let addr = listener.local_addr().map_err(|source| Error::Serve {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let serve_err = |source| Error::Serve { addr, source };
    listener.set_nonblocking(true).map_err(serve_err)?;
    let config = RustlsConfig::from_config(server_config(identity)?);
    let tls = RustlsAcceptor::new(config).handshake_timeout(limits.handshake_timeout);
    let mut server = axum_server::from_tcp(listener)
        .map_err(serve_err)?
        .acceptor(Counting {
            inner: tls,
            connections,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            request_timeout: limits.request_timeout,
        })
        // A client that opens a connection and sends nothing must not hold
        // a descriptor forever (slow-loris).
        .first_request_timeout(limits.first_request_timeout);
    // Nor may one that dribbles its headers, or an idle HTTP/2 connection.
    server
        .http_builder()
        .http1()
        .header_read_timeout(Some(limits.header_read_timeout));
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

/// An acceptor around the TLS one that refuses connections beyond the
/// limit and counts each other one open for as long as its stream lives.
#[derive(Clone)]
struct Counting<A> {
    inner: A,
    connections: Arc<ConnectionStats>,
    slots: Arc<Semaphore>,
    request_timeout: Duration,
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
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.connections.not_opened(ConnectionEnd::Limit);
            // Dropping the stream closes it.
            return Box::pin(async { Err(io::Error::other("HTTPS connection limit reached")) });
        };
        let mut open = self.connections.opened();
        open.ends(ConnectionEnd::Handshake);
        let request_timeout = self.request_timeout;
        let handshake = self.inner.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = handshake.await?;
            open.ends(ConnectionEnd::Idle);
            Ok((
                Counted {
                    inner: stream,
                    open,
                    _slot: slot,
                    request_timeout,
                    first_read: true,
                    timed: true,
                    unanswered: None,
                    write_stall: None,
                },
                service,
            ))
        })
    }
}

/// A stream counted open until dropped. It tells requests and answers
/// apart by the direction of the bytes alone: bytes read with none written
/// since are a request waiting for its answer. Such a request must be
/// answered within `request_timeout` of its first byte, or every read and
/// write fails from then on (no late answer either: the connection is cut
/// off); so must a write the client takes nothing of. A connection that
/// ends with a request unanswered or an answer not taken (or before any
/// byte either way) is counted idle, any other closed.
struct Counted<S> {
    inner: S,
    open: OpenConnection,
    _slot: OwnedSemaphorePermit,
    request_timeout: Duration,
    /// Nothing was read yet.
    first_read: bool,
    /// Whether requests are timed: not on HTTP/2, whose frames flow both
    /// ways whatever the requests do (its keep-alive pings bound it).
    timed: bool,
    /// When the request waiting for an answer, if any, runs out of time.
    unanswered: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When a write the client takes no byte of, if any, runs out of time:
    /// an answer the client does not read holds the connection no longer
    /// than a request may take.
    write_stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "request not answered in time")
}

/// What an HTTP/2 client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

impl<S> Counted<S> {
    /// The request waiting for an answer is out of time: the connection
    /// takes no more bytes either way.
    fn expired(&self) -> bool {
        self.unanswered.as_ref().is_some_and(|d| d.is_elapsed())
    }

    fn answered(&mut self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.unanswered = None;
            self.open.ends(ConnectionEnd::Closed);
        }
    }

    /// `polled`, unless it is one more wait on a write that made no
    /// progress for `request_timeout`: then the connection is cut off,
    /// counted idle (its answer was not taken).
    fn unless_stalled<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.write_stall = None;
            return polled;
        }
        let timeout = self.request_timeout;
        let stall = self
            .write_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stall.as_mut().poll(cx).is_ready() {
            self.open.ends(ConnectionEnd::Idle);
            return Poll::Ready(Err(timed_out()));
        }
        polled
    }

    fn requested(&mut self, read: &[u8]) {
        if std::mem::take(&mut self.first_read) && read.starts_with(H2_PREFACE) {
            self.timed = false;
        }
        if self.timed && self.unanswered.is_none() {
            self.unanswered = Some(Box::pin(tokio::time::sleep(self.request_timeout)));
            self.open.ends(ConnectionEnd::Idle);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.requested(&buf.filled()[before..]);
            }
            Poll::Pending => {
                // Waiting for more of a request that is out of time.
                if let Some(deadline) = self.unanswered.as_mut()
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(timed_out()));
                }
            }
            _ => {}
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.expired() {
            return Poll::Ready(Err(timed_out()));
        }
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.answered(&written);
        self.unless_stalled(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.expired() {
            return Poll::Ready(Err(timed_out()));
        }
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.answered(&written);
        self.unless_stalled(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        self.unless_stalled(cx, flushed)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shut = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.unless_stalled(cx, shut)
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

    /// Serves "ok" at `/` with `limits`; returns the address, pin and stats.
    fn limited(limits: ApiLimits) -> (SocketAddr, CertPin, Arc<ConnectionStats>) {
        let identity = TlsIdentity::generate().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(ConnectionStats::default());
        let router = axum::Router::new().route(
            "/",
            axum::routing::get(|| async { "ok" })
                .post(|body: axum::body::Bytes| async move { format!("{} bytes", body.len()) }),
        );
        let (s, pin) = (stats.clone(), identity.pin());
        tokio::spawn(async move { serve_limited(listener, &identity, router, s, limits).await });
        (addr, pin, stats)
    }

    /// Waits (at most 5 s) for `ok`.
    async fn until(what: &str, ok: impl Fn() -> bool) {
        for _ in 0..500 {
            if ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}: not after 5 s");
    }

    /// Whether the server closed `stream` within 5 s (end of stream or an
    /// error), having sent no byte of answer.
    async fn closed_by_server(stream: &mut (impl AsyncRead + Unpin)) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        matches!(read, Ok(Ok(0) | Err(_)))
    }

    #[tokio::test]
    async fn stalled_clients_are_cut_off_and_counted_idle_or_handshake() {
        let short = Duration::from_millis(300);
        let (addr, pin, stats) = limited(ApiLimits {
            max_connections: 16,
            handshake_timeout: short,
            first_request_timeout: short,
            header_read_timeout: short,
            request_timeout: short,
        });
        let ended = |why| stats.ended(why);

        // Half a TLS record, then nothing: the handshake times out.
        let mut half_hello = tokio::net::TcpStream::connect(addr).await.unwrap();
        half_hello
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .unwrap();
        // A TLS connection that never sends a request.
        let mut silent = crate::connect(&addr.to_string(), pin).await.unwrap();
        // Half a request header, then nothing.
        let mut dribble = crate::connect(&addr.to_string(), pin).await.unwrap();
        dribble
            .write_all(b"GET / HTTP/1.1\r\nHost: bastet\r\n")
            .await
            .unwrap();
        dribble.flush().await.unwrap();
        // Whole headers, then part of the body they announce.
        let mut slow_body = crate::connect(&addr.to_string(), pin).await.unwrap();
        slow_body
            .write_all(b"POST / HTTP/1.1\r\nHost: bastet\r\nContent-Length: 100\r\n\r\n0123")
            .await
            .unwrap();
        slow_body.flush().await.unwrap();
        until("four open", || stats.open() == 4).await;

        assert!(closed_by_server(&mut half_hello).await);
        assert!(closed_by_server(&mut silent).await);
        assert!(closed_by_server(&mut dribble).await);
        assert!(closed_by_server(&mut slow_body).await);
        until("all four cut off", || stats.open() == 0).await;
        assert_eq!(ended(ConnectionEnd::Handshake), 1);
        assert_eq!(ended(ConnectionEnd::Idle), 3);
        assert_eq!(ended(ConnectionEnd::Closed), 0);

        // An honest client is served, and its connection ends closed.
        let client = https_client(pin).unwrap();
        let body = client.get(format!("https://{addr}/")).send().await.unwrap();
        assert_eq!(body.text().await.unwrap(), "ok");
        drop(client);
        until("the honest connection closed", || {
            ended(ConnectionEnd::Closed) == 1
        })
        .await;
    }

    #[tokio::test]
    async fn a_client_that_reads_no_answer_is_cut_off() {
        let identity = TlsIdentity::generate().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(ConnectionStats::default());
        // More than the socket buffers on both sides hold.
        let big = axum::body::Bytes::from(vec![b'x'; 64 << 20]);
        let router = axum::Router::new().route("/big", axum::routing::get(move || async { big }));
        let limits = ApiLimits {
            request_timeout: Duration::from_millis(300),
            ..API_LIMITS
        };
        let (s, pin) = (stats.clone(), identity.pin());
        tokio::spawn(async move { serve_limited(listener, &identity, router, s, limits).await });

        let mut tls = crate::connect(&addr.to_string(), pin).await.unwrap();
        tls.write_all(b"GET /big HTTP/1.1\r\nHost: bastet\r\n\r\n")
            .await
            .unwrap();
        tls.flush().await.unwrap();
        // Never read: the node's writes stall, and it gives up.
        until("the stalled answer cut off", || {
            stats.ended(ConnectionEnd::Idle) == 1
        })
        .await;
        until("the connection gone", || stats.open() == 0).await;
        assert_eq!(stats.ended(ConnectionEnd::Closed), 0);
        drop(tls);
    }

    #[tokio::test]
    async fn an_answer_resets_the_request_clock() {
        use tokio::io::AsyncReadExt;
        let (addr, pin, stats) = limited(ApiLimits {
            request_timeout: Duration::from_millis(300),
            ..API_LIMITS
        });
        let mut tls = crate::connect(&addr.to_string(), pin).await.unwrap();
        // Two requests on one connection, further apart than a request may
        // take: each is answered in time, so neither is cut off.
        for _ in 0..2 {
            tls.write_all(b"POST / HTTP/1.1\r\nHost: bastet\r\nContent-Length: 3\r\n\r\nabc")
                .await
                .unwrap();
            tls.flush().await.unwrap();
            let mut answer = Vec::new();
            while !answer.ends_with(b"3 bytes") {
                let mut buf = [0u8; 256];
                let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&answer));
                answer.extend_from_slice(&buf[..n]);
            }
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        drop(tls);
        until("the connection closed", || stats.open() == 0).await;
        assert_eq!(stats.ended(ConnectionEnd::Closed), 1);
        assert_eq!(stats.ended(ConnectionEnd::Idle), 0);
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_refused_and_counted() {
        let (addr, pin, stats) = limited(ApiLimits {
            max_connections: 1,
            ..API_LIMITS
        });
        let held = crate::connect(&addr.to_string(), pin).await.unwrap();
        until("one open", || stats.open() == 1).await;
        assert!(crate::connect(&addr.to_string(), pin).await.is_err());
        until("refused at the limit", || {
            stats.ended(ConnectionEnd::Limit) == 1
        })
        .await;
        assert_eq!(stats.open(), 1);

        // The slot comes back with the connection holding it.
        drop(held);
        until("the held connection gone", || stats.open() == 0).await;
        let client = https_client(pin).unwrap();
        let body = client.get(format!("https://{addr}/")).send().await.unwrap();
        assert_eq!(body.text().await.unwrap(), "ok");
        assert_eq!(stats.ended(ConnectionEnd::Limit), 1);
    }
}
