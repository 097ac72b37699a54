//! The `trellis` plugin: which module answers which verb. The verbs share
//! nothing through this module.

use trellis_common::cni::{CniError, CniResult, Plugin, Request};

pub struct Trellis;

impl Plugin for Trellis {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        crate::add::add(req)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        crate::del::del(req)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        crate::check::check(req)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        crate::gc::gc(req)
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        crate::status::status(req)
    }
}
