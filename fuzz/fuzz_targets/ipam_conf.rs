//! The `trellis-ipam` plugin's stdin: the whole network configuration,
//! decoded by `NetConf::parse` and `IpamConf::from_netconf` (the `ipam`
//! object, etcd settings, pool keys). Bad input is code 1, 6 or 7; a
//! configuration it accepts with a subnet gives a pool that works.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_common::cni::{code, CniError};
use trellis_fuzz::{add_request, assert_clear};
use trellis_ipam::config::{Backend, IpamConf};

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
    let conf = match IpamConf::from_netconf(&req.conf.name, &req.conf.raw) {
        Ok(conf) => conf,
        Err(e) => return assert_clear(&CniError::from(e), &[code::INVALID_CONFIG]),
    };
    if let Backend::Etcd(settings) = &conf.backend {
        settings.validate().expect("accepted settings validate");
        let _ = settings.keys().config();
    }
    if let Some(subnet) = conf.subnet {
        let pool = conf.pool(subnet).expect("from_netconf checked the pool");
        for ip in pool.candidates_after(None).take(4) {
            assert!(pool.is_usable(ip));
            assert!(subnet.contains(ip));
        }
    }
    let _ = conf.node_lock_path();
});
