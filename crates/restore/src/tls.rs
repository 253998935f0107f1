//! The page server's connections, plain TCP or TLS (criu's `--tls`).
//!
//! criu's page server uses GnuTLS with X.509 certificates and both ends
//! authenticate; so does this one (rustls, pure Rust): each end presents
//! its certificate (`--tls-cert`, `--tls-key`) and verifies the other's
//! against the CA (`--tls-cacert`), and against the revocation list
//! (`--tls-cacrl`) if there is one. The client also checks that the
//! server's certificate names the address it connected to (`--address`),
//! unless `--tls-no-cn-verify`. Names are matched against the
//! certificate's subjectAltName entries (DNS names and IP addresses):
//! unlike GnuTLS, rustls does not fall back to the subject's CN.
//!
//! The defaults are criu's: `/etc/pki/CA/cacert.pem`,
//! `/etc/pki/CA/cacrl.pem` (used only if it exists),
//! `/etc/pki/criu/cert.pem` and `/etc/pki/criu/private/key.pem`. Where
//! criu falls back to the system's trusted CAs when the CA file is
//! missing, stasis refuses: a page server trusts only a CA it is given.
//!
//! With TLS 1.3 a client finishes its handshake before the server has
//! judged the client's certificate; so a TLS server, once it accepted the
//! client, sends one byte ([`ACCEPTED`]) and the client waits for it. A
//! refused client thus fails in `connect`, before a dump freezes anything.
//! The protocols above see only the bytes after it.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore,
    ServerConnection, SignatureScheme, StreamOwned,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use rustls::ServerConfig;

/// criu's default files.
pub const DEFAULT_CACERT: &str = "/etc/pki/CA/cacert.pem";
pub const DEFAULT_CACRL: &str = "/etc/pki/CA/cacrl.pem";
pub const DEFAULT_CERT: &str = "/etc/pki/criu/cert.pem";
pub const DEFAULT_KEY: &str = "/etc/pki/criu/private/key.pem";

/// Sent by a TLS server once it accepted the client's certificate.
const ACCEPTED: u8 = 0x06;

/// criu's `--tls-*` options (given only with `--tls`).
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    pub cacert: Option<PathBuf>,
    pub cacrl: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub no_cn_verify: bool,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn path_or<'a>(p: &'a Option<PathBuf>, default: &'static str) -> &'a Path {
    p.as_deref().unwrap_or(Path::new(default))
}

/// Every PEM object of type `T` in the file of option `flag`; at least one.
fn pem_all<T: PemObject>(flag: &str, p: &Path, what: &str) -> Result<Vec<T>, String> {
    let all = T::pem_file_iter(p)
        .and_then(|it| it.collect::<Result<Vec<T>, _>>())
        .map_err(|e| format!("{flag} {}: {e}", p.display()))?;
    if all.is_empty() {
        return Err(format!("{flag} {}: no {what} in it", p.display()));
    }
    Ok(all)
}

/// The peer's verifier (a webpki client or server verifier builder: the
/// same calls, two types): the CA, and the revocation lists if any (the
/// end entity's status; one no list speaks for is accepted, as GnuTLS).
macro_rules! verifier {
    ($o:expr, $kind:ty) => {
        <$kind>::builder_with_provider(Arc::new($o.roots()?), provider())
            .with_crls($o.crls()?)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| format!("--tls: {e}"))?
    };
}

impl TlsOptions {
    fn roots(&self) -> Result<RootCertStore, String> {
        let p = path_or(&self.cacert, DEFAULT_CACERT);
        let mut roots = RootCertStore::empty();
        for c in pem_all::<CertificateDer>("--tls-cacert", p, "certificate")? {
            roots
                .add(c)
                .map_err(|e| format!("--tls-cacert {}: {e}", p.display()))?;
        }
        Ok(roots)
    }

    /// The revocation lists: the given file, or criu's default if it exists.
    fn crls(&self) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
        match &self.cacrl {
            Some(p) => pem_all("--tls-cacrl", p, "revocation list"),
            None if Path::new(DEFAULT_CACRL).exists() => {
                pem_all("--tls-cacrl", Path::new(DEFAULT_CACRL), "revocation list")
            }
            None => Ok(Vec::new()),
        }
    }

    fn identity(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
        let certs = pem_all(
            "--tls-cert",
            path_or(&self.cert, DEFAULT_CERT),
            "certificate",
        )?;
        let k = path_or(&self.key, DEFAULT_KEY);
        let key = PrivateKeyDer::from_pem_file(k)
            .map_err(|e| format!("--tls-key {}: {e}", k.display()))?;
        Ok((certs, key))
    }

    /// The client's configuration (every file read and checked).
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, String> {
        let inner = verifier!(self, rustls::client::WebPkiServerVerifier);
        let (certs, key) = self.identity()?;
        let cfg = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("--tls: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NameCheck {
                inner,
                names: !self.no_cn_verify,
            }))
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
        Ok(Arc::new(cfg))
    }

    /// The server's configuration: a client certificate is required.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, String> {
        let verifier = verifier!(self, WebPkiClientVerifier);
        let (certs, key) = self.identity()?;
        let cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("--tls: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
        Ok(Arc::new(cfg))
    }
}

/// The CA check always; the name check unless `--tls-no-cn-verify`.
#[derive(Debug)]
struct NameCheck {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    names: bool,
}

impl ServerCertVerifier for NameCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            // webpki checks the name only once the chain verified.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.names => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// One page-server connection.
pub enum Conn {
    Plain(TcpStream),
    Client(Box<StreamOwned<ClientConnection, TcpStream>>),
    Server(Box<StreamOwned<ServerConnection, TcpStream>>),
}

fn tls_error(e: std::io::Error) -> String {
    // rustls reports a peer's refusal or a bad certificate as InvalidData.
    let Some(inner) = e.get_ref() else {
        return format!("TLS: {e}");
    };
    match inner.downcast_ref::<rustls::Error>() {
        Some(rustls::Error::AlertReceived(a @ rustls::AlertDescription::UnknownCA)) => format!(
            "TLS: the peer refused the session (alert {a:?}): is our --tls-cert signed by its --tls-cacert?"
        ),
        Some(rustls::Error::AlertReceived(a)) => {
            format!("TLS: the peer refused the session (alert {a:?}: it did not accept our certificate)")
        }
        Some(rustls::Error::InvalidMessage(m)) => {
            format!("TLS: the peer does not speak TLS ({m:?}): --tls on one end only?")
        }
        Some(rustls::Error::InvalidCertificate(c)) => {
            format!("TLS: the peer's certificate: {c}")
        }
        Some(rustls::Error::NoCertificatesPresented) => {
            "TLS: the peer presented no certificate".into()
        }
        _ => format!("TLS: {inner}"),
    }
}

impl Conn {
    /// The client end: TLS if `tls` is given, its handshake done, the
    /// server's certificate checked against `host` and the server's
    /// acceptance of ours received.
    pub fn connect(
        tcp: TcpStream,
        host: &str,
        tls: Option<&Arc<ClientConfig>>,
    ) -> Result<Conn, String> {
        let Some(cfg) = tls else {
            return Ok(Conn::Plain(tcp));
        };
        // Without the name check any name does; with it a bad one fails.
        let name = ServerName::try_from(host.to_string())
            .or_else(|_| ServerName::try_from("stasis-page-server".to_string()))
            .map_err(|e| format!("TLS: {host}: {e}"))?;
        let conn = ClientConnection::new(cfg.clone(), name).map_err(|e| format!("TLS: {e}"))?;
        let mut s = StreamOwned::new(conn, tcp);
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(1) if b[0] == ACCEPTED => Ok(Conn::Client(Box::new(s))),
            Ok(0) => Err("TLS: the server closed the connection during the handshake".into()),
            Ok(_) => {
                Err("TLS: the server did not follow the handshake as a stasis page server".into())
            }
            Err(e) => Err(tls_error(e)),
        }
    }

    /// The server end: TLS if `tls` is given, the client's certificate
    /// verified, and the acceptance byte sent.
    pub fn accept(tcp: TcpStream, tls: Option<&Arc<ServerConfig>>) -> Result<Conn, String> {
        let Some(cfg) = tls else {
            return Ok(Conn::Plain(tcp));
        };
        let conn = ServerConnection::new(cfg.clone()).map_err(|e| format!("TLS: {e}"))?;
        let mut s = StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            if let Err(e) = s.conn.complete_io(&mut s.sock) {
                // Tell the client why, if the TLS layer has an alert for it.
                let _ = s.conn.complete_io(&mut s.sock);
                return Err(tls_error(e));
            }
        }
        s.write_all(&[ACCEPTED])
            .and_then(|()| s.flush())
            .map_err(tls_error)?;
        Ok(Conn::Server(Box::new(s)))
    }

    /// The TCP socket under it.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Client(s) => &s.sock,
            Conn::Server(s) => &s.sock,
        }
    }

    /// Ends a TLS session cleanly (close_notify); a no-op for plain TCP.
    pub fn close(&mut self) {
        match self {
            Conn::Plain(_) => {}
            Conn::Client(s) => {
                s.conn.send_close_notify();
                let _ = s.flush();
            }
            Conn::Server(s) => {
                s.conn.send_close_notify();
                let _ = s.flush();
            }
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Client(s) => s.read(buf),
            Conn::Server(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Client(s) => s.write(buf),
            Conn::Server(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Client(s) => s.flush(),
            Conn::Server(s) => s.flush(),
        }
    }
}
