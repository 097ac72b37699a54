//! An exclusive `flock` on a file, waited for no longer than a deadline.
//! It serializes the allocations of one node (etcd store) or one local
//! store, so concurrent ADDs queue instead of racing for the same address.
//! The lock file also keeps the allocation cursor: the last address handed
//! out, where the next search starts.

use crate::error::IpamError;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

/// A held lock; dropping it (or exiting) releases it.
pub struct FileLock {
    file: Flock<File>,
    path: PathBuf,
}

impl FileLock {
    /// Lock `path` (created if missing, with its directory), waiting until
    /// `deadline` at most.
    pub fn acquire(path: &Path, deadline: Instant) -> Result<FileLock, IpamError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(IpamError::store(dir))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(IpamError::store(path))?;
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((file, Errno::EWOULDBLOCK)) => Self::wait(file, path, deadline)?,
            Err((_, e)) => return Err(IpamError::store(path)(e.into())),
        };
        Ok(FileLock {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Block in `flock` on a helper thread so the wait can be cut short. If
    /// we give up, the thread's late lock is released as soon as it is taken.
    fn wait(file: File, path: &Path, deadline: Instant) -> Result<Flock<File>, IpamError> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("trellis-ipam-lock".into())
            .spawn(move || {
                let _ = tx.send(Flock::lock(file, FlockArg::LockExclusive));
            })
            .map_err(IpamError::store(path))?;
        let after = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(after) {
            Ok(Ok(locked)) => Ok(locked),
            Ok(Err((_, e))) => Err(IpamError::store(path)(e.into())),
            Err(_) => Err(IpamError::LockTimeout {
                path: path.to_path_buf(),
                after,
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cursor kept in the lock file, if it holds one.
    pub fn read_cursor(&mut self) -> Option<Ipv4Addr> {
        let mut text = String::new();
        self.file.seek(SeekFrom::Start(0)).ok()?;
        self.file.read_to_string(&mut text).ok()?;
        text.trim().parse().ok()
    }

    /// Remember `ip` as the last address handed out. The file is rewritten
    /// in place (never replaced: that would split the lock).
    pub fn write_cursor(&mut self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let text = format!("{ip}\n");
        let f: &mut File = &mut self.file;
        f.set_len(0)
            .and_then(|()| f.seek(SeekFrom::Start(0)))
            .and_then(|_| f.write_all(text.as_bytes()))
            .map_err(IpamError::store(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_second_holder_waits_and_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/lock");
        let mut first = FileLock::acquire(&path, Instant::now()).unwrap();
        assert_eq!(first.read_cursor(), None);
        first.write_cursor("10.0.0.9".parse().unwrap()).unwrap();

        let start = Instant::now();
        let err = FileLock::acquire(&path, Instant::now() + Duration::from_millis(200))
            .err()
            .unwrap();
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert_eq!(err.code(), 11, "{err}");
        assert!(err.to_string().contains("allocation lock"), "{err}");

        // Released on drop; the waiter that gave up does not keep it.
        drop(first);
        std::thread::sleep(Duration::from_millis(50));
        let mut again = FileLock::acquire(&path, Instant::now()).unwrap();
        assert_eq!(again.read_cursor(), Some("10.0.0.9".parse().unwrap()));
        again.write_cursor("10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(again.read_cursor(), Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn a_waiter_gets_the_lock_when_it_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = FileLock::acquire(&path, Instant::now()).unwrap();
        let p2 = path.clone();
        let waiter = std::thread::spawn(move || {
            FileLock::acquire(&p2, Instant::now() + Duration::from_secs(5)).map(|_| ())
        });
        std::thread::sleep(Duration::from_millis(100));
        drop(first);
        waiter.join().unwrap().unwrap();
    }
}
