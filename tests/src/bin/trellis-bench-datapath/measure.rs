//! The measurements: an iperf3 server in a namespace, one iperf3 run, the
//! average round trip of a burst of pings, a link's MTU.

use std::net::IpAddr;
use std::process::{Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use trellis_tests::netns::Netns;

/// How iperf3 runs: seconds, parallel streams, CPUs of client and server
/// (`-A c,s`), congestion control (`-C`).
#[derive(Debug, Clone)]
pub struct Iperf {
    pub seconds: u32,
    pub streams: u32,
    pub pin: Option<(usize, usize)>,
    pub congestion: Option<String>,
}

/// An iperf3 server in a namespace, stopped with it.
pub struct IperfServer;

impl IperfServer {
    pub fn start(ns: &Netns, bind: IpAddr, port: u16) -> Result<IperfServer> {
        let bind = bind.to_string();
        let port_text = port.to_string();
        let mut cmd = ns.command(&["iperf3", "-s", "-B", &bind, "-p", &port_text]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        ns.spawn_command(cmd)
            .context("starting iperf3 (install iperf3: scripts/setup.sh)")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = ns.exec(&["ss", "-Htln", "sport", "=", &format!(":{port}")]);
            if String::from_utf8_lossy(&out.stdout).contains(&port_text) {
                return Ok(IperfServer);
            }
            if Instant::now() > deadline {
                bail!("iperf3 did not listen in {}", ns.name());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Iperf {
    /// Bits per second received in one iperf3 run from `client` to `server`.
    pub fn run(&self, client: &Netns, server: IpAddr, port: u16) -> Result<f64> {
        let server = server.to_string();
        let mut argv = vec![
            "timeout".to_string(),
            (self.seconds + 20).to_string(),
            "iperf3".into(),
            "-c".into(),
            server.clone(),
            "-p".into(),
            port.to_string(),
            "-t".into(),
            self.seconds.to_string(),
            "-P".into(),
            self.streams.to_string(),
            "-J".into(),
        ];
        if let Some(algo) = &self.congestion {
            argv.extend(["-C".into(), algo.clone()]);
        }
        if let Some((c, s)) = self.pin {
            argv.extend(["-A".into(), format!("{c},{s}")]);
        }
        let out: Output = client.exec(&argv);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stderr)))?;
        if let Some(err) = report["error"].as_str() {
            bail!("iperf3 to {server}: {err}");
        }
        report["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("iperf3 report without end.sum_received")
    }
}

/// Average round trip of 50 pings 10 ms apart, in milliseconds.
pub fn rtt_ms(from: &Netns, to: IpAddr) -> Result<f64> {
    let to = to.to_string();
    let out = from.ok(&["ping", "-n", "-q", "-c", "50", "-i", "0.01", "-W", "1", &to])?;
    // Per-packet times are not printed with -q; use the summary's avg and
    // check there was no loss.
    if !out.contains(" 0% packet loss") {
        bail!("packet loss pinging {to}:\n{out}");
    }
    let summary = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .context("no ping summary")?;
    let values = summary
        .split('=')
        .nth(1)
        .context("no ping summary values")?
        .trim();
    let avg = values
        .split('/')
        .nth(1)
        .context("no average")?
        .trim()
        .parse()?;
    Ok(avg)
}

pub fn link_mtu(ns: &Netns, ifname: &str) -> Result<u64> {
    let out = ns.ok(&["ip", "-j", "link", "show", ifname])?;
    let links: serde_json::Value = serde_json::from_str(&out)?;
    links[0]["mtu"].as_u64().context("no mtu")
}
