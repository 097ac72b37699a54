//! Undoing a half-done ADD, as netavark and youki do it: every change that
//! would outlive a failure registers how to undo it, in order; success
//! commits them all away, a failure runs them in reverse and reports the
//! error that caused it together with every undo that failed, never one in
//! place of the other.

use std::future::Future;
use std::pin::Pin;
use trellis_common::cni::CniError;

type Undo<'a> = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<(), CniError>> + 'a>> + 'a>;

/// The undo steps of one ADD, most recent last.
#[must_use = "commit it on success, run it on failure"]
pub struct Rollback<'a> {
    steps: Vec<Option<(String, Undo<'a>)>>,
}

/// A registered undo step, to drop with [`Rollback::forget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step(usize);

impl<'a> Rollback<'a> {
    pub fn new() -> Rollback<'a> {
        Rollback { steps: Vec::new() }
    }

    /// Register `undo` (described by `what` when it fails) to run if the
    /// ADD fails: after every step registered later, before every step
    /// registered earlier.
    pub fn push<F, Fut>(&mut self, what: impl Into<String>, undo: F) -> Step
    where
        F: FnOnce() -> Fut + 'a,
        Fut: Future<Output = Result<(), CniError>> + 'a,
    {
        let undo: Undo<'a> = Box::new(move || Box::pin(undo()));
        self.steps.push(Some((what.into(), undo)));
        Step(self.steps.len() - 1)
    }

    /// Drop `step`: what it would undo turned out not to have happened
    /// (the IPAM ADD failed, and by the specification kept nothing).
    pub fn forget(&mut self, step: Step) {
        self.steps[step.0] = None;
    }

    /// The ADD succeeded: nothing is undone.
    pub fn commit(mut self) {
        self.steps.clear();
    }

    /// The ADD failed with `error`: undo everything, newest first, and
    /// return `error` with every undo that failed added to its details.
    pub async fn run(mut self, mut error: CniError) -> CniError {
        let mut failures = Vec::new();
        while let Some(step) = self.steps.pop() {
            let Some((what, undo)) = step else {
                continue;
            };
            if let Err(e) = undo().await {
                log::error!("rollback: {what}: {e}");
                failures.push(format!("{what}: {e}"));
            }
        }
        if !failures.is_empty() {
            let cleanup = format!("rollback failed too: {}", failures.join("; "));
            error.details = if error.details.is_empty() {
                cleanup
            } else {
                format!("{}; {cleanup}", error.details)
            };
        }
        error
    }
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if self.steps.iter().any(Option::is_some) {
            log::error!("an ADD ended neither committed nor rolled back");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use trellis_common::cni::code;

    fn block_on<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_failure_undoes_in_reverse_and_reports_every_failed_undo() {
        let log = RefCell::new(Vec::new());
        let mut rollback = Rollback::new();
        rollback.push("releasing the address", || async {
            log.borrow_mut().push("release");
            Err(CniError::try_again("etcd is away"))
        });
        let forgotten = rollback.push("never", || async {
            log.borrow_mut().push("never");
            Ok(())
        });
        rollback.push("removing the veth", || async {
            log.borrow_mut().push("veth");
            Err(CniError::kernel("EBUSY"))
        });
        rollback.push("masquerade", || async {
            log.borrow_mut().push("masquerade");
            Ok(())
        });
        rollback.forget(forgotten);
        let e = block_on(rollback.run(CniError::kernel("adding the route failed")));
        assert_eq!(*log.borrow(), ["masquerade", "veth", "release"]);
        assert_eq!(e.code, code::KERNEL);
        assert_eq!(e.msg, "adding the route failed");
        assert_eq!(
            e.details,
            "rollback failed too: removing the veth: EBUSY (code 100); \
             releasing the address: etcd is away (code 11)"
        );
    }

    #[test]
    fn a_clean_rollback_keeps_the_error_as_it_was_and_commit_undoes_nothing() {
        let ran = RefCell::new(0);
        let mut rollback = Rollback::new();
        rollback.push("step", || async {
            *ran.borrow_mut() += 1;
            Ok(())
        });
        let original = CniError::invalid_config("bad").with_details("why");
        let e = block_on(rollback.run(original.clone()));
        assert_eq!((e.msg, e.details), (original.msg, original.details));
        assert_eq!(*ran.borrow(), 1);

        let mut committed = Rollback::new();
        committed.push("step", || async {
            *ran.borrow_mut() += 1;
            Ok(())
        });
        committed.commit();
        assert_eq!(*ran.borrow(), 1);
    }
}
