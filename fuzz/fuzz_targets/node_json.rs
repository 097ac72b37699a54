//! `<stateDir>/node.json` as the plugins read it: written to a state dir,
//! then read by `read_node_record` (the agent's record, or `InvalidData`)
//! and by the IPAM plugin's `local_record` (a corrupt file is code 105).

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;
use trellis_common::cni::{code, CniError};
use trellis_common::node::{read_node_record, record_path};
use trellis_ipam::config::IpamConf;
use trellis_ipam::placement::local_record;

/// The state dir this process writes `node.json` into: under
/// `TRELLIS_FUZZ_DIR` (scripts/fuzz.sh makes one in memory and removes it),
/// else the system's temporary directory.
fn state_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::var_os("TRELLIS_FUZZ_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("node-json-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = state_dir();
    std::fs::write(record_path(dir), data).unwrap();
    let direct = read_node_record(dir);
    match &direct {
        Ok(record) => {
            let record = record.as_ref().expect("the file is there");
            let _ = record.lease_subnet();
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}"),
    }
    let conf = IpamConf::from_netconf(
        "net",
        &serde_json::json!({
            "stateDir": dir,
            "ipam": {"type": "trellis-ipam", "etcdEndpoints": ["http://127.0.0.1:2379"]},
        }),
    )
    .expect("a valid configuration");
    match local_record(&conf) {
        Ok(record) => assert_eq!(record, direct.ok().flatten()),
        Err(e) => {
            assert!(direct.is_err());
            let e = CniError::from(e);
            assert_eq!(e.code, code::STORE, "{e:?}");
            assert!(e.msg.contains("node.json"), "{e:?}");
        }
    }
});
