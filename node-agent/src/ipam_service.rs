//! The IPAM service: the `trellis-ipam` calls of this node's plugins,
//! answered on `<stateDir>/ipam.sock` (see `trellis_common::cni::service`)
//! by the same verbs the exec'd plugin runs, over an etcd client kept for
//! the agent's life: a call then costs its etcd requests, not a process, a
//! runtime and a connection.
//!
//! It runs on a thread of its own with its own runtime and client, so that
//! a burst of pods does not delay the agent's lease, watch and reconciler,
//! and a verb waiting for the node's allocation lock (a file lock the
//! exec'd plugins share) blocks nothing of the agent. It serves only calls
//! for the etcd it was given (same endpoints, prefix and TLS files) and
//! declines the others, which the plugin then runs as a process; so does a
//! plugin that finds nothing listening (agent stopped or restarting).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;
use trellis_common::cni::service::{Answer, Invocation, IPAM_PLUGIN, IPAM_SOCKET, MAX_MESSAGE};
use trellis_common::cni::skel;
use trellis_common::etcd::{EtcdClient, EtcdSettings};
use trellis_ipam::config::Backend;
use trellis_ipam::plugin::{conf_of, etcd_verb, EtcdAccess, VERB_BUDGET};

use crate::metrics::Metrics;

/// The longest a caller may take to send its invocation.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("IPAM service socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the service answers with.
struct Service {
    settings: EtcdSettings,
    /// A client per etcd user the plugins connect as (none, or the
    /// conflist's `etcdUsername`), each opened by its first call: a served
    /// call reaches etcd as the plugin would itself, with the same rights.
    clients: Mutex<HashMap<Option<(String, String)>, EtcdClient>>,
    metrics: Arc<Metrics>,
}

/// Bind `<state_dir>/ipam.sock` (replacing the socket of an earlier run)
/// and serve it on a thread of its own until the process exits.
pub fn start(
    state_dir: &Path,
    settings: EtcdSettings,
    metrics: Arc<Metrics>,
) -> Result<PathBuf, ServiceError> {
    let path = state_dir.join(IPAM_SOCKET);
    let err = |source| ServiceError::Socket {
        path: path.clone(),
        source,
    };
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = std::os::unix::net::UnixListener::bind(&path).map_err(err)?;
    // Only root (the runtime's plugins) may ask for addresses.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    let service = Arc::new(Service {
        settings,
        clients: Mutex::default(),
        metrics,
    });
    let shown = path.clone();
    std::thread::Builder::new()
        .name("ipam-service".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    log::error!("IPAM service: cannot start its runtime ({e}); plugins run trellis-ipam themselves");
                    return;
                }
            };
            runtime.block_on(async move {
                match UnixListener::from_std(listener) {
                    Ok(listener) => serve(listener, service).await,
                    Err(e) => log::error!("IPAM service on {}: {e}", shown.display()),
                }
            });
        })
        .map_err(err)?;
    Ok(path)
}

async fn serve(listener: UnixListener, service: Arc<Service>) {
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                tokio::spawn(answer_connection(conn, service.clone()));
            }
            Err(e) => {
                // Out of descriptors, say: the callers fall back meanwhile.
                log::warn!("IPAM service: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer_connection(mut conn: UnixStream, service: Arc<Service>) {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        READ_TIMEOUT,
        (&mut conn).take(MAX_MESSAGE).read_to_end(&mut buf),
    )
    .await;
    let answer = match read {
        Ok(Ok(_)) => match serde_json::from_slice::<Invocation>(&buf) {
            Ok(invocation) => {
                let answer = service.answer(&invocation).await;
                match answer {
                    Answer::Done { .. } => service.metrics.ipam_served.inc(),
                    Answer::Declined { .. } => service.metrics.ipam_declined.inc(),
                }
                answer
            }
            Err(e) => Answer::Declined {
                reason: format!("unreadable invocation: {e}"),
            },
        },
        Ok(Err(e)) => {
            log::debug!("IPAM service: reading a call: {e}");
            return;
        }
        Err(_) => {
            log::debug!("IPAM service: a caller sent nothing within {READ_TIMEOUT:?}");
            return;
        }
    };
    let bytes = serde_json::to_vec(&answer).expect("an answer serializes");
    if let Err(e) = conn.write_all(&bytes).await {
        // The plugin gave up (killed, say); it or its retry runs the verb
        // again, which every verb allows.
        log::debug!("IPAM service: answering: {e}");
    }
}

impl Service {
    async fn answer(&self, invocation: &Invocation) -> Answer {
        // The verb must be over before the caller runs it itself.
        match invocation.time_left() {
            Some(left) if left >= VERB_BUDGET => {}
            _ => return declined("read too late: the caller is giving up on it".into()),
        }
        if invocation.plugin != IPAM_PLUGIN {
            return declined(format!("this service runs {IPAM_PLUGIN} only"));
        }
        let req = match skel::parse(|k| invocation.var(k), invocation.stdin.as_bytes()) {
            Ok(req) => req,
            // VERSION, or an error in the environment or configuration:
            // answered as the plugin would.
            Err(outcome) => return done(outcome),
        };
        let conf = match conf_of(&req) {
            Ok(conf) => conf,
            Err(e) => return done(skel::outcome(&req, Err(e))),
        };
        let Backend::Etcd(settings) = &conf.backend else {
            return declined("single-host mode (no etcd)".into());
        };
        if let Some(difference) = self.differs(settings) {
            return declined(difference);
        }
        let client = match self.client_for(settings).await {
            Ok(client) => client,
            // The plugin connects itself and reports what it finds (a
            // refused password is its code 106).
            Err(e) => return declined(format!("no etcd client: {e}")),
        };
        let result = etcd_verb(&req, &conf, settings, EtcdAccess::Shared(&client)).await;
        done(skel::outcome(&req, result))
    }

    /// The client of the user `theirs` names, connected the first time.
    async fn client_for(
        &self,
        theirs: &EtcdSettings,
    ) -> Result<EtcdClient, trellis_common::etcd::EtcdError> {
        let user = match (&theirs.username, &theirs.password) {
            (Some(user), Some(password)) => Some((user.clone(), password.0.clone())),
            _ => None,
        };
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(&user) {
            return Ok(client.clone());
        }
        let mut settings = self.settings.clone();
        settings.username = theirs.username.clone();
        settings.password = theirs.password.clone();
        settings.source = theirs.source;
        let client = settings.connect().await?;
        clients.insert(user, client.clone());
        Ok(client)
    }

    /// Why a call for `theirs` is not for this client, if it is not: other
    /// endpoints, another prefix, other TLS files (compared by content, as
    /// the agent and the plugins may see them at different paths).
    fn differs(&self, theirs: &EtcdSettings) -> Option<String> {
        let ours = &self.settings;
        let mut a = ours.endpoints.clone();
        let mut b = theirs.endpoints.clone();
        a.sort();
        b.sort();
        if a != b {
            return Some(format!(
                "etcd endpoints {} are not the agent's {}",
                b.join(","),
                a.join(",")
            ));
        }
        if ours.keys() != theirs.keys() {
            return Some(format!(
                "etcd prefix {} is not the agent's {}",
                theirs.prefix, ours.prefix
            ));
        }
        match (ours.tls_files(), theirs.tls_files()) {
            (Ok(a), Ok(b)) if a == b => None,
            (Ok(_), Ok(_)) => Some("etcd TLS files are not the agent's".into()),
            (_, Err(e)) | (Err(e), _) => Some(format!("etcd TLS files: {e}")),
        }
    }
}

fn done(outcome: skel::Outcome) -> Answer {
    Answer::Done {
        exit_code: outcome.exit_code,
        stdout: outcome.stdout,
    }
}

fn declined(reason: String) -> Answer {
    log::debug!("IPAM service: declined a call: {reason}");
    Answer::Declined { reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn service(endpoints: &[&str], prefix: &str) -> Service {
        let mut settings = EtcdSettings::new(endpoints.iter().map(|e| e.to_string()).collect());
        settings.prefix = prefix.into();
        Service {
            settings,
            clients: Mutex::default(),
            metrics: Arc::default(),
        }
    }

    fn invocation(plugin: &str, command: &str, stdin: serde_json::Value) -> Invocation {
        let env: BTreeMap<String, String> = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Invocation {
            plugin: plugin.into(),
            env,
            stdin: stdin.to_string(),
            gives_up_at_ms: u64::MAX,
        }
    }

    fn conf(ipam: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "trellis", "ipam": ipam})
    }

    #[tokio::test]
    async fn declines_what_it_does_not_serve() {
        let s = service(
            &["http://10.0.0.1:2379", "http://10.0.0.2:2379"],
            "/trellis",
        );
        let cases = [
            (
                invocation(
                    "host-local",
                    "ADD",
                    conf(serde_json::json!({"type": "host-local"})),
                ),
                "runs trellis-ipam only",
            ),
            (
                invocation(
                    IPAM_PLUGIN,
                    "ADD",
                    conf(serde_json::json!({"type": IPAM_PLUGIN, "subnet": "10.88.0.0/16"})),
                ),
                "single-host mode",
            ),
            (
                invocation(
                    IPAM_PLUGIN,
                    "ADD",
                    conf(serde_json::json!({"type": IPAM_PLUGIN,
                        "etcdEndpoints": ["http://10.0.0.9:2379"]})),
                ),
                "not the agent's",
            ),
            (
                invocation(
                    IPAM_PLUGIN,
                    "ADD",
                    conf(serde_json::json!({"type": IPAM_PLUGIN,
                        "etcdEndpoints": ["http://10.0.0.2:2379", "http://10.0.0.1:2379"],
                        "etcdPrefix": "/other"})),
                ),
                "prefix /other",
            ),
        ];
        for (inv, reason) in cases {
            match s.answer(&inv).await {
                Answer::Declined { reason: r } => assert!(r.contains(reason), "{r}"),
                other => panic!("served {inv:?}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn declines_a_call_read_too_late_to_finish_in_time() {
        let s = service(&["http://10.0.0.1:2379"], "/trellis");
        let mut inv = invocation(
            IPAM_PLUGIN,
            "ADD",
            conf(
                serde_json::json!({"type": IPAM_PLUGIN, "etcdEndpoints": ["http://10.0.0.1:2379"]}),
            ),
        );
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        for left in [0, 1000, 2900] {
            inv.gives_up_at_ms = now_ms + left;
            match s.answer(&inv).await {
                Answer::Declined { reason } => assert!(reason.contains("too late")),
                other => panic!("{left} ms left: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn answers_bad_calls_as_the_plugin_would() {
        let s = service(&["http://10.0.0.1:2379"], "/trellis");
        // No CNI_CONTAINERID: code 4, in the configuration's version.
        let mut inv = invocation(
            IPAM_PLUGIN,
            "ADD",
            conf(
                serde_json::json!({"type": IPAM_PLUGIN, "etcdEndpoints": ["http://10.0.0.1:2379"]}),
            ),
        );
        inv.env.remove("CNI_CONTAINERID");
        let Answer::Done { exit_code, stdout } = s.answer(&inv).await else {
            panic!("declined")
        };
        let err: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!((exit_code, err["code"].as_u64()), (1, Some(4)));
        // A configuration error: code 7.
        let inv = invocation(
            IPAM_PLUGIN,
            "ADD",
            conf(serde_json::json!({"type": IPAM_PLUGIN, "etcdEndpoints": ["ftp://x"]})),
        );
        let Answer::Done { stdout, .. } = s.answer(&inv).await else {
            panic!("declined")
        };
        let err: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(err["code"].as_u64(), Some(7), "{stdout}");
        // VERSION is answered.
        let inv = invocation(IPAM_PLUGIN, "VERSION", conf(serde_json::json!({})));
        let Answer::Done { exit_code, stdout } = s.answer(&inv).await else {
            panic!("declined")
        };
        assert_eq!(exit_code, 0);
        assert!(stdout.contains("supportedVersions"));
    }
}
