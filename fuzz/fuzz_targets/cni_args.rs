//! `CNI_ARGS` (with the first line of the input) and the static address
//! requests read from it and from the configuration (the rest): the
//! environment is checked by `CniEnv::from_lookup` (code 4), the address
//! requests by `requested_address` (4, 7 or 103).

#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_common::cni::{code, CniError};
use trellis_fuzz::{add_env, add_request, assert_clear};
use trellis_ipam::request::requested_address;

const DEFAULT_CONF: &[u8] =
    br#"{"cniVersion":"1.0.0","name":"net","type":"trellis","ipam":{"type":"trellis-ipam"}}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (cni_args, stdin) = text.split_once('\n').unwrap_or((text, ""));
    if cni_args.contains('\0') {
        return; // not an environment variable
    }
    let env = match add_env(cni_args) {
        Ok(env) => env,
        Err(e) => return assert_clear(&e, &[code::INVALID_ENVIRONMENT]),
    };
    // Every pair is one `K=V` of the variable, split at its first `=`.
    for (k, v) in &env.args {
        assert!(!k.contains('='), "{k}={v}");
        assert!(
            cni_args.split(';').any(|p| *p == format!("{k}={v}")),
            "{k}={v}"
        );
    }
    let req = add_request(stdin.as_bytes(), cni_args)
        .or_else(|_| add_request(DEFAULT_CONF, cni_args))
        .expect("the default configuration decodes");
    if let Err(e) = requested_address(&req) {
        let codes = [
            code::INVALID_ENVIRONMENT,
            code::INVALID_CONFIG,
            code::ADDRESS_UNAVAILABLE,
        ];
        assert_clear(&CniError::from(e), &codes);
    }
});
