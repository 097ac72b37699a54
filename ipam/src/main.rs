//! `trellis-ipam`, the CNI IPAM plugin: see the library for what it does.
//! `trellis-ipam --fence` is its own fence keeper (see `fence_keeper`).

fn main() {
    if std::env::args().nth(1).as_deref() == Some(trellis_ipam::fence_keeper::FENCE_FLAG) {
        std::process::exit(trellis_ipam::fence_keeper::run_from_stdin());
    }
    std::process::exit(trellis_common::cni::run(&trellis_ipam::IpamPlugin));
}
