//! loadgen's own Prometheus endpoint (`--metrics-listen`): the live counters of a run on
//! `GET /metrics`, so a load test can be watched in the same Grafana as the mixer it loads
//! (`dashboards/grafana/loadgen.json`).
//!
//! A minimal HTTP/1.1 server written here rather than a web framework: it answers one request
//! per connection (`Connection: close`), which is all a Prometheus scrape needs, and keeps
//! loadgen's dependencies to what it already had. Values are read from [`Live`]'s atomics at
//! scrape time, so serving costs the clients nothing between scrapes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{Encoder, IntCounter, IntGauge, Registry, TextEncoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::stats::Live;

/// The most a request head may take: a scrape's is a few hundred bytes.
const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// How long a connection may take to send its request head, so that idle or trickling
/// connections do not pile up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `GET /metrics` (the Prometheus text format) from `live` on `listener` until the task
/// is dropped or aborted; any other path is 404, any other method 405, a request that is not
/// HTTP 400. Each connection is served on a task of its own, so one slow client holds up no
/// scrape, and nothing a client sends can end the server.
pub async fn serve(listener: TcpListener, live: Arc<Live>) {
    let metrics = Arc::new(LiveMetrics::new(live));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    // A client that goes away mid-answer is its own business.
                    let _ = answer(stream, &metrics).await;
                });
            }
            // Out of file descriptors, say: back off rather than spin, and keep serving.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Reads one request head from `stream` and answers it.
async fn answer(mut stream: TcpStream, metrics: &LiveMetrics) -> std::io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let response = match route(&head) {
        Route::Metrics => Response::ok(metrics.encode()),
        Route::NotFound => Response::text("404 Not Found", "not found; try /metrics\n"),
        Route::NotAllowed => Response::text("405 Method Not Allowed", "only GET\n"),
        Route::Bad => Response::text("400 Bad Request", "bad request\n"),
    };
    stream.write_all(&response.into_bytes()).await?;
    stream.shutdown().await
}

/// The bytes up to the end of the request head (`\r\n\r\n`), or as many as came before the
/// client stopped sending or the limit was reached (then [`route`] finds them bad).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buffer = [0u8; 1024];
    while head.len() < MAX_REQUEST_BYTES && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..n]);
    }
    Ok(head)
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// `GET /metrics` (a query string is ignored).
    Metrics,
    /// `GET` of any other path.
    NotFound,
    /// Another method.
    NotAllowed,
    /// Not an HTTP request line, or a head that never ended.
    Bad,
}

fn route(head: &[u8]) -> Route {
    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Route::Bad;
    };
    let Ok(head) = std::str::from_utf8(&head[..end]) else {
        return Route::Bad;
    };
    let request_line = head.split("\r\n").next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::Bad;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Route::Bad;
    }
    if method != "GET" {
        return Route::NotAllowed;
    }
    match target.split('?').next() {
        Some("/metrics") => Route::Metrics,
        _ => Route::NotFound,
    }
}

/// A whole response, always closing the connection.
struct Response {
    status: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn ok(body: Vec<u8>) -> Response {
        Response {
            status: "200 OK",
            content_type: prometheus::TEXT_FORMAT,
            body,
        }
    }

    fn text(status: &'static str, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        let mut bytes = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// Which of [`Live`]'s counters a Prometheus counter mirrors.
type LiveField = fn(&Live) -> &AtomicU64;

/// The Prometheus metrics of a [`Live`], in a registry of their own (no global state, as in the
/// mixer), copied from its atomics just before each scrape is encoded.
struct LiveMetrics {
    live: Arc<Live>,
    registry: Registry,
    connected: IntGauge,
    /// Each counter with the [`Live`] atomic it mirrors.
    counters: Vec<(IntCounter, LiveField)>,
    /// Held while copying and encoding, so two scrapes at once do not both add the same
    /// increase to a counter.
    scrape: Mutex<()>,
}

impl LiveMetrics {
    fn new(live: Arc<Live>) -> LiveMetrics {
        let registry = Registry::new();
        let connected = IntGauge::new(
            "loadgen_clients_connected",
            "Simulated clients currently joined to their room.",
        )
        .expect("a static, valid metric name and help");
        let counter_defs: [(&str, &str, LiveField); 5] = [
            (
                "loadgen_frames_received_total",
                "Audio frames the clients received from the mixer.",
                |l| &l.frames,
            ),
            (
                "loadgen_frames_lost_total",
                "Frames missing from the server's sequence numbers (a gap ending in an unmarked \
                 frame: dropped by the server).",
                |l| &l.lost,
            ),
            (
                "loadgen_frames_paused_total",
                "Frames the server paused because a client's mix was silent (a gap ending in a \
                 marked frame; not loss).",
                |l| &l.paused,
            ),
            (
                "loadgen_errors_total",
                "Failed joins, disconnects, dropped connections and server error messages.",
                |l| &l.errors,
            ),
            (
                "loadgen_reconnections_total",
                "Sessions that broke mid-run (a redirect or a dropped connection) and were \
                 rejoined or are being rejoined.",
                |l| &l.reconnections,
            ),
        ];
        let counters: Vec<(IntCounter, LiveField)> = counter_defs
            .into_iter()
            .map(|(name, help, field)| {
                let counter =
                    IntCounter::new(name, help).expect("a static, valid metric name and help");
                (counter, field)
            })
            .collect();
        registry
            .register(Box::new(connected.clone()))
            .expect("each name is registered once");
        for (counter, _) in &counters {
            registry
                .register(Box::new(counter.clone()))
                .expect("each name is registered once");
        }
        LiveMetrics {
            live,
            registry,
            connected,
            counters,
            scrape: Mutex::new(()),
        }
    }

    /// The current values in the Prometheus text format.
    fn encode(&self) -> Vec<u8> {
        // A poisoned lock only means another scrape panicked; the counters are still whole.
        let _guard = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        let connected = self.live.connected.load(Ordering::Relaxed);
        self.connected
            .set(i64::try_from(connected).unwrap_or(i64::MAX));
        for (counter, field) in &self.counters {
            let now = field(&self.live).load(Ordering::Relaxed);
            // Live's counters only grow; if they ever start again (a new Live), so does the
            // counter, which Prometheus reads as a reset.
            if now < counter.get() {
                counter.reset();
            }
            counter.inc_by(now - counter.get());
        }
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for these plain metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        buffer
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    async fn start(live: Arc<Live>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("bound");
        (addr, tokio::spawn(serve(listener, live)))
    }

    /// Sends `request` as is, ends the sending side (so a head without its end is seen to
    /// stop), and reads the whole response.
    async fn try_exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request).await?;
        stream.shutdown().await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok(response)
    }

    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        try_exchange(addr, request).await.expect("an answer")
    }

    fn live_with_counts() -> Arc<Live> {
        let live = Live::default();
        live.connected.store(7, Ordering::Relaxed);
        live.frames.store(12_345, Ordering::Relaxed);
        live.lost.store(3, Ordering::Relaxed);
        live.paused.store(400, Ordering::Relaxed);
        live.errors.store(2, Ordering::Relaxed);
        live.reconnections.store(5, Ordering::Relaxed);
        Arc::new(live)
    }

    #[tokio::test]
    async fn a_scrape_reads_the_live_counters() {
        let live = live_with_counts();
        let (addr, server) = start(live.clone()).await;
        let response = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("Content-Type: text/plain; version=0.0.4"));
        for line in [
            "loadgen_clients_connected 7",
            "loadgen_frames_received_total 12345",
            "loadgen_frames_lost_total 3",
            "loadgen_frames_paused_total 400",
            "loadgen_errors_total 2",
            "loadgen_reconnections_total 5",
            "# TYPE loadgen_frames_received_total counter",
            "# HELP loadgen_clients_connected ",
        ] {
            assert!(response.contains(line), "{line:?} missing from\n{response}");
        }
        // The next scrape sees the counters move, not add up twice.
        live.frames.fetch_add(55, Ordering::Relaxed);
        live.connected.store(6, Ordering::Relaxed);
        let response = exchange(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert!(
            response.contains("loadgen_frames_received_total 12400\n"),
            "{response}"
        );
        assert!(
            response.contains("loadgen_clients_connected 6\n"),
            "{response}"
        );
        server.abort();
    }

    #[tokio::test]
    async fn other_paths_methods_and_garbage_get_an_error_and_the_server_goes_on() {
        let (addr, server) = start(live_with_counts()).await;
        let response = exchange(addr, b"GET /other HTTP/1.1\r\n\r\n").await;
        assert!(
            response.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{response}"
        );
        let response = exchange(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 405 "), "{response}");
        for garbage in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            // No end of head before the client stops sending.
            b"GET /metrics HTTP/1.1\r\n",
        ] {
            let response = exchange(addr, garbage).await;
            assert!(
                response.starts_with("HTTP/1.1 400 "),
                "{garbage:?}: {response}"
            );
        }
        // A head as long as the limit without its end is refused.
        let mut long = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_REQUEST_BYTES, b'a');
        let response = exchange(addr, &long).await;
        assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
        // One far beyond it is not read to its end: the client may see its answer or a reset
        // (the server closed with bytes unread), and the server goes on either way.
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_REQUEST_BYTES * 64, b'a');
        let _ = try_exchange(addr, &huge).await;
        // A client that connects and goes away without a word.
        drop(TcpStream::connect(addr).await.expect("connects"));
        let response = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        server.abort();
    }

    #[test]
    fn the_dashboard_names_only_metrics_loadgen_exports() {
        let exported: Vec<String> = LiveMetrics::new(Arc::new(Live::default()))
            .registry
            .gather()
            .iter()
            .map(|family| family.name().to_owned())
            .collect();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../dashboards/grafana/loadgen.json"
        );
        let text = std::fs::read_to_string(path).expect("the loadgen dashboard exists");
        let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        let mut named = Vec::new();
        let mut exprs = 0;
        for panel in dashboard["panels"].as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let Some(expr) = target["expr"].as_str() else {
                    continue;
                };
                exprs += 1;
                named.extend(
                    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .filter(|word| word.starts_with("loadgen_"))
                        .map(str::to_owned),
                );
            }
        }
        assert!(
            exprs >= 5,
            "expected the dashboard's queries, found {exprs}"
        );
        let unknown: Vec<&String> = named.iter().filter(|n| !exported.contains(n)).collect();
        assert!(unknown.is_empty(), "not exported by loadgen: {unknown:?}");
        let unused: Vec<&String> = exported.iter().filter(|e| !named.contains(e)).collect();
        assert!(unused.is_empty(), "exported but on no panel: {unused:?}");
    }
}
