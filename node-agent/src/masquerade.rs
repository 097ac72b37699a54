//! The node-level masquerade rule set (`--ip-masq`): traffic from this
//! node's pod subnet to destinations outside the cluster network leaves
//! with the node's address. One nftables table, owned by the agent.

use ipnetwork::{IpNetwork, Ipv4Network};
use trellis_kernel::{KernelError, Masquerade};

/// The agent's nftables table (`nft list table ip trellis-agent`).
pub const TABLE: &str = "trellis-agent";

pub fn rule_set(subnet: Ipv4Network, network: Ipv4Network) -> Masquerade {
    Masquerade::new(TABLE, IpNetwork::V4(subnet), vec![IpNetwork::V4(network)])
}

/// Install (or refresh) the rule set, off the async threads (`nft` runs as
/// a child process).
pub async fn ensure(rule: Masquerade) -> Result<(), KernelError> {
    tokio::task::spawn_blocking(move || rule.ensure())
        .await
        .expect("nft task panicked")
}

/// Remove the agent's table (absent is fine).
pub async fn remove() -> Result<(), KernelError> {
    let rule = rule_set(
        Ipv4Network::new(std::net::Ipv4Addr::UNSPECIFIED, 0).expect("valid"),
        Ipv4Network::new(std::net::Ipv4Addr::UNSPECIFIED, 0).expect("valid"),
    );
    tokio::task::spawn_blocking(move || rule.remove())
        .await
        .expect("nft task panicked")
}

/// Re-install the rule set when it went missing (someone flushed the
/// ruleset); `true` when it had to.
pub async fn keep(rule: Masquerade) -> Result<bool, KernelError> {
    tokio::task::spawn_blocking(move || {
        if rule.is_installed()? {
            Ok(false)
        } else {
            rule.ensure().map(|()| true)
        }
    })
    .await
    .expect("nft task panicked")
}
