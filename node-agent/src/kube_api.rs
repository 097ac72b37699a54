//! The one thing the agent reads from the Kubernetes API: which Nodes
//! exist. From inside its pod (the service account's token and CA,
//! `KUBERNETES_SERVICE_HOST` and `_PORT`), over HTTPS: a list of the Nodes'
//! metadata, then a watch from the list's resource version, as informers
//! do; a watch that ends or fails is followed by a new list.
//!
//! Built on the HTTP and TLS crates the etcd client already brings (hyper,
//! rustls): the agent needs one read of one resource, not a Kubernetes
//! client with every API type.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use serde::Deserialize;
use tokio::net::TcpStream;

/// Where Kubernetes mounts a pod's service account.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Objects per page of a list.
const PAGE: usize = 500;
/// Metadata only: the API server leaves out the Nodes' specs and statuses.
const ACCEPT: &str =
    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
const ACCEPT_WATCH: &str =
    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("not inside a Kubernetes pod: {0} is not set")]
    NotInCluster(&'static str),
    #[error("reading {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCa { path: String },
    #[error("the Kubernetes API at {addr}: {message}")]
    Request { addr: String, message: String },
    #[error("the Kubernetes API answered {status} to {what}: {body}")]
    Status {
        status: StatusCode,
        what: String,
        body: String,
    },
    #[error("the Kubernetes API's answer to {what}: {source}")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

impl KubeError {
    /// The watch's resource version is too old: list again.
    pub fn is_gone(&self) -> bool {
        matches!(self, KubeError::Status { status, .. } if *status == StatusCode::GONE)
    }
}

/// The API server as seen from a pod.
#[derive(Clone)]
pub struct KubeApi {
    host: String,
    port: u16,
    token_file: PathBuf,
    tls: Arc<rustls::ClientConfig>,
}

/// A list's or an event's object: only its name.
#[derive(Debug, Deserialize)]
struct Object {
    metadata: Meta,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    resource_version: String,
    #[serde(default, rename = "continue")]
    continue_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct List {
    metadata: Meta,
    #[serde(default)]
    items: Vec<Object>,
}

#[derive(Debug, Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

/// What a watch reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    Added(String),
    Deleted(String),
    /// Progress without a change (a bookmark or a modification).
    Progress,
}

impl KubeApi {
    /// The API server of the pod this process runs in.
    pub fn in_cluster() -> Result<KubeApi, KubeError> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST")
            .map_err(|_| KubeError::NotInCluster("KUBERNETES_SERVICE_HOST"))?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .ok_or(KubeError::NotInCluster("KUBERNETES_SERVICE_PORT"))?;
        let dir = Path::new(SERVICE_ACCOUNT_DIR);
        KubeApi::new(host, port, &dir.join("ca.crt"), dir.join("token"))
    }

    pub fn new(
        host: String,
        port: u16,
        ca_file: &Path,
        token_file: PathBuf,
    ) -> Result<KubeApi, KubeError> {
        let file_error = |source| KubeError::File {
            path: ca_file.display().to_string(),
            source,
        };
        let pem = std::fs::read(ca_file).map_err(file_error)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(KubeError::NoCa {
                path: ca_file.display().to_string(),
            });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(KubeApi {
            host,
            port,
            token_file,
            tls: Arc::new(tls),
        })
    }

    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn request_error(&self, message: impl std::fmt::Display) -> KubeError {
        KubeError::Request {
            addr: self.addr(),
            message: message.to_string(),
        }
    }

    /// One GET on a new connection; the response with its body unread.
    async fn get(&self, path: &str, accept: &str) -> Result<Response<Incoming>, KubeError> {
        // Read each time: the kubelet rotates the projected token.
        let token =
            std::fs::read_to_string(&self.token_file).map_err(|source| KubeError::File {
                path: self.token_file.display().to_string(),
                source,
            })?;
        let tcp = TcpStream::connect(self.addr())
            .await
            .map_err(|e| self.request_error(e))?;
        let name = ServerName::try_from(self.host.clone()).map_err(|e| self.request_error(e))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| self.request_error(format!("TLS: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| self.request_error(e))?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", self.addr())
            .header("accept", accept)
            .header("authorization", format!("Bearer {}", token.trim()))
            .header("user-agent", "trellis-agent")
            .body(Empty::<Bytes>::new())
            .expect("a valid request");
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.request_error(e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
            return Err(KubeError::Status {
                status,
                what: format!("GET {path}"),
                body: body
                    .map(|b| String::from_utf8_lossy(&b).chars().take(300).collect())
                    .unwrap_or_default(),
            });
        }
        Ok(resp)
    }

    /// The names of every Node, and the resource version to watch from.
    pub async fn list_nodes(&self) -> Result<(BTreeSet<String>, String), KubeError> {
        let mut names = BTreeSet::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/nodes?limit={PAGE}");
            if let Some(t) = &token {
                path.push_str(&format!("&continue={}", encode(t)));
            }
            let body = self
                .get(&path, ACCEPT)
                .await?
                .into_body()
                .collect()
                .await
                .map_err(|e| self.request_error(e))?
                .to_bytes();
            let list: List = serde_json::from_slice(&body).map_err(|source| KubeError::Decode {
                what: path.clone(),
                source,
            })?;
            names.extend(list.items.into_iter().map(|o| o.metadata.name));
            match list.metadata.continue_token.filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => return Ok((names, list.metadata.resource_version)),
            }
        }
    }

    /// Watches the Nodes from `resource_version`, calling `on_event` for
    /// each event, until the server ends the watch (`Ok`, with the last
    /// resource version seen) or it fails.
    pub async fn watch_nodes(
        &self,
        resource_version: &str,
        mut on_event: impl FnMut(NodeEvent),
    ) -> Result<String, KubeError> {
        let path = format!(
            "/api/v1/nodes?watch=1&allowWatchBookmarks=true&timeoutSeconds=300&resourceVersion={}",
            encode(resource_version)
        );
        let mut body = self.get(&path, ACCEPT_WATCH).await?.into_body();
        let mut version = resource_version.to_owned();
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.request_error(e))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.extend_from_slice(data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let event: Event =
                    serde_json::from_slice(&line).map_err(|source| KubeError::Decode {
                        what: "a watch event".into(),
                        source,
                    })?;
                let (parsed, rv) = parse_event(&event)?;
                if let Some(rv) = rv {
                    version = rv;
                }
                on_event(parsed);
            }
        }
        Ok(version)
    }
}

/// An event of the watch, and the resource version it carries.
fn parse_event(event: &Event) -> Result<(NodeEvent, Option<String>), KubeError> {
    if event.kind == "ERROR" {
        // A Status object: 410 Gone when the version is too old.
        let code = event.object["code"].as_u64().unwrap_or(500) as u16;
        return Err(KubeError::Status {
            status: StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            what: "the watch of the Nodes".into(),
            body: event.object["message"].as_str().unwrap_or("").to_owned(),
        });
    }
    let object: Object =
        serde_json::from_value(event.object.clone()).map_err(|source| KubeError::Decode {
            what: "a watch event".into(),
            source,
        })?;
    let rv = Some(object.metadata.resource_version.clone()).filter(|v| !v.is_empty());
    let parsed = match event.kind.as_str() {
        "ADDED" => NodeEvent::Added(object.metadata.name),
        "DELETED" => NodeEvent::Deleted(object.metadata.name),
        _ => NodeEvent::Progress,
    };
    Ok((parsed, rv))
}

/// Percent-encodes a query value (resource versions and continue tokens
/// are opaque strings).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> Event {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn watch_events_give_the_node_and_the_version() {
        let (e, rv) = parse_event(&event(
            r#"{"type":"DELETED","object":{"kind":"PartialObjectMetadata","metadata":{"name":"node3","resourceVersion":"812"}}}"#,
        ))
        .unwrap();
        assert_eq!(e, NodeEvent::Deleted("node3".into()));
        assert_eq!(rv.as_deref(), Some("812"));
        let (e, _) = parse_event(&event(
            r#"{"type":"ADDED","object":{"metadata":{"name":"node4","resourceVersion":"813"}}}"#,
        ))
        .unwrap();
        assert_eq!(e, NodeEvent::Added("node4".into()));
        let (e, rv) = parse_event(&event(
            r#"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"900"}}}"#,
        ))
        .unwrap();
        assert_eq!((e, rv.as_deref()), (NodeEvent::Progress, Some("900")));
    }

    #[test]
    fn an_expired_version_is_gone_and_means_list_again() {
        let err = parse_event(&event(
            r#"{"type":"ERROR","object":{"kind":"Status","code":410,"message":"too old resource version"}}"#,
        ))
        .unwrap_err();
        assert!(err.is_gone(), "{err}");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("eyJ2Ijo+/="), "eyJ2Ijo%2B%2F%3D");
        assert_eq!(encode("123"), "123");
    }

    #[test]
    fn outside_a_pod_the_api_is_not_found() {
        // KUBERNETES_SERVICE_HOST is not set where the tests run.
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
            assert!(matches!(
                KubeApi::in_cluster(),
                Err(KubeError::NotInCluster("KUBERNETES_SERVICE_HOST"))
            ));
        }
    }
}
