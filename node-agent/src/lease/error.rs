//! Why a subnet lease failed, and which failures a retry cannot mend.

use ipnetwork::IpNetwork;

/// Transactions lost to other agents before giving up (each loss means
/// another node got a subnet, so this bounds only pathological contention).
pub(super) const MAX_ATTEMPTS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "no cluster configuration at {key}: write it before starting agents, e.g. \
         etcdctl put {key} '{{\"network\":\"10.244.0.0/16\",\"subnetLen\":24,\"vni\":1,\"port\":8472}}'"
    )]
    MissingConfig { key: String },
    #[error("invalid cluster configuration at {key}: {reason}")]
    InvalidConfig { key: String, reason: String },
    #[error("network {network} has no free /{subnet_len} subnet left: all {count} are leased")]
    Exhausted {
        network: IpNetwork,
        subnet_len: u8,
        count: u64,
    },
    #[error("lost {MAX_ATTEMPTS} subnet races in a row to other agents; giving up this round")]
    Contention,
    #[error(
        "this node's subnet {wanted} was leased by node {owner} while this agent was away; \
         pods on this node have addresses of {wanted}"
    )]
    SubnetTaken { wanted: IpNetwork, owner: String },
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
}

impl LeaseError {
    /// Errors that retrying with the same input cannot fix.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            LeaseError::InvalidConfig { .. } | LeaseError::SubnetTaken { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_config_says_how_to_write_one() {
        let missing = LeaseError::MissingConfig {
            key: "/t/config".into(),
        };
        assert!(
            missing.to_string().contains("etcdctl put /t/config"),
            "{missing}"
        );
        let invalid = LeaseError::InvalidConfig {
            key: "/t/config".into(),
            reason: "subnetLen 8 ...".into(),
        };
        assert!(
            invalid
                .to_string()
                .starts_with("invalid cluster configuration at /t/config: subnetLen 8"),
            "{invalid}"
        );
        assert!(invalid.is_permanent() && !missing.is_permanent());
    }
}
