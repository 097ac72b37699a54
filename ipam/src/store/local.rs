//! Allocations on a single host with no etcd: one JSON file per network,
//! `<dataDir>/<network>/allocations.json`, read and rewritten (temporary
//! file, fsync, rename) while holding an exclusive lock on
//! `<dataDir>/<network>/lock`. The allocation cursor is
//! `<dataDir>/<network>/cursor`, used under the same lock. Concurrent plugin
//! processes queue on the lock; readers never see a half-written file.

use crate::allocation::{Allocation, Claim, Handle, Owner};
use crate::error::IpamError;
use crate::store::Store;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Instant;
use trellis_common::fs::{write_atomically, FileLock};

pub const ALLOCATIONS_FILE: &str = "allocations.json";
pub const LOCK_FILE: &str = "lock";
pub const CURSOR_FILE: &str = "cursor";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    /// Every allocation by its address: IPv4, or IPv6 in an IPv6-only pool.
    #[serde(default)]
    allocations: BTreeMap<IpAddr, Owner>,
    /// The IPv6 twins of dual-stack allocations, by the same owners.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    allocations6: BTreeMap<Ipv6Addr, Owner>,
}

/// An open, locked local store. The lock is held until it is dropped.
pub struct LocalStore {
    dir: PathBuf,
    state: State,
    _lock: FileLock,
}

impl LocalStore {
    /// The store of network `network` under `data_dir`.
    pub fn dir_for(data_dir: &Path, network: &str) -> PathBuf {
        data_dir.join(network)
    }

    /// Lock and load the store in `dir`, creating it if needed.
    pub fn open(dir: &Path, deadline: Instant) -> Result<LocalStore, IpamError> {
        let lock = FileLock::acquire(&dir.join(LOCK_FILE), deadline)?;
        let file = dir.join(ALLOCATIONS_FILE);
        let state = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| IpamError::Corrupt {
                key: file.display().to_string(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(IpamError::store(&file)(e)),
        };
        Ok(LocalStore {
            dir: dir.to_path_buf(),
            state,
            _lock: lock,
        })
    }

    /// Like `open`, but `None` when the store was never created (DEL of
    /// something that cannot exist must not create directories).
    pub fn open_existing(dir: &Path, deadline: Instant) -> Result<Option<LocalStore>, IpamError> {
        if !dir.is_dir() {
            return Ok(None);
        }
        Self::open(dir, deadline).map(Some)
    }

    /// The cursor file, to be used only while this store is open (locked).
    pub fn cursor_path(&self) -> PathBuf {
        self.dir.join(CURSOR_FILE)
    }

    fn save(&self) -> Result<(), IpamError> {
        let file = self.dir.join(ALLOCATIONS_FILE);
        let json = serde_json::to_vec_pretty(&self.state).expect("state serializes");
        write_atomically(&file, &json, 0o644).map_err(IpamError::store(file))
    }

    pub fn lookup(&self, handle: &Handle) -> Option<Allocation> {
        self.state
            .allocations
            .iter()
            .find(|(_, o)| o.holds(handle))
            .map(|(ip, o)| self.allocation(*ip, o))
    }

    /// The allocation of `ip` by `owner`, with the IPv6 twin it holds.
    fn allocation(&self, ip: IpAddr, owner: &Owner) -> Allocation {
        let handle = owner.handle();
        Allocation {
            ip,
            ip6: self
                .state
                .allocations6
                .iter()
                .find(|(_, o)| o.holds(&handle))
                .map(|(ip6, _)| *ip6),
            owner: owner.clone(),
            revision: 0,
        }
    }

    pub fn claim(
        &mut self,
        ip: IpAddr,
        ip6: Option<Ipv6Addr>,
        owner: &Owner,
    ) -> Result<Claim, IpamError> {
        if let Some(held) = LocalStore::lookup(self, &owner.handle()) {
            return Ok(Claim::AlreadyHeld(held));
        }
        if let Some(other) = self.state.allocations.get(&ip) {
            return Ok(Claim::Taken {
                ip,
                owner: Some(other.clone()),
            });
        }
        if let Some((ip6, other)) = ip6.and_then(|v6| Some((v6, self.state.allocations6.get(&v6)?)))
        {
            return Ok(Claim::Taken {
                ip: IpAddr::V6(ip6),
                owner: Some(other.clone()),
            });
        }
        self.state.allocations.insert(ip, owner.clone());
        if let Some(v6) = ip6 {
            self.state.allocations6.insert(v6, owner.clone());
        }
        if let Err(e) = self.save() {
            self.state.allocations.remove(&ip);
            if let Some(v6) = ip6 {
                self.state.allocations6.remove(&v6);
            }
            return Err(e);
        }
        Ok(Claim::Claimed(self.allocation(ip, owner)))
    }

    pub fn release(&mut self, handle: &Handle) -> Result<Option<Allocation>, IpamError> {
        let Some(a) = LocalStore::lookup(self, handle) else {
            return Ok(None);
        };
        self.state.allocations.remove(&a.ip);
        if let Some(v6) = a.ip6 {
            self.state.allocations6.remove(&v6);
        }
        if let Err(e) = self.save() {
            self.state.allocations.insert(a.ip, a.owner.clone());
            if let Some(v6) = a.ip6 {
                self.state.allocations6.insert(v6, a.owner.clone());
            }
            return Err(e);
        }
        Ok(Some(a))
    }

    pub fn release_exact(&mut self, a: &Allocation) -> Result<bool, IpamError> {
        if self.state.allocations.get(&a.ip) != Some(&a.owner) {
            return Ok(false);
        }
        self.release(&a.handle()).map(|r| r.is_some())
    }

    /// Every allocation in the store.
    pub fn list_all(&self) -> Vec<Allocation> {
        self.state
            .allocations
            .iter()
            .map(|(ip, o)| self.allocation(*ip, o))
            .collect()
    }

    /// Whether the store directory can be written (STATUS).
    pub fn check_writable(&self) -> Result<(), IpamError> {
        let probe = self.dir.join(format!(".probe.{}", std::process::id()));
        std::fs::write(&probe, b"")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(IpamError::store(&self.dir))
    }
}

impl Store for LocalStore {
    async fn lookup(&mut self, handle: &Handle) -> Result<Option<Allocation>, IpamError> {
        Ok(LocalStore::lookup(self, handle))
    }
    async fn claim(
        &mut self,
        ip: IpAddr,
        ip6: Option<Ipv6Addr>,
        owner: &Owner,
    ) -> Result<Claim, IpamError> {
        LocalStore::claim(self, ip, ip6, owner)
    }
    async fn used_in(&mut self, subnet: IpNetwork) -> Result<HashSet<IpAddr>, IpamError> {
        Ok(self
            .state
            .allocations
            .keys()
            .copied()
            .filter(|ip| subnet.contains(*ip))
            .collect())
    }
    async fn release_exact(&mut self, allocation: &Allocation) -> Result<bool, IpamError> {
        LocalStore::release_exact(self, allocation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn owner(id: &str) -> Owner {
        Owner::of_test_container(id)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(2)
    }

    #[test]
    fn claims_persist_and_release_by_handle() {
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "10.88.0.2".parse().unwrap();
        {
            let mut s = LocalStore::open(dir.path(), soon()).unwrap();
            assert!(matches!(
                s.claim(ip, None, &owner("a")).unwrap(),
                Claim::Claimed(_)
            ));
            assert!(matches!(
                s.claim(ip, None, &owner("b")).unwrap(),
                Claim::Taken { owner: Some(o), .. } if o.container_id == "a"
            ));
            let other: IpAddr = "10.88.0.3".parse().unwrap();
            assert!(matches!(
                s.claim(other, None, &owner("a")).unwrap(),
                Claim::AlreadyHeld(a) if a.ip == ip
            ));
        }
        let mut s = LocalStore::open(dir.path(), soon()).unwrap();
        assert_eq!(s.lookup(&owner("a").handle()).unwrap().ip, ip);
        assert_eq!(s.release(&owner("a").handle()).unwrap().unwrap().ip, ip);
        assert_eq!(s.release(&owner("a").handle()).unwrap(), None);
        drop(s);
        let s = LocalStore::open(dir.path(), soon()).unwrap();
        assert!(s.list_all().is_empty());
    }

    #[test]
    fn release_exact_spares_a_new_owner() {
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "10.88.0.2".parse().unwrap();
        let mut s = LocalStore::open(dir.path(), soon()).unwrap();
        let Claim::Claimed(old) = s.claim(ip, None, &owner("a")).unwrap() else {
            panic!()
        };
        s.release(&old.handle()).unwrap();
        s.claim(ip, None, &owner("b")).unwrap();
        assert!(!s.release_exact(&old).unwrap());
        assert_eq!(s.lookup(&owner("b").handle()).unwrap().ip, ip);
    }

    #[test]
    fn a_corrupt_file_is_a_store_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ALLOCATIONS_FILE), b"{nope").unwrap();
        let err = LocalStore::open(dir.path(), soon()).err().unwrap();
        assert_eq!(err.code(), 105);
        assert!(err.to_string().contains(ALLOCATIONS_FILE), "{err}");
    }

    #[test]
    fn open_existing_does_not_create() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(LocalStore::open_existing(&missing, soon())
            .unwrap()
            .is_none());
        assert!(!missing.exists());
    }
}
