//! How every binary reaches etcd: the endpoints, the key prefix, the TLS
//! files, the user name and password and the time one call may take,
//! checked once (URL schemes, TLS files present, PEM, paired with
//! `https://`, user and password paired) and connected the same way.
//! The agent fills them in from its flags, the IPAM plugin from its
//! `ipam` object; errors name the setting as the user wrote it. How a
//! request goes on when one endpoint is away is in `etcd_failover`.

pub use crate::etcd_errors::{auth_not_enabled, chain, describe};
pub use crate::etcd_failover::EtcdClient;
use crate::keys::{Keys, DEFAULT_ETCD_PREFIX};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdSettings {
    /// `http://host:port` or `https://host:port` URLs.
    pub endpoints: Vec<String>,
    /// Key prefix, default `/trellis`; read by [`Keys::new`].
    pub prefix: String,
    pub ca_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// etcd authentication (with `password`): the user whose roles say
    /// which keys this binary may read and write (README, "etcd
    /// permissions").
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Password>,
    /// The longest any single etcd call may take.
    pub timeout: Duration,
    /// Where the settings came from, to name them in errors.
    #[serde(skip)]
    pub source: SettingsSource,
}

/// A password, kept out of logs and `Debug` output.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Password(pub String);

impl std::str::FromStr for Password {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Password, Self::Err> {
        Ok(Password(s.to_string()))
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

/// Where a binary read its etcd settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SettingsSource {
    /// The `ipam` object of a network configuration.
    #[default]
    Conflist,
    /// `trellis-agent` flags.
    Flags,
}

impl SettingsSource {
    fn endpoints(self) -> &'static str {
        match self {
            SettingsSource::Conflist => "etcdEndpoints",
            SettingsSource::Flags => "--etcd-endpoints",
        }
    }
    fn ca(self) -> &'static str {
        match self {
            SettingsSource::Conflist => "etcdCACert",
            SettingsSource::Flags => "--etcd-cafile",
        }
    }
    fn cert(self) -> &'static str {
        match self {
            SettingsSource::Conflist => "etcdCert",
            SettingsSource::Flags => "--etcd-certfile",
        }
    }
    fn key(self) -> &'static str {
        match self {
            SettingsSource::Conflist => "etcdKey",
            SettingsSource::Flags => "--etcd-keyfile",
        }
    }
    /// The names of the user name and password settings.
    pub fn credentials(self) -> &'static str {
        match self {
            SettingsSource::Conflist => "etcdUsername/etcdPassword",
            SettingsSource::Flags => "--etcd-username/--etcd-password",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The settings cannot work (a configuration error, code 7 in a plugin).
    #[error("{0}")]
    Invalid(String),
    #[error("etcd ({endpoints}) did not answer within {after:?} while connecting")]
    Timeout { endpoints: String, after: Duration },
    #[error("connecting to etcd at {endpoints}: {}", describe(source))]
    Connect {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    /// etcd refused the user name and password.
    #[error("etcd at {endpoints} refused user \"{user}\": {detail} (check {settings})")]
    Refused {
        endpoints: String,
        user: String,
        detail: String,
        /// The settings to check, as the user wrote them.
        settings: &'static str,
    },
}

/// Why etcd refused a request, when it was for want of access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// The user's roles do not grant the key.
    Permission,
    /// etcd has authentication on and the request carried no user.
    NoCredentials,
    /// The user name or password is wrong.
    BadCredentials,
}

impl Denial {
    /// What `e` says, if it is a refusal for want of access.
    pub fn of(e: &etcd_client::Error) -> Option<Denial> {
        let etcd_client::Error::GRpcStatus(status) = e else {
            return None;
        };
        let msg = status.message();
        match status.code() {
            tonic::Code::PermissionDenied => Some(Denial::Permission),
            _ if msg.contains("user name is empty") => Some(Denial::NoCredentials),
            _ if msg.contains("authentication failed") => Some(Denial::BadCredentials),
            _ => None,
        }
    }
}

/// The TLS files, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: Vec<u8>,
    /// Client certificate and key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl EtcdSettings {
    pub fn new(endpoints: Vec<String>) -> EtcdSettings {
        EtcdSettings {
            endpoints,
            prefix: DEFAULT_ETCD_PREFIX.to_string(),
            ca_cert: None,
            cert: None,
            key: None,
            username: None,
            password: None,
            timeout: Duration::from_secs(3),
            source: SettingsSource::default(),
        }
    }

    /// The keys under the prefix.
    pub fn keys(&self) -> Keys {
        Keys::new(&self.prefix)
    }

    /// Check what can be checked without reading files or contacting etcd:
    /// URLs, TLS settings paired with each other and with `https://`.
    pub fn validate(&self) -> Result<(), EtcdError> {
        let names = self.source;
        let invalid = |msg: String| Err(EtcdError::Invalid(msg));
        if self.endpoints.is_empty() {
            return invalid(format!("{} is empty", names.endpoints()));
        }
        let mut https = 0;
        for e in &self.endpoints {
            if e.starts_with("https://") {
                https += 1;
            } else if !e.starts_with("http://") {
                return invalid(format!(
                    "etcd endpoint \"{e}\" must start with http:// or https://"
                ));
            }
        }
        let uses_tls = self.ca_cert.is_some() || self.cert.is_some() || self.key.is_some();
        if https > 0 && https < self.endpoints.len() {
            return invalid(format!(
                "{} mixes http:// and https:// URLs",
                names.endpoints()
            ));
        }
        if uses_tls && https == 0 {
            return invalid(format!(
                "{}/{}/{} are set but the {} are http://; use https:// URLs",
                names.ca(),
                names.cert(),
                names.key(),
                names.endpoints()
            ));
        }
        if https > 0 && self.ca_cert.is_none() {
            return invalid(format!(
                "https:// etcd endpoints need {} (the CA that signed etcd's certificate)",
                names.ca()
            ));
        }
        if self.cert.is_some() != self.key.is_some() {
            return invalid(format!(
                "{} and {} go together: give both or neither",
                names.cert(),
                names.key()
            ));
        }
        match (&self.username, &self.password) {
            (Some(u), Some(_)) if u.is_empty() => {
                return invalid(format!("{}: the user name is empty", names.credentials()))
            }
            (Some(_), Some(_)) | (None, None) => {}
            _ => {
                return invalid(format!(
                    "{} go together: give both or neither",
                    names.credentials()
                ))
            }
        }
        Ok(())
    }

    /// [`EtcdSettings::validate`], then read the TLS files and check that
    /// each holds what it should; `None` without TLS.
    pub fn tls_files(&self) -> Result<Option<TlsFiles>, EtcdError> {
        self.validate()?;
        let names = self.source;
        let Some(ca) = &self.ca_cert else {
            return Ok(None);
        };
        let ca = read_pem(names.ca(), ca, "CERTIFICATE", "certificate")?;
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((
                read_pem(names.cert(), cert, "CERTIFICATE", "certificate")?,
                read_pem(names.key(), key, "PRIVATE KEY", "private key")?,
            )),
            _ => None,
        };
        Ok(Some(TlsFiles { ca, identity }))
    }

    /// How long one attempt on one endpoint may take: with several
    /// endpoints a quarter of `timeout` (at least half a second), so that a
    /// frozen or cut-off member, and a follower waiting for a leader that
    /// froze, leave time for the others; with one, all of it.
    pub fn attempt_timeout(&self) -> Duration {
        if self.endpoints.len() > 1 {
            (self.timeout / 4).max(Duration::from_millis(500))
        } else {
            self.timeout
        }
    }

    /// Check everything, then make a client per endpoint (see
    /// [`EtcdClient`]). The connections themselves are lazy: the first
    /// request on each opens it. With a user name, every endpoint that
    /// answers within an attempt's time is logged in at once: a wrong
    /// password is `EtcdError::Refused` here, not at the first request; an
    /// etcd with authentication off is used without, as etcd's own client
    /// does, so credentials can be set before `etcdctl auth enable`. An
    /// endpoint that does not answer yet is logged in by its first request.
    /// Callers bound each call themselves ([`EtcdClient::call`]); the
    /// client's own limit is a backstop, and HTTP/2 keep-alives detect a
    /// dead or frozen server under a watch.
    pub async fn connect(&self) -> Result<EtcdClient, EtcdError> {
        let tls = self.tls_files()?;
        let attempt = self.attempt_timeout();
        let credentials = match (&self.username, &self.password) {
            (Some(user), Some(password)) => Some((user.clone(), password.0.clone())),
            _ => None,
        };
        let mut options = ConnectOptions::new()
            .with_connect_timeout(attempt)
            .with_timeout(self.timeout + Duration::from_secs(1))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some(tls) = tls {
            let mut options_tls = TlsOptions::new().ca_certificate(Certificate::from_pem(tls.ca));
            if let Some((cert, key)) = tls.identity {
                options_tls = options_tls.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(options_tls);
        }
        if credentials.is_some() {
            // Long-lived clients (the agent) outlive a token: renew it.
            options = options.with_auto_token_refresh(true);
        }
        let mut clients = Vec::new();
        for endpoint in &self.endpoints {
            let connected = tokio::time::timeout(
                self.timeout,
                Client::connect([endpoint], Some(options.clone())),
            )
            .await
            .map_err(|_| EtcdError::Timeout {
                endpoints: endpoint.clone(),
                after: self.timeout,
            })?;
            let client = connected.map_err(|source| match source {
                etcd_client::Error::InvalidArgs(_)
                | etcd_client::Error::InvalidUri(_)
                | etcd_client::Error::TransportError(_) => {
                    EtcdError::Invalid(format!("etcd client for {endpoint}: {}", chain(&source)))
                }
                source => EtcdError::Connect {
                    endpoints: endpoint.clone(),
                    source,
                },
            })?;
            clients.push((endpoint.clone(), client));
        }
        let client = EtcdClient::new(clients, attempt, credentials.clone());
        if let Some((user, _)) = &credentials {
            if let Err(source) = client.log_in_everywhere().await {
                return Err(EtcdError::Refused {
                    endpoints: client.endpoints(),
                    user: user.clone(),
                    detail: describe(&source),
                    settings: self.source.credentials(),
                });
            }
        }
        Ok(client)
    }
}

fn read_pem(name: &str, path: &Path, label: &str, what: &str) -> Result<Vec<u8>, EtcdError> {
    let bytes = std::fs::read(path)
        .map_err(|e| EtcdError::Invalid(format!("cannot read {name} {}: {e}", path.display())))?;
    let text = String::from_utf8_lossy(&bytes);
    if !(text.contains("-----BEGIN ") && text.contains(label)) {
        return Err(EtcdError::Invalid(format!(
            "{name} {} holds no PEM {what}",
            path.display()
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const PEM_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n";

    fn https(dir: &Path) -> EtcdSettings {
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, PEM_CERT).unwrap();
        EtcdSettings {
            ca_cert: Some(ca),
            ..EtcdSettings::new(vec!["https://127.0.0.1:2379".into()])
        }
    }

    fn invalid(s: &EtcdSettings) -> String {
        match s.tls_files() {
            Err(EtcdError::Invalid(msg)) => msg,
            other => panic!("{s:?}: {other:?}"),
        }
    }

    #[test]
    fn urls_and_pairing_are_checked_naming_the_setting() {
        let mut s = EtcdSettings::new(vec![]);
        assert_eq!(invalid(&s), "etcdEndpoints is empty");
        s.endpoints = vec!["127.0.0.1:2379".into()];
        assert!(invalid(&s).contains("must start with http:// or https://"));
        s.endpoints = vec!["http://a:2379".into(), "https://b:2379".into()];
        assert!(invalid(&s).contains("mixes"));
        s.endpoints = vec!["https://a:2379".into()];
        assert!(invalid(&s).contains("need etcdCACert"));
        s.source = SettingsSource::Flags;
        assert!(invalid(&s).contains("need --etcd-cafile"));
        s.endpoints = vec!["http://a:2379".into()];
        s.ca_cert = Some("/ca.pem".into());
        assert!(invalid(&s).contains("use https:// URLs"));
        s.endpoints = vec!["http://a:2379".into()];
        s.ca_cert = None;
        assert_eq!(s.tls_files().unwrap(), None);
    }

    #[test]
    fn tls_files_must_exist_hold_pem_and_come_in_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = https(dir.path());
        let files = s.tls_files().unwrap().unwrap();
        assert_eq!(files.ca, PEM_CERT.as_bytes());
        assert_eq!(files.identity, None);

        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, PEM_CERT).unwrap();
        std::fs::write(&key, PEM_KEY).unwrap();
        s.cert = Some(cert.clone());
        assert!(invalid(&s).contains("etcdCert and etcdKey go together"));
        s.key = Some(key);
        assert!(s.tls_files().unwrap().unwrap().identity.is_some());
        // Swapped: the key file holds a certificate.
        s.key = Some(cert);
        assert!(invalid(&s).contains("holds no PEM private key"));

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        s.ca_cert = Some(junk);
        assert!(invalid(&s).contains("junk.pem holds no PEM certificate"));
        s.ca_cert = Some(dir.path().join("missing.pem"));
        s.source = SettingsSource::Flags;
        let msg = invalid(&s);
        assert!(msg.starts_with("cannot read --etcd-cafile"), "{msg}");
        assert!(msg.contains("missing.pem"), "{msg}");
    }

    #[test]
    fn user_and_password_go_together_and_the_password_stays_out_of_logs() {
        let mut s = EtcdSettings::new(vec!["http://a:2379".into()]);
        s.username = Some("trellis-cni".into());
        assert_eq!(
            invalid(&s),
            "etcdUsername/etcdPassword go together: give both or neither"
        );
        s.source = SettingsSource::Flags;
        assert!(invalid(&s).starts_with("--etcd-username/--etcd-password go together"));
        s.password = Some(Password("s3cret".into()));
        assert_eq!(s.tls_files().unwrap(), None);
        assert!(!format!("{s:?}").contains("s3cret"), "{s:?}");
        s.username = Some(String::new());
        assert!(invalid(&s).contains("the user name is empty"));
        s.username = None;
        assert!(invalid(&s).contains("go together"));
    }

    #[test]
    fn refusals_for_want_of_access_are_told_apart() {
        use tonic::{Code, Status};
        let status = |code, msg: &str| etcd_client::Error::GRpcStatus(Status::new(code, msg));
        for (e, want) in [
            (
                status(Code::PermissionDenied, "etcdserver: permission denied"),
                Some(Denial::Permission),
            ),
            (
                status(Code::InvalidArgument, "etcdserver: user name is empty"),
                Some(Denial::NoCredentials),
            ),
            (
                status(
                    Code::InvalidArgument,
                    "etcdserver: authentication failed, invalid user ID or password",
                ),
                Some(Denial::BadCredentials),
            ),
            (
                status(Code::InvalidArgument, "etcdserver: request is too large"),
                None,
            ),
            (
                status(Code::Unavailable, "etcdserver: leader changed"),
                None,
            ),
        ] {
            assert_eq!(Denial::of(&e), want, "{e:?}");
        }
        assert!(auth_not_enabled(&status(
            Code::FailedPrecondition,
            "etcdserver: authentication is not enabled"
        )));
    }

    #[test]
    fn settings_keep_their_wire_form() {
        // The fence keeper's queued jobs carry them.
        let s = EtcdSettings::new(vec!["http://127.0.0.1:2379".into()]);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["prefix"], "/trellis");
        assert_eq!(v["timeout"]["secs"], 3);
        let back: EtcdSettings = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.keys().config(), "/trellis/config");
        // Jobs queued before credentials existed still decode.
        let mut old = v;
        old.as_object_mut().unwrap().remove("username");
        old.as_object_mut().unwrap().remove("password");
        assert_eq!(serde_json::from_value::<EtcdSettings>(old).unwrap(), s);
        // A fence keeper authenticates as the plugin did.
        let with_user = EtcdSettings {
            username: Some("trellis-cni".into()),
            password: Some(Password("pw".into())),
            ..s
        };
        let v = serde_json::to_value(&with_user).unwrap();
        assert_eq!(v["password"], "pw");
        assert_eq!(
            serde_json::from_value::<EtcdSettings>(v).unwrap(),
            with_user
        );
    }
}
