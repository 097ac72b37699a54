//! The part of the `trellis` plugin other crates call: the decoding and
//! checking of its configuration (the fuzz targets, `fuzz/`, run it on
//! arbitrary input). The verbs live in the binary.

pub mod config;
