//! Network namespaces. The only place that calls setns: a short-lived OS
//! thread joins the target namespace, does its work and exits, so no tokio
//! worker (and no long-lived thread) ever changes namespace.

use crate::error::{KernelError, Result};
use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::path::{Path, PathBuf};

/// An open handle on a network namespace (keeps it alive while held).
#[derive(Debug)]
pub struct NetnsFile {
    pub path: PathBuf,
    pub file: File,
}

impl NetnsFile {
    pub fn open(path: &Path) -> Result<NetnsFile> {
        let file = File::open(path).map_err(KernelError::io(format!(
            "opening network namespace {}",
            path.display()
        )))?;
        Ok(NetnsFile {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Whether the open file is a namespace (nsfs), not any other file a
    /// caller may have been handed as a namespace path.
    pub fn is_namespace(&self) -> Result<bool> {
        use nix::sys::statfs::{fstatfs, NSFS_MAGIC};
        let fs = fstatfs(&self.file).map_err(|source| KernelError::Netns {
            path: self.path.clone(),
            source,
        })?;
        Ok(fs.filesystem_type() == NSFS_MAGIC)
    }
}

/// Run `f` on a fresh thread that has joined the namespace `ns`, and return
/// its value. The thread ends with `f`.
pub fn run_in_netns<T, F>(ns: &NetnsFile, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let fd = ns
        .file
        .try_clone()
        .map_err(KernelError::io("dup netns fd"))?;
    let path = ns.path.clone();
    std::thread::Builder::new()
        .name("trellis-netns".into())
        .spawn(move || {
            setns(&fd, CloneFlags::CLONE_NEWNET).map_err(|source| KernelError::Netns {
                path: path.clone(),
                source,
            })?;
            Ok(f())
        })
        .map_err(KernelError::io("spawning netns thread"))?
        .join()
        .expect("netns thread panicked")
}
