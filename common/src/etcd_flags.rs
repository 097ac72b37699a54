//! The etcd flags of every command line (the agent's subcommands and
//! `trellisctl`), each also read from an environment variable: one
//! definition, so that the operator CLI takes exactly the agent's.

use crate::etcd::{EtcdSettings, Password, SettingsSource};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    /// etcd cluster, comma separated.
    #[arg(
        long,
        env = "TRELLIS_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of every trellis key.
    #[arg(long, env = "TRELLIS_ETCD_PREFIX", default_value = crate::keys::DEFAULT_ETCD_PREFIX)]
    pub etcd_prefix: String,
    /// CA certificate that signed etcd's server certificate.
    #[arg(long, env = "TRELLIS_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate for etcd (with --etcd-keyfile).
    #[arg(long, env = "TRELLIS_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// Client key for etcd (with --etcd-certfile).
    #[arg(long, env = "TRELLIS_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
    /// etcd user (with --etcd-password): for the agent, one whose role
    /// grants the agent's keys (README, "etcd permissions").
    #[arg(long, env = "TRELLIS_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    /// Password of --etcd-username (prefer the environment variable: a
    /// flag shows in the process list).
    #[arg(long, env = "TRELLIS_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<Password>,
}

/// Budget of one etcd request of the agent; a stuck server fails it
/// instead of hanging the agent.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl EtcdArgs {
    /// The settings these flags give, checked (and named in errors) as
    /// the IPAM plugin checks its own.
    pub fn settings(&self) -> EtcdSettings {
        EtcdSettings {
            endpoints: self.etcd_endpoints.clone(),
            prefix: self.etcd_prefix.clone(),
            ca_cert: self.etcd_cafile.clone(),
            cert: self.etcd_certfile.clone(),
            key: self.etcd_keyfile.clone(),
            username: self.etcd_username.clone(),
            password: self.etcd_password.clone(),
            timeout: REQUEST_TIMEOUT,
            source: SettingsSource::Flags,
        }
    }
}
