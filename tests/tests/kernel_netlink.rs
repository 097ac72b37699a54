//! Root tests of the kernel crate's netlink socket in a namespace of its
//! own.

use trellis_kernel::netns::NetnsFile;
use trellis_kernel::Netlink;
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let file = NetnsFile::open(&ns.path()).unwrap();
        let nl = Netlink::in_netns(&file).unwrap();
        let lo = nl.link_by_name("br0").await.unwrap().unwrap().index;
        let vx = nl.link_by_name("vx").await.unwrap().unwrap().index;
        for round in 0..20 {
            let (links, routes, neigh, fdb, addrs) = futures::join!(
                nl.links(),
                nl.routes_on_device(lo),
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

/// Writes `text` to a file for `ip -batch` (the namespace's commands see
/// the host's file system).
fn ns_file(ns: &Netns, name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("{}-{name}", ns.name()));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}
