//! Connecting to a mixer over `ws://` or `wss://` (and opening `http://` or `https://` streams).
//!
//! The TCP connection and the TLS handshake are done here, with tokio-rustls, and the WebSocket
//! handshake is handed the resulting stream: tokio-tungstenite's own TLS features would bring
//! a second TLS configuration (and, by default, aws-lc-rs's C build) for the same job. `ws://`
//! takes exactly the path it took before TLS existed: TCP, then the WebSocket handshake.
//!
//! A [`Connector`] trusts either one CA from a PEM file (`--ca-file`, for test certificates) or
//! the system's roots (through rustls-native-certs: the machine's own store, which also holds
//! any private CA an operator installed there, rather than a copy of Mozilla's list compiled in
//! that goes stale with the binary).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore, crypto::ring};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A WebSocket connection to a mixer, plain or TLS.
pub type Ws = WebSocketStream<Stream>;

/// A connection's byte stream: plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum Stream {
    /// `ws://` or `http://`.
    Plain(TcpStream),
    /// `wss://` or `https://` (boxed: a TLS session's state is large).
    Tls(Box<TlsStream<TcpStream>>),
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Not a URL this client connects to.
    #[error("bad URL {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `wss://` URL given to a connector made for `ws://` URLs only.
    #[error("{0:?} needs TLS, which this connector was not set up for")]
    NoTls(String),
    /// The CA file could not be read or holds no certificate.
    #[error("CA file {}: {message}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The system's trust store had no usable root certificate.
    #[error("no trusted root certificates found on this system; pass --ca-file")]
    NoRoots,
    /// The TCP connection failed. (The error is in the message, not a `source`: loadgen
    /// reports errors by their message alone, and a chain would say it twice.)
    #[error("connecting to {address}: {error}")]
    Tcp {
        /// host:port.
        address: String,
        /// The socket error.
        error: io::Error,
    },
    /// The TLS handshake failed (an untrusted certificate, a name mismatch, not TLS...).
    #[error("TLS handshake with {host}: {error}")]
    Tls {
        /// The server name verified.
        host: String,
        /// rustls's reason, as an I/O error.
        error: io::Error,
    },
    /// The WebSocket handshake failed (an HTTP error status, a closed connection...).
    #[error("WebSocket handshake: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
}

/// Opens connections to `ws://`, `wss://`, `http://` and `https://` URLs. Cloning is cheap.
#[derive(Clone)]
pub struct Connector {
    tls: Option<TlsConnector>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Connector {
    /// A connector for plain `ws://` and `http://` only.
    pub fn plain() -> Connector {
        Connector { tls: None }
    }

    /// A connector for TLS and plain URLs, trusting only the CA in `ca_file` (PEM) if given,
    /// otherwise the system's roots.
    pub fn tls(ca_file: Option<&Path>) -> Result<Connector, ConnectError> {
        let mut roots = RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let ca_error = |message: String| ConnectError::CaFile {
                    path: path.to_owned(),
                    message,
                };
                let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| ca_error(e.to_string()))?;
                    roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(ca_error("no CERTIFICATE block".into()));
                }
            }
            None => {
                // Certificates the store holds that rustls cannot parse are skipped, as
                // browsers do; only an empty result is an error.
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
                if roots.is_empty() {
                    return Err(ConnectError::NoRoots);
                }
            }
        }
        let provider = Arc::new(ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConnectError::Tls {
                host: String::new(),
                error: io::Error::other(e),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Connector {
            tls: Some(TlsConnector::from(Arc::new(config))),
        })
    }

    /// A connector for `urls`: with TLS (see [`Connector::tls`]) only if one of them needs it,
    /// so plain runs never read a trust store.
    pub fn for_urls(urls: &[String], ca_file: Option<&Path>) -> Result<Connector, ConnectError> {
        let secure = urls
            .iter()
            .any(|url| url.starts_with("wss://") || url.starts_with("https://"));
        if secure || ca_file.is_some() {
            Connector::tls(ca_file)
        } else {
            Ok(Connector::plain())
        }
    }

    /// Connects to `url` and performs the WebSocket handshake with `config`.
    pub async fn websocket(
        &self,
        url: &str,
        config: Option<WebSocketConfig>,
    ) -> Result<(Ws, Response), ConnectError> {
        let (stream, request) = self.open(url).await?;
        tokio_tungstenite::client_async_with_config(request, stream, config)
            .await
            .map_err(|e| ConnectError::WebSocket(Box::new(e)))
    }

    /// Opens the TCP connection (and TLS session) to `url`'s host, without any HTTP; returns
    /// the stream and the WebSocket upgrade request for `url`.
    pub async fn open(&self, url: &str) -> Result<(Stream, Request), ConnectError> {
        let bad = |reason: &str| ConnectError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        // The upgrade request is built from the ws(s) spelling of the URL; http(s) URLs (for
        // plain requests) map onto it.
        let ws_url = match url.split_once("://") {
            Some(("http", rest)) => format!("ws://{rest}"),
            Some(("https", rest)) => format!("wss://{rest}"),
            _ => url.to_owned(),
        };
        let request = ws_url
            .into_client_request()
            .map_err(|e| bad(&e.to_string()))?;
        let uri = request.uri();
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(bad("the scheme must be ws://, wss://, http:// or https://")),
        };
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        // An IPv6 literal comes bracketed in a URI; neither sockets nor names take brackets.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tls = match secure {
            true => Some(
                self.tls
                    .as_ref()
                    .ok_or_else(|| ConnectError::NoTls(url.to_owned()))?,
            ),
            false => None,
        };
        let address = format!("{host}:{port}");
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|error| ConnectError::Tcp {
                address: address.clone(),
                error,
            })?;
        let Some(tls) = tls else {
            return Ok((Stream::Plain(tcp), request));
        };
        let name =
            ServerName::try_from(host.clone()).map_err(|_| bad("not a valid server name"))?;
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|error| ConnectError::Tls { host, error })?;
        Ok((Stream::Tls(Box::new(stream)), request))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_urls_and_ca_files_are_named() {
        let plain = Connector::plain();
        for url in ["ftp://x/", "not a url", "ws:///"] {
            let err = plain.open(url).await.expect_err(url);
            assert!(matches!(err, ConnectError::Url { .. }), "{url}: {err}");
        }
        // Refused before any connection is attempted.
        let err = plain.open("wss://127.0.0.1:9/").await.expect_err("no tls");
        assert!(matches!(err, ConnectError::NoTls(_)), "{err}");
        let err = Connector::tls(Some(Path::new("/nonexistent/ca.pem"))).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        assert!(
            Connector::for_urls(&["ws://a/".into()], None)
                .expect("plain")
                .tls
                .is_none()
        );
    }
}
