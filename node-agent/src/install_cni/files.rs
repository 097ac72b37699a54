//! Replacing a file so that a reader (a runtime loading the conflist, a
//! runtime exec'ing a plugin) sees the old file or the new one, never a part:
//! a temporary file in the same directory with the final mode, fsync,
//! rename over the target, fsync of the directory. Unlike
//! `trellis_common::node::write_atomically` it sets the mode before the file
//! becomes visible (binaries 0755, keys 0600) and leaves an identical file
//! untouched.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// What installing one file did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Unchanged,
    Removed,
    /// Nothing to remove.
    Absent,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Unchanged => "unchanged",
            Change::Removed => "removed",
            Change::Absent => "absent",
        })
    }
}

/// The prefix of this installer's temporary files for `name`.
fn temp_prefix(name: &str) -> String {
    format!(".{name}.trellis-tmp.")
}

/// Make `path` hold exactly `contents` with permission bits `mode`.
pub fn install(path: &Path, contents: &[u8], mode: u32) -> io::Result<Change> {
    let existing = match fs::symlink_metadata(path) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if let Some(meta) = &existing {
        if meta.is_file()
            && meta.len() == contents.len() as u64
            && meta.permissions().mode() & 0o7777 == mode
            && fs::read(path)? == contents
        {
            return Ok(Change::Unchanged);
        }
    }
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = file_name(path)?;
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
    sync_dir(dir)?;
    Ok(if existing.is_some() {
        Change::Updated
    } else {
        Change::Created
    })
}

/// Remove `path` (a file or a symlink); `Absent` when there is none.
pub fn remove(path: &Path) -> io::Result<Change> {
    match fs::remove_file(path) {
        Ok(()) => Ok(Change::Removed),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Change::Absent),
        Err(e) => Err(e),
    }
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

fn file_name(path: &Path) -> io::Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} names no file", path.display()),
            )
        })
}

/// Temporary files of an installer that died between write and rename.
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

/// Make the rename durable: a node that loses power right after the
/// installer finished still has the new file.
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn creates_then_leaves_identical_then_updates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/plugin");
        assert_eq!(install(&path, b"v1", 0o755).unwrap(), Change::Created);
        assert_eq!(fs::read(&path).unwrap(), b"v1");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);
        let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap());

        assert_eq!(install(&path, b"v1", 0o755).unwrap(), Change::Unchanged);
        let same = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap());
        assert_eq!(inode, same, "an identical file is not rewritten");

        assert_eq!(install(&path, b"v2", 0o755).unwrap(), Change::Updated);
        assert_eq!(fs::read(&path).unwrap(), b"v2");
        assert_eq!(names(&dir.path().join("sub")), vec!["plugin"]);
    }

    #[test]
    fn a_wrong_mode_alone_is_an_update() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        fs::write(&path, b"secret").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(install(&path, b"secret", 0o600).unwrap(), Change::Updated);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn an_open_reader_keeps_the_whole_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf");
        install(&path, b"old contents", 0o644).unwrap();
        let mut reader = fs::File::open(&path).unwrap();
        install(&path, b"new", 0o644).unwrap();
        let mut seen = String::new();
        std::io::Read::read_to_string(&mut reader, &mut seen).unwrap();
        assert_eq!(seen, "old contents");
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
    }

    #[test]
    fn stale_temporaries_of_a_dead_installer_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(".trellis.trellis-tmp.77.123");
        fs::write(&stale, b"half a bin").unwrap();
        let other = dir.path().join(".bridge.trellis-tmp.77.123");
        fs::write(&other, b"not ours to judge").unwrap();
        install(&dir.path().join("trellis"), b"bin", 0o755).unwrap();
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
        assert!(install(&path, b"data", 0o644).is_err());
        assert!(path.is_dir());
        assert_eq!(names(dir.path()), vec!["conf"]);
    }

    #[test]
    fn remove_reports_what_it_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"x").unwrap();
        assert_eq!(remove(&path).unwrap(), Change::Removed);
        assert_eq!(remove(&path).unwrap(), Change::Absent);
    }
}
