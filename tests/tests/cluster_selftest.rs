//! Root test of the simulated cluster's own plumbing, without agents: the
//! underlay joins the nodes, etcd answers from the underlay namespace, the
//! outside host sees a node by its underlay address, and everything goes
//! away with the cluster.

use std::net::IpAddr;
use std::path::Path;

use trellis_tests::cluster::{ping, Cluster, ClusterSpec, OUTSIDE_IP, UNDERLAY_GATEWAY};

#[test]
fn underlay_etcd_and_outside_without_agents() {
    let names: Vec<String>;
    let dir;
    {
        let cluster = Cluster::start(ClusterSpec::default().nodes(2).agents(false)).unwrap();
        names = cluster
            .nodes
            .iter()
            .map(|n| n.netns.name().to_owned())
            .chain([
                cluster.underlay().name().to_owned(),
                cluster.outside().name().to_owned(),
            ])
            .collect();
        dir = cluster.work_dir().to_owned();

        let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
        assert_eq!(a.underlay_ip.to_string(), "192.0.2.1");
        assert_eq!(b.underlay_ip.to_string(), "192.0.2.2");
        ping(&a.netns, IpAddr::V4(b.underlay_ip)).unwrap();
        ping(&b.netns, IpAddr::V4(UNDERLAY_GATEWAY)).unwrap();
        ping(&a.netns, IpAddr::V4(OUTSIDE_IP)).unwrap();

        // The operator's config is in etcd before any agent starts.
        let config = cluster
            .etcdctl(&["get", "--print-value-only", "/trellis/config"])
            .unwrap();
        let config: serde_json::Value = serde_json::from_str(config.trim()).unwrap();
        assert_eq!(config["network"], "10.244.0.0/16");
        assert_eq!(config["subnetLen"], 24);
        assert!(cluster.allocations().unwrap().is_empty());

        // Each node has its conflist pointing at etcd and its state dir.
        let conf: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&a.conflist).unwrap()).unwrap();
        assert_eq!(conf["plugins"][0]["type"], "trellis");
        assert_eq!(
            conf["plugins"][0]["ipam"]["etcdEndpoints"][0],
            cluster.etcd_endpoint()
        );
        assert_eq!(
            conf["plugins"][0]["stateDir"],
            a.state_dir.display().to_string()
        );

        // Without masquerading anywhere, the outside host sees the node itself.
        let seen = cluster
            .source_seen_outside(&cluster.nodes[1].netns)
            .unwrap();
        assert_eq!(seen.to_string(), "192.0.2.2");
    }
    for name in &names {
        assert!(
            !Path::new("/run/netns").join(name).exists(),
            "{name} left behind"
        );
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
}
