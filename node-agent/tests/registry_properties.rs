//! Properties of the node registry (`registry::Registry`): whatever order
//! node records arrive, change and leave in (conflicting subnets and MACs,
//! records outside the network, unreadable ones, this node's own, fresh
//! listings in between), the desired overlay it holds after every event is
//! exactly what a listing of the same records computes, and the updates it
//! sends, applied in order, rebuild that same state.

use proptest::prelude::*;
use std::collections::BTreeMap;
use trellis_agent::overlay::DesiredOverlay;
use trellis_agent::registry::{LocalView, Registry};
use trellis_common::node::NodeRecord;

fn view() -> LocalView {
    LocalView {
        node: "local".into(),
        subnet: Some("10.244.1.0/24".parse().unwrap()),
        network: Some("10.244.0.0/16".parse().unwrap()),
        subnet6: None,
        network6: None,
        underlay_v6: false,
    }
}

/// A record from a small palette, so that conflicts are common: subnets
/// that overlap each other or this node's, one outside the network, MACs
/// shared between records, an IPv6 underlay, garbage.
fn record_strategy() -> impl Strategy<Value = Vec<u8>> {
    let subnets = [
        "10.244.2.0/24",
        "10.244.3.0/24",
        "10.244.2.0/23",
        "10.244.1.0/24",
        "10.99.0.0/24",
        "10.244.4.0/24",
        "10.244.5.0/24",
    ];
    (0..subnets.len(), 0u8..5, 0u8..6).prop_map(move |(s, mac, ip)| match ip {
        5 => b"{not json".to_vec(),
        _ => {
            let public = if ip == 4 {
                "2001:db8::4".to_string()
            } else {
                format!("192.0.2.{ip}")
            };
            format!(
                r#"{{"subnet":"{}","publicIP":"{public}","vtepMAC":"02:00:00:00:00:{mac:02x}"}}"#,
                subnets[s]
            )
            .into_bytes()
        }
    })
}

#[derive(Debug, Clone)]
enum Event {
    Put(String, Vec<u8>),
    Delete(String),
    Relist,
}

fn event_strategy() -> impl Strategy<Value = Event> {
    let name = prop::sample::select(vec!["a", "b", "c", "d", "e", "local"]).prop_map(String::from);
    prop_oneof![
        6 => (name.clone(), record_strategy()).prop_map(|(n, r)| Event::Put(n, r)),
        3 => name.prop_map(Event::Delete),
        1 => Just(Event::Relist),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_event_leaves_what_a_listing_would_compute(
        events in prop::collection::vec(event_strategy(), 1..40)
    ) {
        let v = view();
        let mut registry = Registry::new(v.clone());
        // The records etcd holds, as they are written.
        let mut etcd: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut followed = DesiredOverlay::default();
        followed.apply(registry.replace(Vec::new()));
        for event in events {
            let update = match event {
                Event::Put(name, value) => {
                    etcd.insert(name.clone(), value.clone());
                    registry.put(name, &value)
                }
                Event::Delete(name) => {
                    etcd.remove(&name);
                    registry.delete(&name)
                }
                Event::Relist => Some(registry.replace(etcd.clone())),
            };
            if let Some(u) = update {
                followed.apply(u);
            }
            let readable: BTreeMap<String, NodeRecord> = etcd
                .iter()
                .filter_map(|(n, v)| Some((n.clone(), NodeRecord::parse(v).ok()?)))
                .collect();
            let (listed, _) =
                DesiredOverlay::from_records(&v, &readable);
            prop_assert_eq!(registry.desired(), &listed);
            prop_assert_eq!(&followed, &listed);
        }
    }
}
