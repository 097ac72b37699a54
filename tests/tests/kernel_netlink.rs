//! Root tests of the kernel crate's netlink socket in a namespace of its
//! own.

use trellis_kernel::netns::NetnsFile;
use trellis_kernel::{Netlink, Nexthop, Route};
use trellis_tests::netns::Netns;

/// The agent dumps FDB, neighbour and route entries at once on one socket,
/// and its leak reclaim lists links meanwhile. The kernel runs one dump per
/// socket and refuses another with EBUSY: before, such passes failed now
/// and then ("dumping FDB entries: Device or resource busy").
#[test]
fn concurrent_dumps_on_one_socket_all_succeed() {
    let ns = Netns::new("dumps").unwrap();
    // Dumps long enough to take several reads (the kernel refuses a second
    // dump only while the first is unfinished): 1000 bridges with an
    // address each, added in one `ip -batch`.
    let mut batch = String::new();
    for i in 0..1000 {
        batch.push_str(&format!(
            "link add br{i} type bridge\naddr add 10.{}.{}.1/24 dev br{i}\nlink set br{i} up\n",
            10 + i / 256,
            i % 256
        ));
    }
    let file = ns_file(&ns, "batch", &batch);
    ns.ok(&["ip", "-batch", &file]).unwrap();
    // And a VXLAN device with 1000 FDB entries.
    ns.ok(&[
        "ip",
        "link",
        "add",
        "vx",
        "type",
        "vxlan",
        "id",
        "1",
        "dstport",
        "8472",
        "nolearning",
    ])
    .unwrap();
    let mut fdb = String::new();
    for i in 0..1000u32 {
        fdb.push_str(&format!(
            "fdb append 02:00:00:00:{:02x}:{:02x} dev vx dst 192.0.2.{} self permanent\n",
            i / 256,
            i % 256,
            1 + i % 250
        ));
    }
    let file = ns_file(&ns, "fdb", &fdb);
    ns.ok(&["bridge", "-batch", &file]).unwrap();
    let (rt, nl) = netlink_in(&ns);
    rt.block_on(async {
        let lo = nl.link_by_name("br0").await.unwrap().unwrap().index;
        let vx = nl.link_by_name("vx").await.unwrap().unwrap().index;
        let none = std::collections::HashSet::new();
        let devices = [lo];
        for round in 0..20 {
            let (links, routes, neigh, fdb, addrs) = futures::join!(
                nl.links(),
                nl.routes_on_devices(&devices, &none),
                nl.neighbours_on(lo),
                nl.fdb_entries(vx),
                nl.addresses(lo),
            );
            assert_eq!(links.unwrap().len(), 1002, "round {round}");
            routes.unwrap_or_else(|e| panic!("round {round}: {e}"));
            neigh.unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(
                fdb.unwrap_or_else(|e| panic!("round {round}: {e}")).len(),
                1000,
                "round {round}"
            );
            let addrs = addrs.unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert!(
                addrs.iter().any(|a| a.to_string() == "10.10.0.1/24"),
                "round {round}: {addrs:?}"
            );
        }
    });
}

/// A runtime of its own and a netlink socket in `ns` driven by it.
fn netlink_in(ns: &Netns) -> (tokio::runtime::Runtime, Netlink) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let file = NetnsFile::open(&ns.path()).unwrap();
    let nl = rt.block_on(async { Netlink::in_netns(&file) }).unwrap();
    (rt, nl)
}

/// Writes `text` to a file for `ip -batch` (the namespace's commands see
/// the host's file system).
fn ns_file(ns: &Netns, name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("{}-{name}", ns.name()));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Nexthop objects, encoded by the kernel crate itself: made, read back
/// (by the crate and by iproute2), replaced, used by a route, and deleted
/// with the routes through them.
#[test]
fn nexthops_are_made_read_replaced_and_deleted_with_their_routes() {
    let ns = Netns::new("nexthop").unwrap();
    for cmd in [
        "ip link add vx type vxlan id 1 dstport 8472 nolearning",
        "ip link add vy type vxlan id 2 dstport 8473 nolearning",
        "ip link set vx up",
        "ip link set vy up",
        "ip addr add 10.244.1.0/32 dev vx",
        // Someone else's nexthop on another device: never listed for vx.
        "ip nexthop add id 7 via 10.9.9.9 dev vy onlink",
    ] {
        ns.sh_ok(cmd).unwrap();
    }
    let (rt, nl) = netlink_in(&ns);
    rt.block_on(async {
        let vx = nl.link_by_name("vx").await.unwrap().unwrap().index;
        assert!(nl.nexthops_on_device(vx).await.unwrap().is_empty());
        let gw: std::net::Ipv4Addr = "10.244.2.0".parse().unwrap();
        let nh = Nexthop {
            id: u32::from(gw),
            gateway: gw.into(),
            oif: vx,
            onlink: true,
        };
        nl.replace_nexthop(&nh).await.unwrap();
        assert_eq!(nl.nexthops_on_device(vx).await.unwrap(), vec![nh]);
        let shown = ns.ok(&["ip", "nexthop", "show", "dev", "vx"]).unwrap();
        assert!(
            shown.contains(&format!("id {} via 10.244.2.0 dev vx", nh.id))
                && shown.contains("onlink"),
            "{shown}"
        );
        // A route through it, as the kernel reports it.
        let route = Route::to("10.244.2.0/24".parse().unwrap()).nexthop(nh.id);
        nl.replace_route(&route).await.unwrap();
        let routes = nl.routes_on_devices(&[vx], &[nh.id].into()).await.unwrap();
        assert_eq!(routes.len(), 1, "{routes:?}");
        assert_eq!(routes[0].nexthop, Some(nh.id));
        assert_eq!(routes[0].gateway, Some(gw.into()));
        let got = nl
            .route_get("10.244.2.7".parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.oif, Some(vx));
        // Replacing the nexthop moves the route with it.
        let moved = Nexthop {
            gateway: "10.244.3.0".parse().unwrap(),
            ..nh
        };
        nl.replace_nexthop(&moved).await.unwrap();
        assert_eq!(nl.nexthops_on_device(vx).await.unwrap(), vec![moved]);
        let routes = nl.routes_on_devices(&[vx], &[nh.id].into()).await.unwrap();
        assert_eq!(routes[0].gateway, Some(moved.gateway));
        // A route to a missing nexthop is refused with the kernel's error.
        let err = nl
            .replace_route(&Route::to("10.244.5.0/24".parse().unwrap()).nexthop(99))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("10.244.5.0/24"), "{err}");
        // Deleting the nexthop takes its route; deleting it again is fine.
        nl.delete_nexthop(nh.id).await.unwrap();
        assert!(nl.nexthops_on_device(vx).await.unwrap().is_empty());
        assert!(nl
            .routes_on_devices(&[vx], &[nh.id].into())
            .await
            .unwrap()
            .is_empty());
        nl.delete_nexthop(nh.id).await.unwrap();
        // A nexthop on a device that is gone: the kernel's error, named.
        let err = nl
            .replace_nexthop(&Nexthop { oif: 9999, ..nh })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("setting nexthop"), "{err}");
    });
    // The other device's nexthop was never touched.
    let other = ns.ok(&["ip", "nexthop", "show", "id", "7"]).unwrap();
    assert!(other.contains("dev vy"), "{other}");
}

/// `--vxlan-tx-checksum-offload=false`'s kernel call: the VXLAN device's
/// transmit checksum offload read, turned off and on, in the namespace of
/// the calling thread.
#[test]
fn tx_checksum_offload_is_read_and_switched() {
    let ns = Netns::new("ethtool").unwrap();
    ns.ok(&[
        "ip",
        "link",
        "add",
        "vx",
        "type",
        "vxlan",
        "id",
        "1",
        "dstport",
        "8472",
        "nolearning",
    ])
    .unwrap();
    let file = NetnsFile::open(&ns.path()).unwrap();
    let seen = trellis_kernel::netns::run_in_netns(&file, || {
        use trellis_kernel::ethtool::{set_tx_checksum, tx_checksum};
        let before = tx_checksum("vx")?;
        set_tx_checksum("vx", false)?;
        let off = tx_checksum("vx")?;
        set_tx_checksum("vx", true)?;
        let on = tx_checksum("vx")?;
        Ok::<_, trellis_kernel::KernelError>((before, off, on))
    })
    .unwrap()
    .unwrap();
    assert_eq!(seen, (true, false, true), "(default, after off, after on)");
    assert!(
        ns.ok(&["ip", "-d", "link", "show", "vx"]).is_ok(),
        "the device is still there"
    );
}
