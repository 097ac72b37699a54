//! STATUS (1.1.0): ready when the node has what ADD needs: in cluster mode
//! the agent's node record, then whatever the IPAM plugin needs (its
//! STATUS).

use crate::ipam;
use trellis_common::cni::{CniError, Command, Request};
use trellis_plugin::config::Config;

pub fn status(req: &Request) -> Result<(), CniError> {
    let cfg = Config::from_request(req)?;
    if cfg.ipam_subnets.is_empty() && cfg.node_record().ok().flatten().is_none() {
        return Err(CniError::not_ready(match &cfg.network {
            None => format!(
                "no node record in {}: trellis-agent has not published this node yet",
                cfg.state_dir.display()
            ),
            Some(name) => format!(
                "network {name} is not set up on this node yet (no {})",
                cfg.record_path().display()
            ),
        }));
    }
    ipam::call(&cfg, Command::Status, &req.env, &req.stdin)?;
    Ok(())
}
