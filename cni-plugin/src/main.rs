//! `trellis`: the CNI plugin wiring containers into the node bridge.
//!
//! ADD ensures the bridge and its gateway address, delegates addressing to
//! the IPAM plugin, creates a veth pair whose peer is born inside the
//! container namespace, configures addresses and routes there, and returns
//! the result; any failure half-way undoes all of it. DEL, CHECK, GC and
//! STATUS find everything again from the container ID and interface name.

mod add;
mod check;
mod del;
mod gc;
mod ipam;
mod masq;
mod netns;
mod plugin;
mod rollback;
mod routes;
mod runtime;
mod status;
mod unlink;

fn main() {
    std::process::exit(trellis_common::cni::run(&plugin::Trellis));
}
