//! Running the IPAM plugin of the configuration. `trellis-ipam` is handed
//! to the node agent's IPAM service on `<stateDir>/ipam.sock` when one
//! listens there (it keeps an etcd connection, where a process opens one
//! per call), and run as a process otherwise or when the agent declines;
//! any other IPAM plugin is run as a process.

use trellis_common::cni::delegate::Delegation;
use trellis_common::cni::service::{IPAM_PLUGIN, IPAM_SOCKET};
use trellis_common::cni::{CniEnv, CniError, CniResult, Command};
use trellis_plugin::config::Config;

/// Start the IPAM plugin for `command`; collect it with
/// [`Delegation::finish`].
pub fn start(
    cfg: &Config,
    command: Command,
    env: &CniEnv,
    stdin: &[u8],
) -> Result<Delegation, CniError> {
    if cfg.ipam_type == IPAM_PLUGIN {
        let socket = cfg.state_dir.join(IPAM_SOCKET);
        Delegation::start_served(&socket, &cfg.ipam_type, command, env, stdin)
    } else {
        Delegation::start(&cfg.ipam_type, command, env, stdin)
    }
}

/// Run the IPAM plugin for `command` and wait for it.
pub fn call(
    cfg: &Config,
    command: Command,
    env: &CniEnv,
    stdin: &[u8],
) -> Result<Option<CniResult>, CniError> {
    start(cfg, command, env, stdin)?.finish()
}
