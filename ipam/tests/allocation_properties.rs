//! Properties of the pool and the allocator, against brute force and a
//! model, on the real local store and cursor file:
//! - a pool hands out exactly the addresses of its subnet that are not the
//!   network, broadcast or gateway address, inside `rangeStart`-`rangeEnd`
//!   and outside every `exclude`, each once from any cursor, after the
//!   cursor first;
//! - any sequence of ADDs, DELs, static requests, writers that share no
//!   cursor and lost cursors never gives an address to two owners nor two
//!   addresses to one, answers a repeated ADD with the address it holds,
//!   and reports the pool exhausted exactly when no usable address is free.

use ipnetwork::Ipv4Network;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};
use trellis_common::cni::code;
use trellis_ipam::allocator::allocate;
use trellis_ipam::cursor::FileCursor;
use trellis_ipam::request::Requested;
use trellis_ipam::{Claim, LocalStore, Owner, Pool};

/// A pool's configuration as offsets into a subnet (so that most of them
/// are valid), and the pool if `Pool::new` takes it.
#[derive(Debug, Clone)]
struct PoolCase {
    subnet: Ipv4Network,
    range_start: Option<Ipv4Addr>,
    range_end: Option<Ipv4Addr>,
    exclude: Vec<Ipv4Network>,
    gateway: Option<Ipv4Addr>,
}

impl PoolCase {
    fn pool(&self) -> Result<Pool, trellis_ipam::IpamError> {
        Pool::new(
            self.subnet.into(),
            self.range_start.map(IpAddr::V4),
            self.range_end.map(IpAddr::V4),
            self.exclude.iter().map(|&n| n.into()).collect(),
            self.gateway.map(IpAddr::V4),
        )
    }

    /// Every usable address, by the definition, address by address.
    fn usable(&self) -> BTreeSet<IpAddr> {
        let net = u32::from(self.subnet.network());
        let bcast = u32::from(self.subnet.broadcast());
        let gateway = self.gateway.map_or(net + 1, u32::from);
        let first = self.range_start.map_or(net + 1, u32::from);
        let last = self.range_end.map_or(bcast - 1, u32::from);
        (net..=bcast)
            .filter(|n| *n != net && *n != bcast && *n != gateway)
            .filter(|n| (first..=last).contains(n))
            .map(Ipv4Addr::from)
            .filter(|ip| !self.exclude.iter().any(|ex| ex.contains(*ip)))
            .map(IpAddr::V4)
            .collect()
    }
}

/// An address `offset` into `subnet` (wrapping), or just outside it.
fn at4(subnet: Ipv4Network, offset: i64) -> Ipv4Addr {
    Ipv4Addr::from((i64::from(u32::from(subnet.network())) + offset) as u32)
}

fn at(subnet: Ipv4Network, offset: i64) -> IpAddr {
    IpAddr::V4(at4(subnet, offset))
}

fn pool_case(max_prefix_bits: u8) -> impl Strategy<Value = PoolCase> {
    (32 - max_prefix_bits..=30u8, any::<u32>()).prop_flat_map(|(prefix, base)| {
        let subnet = Ipv4Network::new(Ipv4Addr::from(base), prefix).unwrap();
        let subnet = Ipv4Network::new(subnet.network(), prefix).unwrap();
        let size = 1i64 << (32 - prefix);
        let offset = move || -1..=size;
        (
            prop::option::of(offset()),
            prop::option::of(offset()),
            prop::collection::vec((offset(), prefix..=32u8), 0..4),
            prop::option::of(offset()),
        )
            .prop_map(move |(start, end, exclude, gateway)| PoolCase {
                subnet,
                range_start: start.map(|o| at4(subnet, o)),
                range_end: end.map(|o| at4(subnet, o)),
                exclude: exclude
                    .into_iter()
                    .map(|(o, len)| {
                        let ip = at4(subnet, o);
                        Ipv4Network::new(ip, len).unwrap()
                    })
                    .collect(),
                gateway: gateway.map(|o| at4(subnet, o)),
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn a_pool_hands_out_exactly_its_usable_addresses(
        case in pool_case(8),
        cursor_offset in -2i64..300,
    ) {
        let pool = match case.pool() {
            Ok(pool) => pool,
            Err(e) => {
                // Refused only for a reason: a value outside the usable
                // addresses, or a range that ends before it starts.
                prop_assert_eq!(e.code(), code::INVALID_CONFIG);
                let net = u32::from(case.subnet.network());
                let bcast = u32::from(case.subnet.broadcast());
                let outside = |ip: Option<Ipv4Addr>| {
                    ip.is_some_and(|ip| u32::from(ip) <= net || u32::from(ip) >= bcast)
                };
                let backwards = match (case.range_start, case.range_end) {
                    (Some(s), Some(e)) => s > e,
                    (Some(s), None) => u32::from(s) > bcast - 1,
                    (None, Some(e)) => u32::from(e) < net + 1,
                    (None, None) => false,
                };
                prop_assert!(
                    outside(case.range_start) || outside(case.range_end)
                        || outside(case.gateway) || backwards,
                    "{:?} refused: {}", case, e
                );
                return Ok(());
            }
        };
        let usable = case.usable();
        for n in u32::from(case.subnet.network()).saturating_sub(1)
            ..=u32::from(case.subnet.broadcast()).saturating_add(1)
        {
            let ip = IpAddr::V4(Ipv4Addr::from(n));
            prop_assert_eq!(pool.is_usable(ip), usable.contains(&ip), "{}", ip);
            prop_assert_eq!(pool.why_unusable(ip).is_none(), usable.contains(&ip));
        }
        let cursor = at(case.subnet, cursor_offset);
        let walk: Vec<IpAddr> = pool.candidates_after(Some(cursor)).collect();
        prop_assert_eq!(walk.len(), usable.len(), "each usable address once");
        prop_assert_eq!(walk.iter().copied().collect::<BTreeSet<_>>(), usable.clone());
        // In address order from just after the cursor (when the cursor is
        // inside the range), wrapping around once.
        let first = case.range_start.map_or(u32::from(case.subnet.network()) + 1, u32::from);
        let last = case.range_end.map_or(u32::from(case.subnet.broadcast()) - 1, u32::from);
        let after = if (first..=last).contains(&u32::from(at4(case.subnet, cursor_offset))) {
            usable.iter().copied().filter(|ip| *ip > cursor).chain(
                usable.iter().copied().filter(|ip| *ip <= cursor),
            ).collect::<Vec<_>>()
        } else {
            usable.iter().copied().collect()
        };
        prop_assert_eq!(walk, after);
    }
}

/// One step of a run against a store.
#[derive(Debug, Clone)]
enum Step {
    /// ADD of container `id` (from the node's cursor).
    Add(u8),
    /// DEL of container `id`.
    Del(u8),
    /// ADD of container `id` asking for the address `offset` into the subnet.
    Static(u8, i64),
    /// A writer that shares no cursor (another node's plugin, a restored
    /// backup) claims the address `offset` into the subnet.
    Foreign(u8, i64),
    /// The cursor file is lost (reboot of a tmpfs state dir).
    LoseCursor,
}

fn steps(size: i64) -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        5 => (0u8..12).prop_map(Step::Add),
        2 => (0u8..12).prop_map(Step::Del),
        1 => (0u8..12, -1..=size).prop_map(|(id, o)| Step::Static(id, o)),
        1 => (0u8..4, 0..size).prop_map(|(id, o)| Step::Foreign(id, o)),
        1 => Just(Step::LoseCursor),
    ];
    prop::collection::vec(step, 1..40)
}

fn owner(id: &str) -> Owner {
    Owner {
        container_id: id.to_string(),
        ifname: "eth0".into(),
        node: String::new(),
        network: "net".into(),
        plugin: "trellis".into(),
        name: String::new(),
    }
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn open(dir: &Path) -> LocalStore {
    LocalStore::open(dir, Instant::now() + Duration::from_secs(5)).unwrap()
}

/// A temporary directory in memory where there is one: the local store
/// syncs every write, and a run makes thousands.
fn scratch() -> tempfile::TempDir {
    match Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm").unwrap(),
        false => tempfile::tempdir().unwrap(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn allocations_never_collide_and_exhaustion_is_exact(
        (case, steps) in pool_case(4)
            .prop_filter("a pool Pool::new takes", |c| c.pool().is_ok())
            .prop_flat_map(|c| {
                let size = 1i64 << (32 - c.subnet.prefix());
                (Just(c), steps(size))
            })
    ) {
        let pool = case.pool().unwrap();
        let usable = case.usable();
        let dir = scratch();
        // The model: who holds what.
        let mut held: BTreeMap<String, IpAddr> = BTreeMap::new();
        for step in steps {
            let mut store = open(dir.path());
            let mut cursor = FileCursor::new(store.cursor_path());
            match step {
                Step::Add(id) => {
                    let id = format!("c{id}");
                    let got = run(allocate(&mut store, &mut cursor, &pool, &owner(&id), Requested::NONE));
                    let taken: BTreeSet<IpAddr> = held.values().copied().collect();
                    match (held.get(&id), got) {
                        (Some(ip), Ok(out)) => {
                            prop_assert_eq!(out.allocation.ip, *ip, "a repeated ADD");
                            prop_assert!(!out.fresh);
                        }
                        (Some(_), Err(e)) => prop_assert!(false, "repeated ADD of {}: {}", id, e),
                        (None, Ok(out)) => {
                            let ip = out.allocation.ip;
                            prop_assert!(out.fresh);
                            prop_assert!(usable.contains(&ip), "{} is not usable", ip);
                            prop_assert!(!taken.contains(&ip), "{} handed out twice", ip);
                            held.insert(id, ip);
                        }
                        (None, Err(e)) => {
                            prop_assert_eq!(e.code(), code::POOL_EXHAUSTED, "{}", e);
                            prop_assert!(
                                usable.is_subset(&taken),
                                "exhausted with {:?} free",
                                usable.difference(&taken).collect::<Vec<_>>()
                            );
                        }
                    }
                }
                Step::Del(id) => {
                    let id = format!("c{id}");
                    let freed = store.release(&owner(&id).handle()).unwrap();
                    prop_assert_eq!(freed.map(|a| a.ip), held.remove(&id));
                }
                Step::Static(id, offset) => {
                    let id = format!("c{id}");
                    let ip = at(case.subnet, offset);
                    let got = run(allocate(&mut store, &mut cursor, &pool, &owner(&id), Requested::v4(at4(case.subnet, offset))));
                    let holder = held.iter().find(|(_, v)| **v == ip).map(|(k, _)| k.clone());
                    let ok = usable.contains(&ip)
                        && match (&holder, held.get(&id)) {
                            (Some(h), _) => *h == id,
                            (None, mine) => mine.is_none(),
                        };
                    match got {
                        Ok(out) => {
                            prop_assert!(ok, "{} given to {} (held: {:?})", ip, id, held);
                            prop_assert_eq!(out.allocation.ip, ip);
                            held.insert(id, ip);
                        }
                        Err(e) => {
                            prop_assert!(!ok, "{} refused to {}: {}", ip, id, e);
                            prop_assert_eq!(e.code(), code::ADDRESS_UNAVAILABLE, "{}", e);
                        }
                    }
                }
                Step::Foreign(id, offset) => {
                    let id = format!("foreign{id}");
                    let ip = at(case.subnet, offset);
                    let before = held.get(&id).copied();
                    match store.claim(ip, None, &owner(&id)).unwrap() {
                        Claim::Claimed(a) => {
                            prop_assert!(before.is_none() && !held.values().any(|v| *v == ip));
                            held.insert(id, a.ip);
                        }
                        Claim::AlreadyHeld(a) => prop_assert_eq!(Some(a.ip), before),
                        Claim::Taken { .. } => {
                            prop_assert!(held.values().any(|v| *v == ip));
                        }
                    }
                }
                Step::LoseCursor => {
                    let _ = std::fs::remove_file(store.cursor_path());
                }
            }
            // The store holds exactly the model: one owner per address
            // (it is keyed by address), one address per owner.
            drop(store);
            let stored: BTreeSet<(String, IpAddr)> = open(dir.path())
                .list_all()
                .into_iter()
                .map(|a| (a.owner.container_id, a.ip))
                .collect();
            let model: BTreeSet<(String, IpAddr)> =
                held.iter().map(|(id, ip)| (id.clone(), *ip)).collect();
            prop_assert_eq!(&stored, &model);
            let distinct: BTreeSet<IpAddr> = held.values().copied().collect();
            prop_assert_eq!(distinct.len(), held.len(), "an address with two owners");
        }
    }
}
