//! A small CRI client (the kubelet's side of the Container Runtime
//! Interface, `runtime.v1` over gRPC on a unix socket, from the `k8s-cri`
//! crate): enough to run, inspect, stop and remove pod sandboxes, which is
//! where a runtime calls CNI ADD and DEL.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    LinuxPodSandboxConfig, ListPodSandboxRequest, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
    VersionRequest,
};
use tokio::net::UnixStream;
use tokio::runtime::Runtime;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long one CRI call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A blocking CRI runtime-service client.
pub struct CriClient {
    runtime: Runtime,
    client: RuntimeServiceClient<Channel>,
}

impl std::fmt::Debug for CriClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriClient").finish_non_exhaustive()
    }
}

/// What `PodSandboxStatus` says about a sandbox's network.
#[derive(Clone, Debug)]
pub struct SandboxNetwork {
    pub ip: Option<IpAddr>,
    /// The pod's other addresses (the IPv6 one of a dual-stack pod), which
    /// the kubelet reports in `status.podIPs`.
    pub additional_ips: Vec<IpAddr>,
    pub netns: Option<PathBuf>,
}

impl CriClient {
    /// Connects to the runtime's socket.
    pub fn connect(socket: &Path) -> Result<CriClient> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let path = socket.to_path_buf();
        let channel = runtime
            .block_on(async move {
                Endpoint::try_from("http://[::]:50051")?
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(CALL_TIMEOUT)
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                        }
                    }))
                    .await
            })
            .with_context(|| format!("connecting to CRI socket {}", socket.display()))?;
        Ok(CriClient {
            runtime,
            client: RuntimeServiceClient::new(channel),
        })
    }

    /// The runtime's name and version, e.g. ("containerd", "1.6.20").
    pub fn version(&mut self) -> Result<(String, String)> {
        let req = VersionRequest {
            version: "v1".into(),
        };
        let resp = self
            .runtime
            .block_on(self.client.version(req))
            .context("CRI Version")?
            .into_inner();
        Ok((resp.runtime_name, resp.runtime_version))
    }

    /// RunPodSandbox, as the kubelet does for a new pod: the runtime makes a
    /// network namespace and calls CNI ADD. Returns the sandbox id.
    pub fn run_pod_sandbox(&mut self, name: &str, namespace: &str, uid: &str) -> Result<String> {
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: namespace.into(),
                attempt: 0,
            }),
            hostname: name.into(),
            labels: HashMap::from([("app".to_owned(), "trellis-e2e".to_owned())]),
            linux: Some(LinuxPodSandboxConfig::default()),
            ..Default::default()
        };
        let req = RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        let resp = self
            .runtime
            .block_on(self.client.run_pod_sandbox(req))
            .with_context(|| format!("CRI RunPodSandbox {namespace}/{name}"))?
            .into_inner();
        Ok(resp.pod_sandbox_id)
    }

    /// The sandbox's pod IP and network namespace, from PodSandboxStatus.
    pub fn sandbox_network(&mut self, id: &str) -> Result<SandboxNetwork> {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        };
        let resp = self
            .runtime
            .block_on(self.client.pod_sandbox_status(req))
            .with_context(|| format!("CRI PodSandboxStatus {id}"))?
            .into_inner();
        let status = resp.status.context("PodSandboxStatus without status")?;
        let network = status.network.unwrap_or_default();
        let ip = network.ip.parse().ok().filter(|_| !network.ip.is_empty());
        let additional_ips = network
            .additional_ips
            .iter()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        // containerd reports the sandbox's netns path in its verbose info.
        let netns = resp.info.get("info").and_then(|info| netns_from_info(info));
        Ok(SandboxNetwork {
            ip,
            additional_ips,
            netns,
        })
    }

    /// StopPodSandbox: the runtime calls CNI DEL and kills the sandbox.
    pub fn stop_pod_sandbox(&mut self, id: &str) -> Result<()> {
        let req = StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.runtime
            .block_on(self.client.stop_pod_sandbox(req))
            .with_context(|| format!("CRI StopPodSandbox {id}"))?;
        Ok(())
    }

    /// RemovePodSandbox.
    pub fn remove_pod_sandbox(&mut self, id: &str) -> Result<()> {
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.runtime
            .block_on(self.client.remove_pod_sandbox(req))
            .with_context(|| format!("CRI RemovePodSandbox {id}"))?;
        Ok(())
    }

    /// The ids of every sandbox the runtime knows.
    pub fn list_pod_sandboxes(&mut self) -> Result<Vec<String>> {
        let resp = self
            .runtime
            .block_on(
                self.client
                    .list_pod_sandbox(ListPodSandboxRequest { filter: None }),
            )
            .context("CRI ListPodSandbox")?
            .into_inner();
        Ok(resp.items.into_iter().map(|s| s.id).collect())
    }
}

/// The network namespace path in containerd's verbose sandbox info.
fn netns_from_info(info: &str) -> Option<PathBuf> {
    let info: serde_json::Value = serde_json::from_str(info).ok()?;
    info.pointer("/runtimeSpec/linux/namespaces")?
        .as_array()?
        .iter()
        .find(|ns| ns["type"] == "network")?["path"]
        .as_str()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}
