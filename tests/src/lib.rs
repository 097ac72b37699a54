//! The test harness shared by every root integration and end-to-end suite:
//! namespaces that remove themselves, the built binaries, a real etcd, a
//! real libcni client, simulated clusters, and real container runtimes
//! (podman, containerd with `ctr` and CRI) as CNI clients.

pub mod bins;
pub mod churn;
pub mod cluster;
pub mod containerd;
pub mod cri;
pub mod ctl;
pub mod cut_proxy;
pub mod dig;
pub mod etcd;
pub mod etcd_cluster;
pub mod kube;
pub mod libcni;
pub mod netns;
pub mod podman;
pub mod rootfs;
pub mod soak;
pub mod wait;
