//! The values under the etcd prefix, each decoded by its one decoder and
//! handed to what reads it: the node record (`NodeRecord::parse`, then the
//! agent's `DesiredOverlay::from_records`), the cluster config
//! (`ClusterConfig::parse`, then its subnet arithmetic), an address key's
//! owner (`Owner::parse`), a handle (`HandleValue::parse`) and a fence
//! keeper's queued job (`Job::parse`). The first byte picks the record.

#![no_main]

use ipnetwork::{Ipv4Network, Ipv6Network};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use trellis_agent::overlay::{DesiredOverlay, LocalView};
use trellis_common::cluster_config::ClusterConfig;
use trellis_common::node::NodeRecord;
use trellis_ipam::fence_keeper::Job;
use trellis_ipam::store::records::HandleValue;
use trellis_ipam::Owner;

fuzz_target!(|data: &[u8]| {
    let Some((kind, value)) = data.split_first() else {
        return;
    };
    match kind % 5 {
        0 => {
            let Ok(record) = NodeRecord::parse(value) else {
                return;
            };
            let _ = record.gateway();
            let _ = record.lease_subnet();
            let _ = record.gateway6();
            let _ = record.gateway_networks();
            let network: Ipv4Network = "10.244.0.0/16".parse().unwrap();
            let network6: Ipv6Network = "fd10:244::/56".parse().unwrap();
            let records = BTreeMap::from([("remote".to_string(), record)]);
            // Seen from an IPv4-only node, a dual-stack one and an
            // IPv6-only one.
            for (v4, v6) in [(true, false), (true, true), (false, true)] {
                let view = LocalView {
                    node: "local".into(),
                    subnet: v4.then(|| "10.244.1.0/24".parse().unwrap()),
                    network: v4.then_some(network),
                    subnet6: v6.then(|| "fd10:244:0:1::/64".parse().unwrap()),
                    network6: v6.then_some(network6),
                    underlay_v6: false,
                };
                let (desired, _warnings) = DesiredOverlay::from_records(&view, &records);
                for node in desired.nodes.values() {
                    assert!(node.ipv4.is_some() || node.ipv6.is_some());
                    if let Some(n4) = node.ipv4 {
                        assert!(v4 && network.contains(n4.subnet.network()));
                    }
                    if let Some(n6) = node.ipv6 {
                        assert!(v6 && network6.contains(n6.subnet.network()));
                    }
                }
            }
        }
        1 => {
            let Ok(config) = ClusterConfig::parse(value) else {
                return;
            };
            let count = config.subnet_count();
            assert!(count >= 1);
            let first = config.subnet_at(0).expect("a first subnet");
            assert!(config.fits(first));
            let last = config.subnet_at(count - 1).expect("a last subnet");
            assert!(config.fits(last));
            assert_eq!(config.subnet_at(count), None);
            if config.ipv6_network.is_some() {
                let first6 = config.ipv6_subnet_for(first).expect("a twin");
                let last6 = config.ipv6_subnet_for(last).expect("a twin");
                assert!(first6 != last6 || count == 1);
            }
        }
        2 => {
            if let Ok(owner) = Owner::parse(value) {
                assert!(owner.holds(&owner.handle()));
                let _ = owner.is_trellis_attachment();
            }
        }
        3 => {
            if let Some(handle) = HandleValue::parse(value) {
                let _ = handle.ip();
                assert_eq!(HandleValue::parse(&handle.encode()), Some(handle));
            }
        }
        _ => {
            if let Ok(job) = Job::parse(value) {
                let _ = job.settings.validate();
                let _ = job.settings.keys().handles();
                let _ = format!("{:?}", job.fence);
            }
        }
    }
});
