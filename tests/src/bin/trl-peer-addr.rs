//! A tiny TCP service for egress tests: `serve ADDR:PORT` answers every
//! connection with the address it came from (what the far side sees after
//! masquerading) and closes it; `ask ADDR:PORT` prints that answer.
//!
//! Anything that can open a TCP connection (busybox `nc` in a container)
//! can ask it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [verb, addr] = args.as_slice() else {
        bail!("usage: trl-peer-addr serve|ask ADDR:PORT");
    };
    let addr: SocketAddr = addr.parse().with_context(|| format!("{addr:?}"))?;
    match verb.as_str() {
        "serve" => serve(addr),
        "ask" => ask(addr),
        other => bail!("unknown command {other:?}: serve or ask"),
    }
}

fn serve(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if let Ok(peer) = stream.peer_addr() {
            let _ = writeln!(stream, "{}", peer.ip());
        }
    }
    Ok(())
}

fn ask(addr: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    print!("{answer}");
    Ok(())
}
