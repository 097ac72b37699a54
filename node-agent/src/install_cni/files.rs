//! What installing one file did: the installer leaves an identical file
//! (contents and mode) untouched and reports it `unchanged`; anything else
//! is replaced through `trellis_common::fs::write_atomically` (a runtime
//! loading the conflist or exec'ing a plugin sees the old file or the new
//! one, never a part).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use trellis_common::fs::write_atomically;

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
    write_atomically(path, contents, mode)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
        // Nothing but the file: no temporary left next to it.
        let left: Vec<_> = fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["plugin"]);
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
    fn remove_reports_what_it_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"x").unwrap();
        assert_eq!(remove(&path).unwrap(), Change::Removed);
        assert_eq!(remove(&path).unwrap(), Change::Absent);
    }
}
