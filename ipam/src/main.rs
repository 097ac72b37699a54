//! `trellis-ipam`, the CNI IPAM plugin: see the library for what it does.

fn main() {
    std::process::exit(trellis_common::cni::run(&trellis_ipam::IpamPlugin));
}
