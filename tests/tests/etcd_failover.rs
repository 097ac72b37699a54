//! A three-member etcd losing one member under pod setup: the leader
//! killed, the leader frozen, a follower killed, the leader partitioned
//! away. Two nodes with their agents, every client given all three
//! endpoints; a round of concurrent ADDs starts right after the fault and a
//! second one runs while it lasts. Every ADD of those rounds must succeed
//! or fail with code 11 leaving no veth; once every pod and every failed
//! ADD was DELeted and the fault is gone, etcd holds no allocation and no
//! handle.

use std::time::Duration;

use trellis_tests::churn::{
    add_round, del_all, failed_adds_left_no_veth, no_address_twice, wait_nothing_allocated, Round,
};
use trellis_tests::cluster::{Cluster, ClusterSpec};
use trellis_tests::etcd_cluster::Cut;

/// ADDs per node and round (two nodes).
const PER_NODE: usize = 8;

fn cluster() -> Cluster {
    Cluster::start(ClusterSpec {
        chain: Vec::new(),
        ..ClusterSpec::default().nodes(2).etcd_members(3)
    })
    .unwrap()
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillLeader,
    FreezeLeader,
    KillFollower,
    PartitionLeader,
}

/// Inject `fault`; the member it hit.
fn inject(cluster: &mut Cluster, fault: Fault) -> usize {
    let etcd = cluster.etcd_cluster_mut();
    let leader = etcd.wait_leader(Duration::from_secs(10)).unwrap();
    let hit = match fault {
        Fault::KillFollower => etcd.follower().unwrap(),
        _ => leader,
    };
    match fault {
        Fault::KillLeader | Fault::KillFollower => etcd.kill(hit).unwrap(),
        Fault::FreezeLeader => etcd.freeze(hit).unwrap(),
        Fault::PartitionLeader => etcd.partition(hit, Cut::Peers).unwrap(),
    }
    hit
}

fn repair(cluster: &mut Cluster, fault: Fault, hit: usize) {
    let etcd = cluster.etcd_cluster_mut();
    match fault {
        Fault::KillLeader | Fault::KillFollower => etcd.restart(hit).unwrap(),
        Fault::FreezeLeader => etcd.thaw(hit).unwrap(),
        Fault::PartitionLeader => etcd.heal().unwrap(),
    }
    etcd.wait_leader(Duration::from_secs(20)).unwrap();
}

/// What a user sees of a round under a fault: a failure is code 11 and
/// leaves no veth; live pods have distinct addresses.
#[track_caller]
fn check_round(cluster: &Cluster, round: &Round, what: &str) {
    eprintln!(
        "{what}: {} ADDs succeeded, failures by code {:?}, longest ADD {:?}",
        round.pods.len(),
        round.codes(),
        round.longest
    );
    for f in &round.failed {
        assert_eq!(f.failure.code, 11, "{what}: {}: {}", f.name, f.failure);
    }
    failed_adds_left_no_veth(cluster, &round.failed).unwrap();
    no_address_twice(&round.pods.iter().collect::<Vec<_>>()).unwrap();
}

fn survive(fault: Fault) {
    let mut cluster = cluster();
    // A round without a fault first: everything works.
    let calm = add_round(&cluster, PER_NODE, "calm").unwrap();
    assert!(calm.failed.is_empty(), "{}", calm.failures());
    del_all(&cluster, calm.pods, calm.failed, Duration::from_secs(10)).unwrap();

    let hit = inject(&mut cluster, fault);
    let first = add_round(&cluster, PER_NODE, "caught").unwrap();
    check_round(&cluster, &first, &format!("{fault:?}, round right after"));
    let second = add_round(&cluster, PER_NODE, "during").unwrap();
    check_round(&cluster, &second, &format!("{fault:?}, round after that"));
    let total = 2 * cluster.nodes.len() * PER_NODE;
    let succeeded = first.pods.len() + second.pods.len();
    let failures = format!("{}\n{}", first.failures(), second.failures());
    let second_failed = second.failed.len();

    // The runtime DELs every pod and every failed ADD, still under the fault.
    let mut pods = first.pods;
    pods.extend(second.pods);
    let mut failed = first.failed;
    failed.extend(second.failed);
    del_all(&cluster, pods, failed, Duration::from_secs(30)).unwrap();
    repair(&mut cluster, fault, hit);
    let settled = wait_nothing_allocated(&cluster, Duration::from_secs(20));
    eprintln!("{fault:?}: settled: {settled:?}");

    // One member of three is down: pod setup goes on. A few ADDs caught
    // in the election may fail (cleanly); most must not.
    assert!(
        succeeded * 4 >= total * 3,
        "{fault:?}: only {succeeded} of {total} ADDs succeeded:\n{failures}"
    );
    assert!(
        second_failed * 4 <= total / 2,
        "{fault:?}: once a leader is elected, ADDs succeed:\n{failures}"
    );
    // And nothing leaked.
    settled.unwrap();
}

#[test]
fn leader_killed_before_a_round() {
    survive(Fault::KillLeader);
}

#[test]
fn leader_frozen_before_a_round() {
    survive(Fault::FreezeLeader);
}

#[test]
fn follower_killed_before_a_round() {
    survive(Fault::KillFollower);
}

#[test]
fn leader_partitioned_before_a_round() {
    survive(Fault::PartitionLeader);
}
