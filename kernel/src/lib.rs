//! Kernel networking for trellis. Everything that talks to the kernel lives
//! here: rtnetlink for links, addresses, routes, FDB and neighbours; setns
//! (on a dedicated thread) for network namespaces; nftables for masquerade.
