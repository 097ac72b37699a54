//! What the fuzz targets share: a CNI request as a runtime would make it,
//! and the check that an error is one the user can act on.

use trellis_common::cni::env::CniEnv;
use trellis_common::cni::{CniError, NetConf, Request};

/// The environment of an ADD with `CNI_ARGS` = `cni_args` (`Err` when the
/// plugin would refuse the environment).
pub fn add_env(cni_args: &str) -> Result<CniEnv, CniError> {
    CniEnv::from_lookup(|key| {
        Some(
            match key {
                "CNI_COMMAND" => "ADD",
                "CNI_CONTAINERID" => "fuzz-container",
                "CNI_NETNS" => "/var/run/netns/fuzz",
                "CNI_IFNAME" => "eth0",
                "CNI_PATH" => "/opt/cni/bin",
                "CNI_ARGS" => cni_args,
                _ => return None,
            }
            .to_string(),
        )
    })
}

/// An ADD request for the network configuration `stdin`.
pub fn add_request(stdin: &[u8], cni_args: &str) -> Result<Request, CniError> {
    Ok(Request {
        env: add_env(cni_args)?,
        conf: NetConf::parse(stdin)?,
        stdin: stdin.to_vec(),
    })
}

/// An error's code is one of `codes` and it says something.
pub fn assert_clear(e: &CniError, codes: &[u32]) {
    assert!(codes.contains(&e.code), "unexpected code: {e:?}");
    assert!(!e.msg.trim().is_empty(), "an error without words: {e:?}");
}
