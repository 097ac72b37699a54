//! The node subnet lease. One key per leased subnet,
//! `<prefix>/subnets/<net>-<len>` = `{"node": NAME}`, created only when
//! absent (an etcd transaction) and bound to an etcd lease the agent keeps
//! alive: two nodes can never hold one subnet, however many agents start at
//! once. On restart the agent finds its own key and keeps its subnet (and
//! its etcd lease), so running pods keep their addresses.
//!
//! Next to it, `<prefix>/subnet-grace/<net>-<len>` = `{"node": NAME}` under
//! a second etcd lease of the subnet lease's TTL plus the grace
//! (`--subnet-grace`), written in the same transaction and kept alive with
//! it. When the node dies, its subnet key goes with its lease and its grace
//! key a grace later: until then no other node is given the subnet (the
//! node itself may take it back), and its pods' addresses stay allocated
//! ([`crate::dead_nodes`] reclaims them once both keys are gone).
//!
//! [`claims`] reads the config and the subnet and grace keys, [`choice`]
//! decides (pure), [`acquire`] takes a subnet in one transaction, and
//! [`release`] gives the node's back.

mod acquire;
mod choice;
mod claims;
mod error;
mod release;

pub use acquire::acquire;
pub use choice::{choose_subnet, own_subnet, taken_for, Scope};
pub use claims::{
    list_graces, list_subnets, named_networks, read_config, LeaseTimes, Leased, LeasedSubnet,
    SubnetClaim,
};
pub use error::LeaseError;
pub use release::{lease_alive, publish_record, release, release_named};
