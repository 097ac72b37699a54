//! (harness module, being written)
