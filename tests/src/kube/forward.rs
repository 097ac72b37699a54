//! A TCP forwarder from the host's loopback into a network namespace: the
//! listening socket is the host's, each connection to the target is opened
//! by a thread that entered the namespace first (a socket keeps the
//! namespace it was made in). Only loopback on both sides: nothing is
//! configured in the host's network.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::thread;

use anyhow::{Context, Result};
use nix::sched::{setns, CloneFlags};

/// Serves forever: `listen` on the host, each client joined to `target`
/// (the same address) inside the namespace `netns`.
pub fn serve(netns: &str, addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    let dialer = Dialer::start(&Path::new("/run/netns").join(netns), addr)?;
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        match dialer.dial() {
            Ok(upstream) => {
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                splice(client, upstream);
            }
            Err(err) => {
                eprintln!("forward: connecting to {addr} in {netns}: {err:#}");
                let _ = client.shutdown(Shutdown::Both);
            }
        }
    }
    Ok(())
}

/// One thread inside the namespace that opens connections on request.
struct Dialer {
    requests: mpsc::Sender<mpsc::Sender<std::io::Result<TcpStream>>>,
}

impl Dialer {
    fn start(netns: &Path, target: SocketAddr) -> Result<Dialer> {
        let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
        let (tx, rx) = mpsc::channel::<mpsc::Sender<std::io::Result<TcpStream>>>();
        let (ready_tx, ready_rx) = mpsc::channel();
        thread::spawn(move || {
            // This thread only: the listener and the copies stay outside.
            let entered = setns(&ns, CloneFlags::CLONE_NEWNET);
            let _ = ready_tx.send(entered);
            for reply in rx {
                let _ = reply.send(TcpStream::connect(target));
            }
        });
        ready_rx
            .recv()
            .context("the dialer thread")?
            .context("entering the namespace")?;
        Ok(Dialer { requests: tx })
    }

    fn dial(&self) -> Result<TcpStream> {
        let (tx, rx) = mpsc::channel();
        self.requests.send(tx).context("the dialer thread")?;
        Ok(rx.recv().context("the dialer thread")??)
    }
}

/// Copies both ways until either side closes.
fn splice(a: TcpStream, b: TcpStream) {
    let (a2, b2) = match (a.try_clone(), b.try_clone()) {
        (Ok(a2), Ok(b2)) => (a2, b2),
        _ => return,
    };
    thread::spawn(move || copy(a, b2));
    thread::spawn(move || copy(b, a2));
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
