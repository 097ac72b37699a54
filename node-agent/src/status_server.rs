//! A tiny HTTP/1.1 server for `/healthz` and `/metrics`: GET only, one
//! request per connection, bounded in size and time.

use crate::metrics::Metrics;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_REQUEST: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Bind `addr` (so that a bad address fails start-up) and serve on it.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("metrics server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, &metrics)).await;
        });
    }
}

async fn handle(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let (status, content_type, body) = respond(&buf, metrics);
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
    const TEXT: &str = "text/plain; charset=utf-8";
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
        tokio::spawn(serve(listener, m));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(resp.contains("trellis_agent_subnet_leased 0"));
    }
}
