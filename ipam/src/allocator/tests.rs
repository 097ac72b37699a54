//! The allocator's cases: order, reuse, races, static requests, both families.

use super::*;
use crate::allocation::Handle;
use crate::cursor::FileCursor;
use crate::store::local::LocalStore;
use ipnetwork::IpNetwork;
use std::time::{Duration, Instant};

fn owner(id: &str) -> Owner {
    Owner::of_test_container(id)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pool(subnet: &str) -> Pool {
    Pool::new(subnet.parse().unwrap(), None, None, vec![], None).unwrap()
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn open(dir: &std::path::Path) -> LocalStore {
    LocalStore::open(dir, Instant::now() + Duration::from_secs(5)).unwrap()
}

/// Allocate for `id` the way the plugin does.
fn add(dir: &std::path::Path, p: &Pool, id: &str) -> Result<Outcome, IpamError> {
    let mut s = open(dir);
    let mut cursor = FileCursor::new(s.cursor_path());
    run(allocate(
        &mut s,
        &mut cursor,
        p,
        &owner(id),
        Requested::NONE,
    ))
}

#[test]
fn hands_out_in_order_and_reuses_freed_addresses_last() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool("10.0.0.0/29"); // .2 .. .6 usable
    let got: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|id| add(dir.path(), &p, id).unwrap().allocation.ip)
        .collect();
    assert_eq!(got, ["10.0.0.2", "10.0.0.3", "10.0.0.4"].map(ip));
    open(dir.path()).release(&owner("a").handle()).unwrap();
    // .2 is free again, but the cursor moves on first.
    assert_eq!(
        add(dir.path(), &p, "d").unwrap().allocation.ip,
        ip("10.0.0.5")
    );
    assert_eq!(
        add(dir.path(), &p, "e").unwrap().allocation.ip,
        ip("10.0.0.6")
    );
    // Wrap-around: the freed .2 after the end of the range.
    assert_eq!(
        add(dir.path(), &p, "f").unwrap().allocation.ip,
        ip("10.0.0.2")
    );
    let e = add(dir.path(), &p, "g").unwrap_err();
    assert_eq!(e.code(), 102);
    assert!(e.to_string().contains("10.0.0.0/29"), "{e}");
}

#[test]
fn a_repeated_add_returns_the_same_address_even_when_full() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool("10.0.0.0/30"); // only .2
    let first = add(dir.path(), &p, "a").unwrap();
    assert!(first.fresh);
    let again = add(dir.path(), &p, "a").unwrap();
    assert!(!again.fresh);
    assert_eq!(again.allocation.ip, first.allocation.ip);
    assert_eq!(add(dir.path(), &p, "b").unwrap_err().code(), 102);
}

#[test]
fn skips_taken_addresses_after_a_lost_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool("10.0.0.0/24");
    for id in ["a", "b", "c"] {
        add(dir.path(), &p, id).unwrap();
    }
    // A cursor that points before taken addresses (state lost).
    let mut s = open(dir.path());
    std::fs::remove_file(s.cursor_path()).unwrap();
    let mut cursor = FileCursor::new(s.cursor_path());
    let got = run(allocate(
        &mut s,
        &mut cursor,
        &p,
        &owner("d"),
        Requested::NONE,
    ))
    .unwrap();
    assert_eq!(got.allocation.ip, ip("10.0.0.5"));
}

#[test]
fn an_ipv6_only_pool_hands_out_ipv6_addresses_alone() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool("fd00:0:0:7::/126"); // ::1 the gateway, ::2 and ::3 free
    let a = add(dir.path(), &p, "a").unwrap().allocation;
    assert_eq!((a.ip, a.ip6), (ip("fd00:0:0:7::2"), None));
    assert_eq!(add(dir.path(), &p, "a").unwrap().allocation, a);
    let mut s = open(dir.path());
    let mut cursor = FileCursor::new(s.cursor_path());
    // A static IPv6 request is the pool's own address; an IPv4 one has
    // no subnet to come from.
    let mut ask_for = |addr: &str| {
        let requested = match addr.parse().unwrap() {
            IpAddr::V4(v4) => Requested::v4(v4),
            IpAddr::V6(v6) => Requested {
                v4: None,
                v6: Some(v6),
            },
        };
        run(allocate(&mut s, &mut cursor, &p, &owner("b"), requested))
    };
    let e = ask_for("fd00:0:0:7::2").unwrap_err();
    assert_eq!(e.code(), 103, "{e}");
    assert!(
        e.to_string().contains("already allocated to container a"),
        "{e}"
    );
    let e = ask_for("fd00:0:0:7::1").unwrap_err();
    assert!(
        e.to_string().contains("is the gateway of fd00:0:0:7::/126"),
        "{e}"
    );
    let e = ask_for("10.0.0.2").unwrap_err();
    assert!(e.to_string().contains("has no IPv4 subnet"), "{e}");
    let b = ask_for("fd00:0:0:7::3").unwrap();
    assert_eq!(b.allocation.ip, ip("fd00:0:0:7::3"));
    drop(s);
    // Full: the next one is told so (code 102 in the plugin).
    let e = add(dir.path(), &p, "c").unwrap_err();
    assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
    assert!(e.to_string().contains("fd00:0:0:7::/126"), "{e}");
}

#[test]
fn a_dual_stack_pool_gives_each_address_its_ipv6_twin() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool("10.0.0.0/29")
        .with_ipv6(Some("fd00:0:0:7::/64".parse().unwrap()))
        .unwrap();
    let a = add(dir.path(), &p, "a").unwrap().allocation;
    assert_eq!(a.ip, ip("10.0.0.2"));
    assert_eq!(a.ip6, Some("fd00:0:0:7::2".parse().unwrap()));
    // A repeated ADD answers both; the lookup finds both.
    assert_eq!(add(dir.path(), &p, "a").unwrap().allocation, a);
    // A static IPv6 address beside a dynamic IPv4 one.
    let mut s = open(dir.path());
    let mut cursor = FileCursor::new(s.cursor_path());
    let want6 = Requested {
        v4: None,
        v6: Some("fd00:0:0:7::99".parse().unwrap()),
    };
    let b = run(allocate(&mut s, &mut cursor, &p, &owner("b"), want6)).unwrap();
    assert_eq!(
        (b.allocation.ip, b.allocation.ip6),
        // (.3 went to the repeated ADD's reservation)
        (ip("10.0.0.4"), want6.v6)
    );
    // Taken by b: refused, naming b, whatever IPv4 address is free.
    let e = run(allocate(&mut s, &mut cursor, &p, &owner("c"), want6)).unwrap_err();
    assert_eq!(e.code(), 103);
    assert!(
        e.to_string()
            .contains("fd00:0:0:7::99 is already allocated to container b"),
        "{e}"
    );
    for (bad, why) in [
        ("fd00:0:0:8::1", "outside the subnet"),
        ("fd00:0:0:7::1", "gateway"),
        ("fd00:0:0:7::", "subnet-router"),
    ] {
        let req = Requested {
            v4: None,
            v6: Some(bad.parse().unwrap()),
        };
        let e = run(allocate(&mut s, &mut cursor, &p, &owner("c"), req)).unwrap_err();
        assert!(e.to_string().contains(why), "{bad}: {e}");
    }
    // Both of one request, static.
    let both = Requested {
        v4: Some("10.0.0.6".parse().unwrap()),
        v6: Some("fd00:0:0:7::6:6".parse().unwrap()),
    };
    let c = run(allocate(&mut s, &mut cursor, &p, &owner("c"), both)).unwrap();
    assert_eq!(
        (Some(c.allocation.ip), c.allocation.ip6),
        (both.v4.map(IpAddr::V4), both.v6)
    );
    // An IPv4-only pool refuses an IPv6 request clearly.
    let e = run(allocate(
        &mut s,
        &mut cursor,
        &pool("10.0.0.0/29"),
        &owner("d"),
        want6,
    ))
    .unwrap_err();
    assert!(e.to_string().contains("has no IPv6 subnet"), "{e}");
    // DEL frees both: a's twin is free for the next holder of .2.
    assert_eq!(s.release(&owner("a").handle()).unwrap().unwrap().ip6, a.ip6);
    assert_eq!(s.list_all().len(), 2);
    drop(s);
    let json = std::fs::read_to_string(dir.path().join("allocations.json")).unwrap();
    assert!(!json.contains("fd00:0:0:7::2\""), "{json}");
    assert!(json.contains("fd00:0:0:7::99"), "{json}");
    // A twin of the IPv6 gateway (a custom IPv4 gateway frees .1) is
    // never handed out.
    let custom = Pool::new(
        "10.0.1.0/30".parse().unwrap(),
        None,
        None,
        vec![],
        Some(ip("10.0.1.2")),
    )
    .unwrap()
    .with_ipv6(Some("fd00:1::/64".parse().unwrap()))
    .unwrap();
    assert!(!custom.is_usable(ip("10.0.1.1")));
    let small = pool("10.0.0.0/8").with_ipv6(Some("fd00::/120".parse().unwrap()));
    assert!(small
        .unwrap_err()
        .to_string()
        .contains("smaller than the IPv4 subnet"));
}

#[test]
fn static_requests_are_honoured_or_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pool::new(
        "10.0.0.0/24".parse().unwrap(),
        Some(ip("10.0.0.10")),
        Some(ip("10.0.0.20")),
        vec!["10.0.0.15/32".parse().unwrap()],
        None,
    )
    .unwrap();
    let mut s = open(dir.path());
    let mut cursor = FileCursor::new(s.cursor_path());
    let mut want = |id: &str, addr: &str| {
        run(allocate(
            &mut s,
            &mut cursor,
            &p,
            &owner(id),
            Requested::v4(addr.parse().unwrap()),
        ))
    };
    assert_eq!(
        want("a", "10.0.0.12").unwrap().allocation.ip,
        ip("10.0.0.12")
    );
    assert_eq!(
        want("a", "10.0.0.12").unwrap().allocation.ip,
        ip("10.0.0.12")
    );
    for (id, addr, needle) in [
        (
            "b",
            "10.0.0.12",
            "already allocated to container a interface eth0",
        ),
        ("a", "10.0.0.13", "already holds 10.0.0.12"),
        ("b", "10.0.0.15", "excluded"),
        ("b", "10.0.0.21", "outside the range"),
        ("b", "10.0.0.1", "gateway"),
        ("b", "10.0.1.5", "outside the subnet"),
    ] {
        let e = want(id, addr).unwrap_err();
        assert_eq!(e.code(), 103, "{addr}: {e}");
        assert!(e.to_string().contains(needle), "{addr}: {e}");
    }
}

/// A store whose every claim loses to a writer that shares no cursor.
#[derive(Default)]
struct AlwaysTaken {
    claims: Vec<IpAddr>,
    used_reads: usize,
}

impl Store for AlwaysTaken {
    async fn lookup(&mut self, _: &Handle) -> Result<Option<Allocation>, IpamError> {
        Ok(None)
    }
    async fn claim(
        &mut self,
        ip: IpAddr,
        _: Option<std::net::Ipv6Addr>,
        _: &Owner,
    ) -> Result<Claim, IpamError> {
        self.claims.push(ip);
        Ok(Claim::Taken { ip, owner: None })
    }
    async fn used_in(&mut self, _: IpNetwork) -> Result<HashSet<IpAddr>, IpamError> {
        self.used_reads += 1;
        Ok(self.claims.iter().copied().collect())
    }
    async fn release_exact(&mut self, _: &Allocation) -> Result<bool, IpamError> {
        Ok(false)
    }
}

#[test]
fn lost_races_are_bounded_and_skip_what_was_seen_taken() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool("10.0.0.0/24");
    let mut store = AlwaysTaken::default();
    let mut cursor = FileCursor::new(dir.path().join("cursor"));
    let e = run(allocate(
        &mut store,
        &mut cursor,
        &p,
        &owner("a"),
        Requested::NONE,
    ))
    .unwrap_err();
    assert_eq!(e.code(), 11, "{e}");
    assert!(e.to_string().contains("concurrent writer"), "{e}");
    // The cursor's candidate, then one re-read of the used set before
    // each further claim.
    assert_eq!(store.claims.len(), ROUNDS + 1);
    assert_eq!(store.used_reads, ROUNDS);
    let distinct: HashSet<_> = store.claims.iter().collect();
    assert_eq!(distinct.len(), store.claims.len(), "{:?}", store.claims);
}

#[test]
fn concurrent_processes_never_duplicate() {
    // Separate opens of the store contend on the file lock exactly like
    // separate plugin processes do.
    let dir = tempfile::tempdir().unwrap();
    let p = pool("10.0.0.0/24");
    let handles: Vec<_> = (0..16)
        .map(|t| {
            let dir = dir.path().to_path_buf();
            let p = p.clone();
            std::thread::spawn(move || {
                (0..10)
                    .map(|i| add(&dir, &p, &format!("t{t}-{i}")).unwrap().allocation.ip)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<IpAddr> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 160);
    assert_eq!(distinct.len(), 160);
    assert_eq!(open(dir.path()).list_all().len(), 160);
}
