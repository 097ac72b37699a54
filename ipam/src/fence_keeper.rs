//! The fence keeper: applies the fences of claims that got no answer (see
//! `store::fence`) and waits until etcd confirms each, so the plugin itself
//! can report code 11 to the runtime at once.
//!
//! The plugin drops the fence as a job file in `<stateDir>/ipam/fences/`
//! and starts `trellis-ipam --fence <that dir>` in the background. One
//! keeper per node works the queue (it holds `fences/.keeper` locked); a
//! keeper started while another runs leaves at once, and the running one
//! looks at the queue again before it exits, so no job is left behind. The
//! keeper is detached from the runtime: its own process group, stdout and
//! stderr on /dev/null (a runtime reads the plugin's pipes until every
//! holder closes them). A job is dropped `KEEP_TRYING` after it was queued;
//! the attachment's DEL, a retried ADD or GC clean up after that.

use crate::store::etcd::EtcdStore;
use crate::store::fence::Fence;
use serde::{Deserialize, Serialize};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use trellis_common::etcd::EtcdSettings;
use trellis_common::fs::{write_atomically, FileLock};

/// The flag that starts `trellis-ipam` as a fence keeper.
pub const FENCE_FLAG: &str = "--fence";

/// How long after it was queued a job is retried.
const KEEP_TRYING: Duration = Duration::from_secs(600);

/// Each attempt waits this long for an answer: a stopped etcd answers the
/// pending requests as soon as it resumes, so there is no gap to retry in.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// With several endpoints, how long one round over them may take.
const MEMBER_ATTEMPTS_TIMEOUT: Duration = Duration::from_secs(8);

const KEEPER_LOCK: &str = ".keeper";

/// One queued job: a fence and the settings to reach etcd with.
#[derive(Debug, Serialize, Deserialize)]
pub struct Job {
    pub settings: EtcdSettings,
    pub fence: Fence,
}

impl Job {
    /// Decode a job file as `hand_over` wrote it.
    pub fn parse(bytes: &[u8]) -> Result<Job, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// The queue directory of a node.
pub fn queue_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("ipam").join("fences")
}

/// Queue `fence` and make sure a keeper runs: `keeper` is the
/// `trellis-ipam` binary. Failures are logged, not fatal: the ADD fails
/// with code 11 either way.
pub fn hand_over(state_dir: &Path, settings: &EtcdSettings, fence: Fence, keeper: &Path) {
    let dir = queue_dir(state_dir);
    let job = serde_json::to_vec(&Job {
        settings: settings.clone(),
        fence,
    })
    .expect("job serializes");
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let file = dir.join(format!("{stamp}-{}.json", std::process::id()));
    if let Err(e) = write_atomically(&file, &job, 0o600) {
        log::warn!("cannot queue the fence in {}: {e}", dir.display());
        return;
    }
    let started = Command::new(keeper)
        .arg(FENCE_FLAG)
        .arg(&dir)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    match started {
        // Not waited for: it outlives this process and init reaps it.
        Ok(child) => log::info!("fence queued in {}; keeper {}", file.display(), child.id()),
        Err(e) => log::warn!("cannot start the fence keeper: {e}"),
    }
}

/// The attachment's DEL: apply, right now, the queued fences of the
/// claims made for `handle_key` (a failed ADD's), before the DEL releases
/// what the handle holds. Applied later by the keeper, a fence would put
/// its "cancelled" record after the DEL and leave it behind. A fence that
/// cannot be applied in time fails the DEL (the runtime retries it).
pub async fn apply_pending_for(
    state_dir: &Path,
    store: &EtcdStore,
    handle_key: &str,
) -> Result<(), crate::error::IpamError> {
    let dir = queue_dir(state_dir);
    for file in jobs(&dir) {
        let Some(job) = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Job>(&b).ok())
        else {
            continue;
        };
        if job.fence.handle_key != handle_key {
            continue;
        }
        store.apply_fence(&job.fence).await?;
        let _ = std::fs::remove_file(&file);
    }
    Ok(())
}

/// The keeper's `main`: work the queue in `dir` until it is empty.
pub fn run(dir: &Path) -> i32 {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return 2;
    };
    loop {
        // Another keeper works the queue: it re-checks before it leaves.
        let Ok(lock) = FileLock::acquire(&dir.join(KEEPER_LOCK), Instant::now()) else {
            return 0;
        };
        rt.block_on(work(dir));
        drop(lock);
        if jobs(dir).is_empty() {
            return 0;
        }
    }
}

/// The jobs still to do. A job is dropped `KEEP_TRYING` after it was
/// queued (its file's time), whichever keeper finds it: applied much later,
/// its fence could undo a newer claim that wrote the same values (a retried
/// ADD of the same attachment and address).
fn jobs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        if age > KEEP_TRYING {
            log::warn!("dropping fence job {} queued {age:?} ago", path.display());
            let _ = std::fs::remove_file(&path);
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

async fn work(dir: &Path) {
    let mut pause = Duration::from_millis(200);
    loop {
        let pending = jobs(dir);
        if pending.is_empty() {
            return;
        }
        // Every fence is sent at once, each on its own connection: behind a
        // frozen etcd they all wait together, not one attempt after another.
        let mut attempts = tokio::task::JoinSet::new();
        for file in pending {
            let Ok(job) = std::fs::read(&file)
                .map_err(|_| ())
                .and_then(|b| Job::parse(&b).map_err(|_| ()))
            else {
                let _ = std::fs::remove_file(&file);
                continue;
            };
            attempts.spawn(async move { (file, apply(job).await) });
        }
        let mut progress = false;
        while let Some(done) = attempts.join_next().await {
            if let Ok((file, true)) = done {
                let _ = std::fs::remove_file(&file);
                progress = true;
            }
        }
        if !progress {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
}

async fn apply(mut job: Job) -> bool {
    // One etcd: wait for it (the fence queues behind the claim in a
    // stopped etcd). Several: each attempt on one member is a fraction of
    // this, and a frozen member gets no write (see `etcd_failover`).
    job.settings.timeout = if job.settings.endpoints.len() > 1 {
        MEMBER_ATTEMPTS_TIMEOUT
    } else {
        ATTEMPT_TIMEOUT
    };
    match EtcdStore::connect(&job.settings).await {
        Ok(store) => store.apply_fence(&job.fence).await.is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn jobs_older_than_keep_trying_are_dropped_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("2-1.json");
        let stale = dir.path().join("1-1.json");
        for f in [&fresh, &stale] {
            std::fs::write(f, b"{}").unwrap();
        }
        std::fs::write(dir.path().join(KEEPER_LOCK), b"").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(SystemTime::now() - KEEP_TRYING - Duration::from_secs(1))
            .unwrap();
        assert_eq!(jobs(dir.path()), vec![fresh]);
        assert!(!stale.exists(), "a stale job is removed");
    }
}
