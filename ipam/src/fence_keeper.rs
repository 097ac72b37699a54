//! The fence keeper: a short-lived background copy of `trellis-ipam`
//! (`trellis-ipam --fence`, the fence as JSON on stdin) that applies the
//! fence of a claim which got no answer and waits until etcd confirms it,
//! so the plugin itself can report code 11 to the runtime at once.
//!
//! It is detached from the runtime: its own process group, stdout and
//! stderr on /dev/null (a runtime reads the plugin's pipes until every
//! holder closes them). It gives up after `KEEP_TRYING`.

use crate::store::etcd::{EtcdSettings, EtcdStore};
use crate::store::fence::Fence;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The flag that starts `trellis-ipam` as a fence keeper.
pub const FENCE_FLAG: &str = "--fence";

/// How long the keeper retries before giving up (the attachment's DEL, a
/// retried ADD or GC still clean up after that).
pub const KEEP_TRYING: Duration = Duration::from_secs(600);

#[derive(Debug, Serialize, Deserialize)]
struct Job {
    settings: EtcdSettings,
    fence: Fence,
}

/// Start a keeper for `fence`. Failing to start one is logged, not fatal:
/// the ADD fails with code 11 either way.
pub fn spawn(settings: &EtcdSettings, fence: Fence) {
    let job = serde_json::to_vec(&Job {
        settings: settings.clone(),
        fence,
    })
    .expect("job serializes");
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            log::warn!("cannot start the fence keeper: {e}");
            return;
        }
    };
    let child = Command::new(exe)
        .arg(FENCE_FLAG)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    match child {
        Ok(mut child) => {
            if let Some(mut stdin) = child.stdin.take() {
                if let Err(e) = stdin.write_all(&job) {
                    log::warn!("handing the fence to its keeper: {e}");
                }
            }
            log::info!("fence keeper {} started", child.id());
            // Not waited for: it outlives this process and is reaped by init.
        }
        Err(e) => log::warn!("cannot start the fence keeper: {e}"),
    }
}

/// The keeper's `main`: read the job, apply the fence until etcd answers.
pub fn run_from_stdin() -> i32 {
    let mut input = Vec::new();
    if std::io::stdin().read_to_end(&mut input).is_err() {
        return 2;
    }
    let Ok(job) = serde_json::from_slice::<Job>(&input) else {
        return 2;
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return 2;
    };
    rt.block_on(keep(job))
}

/// Each attempt waits this long for an answer: a stopped etcd answers the
/// pending request as soon as it resumes, so there is no gap to retry in.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

async fn keep(mut job: Job) -> i32 {
    job.settings.timeout = ATTEMPT_TIMEOUT;
    let give_up = Instant::now() + KEEP_TRYING;
    let mut pause = Duration::from_millis(200);
    while Instant::now() < give_up {
        if let Ok(store) = EtcdStore::connect(&job.settings).await {
            if store.apply_fence(&job.fence).await.is_ok() {
                return 0;
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
    1
}
