//! Self-signed identities, pins, and the rustls configurations that use them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use subtle::ConstantTimeEq;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::{Error, Result};

/// The name every node certificate carries. Names carry no trust here: the
/// pin does.
const CERT_NAME: &str = "node.bastet.invalid";

/// BLAKE3 hash of a peer's DER certificate, published in its signed descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertPin(pub [u8; 32]);

impl CertPin {
    /// The pin of a DER certificate.
    pub fn of(cert_der: &[u8]) -> Self {
        CertPin(*blake3::hash(cert_der).as_bytes())
    }

    /// Lower-case hex, as written in configs.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|_| Error::BadPin(s.to_string()))?;
        Ok(CertPin(out))
    }

    fn matches(&self, cert_der: &[u8]) -> bool {
        bool::from(Self::of(cert_der).0.ct_eq(&self.0))
    }
}

impl fmt::Debug for CertPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertPin({})", &self.to_hex()[..8])
    }
}

impl fmt::Display for CertPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A node's TLS certificate and private key.
pub struct TlsIdentity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsIdentity {
    /// A fresh self-signed Ed25519 certificate.
    pub fn generate() -> Result<Self> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let params = rcgen::CertificateParams::new(vec![CERT_NAME.to_string()])?;
        let cert = params.self_signed(&key)?;
        let key_der = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|_| rcgen::Error::CouldNotParseKeyPair)?;
        Ok(TlsIdentity {
            cert: cert.der().clone(),
            key: key_der,
        })
    }

    /// Writes `tls-cert.pem` and `tls-key.pem` (mode 0600) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let cert_path = dir.join("tls-cert.pem");
        let key_path = dir.join("tls-key.pem");
        let cert_pem = pem_block("CERTIFICATE", self.cert.as_ref());
        let key_pem = pem_block("PRIVATE KEY", self.key.secret_der());
        std::fs::write(&cert_path, cert_pem).map_err(|source| Error::File {
            path: cert_path,
            source,
        })?;
        write_private(&key_path, key_pem.as_bytes()).map_err(|source| Error::File {
            path: key_path,
            source,
        })
    }

    /// Reads what [`TlsIdentity::save`] wrote.
    pub fn load(dir: &Path) -> Result<Self> {
        let cert_path = dir.join("tls-cert.pem");
        let key_path = dir.join("tls-key.pem");
        let cert = CertificateDer::from_pem_file(&cert_path).map_err(|_| Error::BadPem {
            path: cert_path,
            what: "PEM certificate",
        })?;
        let pem = read_private(&key_path, 64 << 10).map_err(|source| Error::File {
            path: key_path.clone(),
            source,
        })?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| Error::BadPem {
            path: key_path,
            what: "PEM private key",
        })?;
        Ok(TlsIdentity { cert, key })
    }

    /// The pin peers use to recognise this certificate.
    pub fn pin(&self) -> CertPin {
        CertPin::of(self.cert.as_ref())
    }
}

/// Checks that a secret file is readable and writable by its owner only
/// (no group or other bits): a key others can read is refused, with the
/// command that fixes it.
pub fn check_private(path: &Path) -> std::io::Result<()> {
    read_private(path, 0).map(|_| ())
}

/// Opens a secret file once, checks on the open file that only its owner
/// can read or write it (see [`check_private`]), and reads at most `max`
/// bytes of it (more is an error): the bytes checked are the bytes read.
pub fn read_private(path: &Path, max: u64) -> std::io::Result<zeroize::Zeroizing<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let file = std::fs::File::open(path)?;
    let mode = file.metadata()?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(std::io::Error::other(format!(
            "a secret others can read or write (mode {mode:04o}): run `chmod 600 {}` (and check who read it)",
            path.display()
        )));
    }
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max && max > 0 {
        return Err(std::io::Error::other(format!(
            "{} is larger than {max} bytes: not a key file",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Writes a secret file readable only by its owner (created with mode 0600,
/// truncated if it exists) and syncs it to disk.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode through `open`: make it private.
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use data_encoding::BASE64;
    let b64 = BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server side of a link: TLS 1.3 only, no client certificates.
pub fn server_config(identity: &TlsIdentity) -> Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // No session tickets. Nothing here resumes sessions (peers are pinned
    // and links long-lived), a ticket would let a server link a client's
    // connections, and tickets a client never reads sit in its receive
    // buffer: closing a socket with unread bytes sends a reset instead of a
    // FIN, and the reset makes the server's kernel throw away the frames it
    // had received but this side had not read yet.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Client side of a link to the peer whose certificate has `pin`.
pub fn client_config(pin: CertPin) -> Result<ClientConfig> {
    let provider = provider();
    let verifier = PinnedVerifier {
        pin,
        algorithms: provider.signature_verification_algorithms,
    };
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// Opens a TLS connection to `addr` and checks the peer presents `pin`.
pub async fn connect(addr: &str, pin: CertPin) -> Result<TlsStream<TcpStream>> {
    connect_from(None, addr, pin).await
}

/// [`connect`], from the local address `bind` (any port) when given: on a
/// host with several addresses, the one peers see.
pub async fn connect_from(
    bind: Option<IpAddr>,
    addr: &str,
    pin: CertPin,
) -> Result<TlsStream<TcpStream>> {
    let connect_err = |source| Error::Connect {
        addr: addr.to_string(),
        source,
    };
    let tcp = match bind {
        None => TcpStream::connect(addr).await.map_err(connect_err)?,
        Some(local) => tcp_from(local, addr).await.map_err(connect_err)?,
    };
    tcp.set_nodelay(true).map_err(connect_err)?;
    let connector = TlsConnector::from(Arc::new(client_config(pin)?));
    let name =
        ServerName::try_from(CERT_NAME).map_err(|_| rustls::Error::General("name".into()))?;
    connector.connect(name, tcp).await.map_err(connect_err)
}

/// A TCP connection from `local` to the first address `addr` resolves to
/// in the same family.
async fn tcp_from(local: IpAddr, addr: &str) -> std::io::Result<TcpStream> {
    let mut last = None;
    for remote in tokio::net::lookup_host(addr).await? {
        if remote.is_ipv4() != local.is_ipv4() {
            continue;
        }
        let socket = if local.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(local, 0))?;
        match socket.connect(remote).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("{addr} has no address in the family of the bind address {local}"),
        )
    }))
}

/// Accepts exactly one certificate: the pinned one. Handshake signatures are
/// still verified, so the peer must hold the pinned certificate's key.
#[derive(Debug)]
struct PinnedVerifier {
    pin: CertPin,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if intermediates.is_empty() && self.pin.matches(end_entity.as_ref()) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "Bastet links speak TLS 1.3 only".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server(identity: TlsIdentity) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(&identity).unwrap());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let mut b = [0u8; 4];
                        if tls.read_exact(&mut b).await.is_ok() {
                            let _ = tls.write_all(&b).await;
                            let _ = tls.flush().await;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn pinned_connection_works_and_a_wrong_pin_is_refused() {
        let identity = TlsIdentity::generate().unwrap();
        let pin = identity.pin();
        let addr = echo_server(identity).await;

        let mut tls = connect(&addr, pin).await.unwrap();
        tls.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        tls.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");

        let other = TlsIdentity::generate().unwrap().pin();
        assert!(matches!(
            connect(&addr, other).await,
            Err(Error::Connect { .. })
        ));
    }

    #[test]
    fn identity_survives_save_and_load_and_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let identity = TlsIdentity::generate().unwrap();
        identity.save(dir.path()).unwrap();
        let loaded = TlsIdentity::load(dir.path()).unwrap();
        assert_eq!(identity.pin(), loaded.pin());
        let mode = std::fs::metadata(dir.path().join("tls-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
        // A key others can read is refused, naming the fix.
        let key = dir.path().join("tls-key.pem");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = TlsIdentity::load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn pin_hex_round_trips_and_rejects_garbage() {
        let pin = CertPin([3; 32]);
        assert_eq!(CertPin::from_hex(&pin.to_hex()).unwrap(), pin);
        assert!(CertPin::from_hex("abc").is_err());
    }
}
