//! The test harness shared by every root integration and end-to-end suite:
//! namespaces that remove themselves, the built binaries, a real etcd, a
//! real libcni client, simulated clusters.

pub mod bins;
pub mod cluster;
pub mod etcd;
pub mod libcni;
pub mod netns;
