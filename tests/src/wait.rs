//! Polling with a deadline, for state that settles asynchronously (agents
//! programming the kernel, etcd watches).

use anyhow::{bail, Result};
use std::time::{Duration, Instant};

/// Poll `f` every 20 ms until it yields a value, or fail after `timeout`
/// with `what` and the last error `f` returned.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?} {last}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Poll `f` until it holds, or fail after `timeout`.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<bool>,
) -> Result<()> {
    wait_for(timeout, what, || Ok(f()?.then_some(())))
}

/// Polls `f` every 200 ms until it yields a value; an error from `f` ends
/// the wait at once, running out of `timeout` fails naming `what`.
pub fn poll<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
