//! The allocation cursor: the last address handed out, where the search for
//! the next one starts. Reserving a candidate moves the cursor past it
//! atomically, so concurrent ADDs of one node each get their own candidate.
//! The cursor is a hint: if it is lost or garbled, allocation starts over
//! from the beginning of the range and skips what is taken.

use crate::error::IpamError;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Instant;
use trellis_common::fs::FileLock;

/// Somewhere a cursor is kept.
pub trait Cursor {
    /// Call `pick` with the current cursor; if it picks an address, the
    /// cursor moves to it before anyone else can reserve.
    fn reserve(
        &mut self,
        pick: &mut dyn FnMut(Option<IpAddr>) -> Option<IpAddr>,
    ) -> Result<Option<IpAddr>, IpamError>;
}

/// The cursor of a node in cluster mode, kept in the node's lock file
/// (`<stateDir>/ipam/<network>.lock`); each reservation holds the lock for
/// a file read and write, not for the etcd round trip.
pub struct NodeCursor {
    path: PathBuf,
    deadline: Instant,
}

impl NodeCursor {
    pub fn new(path: PathBuf, deadline: Instant) -> NodeCursor {
        NodeCursor { path, deadline }
    }
}

impl Cursor for NodeCursor {
    fn reserve(
        &mut self,
        pick: &mut dyn FnMut(Option<IpAddr>) -> Option<IpAddr>,
    ) -> Result<Option<IpAddr>, IpamError> {
        let mut lock = FileLock::acquire(&self.path, self.deadline)?;
        let picked = pick(read_cursor(lock.file()));
        if let Some(ip) = picked {
            write_cursor(lock.file(), ip).map_err(IpamError::store(&self.path))?;
        }
        Ok(picked)
    }
}

/// The cursor kept in `file`, if it holds one.
fn read_cursor(file: &mut File) -> Option<IpAddr> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Keep `ip` in `file`, rewritten in place (the lock file must never be
/// replaced: that would split the lock).
fn write_cursor(file: &mut File, ip: IpAddr) -> std::io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(format!("{ip}\n").as_bytes())
}

/// A cursor in a plain file, for callers that already hold a lock covering
/// it (the local store).
pub struct FileCursor {
    path: PathBuf,
}

impl FileCursor {
    pub fn new(path: PathBuf) -> FileCursor {
        FileCursor { path }
    }
}

impl Cursor for FileCursor {
    fn reserve(
        &mut self,
        pick: &mut dyn FnMut(Option<IpAddr>) -> Option<IpAddr>,
    ) -> Result<Option<IpAddr>, IpamError> {
        let current = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        let picked = pick(current);
        if let Some(ip) = picked {
            std::fs::write(&self.path, format!("{ip}\n")).map_err(IpamError::store(&self.path))?;
        }
        Ok(picked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn concurrent_reservations_get_distinct_candidates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.lock");
        let next = |c: Option<IpAddr>| {
            Some(c.map_or(v4(10, 0, 0, 2), |ip| match ip {
                IpAddr::V4(ip) => IpAddr::V4(Ipv4Addr::from(u32::from(ip) + 1)),
                IpAddr::V6(_) => unreachable!("an IPv4 walk"),
            }))
        };
        let picked: Vec<IpAddr> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    let path = path.clone();
                    s.spawn(move || {
                        let mut c = NodeCursor::new(path, Instant::now() + Duration::from_secs(5));
                        (0..25)
                            .map(|_| c.reserve(&mut |cur| next(cur)).unwrap().unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let distinct: HashSet<_> = picked.iter().collect();
        assert_eq!(distinct.len(), 200);
    }

    #[test]
    fn the_node_cursor_lives_in_its_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/node.lock");
        let soon = || Instant::now() + Duration::from_secs(2);
        let mut c = NodeCursor::new(path.clone(), soon());
        c.reserve(&mut |cur| {
            assert_eq!(cur, None);
            Some(v4(10, 0, 0, 9))
        })
        .unwrap();
        c.reserve(&mut |_| Some(v4(10, 0, 0, 1))).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "10.0.0.1\n");
        // Held by someone else past the deadline: try again later (11).
        let held = FileLock::acquire(&path, Instant::now()).unwrap();
        let mut waiting =
            NodeCursor::new(path.clone(), Instant::now() + Duration::from_millis(100));
        let err = waiting.reserve(&mut |_| None).unwrap_err();
        assert_eq!(err.code(), 11, "{err}");
        assert!(err.to_string().contains("allocation lock"), "{err}");
        drop(held);
        let mut seen = None;
        NodeCursor::new(path, soon())
            .reserve(&mut |cur| {
                seen = cur;
                None
            })
            .unwrap();
        assert_eq!(seen, Some(v4(10, 0, 0, 1)));
    }

    #[test]
    fn a_garbled_cursor_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cursor");
        std::fs::write(&path, "garbage").unwrap();
        let mut c = FileCursor::new(path.clone());
        let mut seen = None;
        c.reserve(&mut |cur| {
            seen = Some(cur);
            None
        })
        .unwrap();
        assert_eq!(seen, Some(None));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "garbage",
            "no pick, no write"
        );
        c.reserve(&mut |_| Some(v4(10, 0, 0, 7))).unwrap();
        c.reserve(&mut |cur| {
            seen = Some(cur);
            None
        })
        .unwrap();
        assert_eq!(seen, Some(Some(v4(10, 0, 0, 7))));
        // An IPv6-only pool's cursor is an IPv6 address.
        let six: IpAddr = "fd10:244:0:3::9".parse().unwrap();
        c.reserve(&mut |_| Some(six)).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "fd10:244:0:3::9\n");
        c.reserve(&mut |cur| {
            seen = Some(cur);
            None
        })
        .unwrap();
        assert_eq!(seen, Some(Some(six)));
    }
}
