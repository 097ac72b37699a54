//! The etcd allocation store (the library API the node agent uses) against
//! a real etcd on 127.0.0.1.

use std::net::IpAddr;
use std::time::{Duration, Instant};
use trellis_common::etcd::EtcdSettings;
use trellis_ipam::{Claim, EtcdStore, Handle, Owner};
use trellis_tests::etcd::Etcd;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn owner(id: &str, node: &str) -> Owner {
    Owner {
        container_id: id.into(),
        ifname: "eth0".into(),
        node: node.into(),
        network: "trellis".into(),
        plugin: "trellis".into(),
        name: String::new(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn store(etcd: &Etcd) -> EtcdStore {
    let mut s = EtcdSettings::new(vec![etcd.endpoint()]);
    s.timeout = Duration::from_secs(2);
    EtcdStore::connect(&s).await.unwrap()
}

fn keys(etcd: &Etcd, prefix: &str) -> Vec<String> {
    etcd.keys(prefix).unwrap()
}

#[test]
fn claim_lookup_release_keep_address_and_handle_together() {
    let etcd = Etcd::start().unwrap();
    rt().block_on(async {
        let s = store(&etcd).await;
        let a = owner("c1", "n1");
        let Claim::Claimed(got) = s.claim(ip("10.244.1.5"), None, &a).await.unwrap() else {
            panic!("first claim must succeed")
        };
        assert_eq!(got.ip, ip("10.244.1.5"));
        assert_eq!(
            keys(&etcd, "/trellis/"),
            vec![
                // The claim's guard, under this store's lease until its ADD
                // ends (`end_claims`).
                "/trellis/ipam/guards/c1/eth0".to_string(),
                "/trellis/ipam/handles/c1/eth0".to_string(),
                "/trellis/ipam/ips/10.244.1.5".to_string()
            ]
        );
        s.end_claims().await.unwrap();
        assert_eq!(
            keys(&etcd, "/trellis/"),
            vec![
                "/trellis/ipam/handles/c1/eth0".to_string(),
                "/trellis/ipam/ips/10.244.1.5".to_string()
            ]
        );
        // The address key carries the documented owner fields.
        let value = etcd.get("/trellis/ipam/ips/10.244.1.5").unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&value).unwrap();
        assert_eq!(v["containerID"], "c1");
        assert_eq!(v["ifname"], "eth0");
        assert_eq!(v["node"], "n1");

        // Taken by another attachment; a repeated claim returns the held one.
        let b = owner("c2", "n1");
        assert!(matches!(
            s.claim(ip("10.244.1.5"), None, &b).await.unwrap(),
            Claim::Taken { owner: Some(o), .. } if o.container_id == "c1"
        ));
        assert!(matches!(
            s.claim(ip("10.244.1.6"), None, &a).await.unwrap(),
            Claim::AlreadyHeld(h) if h.ip == ip("10.244.1.5")
        ));
        assert_eq!(
            s.lookup(&a.handle()).await.unwrap().unwrap().ip,
            ip("10.244.1.5")
        );
        assert_eq!(s.list_node("n1").await.unwrap().len(), 1);
        assert!(s.list_node("n2").await.unwrap().is_empty());

        // Release is idempotent and leaves no key behind.
        assert_eq!(
            s.release(&a.handle()).await.unwrap().unwrap().ip,
            ip("10.244.1.5")
        );
        assert_eq!(s.release(&a.handle()).await.unwrap(), None);
        s.end_claims().await.unwrap();
        assert!(keys(&etcd, "/trellis/").is_empty());
    });
}

#[test]
fn a_stale_release_never_frees_a_new_owners_address() {
    let etcd = Etcd::start().unwrap();
    rt().block_on(async {
        let s = store(&etcd).await;
        let Claim::Claimed(old) = s
            .claim(ip("10.244.1.9"), None, &owner("old", "n1"))
            .await
            .unwrap()
        else {
            panic!()
        };
        // GC lists, then the address is freed and re-allocated before GC acts.
        s.release(&old.handle()).await.unwrap();
        let Claim::Claimed(new) = s
            .claim(ip("10.244.1.9"), None, &owner("new", "n1"))
            .await
            .unwrap()
        else {
            panic!()
        };
        assert!(!s.release_exact(&old).await.unwrap());
        assert_eq!(s.release(&old.handle()).await.unwrap(), None);
        assert_eq!(
            s.lookup(&new.handle()).await.unwrap().unwrap().ip,
            ip("10.244.1.9")
        );
        assert!(s.release_exact(&new).await.unwrap());
        s.end_claims().await.unwrap();
        assert!(keys(&etcd, "/trellis/").is_empty());
    });
}

#[test]
fn used_in_scans_only_the_subnet() {
    let etcd = Etcd::start().unwrap();
    rt().block_on(async {
        let s = store(&etcd).await;
        for (n, addr) in [
            "10.244.1.2",
            "10.244.1.3",
            "10.244.2.2",
            "10.244.17.4",
            "10.244.32.9",
        ]
        .iter()
        .enumerate()
        {
            let o = owner(&format!("c{n}"), "n1");
            assert!(matches!(
                s.claim(ip(addr), None, &o).await.unwrap(),
                Claim::Claimed(_)
            ));
        }
        let used = s.used_in("10.244.1.0/24".parse().unwrap()).await.unwrap();
        assert_eq!(used.len(), 2);
        let used = s.used_in("10.244.16.0/20".parse().unwrap()).await.unwrap();
        assert_eq!(
            used.into_iter().collect::<Vec<_>>(),
            vec![ip("10.244.17.4")]
        );
        assert_eq!(
            s.list_in("10.244.0.0/16".parse().unwrap())
                .await
                .unwrap()
                .len(),
            5
        );
    });
}

#[test]
fn a_paused_etcd_times_out_within_the_deadline() {
    let mut etcd = Etcd::start().unwrap();
    rt().block_on(async {
        let s = store(&etcd).await;
        s.ping().await.unwrap();
        etcd.pause().unwrap();
        let start = Instant::now();
        let err = s
            .claim(ip("10.244.1.2"), None, &owner("c1", "n1"))
            .await
            .unwrap_err();
        let took = start.elapsed();
        assert_eq!(err.code(), 11, "{err}");
        assert!(took < Duration::from_secs(3), "took {took:?}");
        let handle = Handle {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        };
        assert_eq!(s.release(&handle).await.unwrap_err().code(), 11);
        etcd.resume().unwrap();
        // The requests sent while etcd was stopped sit in its socket and are
        // served concurrently once it runs again: let them land first, so the
        // release below comes after whatever the timed-out claim did (without
        // this, about 1 run in 10 released before the late claim applied).
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Whatever the timed-out claim did, the handle resolves it.
        s.release(&handle).await.unwrap();
        s.end_claims().await.unwrap();
        assert!(keys(&etcd, "/trellis/").is_empty());
    });
}

#[test]
fn tls_settings_are_checked_before_connecting() {
    let mut s = EtcdSettings::new(vec!["https://127.0.0.1:1".into()]);
    let err = s.validate().unwrap_err();
    assert!(err.to_string().contains("etcdCACert"), "{err}");
    s.endpoints = vec!["http://127.0.0.1:1".into()];
    s.ca_cert = Some("/nonexistent/ca.pem".into());
    assert!(s.validate().unwrap_err().to_string().contains("https://"));
    s.endpoints = vec!["https://127.0.0.1:1".into()];
    s.cert = Some("/nonexistent/cert.pem".into());
    assert!(s.validate().unwrap_err().to_string().contains("together"));
    s.key = Some("/nonexistent/key.pem".into());
    let err = rt().block_on(EtcdStore::connect(&s)).err().unwrap();
    assert_eq!(err.code(), 7);
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}
