//! `trellis-ipam`, the CNI IPAM plugin: see the library for what it does.
//! `trellis-ipam --fence <dir>` is its own fence keeper (see `fence_keeper`).

fn main() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some(trellis_ipam::fence_keeper::FENCE_FLAG.as_ref()) {
        let dir = args
            .next()
            .map(std::path::PathBuf::from)
            .unwrap_or_default();
        std::process::exit(trellis_ipam::fence_keeper::run(&dir));
    }
    std::process::exit(trellis_common::cni::run(&trellis_ipam::IpamPlugin));
}
