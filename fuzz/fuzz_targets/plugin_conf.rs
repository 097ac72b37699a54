//! The `trellis` plugin's stdin: the network configuration, decoded by
//! `NetConf::parse` and checked by `Config::from_request`. Every bad input
//! is code 1 (version), 6 (not JSON) or 7 (configuration), never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_common::cni::code;
use trellis_fuzz::{add_request, assert_clear};
use trellis_plugin::config::Config;

fuzz_target!(|data: &[u8]| {
    let req = match add_request(data, "") {
        Ok(req) => req,
        Err(e) => {
            let codes = [
                code::INCOMPATIBLE_VERSION,
                code::DECODING_FAILURE,
                code::INVALID_CONFIG,
            ];
            return assert_clear(&e, &codes);
        }
    };
    match Config::from_request(&req) {
        Ok(config) => {
            let _ = config.masquerade_table();
            let _ = config.lock_path();
        }
        Err(e) => assert_clear(&e, &[code::INVALID_CONFIG]),
    }
});
