//! trellis-agent: the node agent, as a library so that its parts are tested
//! on their own. `main.rs` is the command line.

pub mod install_cni;
