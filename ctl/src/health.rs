//! The agents' status endpoints: their health (`/healthz`), asked of all
//! nodes at once, each within a short timeout, and the HTTP GET that
//! `doctor` uses too.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// How long one agent gets to answer.
pub const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub addr: SocketAddr,
    /// `ok`, `not-ready` (the agent answers but has no lease or has not
    /// programmed the overlay yet) or `unreachable`.
    pub status: &'static str,
    pub detail: String,
}

impl Health {
    /// For a table cell.
    pub fn cell(&self) -> String {
        match self.status {
            "ok" => "ok".into(),
            s => format!("{s}: {}", self.detail),
        }
    }
}

/// `GET /healthz` of the agent at `addr`.
pub async fn probe(addr: SocketAddr) -> Health {
    let (status, detail) = match tokio::time::timeout(TIMEOUT, get(addr, "/healthz")).await {
        Err(_) => ("unreachable", format!("no answer within {TIMEOUT:?}")),
        Ok(Err(e)) => ("unreachable", e),
        Ok(Ok((200, _))) => ("ok", String::new()),
        Ok(Ok((code, body))) => ("not-ready", format!("{code} {}", body.trim())),
    };
    Health {
        addr,
        status,
        detail,
    }
}

/// `GET path` of the agent at `addr`: the status code and the body.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    request(addr, "GET", path).await
}

/// `method path` of the agent at `addr`: the status code and the body.
pub async fn request(addr: SocketAddr, method: &str, path: &str) -> Result<(u16, String), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let code = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}
