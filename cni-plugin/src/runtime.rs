//! What every verb that talks to the kernel runs on, and how a kernel
//! failure becomes a CNI error.

use trellis_common::cni::{code, CniError};
use trellis_kernel::KernelError;

/// The runtime every verb runs on: one thread, no worker ever changes
/// namespace (that happens on the dedicated threads of `kernel::netns`).
pub fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("starting the runtime: {e}")))
}

/// A kernel failure as a CNI error: a name taken by a device of another
/// kind is a configuration problem (7), anything else is ours (100).
pub fn kernel_error(e: KernelError) -> CniError {
    match e {
        KernelError::WrongKind { .. } => CniError::invalid_config(e.to_string()),
        e => CniError::kernel(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_device_kinds_are_configuration_errors() {
        let e = kernel_error(KernelError::WrongKind {
            name: "trellis0".into(),
            expected: "bridge",
            found: "veth".into(),
        });
        assert_eq!(e.code, 7);
        assert!(
            e.msg.contains("trellis0") && e.msg.contains("veth"),
            "{}",
            e.msg
        );
        assert_eq!(kernel_error(KernelError::NotFound("x".into())).code, 100);
    }
}
