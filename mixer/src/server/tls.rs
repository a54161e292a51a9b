//! TLS on the public port: `wss://` and `https://` from a PEM certificate chain and key.
//!
//! [`TlsReloader`] holds the files' paths and the configuration last read from them. Each
//! accepted connection takes the configuration current at that moment; [`TlsReloader::reload`]
//! (on SIGHUP) reads the files again and swaps in the new one. A connection keeps the session it
//! was set up with for its whole life, so reloading never drops anyone: only handshakes after the
//! swap present the new certificate. A reload that fails (a missing file, a key that does not
//! match its certificate, a half-written file) is logged and changes nothing.
//!
//! The handshake runs in the connection's own task under the handshake timeout (see
//! [`TlsReloader::accept`]), never in the accept loop, so a client that handshakes slowly
//! holds up only itself.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, crypto::ring};
use tokio_rustls::server::TlsStream;
use tracing::{debug, error, info};

/// Where the certificate chain and its private key are read from (and reread on reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the first certificate.
    pub key: PathBuf,
}

/// Why the certificate and key could not be made into a TLS configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {}: {message}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The certificate file is not PEM or holds no `CERTIFICATE` block.
    #[error("{} holds no PEM certificate ({message})", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        message: String,
    },
    /// The key file is not PEM or holds no private key.
    #[error("{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1) ({message})", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        message: String,
    },
    /// rustls refused the pair: an unsupported key, or a key that is not the certificate's.
    #[error("{} with {}: {message}", cert.display(), key.display())]
    Rejected {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        message: String,
    },
}

/// The public port's TLS: the files, and the configuration read from them last. Cloning is
/// cheap and every clone sees reloads.
#[derive(Clone)]
pub struct TlsReloader {
    inner: Arc<Inner>,
}

struct Inner {
    files: TlsFiles,
    /// Swapped whole on reload; a handshake clones the `Arc` it finds here and keeps it, so an
    /// open connection is untouched by a swap. Held only for a clone or an assignment.
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsReloader")
            .field("files", &self.inner.files)
            .finish_non_exhaustive()
    }
}

impl TlsReloader {
    /// Reads the certificate and key; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<TlsReloader, TlsError> {
        let (config, leaf) = server_config(&files)?;
        info!(cert = %files.cert.display(), not_after = %describe_not_after(&leaf),
              "TLS certificate loaded");
        Ok(TlsReloader {
            inner: Arc::new(Inner {
                files,
                current: RwLock::new(config),
            }),
        })
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsFiles {
        &self.inner.files
    }

    /// Reads the files again and, if they make a valid configuration, uses it for every
    /// handshake from now on; otherwise keeps the current one. Logs either way.
    pub fn reload(&self) -> Result<(), TlsError> {
        match server_config(&self.inner.files) {
            Ok((config, leaf)) => {
                *self
                    .inner
                    .current
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = config;
                info!(cert = %self.inner.files.cert.display(), not_after = %describe_not_after(&leaf),
                      "TLS certificate reloaded; new connections use it");
                Ok(())
            }
            Err(reason) => {
                error!(%reason, "TLS reload failed; still serving the previous certificate");
                Err(reason)
            }
        }
    }

    /// The acceptor for a handshake starting now.
    fn acceptor(&self) -> TlsAcceptor {
        // Nothing panics while holding the lock, so a poisoned one still holds a whole config.
        let config = self
            .inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        TlsAcceptor::from(config)
    }

    /// Runs the server side of the TLS handshake on an accepted connection within `timeout`.
    /// A client that speaks plain HTTP to this port (its first byte is not a TLS handshake
    /// record) is told, in plain HTTP, to use `wss://` or `https://`. `None` when there is no
    /// usable TLS session; the reason is logged at debug level (it is the client's doing).
    pub async fn accept(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        timeout: Duration,
    ) -> Option<TlsStream<TcpStream>> {
        let handshake = async {
            let mut first = [0u8; 1];
            if stream.peek(&mut first).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if first[0] != TLS_HANDSHAKE_RECORD {
                let mut stream = stream;
                let _ = super::http::respond(&mut stream, "400 Bad Request", PLAIN_ON_TLS).await;
                return Err(std::io::Error::other("plain HTTP on the TLS port"));
            }
            self.acceptor().accept(stream).await
        };
        match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(error)) => {
                debug!(%peer, %error, "TLS handshake failed");
                None
            }
            Err(_) => {
                debug!(%peer, "TLS handshake timed out");
                None
            }
        }
    }
}

/// The first byte of a TLS connection: a handshake record (RFC 8446 §5.1).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a plain-HTTP client on the TLS port is told.
const PLAIN_ON_TLS: &str = "this port speaks TLS: connect with wss:// or https://\n";

/// Reads both files and builds the configuration; also returns the leaf certificate.
fn server_config(
    files: &TlsFiles,
) -> Result<(Arc<rustls::ServerConfig>, CertificateDer<'static>), TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| TlsError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })
    };
    let (cert_pem, key_pem) = (read(&files.cert)?, read(&files.key)?);
    let no_certificate = |message: String| TlsError::NoCertificate {
        path: files.cert.clone(),
        message,
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| no_certificate(e.to_string()))?;
    let Some(leaf) = chain.first().cloned() else {
        return Err(no_certificate("no CERTIFICATE block".into()));
    };
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
        path: files.key.clone(),
        message: e.to_string(),
    })?;
    let rejected = |e: rustls::Error| TlsError::Rejected {
        cert: files.cert.clone(),
        key: files.key.clone(),
        message: e.to_string(),
    };
    // The provider is named rather than taken from the process default, which rustls can only
    // pick by itself while exactly one provider is compiled in.
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(rejected)?
            .with_no_client_auth()
            // Also checks that the key is the certificate's.
            .with_single_cert(chain, key)
            .map_err(rejected)?;
    // WebSocket upgrades and the plain routes are HTTP/1.1; saying so lets clients that offer
    // h2 first (browsers, curl) settle on it in the handshake.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), leaf))
}

/// The certificate's expiry for the log, or why it could not be read.
fn describe_not_after(cert: &[u8]) -> String {
    not_after(cert).unwrap_or_else(|| "unknown (unparsed validity)".into())
}

/// The `notAfter` of a DER X.509 certificate as "YYYY-MM-DD HH:MM:SS UTC". Only reads as far as
/// the validity (RFC 5280 §4.1): a log line is not worth an X.509 parser crate.
pub fn not_after(cert: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    let (tag, certificate, _) = der_item(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = der_item(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    // version ([0], optional), serialNumber, signature, issuer, then validity.
    let (tag, _, mut rest) = der_item(tbs)?;
    let skip = if tag == 0xa0 { 3 } else { 2 };
    for _ in 0..skip {
        rest = der_item(rest)?.2;
    }
    let (tag, validity, _) = der_item(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (_, _, after_not_before) = der_item(validity)?;
    let (tag, time, _) = der_item(after_not_before)?;
    let time = std::str::from_utf8(time).ok()?;
    // UTCTime YYMMDDHHMMSSZ (years 1950-2049), GeneralizedTime YYYYMMDDHHMMSSZ.
    let (year, rest) = match tag {
        0x17 => {
            let yy: u32 = time.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, time.get(2..)?)
        }
        0x18 => (time.get(..4)?.parse().ok()?, time.get(4..)?),
        _ => return None,
    };
    let field = |at: usize| {
        rest.get(at..at + 2)
            .filter(|f| f.bytes().all(|b| b.is_ascii_digit()))
    };
    Some(format!(
        "{year:04}-{}-{} {}:{}:{} UTC",
        field(0)?,
        field(2)?,
        field(4)?,
        field(6)?,
        field(8)?
    ))
}

/// One DER item: (tag, contents, what follows). Short and long definite lengths only.
fn der_item(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len = input
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |len, b| (len << 8) | usize::from(*b));
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((tag, input.get(header..end)?, input.get(end..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(not_after: (i32, u8, u8)) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mixer-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn not_after_reads_utc_and_generalized_times() {
        for (date, expected) in [
            ((2031, 5, 6), "2031-05-06 00:00:00 UTC"),
            // From 2050 on, X.509 writes GeneralizedTime.
            ((2061, 12, 31), "2061-12-31 00:00:00 UTC"),
        ] {
            let (pem, _) = certificate(date);
            let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
            assert_eq!(not_after(&der).as_deref(), Some(expected));
        }
        assert_eq!(not_after(b""), None);
        assert_eq!(not_after(&[0x30, 0x82, 0xff]), None);
        assert_eq!(not_after(&[0x30, 0x03, 0x30, 0x01, 0x02]), None);
    }

    #[test]
    fn load_names_the_bad_file_and_reload_keeps_the_old_config_on_failure() {
        let dir = scratch("load");
        let (cert, key) = certificate((2040, 1, 1));
        let (_, other_key) = certificate((2040, 1, 1));
        let files = TlsFiles {
            cert: write(&dir, "cert.pem", &cert),
            key: write(&dir, "key.pem", &key),
        };
        let missing = TlsFiles {
            cert: dir.join("nope.pem"),
            key: files.key.clone(),
        };
        let err = TlsReloader::load(missing).expect_err("missing file");
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        assert!(err.to_string().contains("nope.pem"), "{err}");
        let swapped = TlsFiles {
            cert: files.key.clone(),
            key: files.cert.clone(),
        };
        let err = TlsReloader::load(swapped).expect_err("swapped files");
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        let mismatched = TlsFiles {
            cert: files.cert.clone(),
            key: write(&dir, "other.pem", &other_key),
        };
        let err = TlsReloader::load(mismatched).expect_err("key of another certificate");
        assert!(matches!(err, TlsError::Rejected { .. }), "{err}");

        let tls = TlsReloader::load(files.clone()).expect("valid pair");
        let before = tls.acceptor().config().clone();
        write(&dir, "cert.pem", "-----BEGIN CERTIFICATE-----\ngarbage");
        assert!(tls.reload().is_err());
        assert!(
            Arc::ptr_eq(&before, tls.acceptor().config()),
            "kept the old config"
        );
        write(&dir, "cert.pem", &cert);
        tls.reload().expect("valid again");
        assert!(!Arc::ptr_eq(&before, tls.acceptor().config()), "swapped");
        assert_eq!(
            tls.acceptor().config().alpn_protocols,
            vec![b"http/1.1".to_vec()]
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
