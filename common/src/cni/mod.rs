//! The Container Network Interface protocol, versions 0.3.0 to 1.1.0.

pub mod config;
pub mod delegate;
pub mod env;
pub mod error;
pub mod result;
pub mod service;
pub mod skel;
pub mod version;

pub use config::{Attachment, NetConf};
pub use env::{CniEnv, Command};
pub use error::{code, CniError};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use skel::{dispatch, run, Outcome, Plugin, Request};
pub use version::Version;
