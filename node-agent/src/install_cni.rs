//! (being written: copies the plugins into the CNI bin dir and writes the conflist)
