//! Files that several processes read and write: replacing one so that a
//! reader sees the old or the new content, never a part
//! ([`write_atomically`]), and an exclusive lock waited for no longer than
//! a deadline ([`FileLock`]).

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Make `path` hold exactly `contents` with permission bits `mode`: a
/// temporary file in the same directory, created with the final mode,
/// written and fsynced, renamed over `path`, then the directory fsynced so
/// that the rename survives a crash. A temporary of an earlier writer of
/// `path` that died between write and rename is removed first (writers of
/// one file serialize their writes: a lock, or one owner). On failure
/// `path` is unchanged and no temporary is left.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} names no file", path.display()),
            )
        })?;
    fs::create_dir_all(dir)?;
    remove_stale_temps(dir, &name)?;
    let tmp = dir.join(format!(
        "{}{}.{}",
        temp_prefix(&name),
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    ));
    let written = write_new(&tmp, contents, mode).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)?.sync_all()
}

/// The prefix of the temporary files for `name`.
fn temp_prefix(name: &str) -> String {
    format!(".{name}.trellis-tmp.")
}

fn write_new(tmp: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)?;
    // The umask may have cleared bits of `mode`: set them exactly.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()
}

fn remove_stale_temps(dir: &Path, name: &str) -> io::Result<()> {
    let prefix = temp_prefix(name);
    let stale: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    for path in stale {
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("timed out after {after:?} waiting for the lock {}", path.display())]
    Timeout { path: PathBuf, after: Duration },
    #[error("lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An exclusive `flock` on a file; dropping it (or exiting) releases it.
/// The file itself is the holder's to use (the IPAM keeps its cursor in it).
pub struct FileLock {
    file: Flock<File>,
    path: PathBuf,
}

impl FileLock {
    /// Lock `path` (created if missing, with its directory), waiting until
    /// `deadline` at most.
    pub fn acquire(path: &Path, deadline: Instant) -> Result<FileLock, LockError> {
        let io = |source: io::Error| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((file, Errno::EWOULDBLOCK)) => Self::wait(file, path, deadline)?,
            Err((_, e)) => return Err(io(e.into())),
        };
        Ok(FileLock {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Block in `flock` on a helper thread so the wait can be cut short. If
    /// we give up, the thread's late lock is released as soon as it is taken.
    fn wait(file: File, path: &Path, deadline: Instant) -> Result<Flock<File>, LockError> {
        let io = |source: io::Error| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("trellis-lock".into())
            .spawn(move || {
                let _ = tx.send(Flock::lock(file, FlockArg::LockExclusive));
            })
            .map_err(io)?;
        let after = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(after) {
            Ok(Ok(locked)) => Ok(locked),
            Ok(Err((_, e))) => Err(io(e.into())),
            Err(_) => Err(LockError::Timeout {
                path: path.to_path_buf(),
                after,
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The locked file, to read and write in place (never to replace:
    /// that would split the lock).
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_with_the_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key");
        write_atomically(&path, b"v1", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"v1");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        write_atomically(&path, b"v2", 0o755).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"v2");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o755);
        assert_eq!(names(&dir.path().join("sub")), vec!["key"]);
    }

    #[test]
    fn an_open_reader_keeps_the_whole_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf");
        write_atomically(&path, b"old contents", 0o644).unwrap();
        let mut reader = File::open(&path).unwrap();
        write_atomically(&path, b"new", 0o644).unwrap();
        let mut seen = String::new();
        reader.read_to_string(&mut seen).unwrap();
        assert_eq!(seen, "old contents");
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
    }

    #[test]
    fn stale_temporaries_of_a_dead_writer_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(".trellis.trellis-tmp.77.123");
        fs::write(&stale, b"half a bin").unwrap();
        let other = dir.path().join(".bridge.trellis-tmp.77.123");
        fs::write(&other, b"not ours to judge").unwrap();
        write_atomically(&dir.path().join("trellis"), b"bin", 0o755).unwrap();
        assert_eq!(
            names(dir.path()),
            vec![".bridge.trellis-tmp.77.123", "trellis"]
        );
    }

    #[test]
    fn a_failed_write_leaves_the_target_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should go: rename fails.
        let path = dir.path().join("conf");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"x").unwrap();
        assert!(write_atomically(&path, b"data", 0o644).is_err());
        assert!(path.is_dir());
        assert_eq!(names(dir.path()), vec!["conf"]);
    }

    #[test]
    fn a_second_holder_waits_and_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/lock");
        let mut first = FileLock::acquire(&path, Instant::now()).unwrap();
        first.file().write_all(b"kept").unwrap();

        let start = Instant::now();
        let err = FileLock::acquire(&path, Instant::now() + Duration::from_millis(200))
            .err()
            .unwrap();
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert!(matches!(err, LockError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("sub/lock"), "{err}");

        // Released on drop; the waiter that gave up does not keep it.
        drop(first);
        std::thread::sleep(Duration::from_millis(50));
        let mut again = FileLock::acquire(&path, Instant::now()).unwrap();
        let mut text = String::new();
        again.file().read_to_string(&mut text).unwrap();
        assert_eq!(text, "kept");
        assert_eq!(again.path(), path);
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

    #[test]
    fn a_lock_that_cannot_be_created_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, b"").unwrap();
        let err = FileLock::acquire(&blocker.join("lock"), Instant::now())
            .err()
            .unwrap();
        assert!(matches!(err, LockError::Io { .. }), "{err}");
    }
}
