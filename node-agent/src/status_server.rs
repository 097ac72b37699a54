//! A tiny HTTP/1.1 server for `/healthz`, `/metrics` and `/doctor` (the
//! probes of every other node and the kernel's drift, see `probe`), and
//! `POST /resync` (a full resync of the overlay, `trellisctl doctor
//! --fix`): one request per connection, bounded in size and time.

use crate::metrics::Metrics;
use crate::probe::Doctor;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_REQUEST: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// `/doctor` probes every node (a few seconds when some do not answer).
const DOCTOR_TIMEOUT: Duration = Duration::from_secs(30);

const TEXT: &str = "text/plain; charset=utf-8";

/// The doctor, once the node is set up (`/doctor` answers 503 before).
pub type DoctorSlot = Arc<OnceLock<Doctor>>;

/// Bind `addr` (so that a bad address fails start-up) and serve on it.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, doctor: DoctorSlot) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("metrics server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, doctor) = (metrics.clone(), doctor.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(DOCTOR_TIMEOUT, handle(stream, &metrics, &doctor)).await;
        });
    }
}

async fn handle(
    mut stream: TcpStream,
    metrics: &Metrics,
    doctor: &DoctorSlot,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let read = async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await?;
            if n == 0 || buf.len() + n > MAX_REQUEST {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<(), std::io::Error>(())
    };
    if tokio::time::timeout(REQUEST_TIMEOUT, read).await.is_err() {
        return Ok(());
    }
    let (status, content_type, body) = if buf.starts_with(b"POST /resync ") {
        match doctor.get() {
            None => ("503 Service Unavailable", TEXT, "not set up yet\n".into()),
            Some(d) => {
                d.resync.notify_one();
                log::info!("a full resync of the overlay was requested on the status endpoint");
                ("202 Accepted", TEXT, "resync requested\n".into())
            }
        }
    } else if buf.starts_with(b"GET /doctor ") {
        match doctor.get() {
            None => ("503 Service Unavailable", TEXT, "not set up yet\n".into()),
            Some(d) => match d.check().await {
                Ok(report) => (
                    "200 OK",
                    "application/json",
                    serde_json::to_string(&report).expect("a report serializes"),
                ),
                Err(e) => ("503 Service Unavailable", TEXT, format!("{e}\n")),
            },
        }
    } else {
        respond(&buf, metrics)
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Status line, content type and body for a raw request.
pub fn respond(request: &[u8], metrics: &Metrics) -> (&'static str, &'static str, String) {
    let text = String::from_utf8_lossy(request);
    let mut words = text.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/healthz") if metrics.healthy() => ("200 OK", TEXT, "ok\n".into()),
        ("GET", "/healthz") => (
            "503 Service Unavailable",
            TEXT,
            "not ready: subnet not leased or overlay not programmed yet\n".into(),
        ),
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        ("GET", _) => ("404 Not Found", TEXT, "try /healthz or /metrics\n".into()),
        _ => ("405 Method Not Allowed", TEXT, "GET only\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn routes() {
        let m = Metrics::default();
        assert_eq!(
            respond(b"GET /healthz HTTP/1.1\r\n\r\n", &m).0,
            "503 Service Unavailable"
        );
        m.leased.store(true, Ordering::Relaxed);
        m.reconciles.inc();
        assert_eq!(respond(b"GET /healthz HTTP/1.1\r\n\r\n", &m).0, "200 OK");
        let (s, _, body) = respond(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", &m);
        assert_eq!(s, "200 OK");
        assert!(body.contains("trellis_agent_reconciles_total 1"));
        assert_eq!(
            respond(b"GET /nope HTTP/1.1\r\n\r\n", &m).0,
            "404 Not Found"
        );
        assert_eq!(
            respond(b"POST /metrics HTTP/1.1\r\n\r\n", &m).0,
            "405 Method Not Allowed"
        );
        assert_eq!(respond(b"", &m).0, "405 Method Not Allowed");
    }

    #[tokio::test]
    async fn serves_over_tcp_on_loopback() {
        let m = Arc::new(Metrics::default());
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, m, DoctorSlot::default()));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(resp.contains("trellis_agent_subnet_leased 0"));
        // Before the node is set up there is nobody to probe from.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /doctor HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 503 "), "{resp}");
    }
}
