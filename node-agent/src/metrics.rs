//! The agent's figures, served as Prometheus text on `/metrics`, and its
//! health on `/healthz`. The parts of the agent set them (the reconciler
//! its own, see `overlay::reconciler`); this module knows none of them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// One per-network figure: its name, kind, help, and how it is read.
type NetworkFigure = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Metrics) -> u64,
);

/// A number that only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A number that is set.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Remote nodes in the desired state.
    pub remote_nodes: Gauge,
    /// FDB + neighbour + route entries in place after the last reconcile.
    pub entries_programmed: Gauge,
    /// Routes to remote subnets straight over the underlay (direct
    /// routing), of the entries above.
    pub direct_routes: Gauge,
    pub reconciles: Counter,
    pub reconcile_errors: Counter,
    pub failed_writes: Counter,
    pub reconcile_micros_sum: Counter,
    pub last_reconcile_micros: Gauge,
    /// This node's allocations in etcd at the last reclaim pass.
    pub allocations: Gauge,
    pub gc_releases: Counter,
    pub etcd_errors: Counter,
    /// `trellis-ipam` calls answered by the IPAM service (any outcome).
    pub ipam_served: Counter,
    /// Calls it declined (the plugin ran `trellis-ipam` itself).
    pub ipam_declined: Counter,
    /// Named networks in use, and records left out (`crate::networks`).
    pub networks: Gauge,
    pub networks_ignored: Gauge,
    /// Named networks this node serves (set up, or being set up).
    pub networks_served: Gauge,
    /// The subnet lease is held and the node record published.
    pub leased: AtomicBool,
    /// The last reconcile wrote everything it planned.
    pub converged: AtomicBool,
    /// Each named network's own figures, by network (its reconciler,
    /// lease and etcd calls count there), rendered with a `network` label.
    pub per_network: RwLock<BTreeMap<String, Arc<Metrics>>>,
}

impl Metrics {
    /// Healthy: the lease is held and the overlay was programmed at least once.
    pub fn healthy(&self) -> bool {
        self.leased.load(Ordering::Relaxed) && self.reconciles.get() > 0
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        let secs = |micros: u64| format!("{:.6}", micros as f64 / 1e6);
        metric(
            "trellis_agent_remote_nodes",
            "gauge",
            "Remote nodes the overlay reaches.",
            self.remote_nodes.get().to_string(),
        );
        metric(
            "trellis_agent_networks",
            "gauge",
            "Named networks (<prefix>/networks/) in use.",
            self.networks.get().to_string(),
        );
        metric(
            "trellis_agent_networks_served",
            "gauge",
            "Named networks this node serves (set up, or being set up).",
            self.networks_served.get().to_string(),
        );
        metric(
            "trellis_agent_networks_ignored",
            "gauge",
            "Named network records left out: unreadable, or a VNI or subnet another network has.",
            self.networks_ignored.get().to_string(),
        );
        metric(
            "trellis_agent_overlay_entries",
            "gauge",
            "FDB, neighbour and route entries programmed for remote nodes.",
            self.entries_programmed.get().to_string(),
        );
        metric(
            "trellis_agent_direct_routes",
            "gauge",
            "Routes to remote node subnets over the underlay, unencapsulated (direct routing).",
            self.direct_routes.get().to_string(),
        );
        metric(
            "trellis_agent_reconciles_total",
            "counter",
            "Reconciles of the overlay entries.",
            self.reconciles.get().to_string(),
        );
        metric(
            "trellis_agent_reconcile_errors_total",
            "counter",
            "Reconciles that failed before writing (dump or device errors).",
            self.reconcile_errors.get().to_string(),
        );
        metric(
            "trellis_agent_failed_writes_total",
            "counter",
            "Netlink writes that failed (and were retried).",
            self.failed_writes.get().to_string(),
        );
        metric(
            "trellis_agent_reconcile_duration_seconds_sum",
            "counter",
            "Total time spent reconciling.",
            secs(self.reconcile_micros_sum.get()),
        );
        metric(
            "trellis_agent_last_reconcile_duration_seconds",
            "gauge",
            "Duration of the last reconcile.",
            secs(self.last_reconcile_micros.get()),
        );
        metric(
            "trellis_agent_ipam_allocations",
            "gauge",
            "This node's IP allocations in etcd at the last reclaim pass.",
            self.allocations.get().to_string(),
        );
        metric(
            "trellis_agent_ipam_gc_releases_total",
            "counter",
            "Leaked IP allocations released.",
            self.gc_releases.get().to_string(),
        );
        metric(
            "trellis_agent_etcd_errors_total",
            "counter",
            "etcd requests, watches and keep-alives that failed.",
            self.etcd_errors.get().to_string(),
        );
        metric(
            "trellis_agent_ipam_service_calls_total",
            "counter",
            "trellis-ipam calls of this node's plugins answered by the agent.",
            self.ipam_served.get().to_string(),
        );
        metric(
            "trellis_agent_ipam_service_declined_total",
            "counter",
            "trellis-ipam calls the agent declined (another etcd, single-host mode).",
            self.ipam_declined.get().to_string(),
        );
        metric(
            "trellis_agent_subnet_leased",
            "gauge",
            "1 while the node subnet lease is held.",
            u8::from(self.leased.load(Ordering::Relaxed)).to_string(),
        );
        self.render_networks(&mut out);
        out
    }

    /// The named networks' figures: one sample per network of each.
    fn render_networks(&self, out: &mut String) {
        let networks = self.per_network.read().expect("metrics lock");
        if networks.is_empty() {
            return;
        }
        let figures: [NetworkFigure; 7] = [
            (
                "trellis_agent_network_remote_nodes",
                "gauge",
                "Remote nodes the named network's overlay reaches.",
                |m| m.remote_nodes.get(),
            ),
            (
                "trellis_agent_network_overlay_entries",
                "gauge",
                "FDB, neighbour and route entries programmed on the named network's VXLAN device.",
                |m| m.entries_programmed.get(),
            ),
            (
                "trellis_agent_network_direct_routes",
                "gauge",
                "Routes to the named network's remote subnets over the underlay (direct routing).",
                |m| m.direct_routes.get(),
            ),
            (
                "trellis_agent_network_reconciles_total",
                "counter",
                "Reconciles of the named network's overlay entries.",
                |m| m.reconciles.get(),
            ),
            (
                "trellis_agent_network_failed_writes_total",
                "counter",
                "Netlink writes of the named network that failed (and were retried).",
                |m| m.failed_writes.get(),
            ),
            (
                "trellis_agent_network_etcd_errors_total",
                "counter",
                "etcd requests, watches and keep-alives of the named network that failed.",
                |m| m.etcd_errors.get(),
            ),
            (
                "trellis_agent_network_subnet_leased",
                "gauge",
                "1 while this node's subnet in the named network is leased.",
                |m| u64::from(m.leased.load(Ordering::Relaxed)),
            ),
        ];
        for (name, kind, help, value) in figures {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (network, m) in networks.iter() {
                let _ = writeln!(out, "{name}{{network=\"{network}\"}} {}", value(m));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_named_network_has_its_labelled_samples() {
        let m = Metrics::default();
        assert!(!m.render().contains("trellis_agent_network_"));
        let multihost = Arc::new(Metrics::default());
        multihost.remote_nodes.set(2);
        multihost.leased.store(true, Ordering::Relaxed);
        m.per_network
            .write()
            .unwrap()
            .insert("multihost".into(), multihost);
        m.per_network
            .write()
            .unwrap()
            .insert("back".into(), Arc::default());
        let text = m.render();
        assert!(
            text.contains("\ntrellis_agent_network_remote_nodes{network=\"multihost\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("\ntrellis_agent_network_remote_nodes{network=\"back\"} 0\n"));
        assert!(text.contains("\ntrellis_agent_network_subnet_leased{network=\"multihost\"} 1\n"));
        assert_eq!(
            text.matches("# TYPE trellis_agent_network_remote_nodes gauge")
                .count(),
            1
        );
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        assert!(!m.healthy());
        m.reconciles.inc();
        m.entries_programmed.set(6);
        m.remote_nodes.set(2);
        m.last_reconcile_micros.set(12_000);
        m.leased.store(true, Ordering::Relaxed);
        m.gc_releases.add(3);
        assert!(m.healthy());
        let text = m.render();
        assert!(
            text.contains("\ntrellis_agent_overlay_entries 6\n"),
            "{text}"
        );
        assert!(text.contains("\ntrellis_agent_remote_nodes 2\n"));
        assert!(text.contains("\ntrellis_agent_ipam_gc_releases_total 3\n"));
        assert!(text.contains("\ntrellis_agent_last_reconcile_duration_seconds 0.012000\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let mut parts = line.split(' ');
            let (name, value) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(name.starts_with("trellis_agent_"), "{line}");
            value.parse::<f64>().unwrap();
        }
    }
}
