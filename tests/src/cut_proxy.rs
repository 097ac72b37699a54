//! A TCP proxy in front of a server (etcd) that can cut its clients off
//! while keeping its own connections to the server open: what a client sees
//! when its connection drops after a request left, with the request still
//! waiting in the server's socket (a frozen etcd that resumes later).
//! Loopback only; every thread ends when the proxy is dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use anyhow::{Context, Result};

pub struct CutProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// The proxy's end of every client connection not cut yet.
    clients: Mutex<Vec<TcpStream>>,
    /// The proxy's connections to the server, kept open until the drop.
    upstreams: Mutex<Vec<TcpStream>>,
    stopping: AtomicBool,
}

impl CutProxy {
    /// Listen on a free loopback port and forward every connection to
    /// `server`.
    pub fn start(server: SocketAddr) -> Result<CutProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("proxy listen")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accepting = Arc::clone(&shared);
        thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if let Err(e) = accepting.forward(client, server) {
                    eprintln!("cut proxy: {e:#}");
                }
            }
        });
        Ok(CutProxy { addr, shared })
    }

    /// The URL clients use, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Close every client connection open now, as a dropped network would,
    /// while the connections to the server stay open. Returns how many.
    pub fn cut_clients(&self) -> usize {
        let clients = std::mem::take(&mut *lock(&self.shared.clients));
        for c in &clients {
            let _ = c.shutdown(Shutdown::Both);
        }
        clients.len()
    }
}

impl Shared {
    fn forward(self: &Arc<Self>, client: TcpStream, server: SocketAddr) -> Result<()> {
        let upstream = TcpStream::connect(server).context("proxy to server")?;
        lock(&self.clients).push(client.try_clone()?);
        lock(&self.upstreams).push(upstream.try_clone()?);
        // Client to server: stops at the client's end, leaving the server's
        // connection open (the request already sent stays in its socket).
        let (mut from_client, mut to_server) = (client.try_clone()?, upstream.try_clone()?);
        thread::spawn(move || {
            let _ = std::io::copy(&mut from_client, &mut to_server);
        });
        // Server to client: after a cut, the answers are read and dropped.
        let (mut from_server, mut to_client) = (upstream, client);
        thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            let mut client_gone = false;
            while let Ok(n @ 1..) = from_server.read(&mut buf) {
                if !client_gone && to_client.write_all(&buf[..n]).is_err() {
                    client_gone = true;
                }
            }
        });
        Ok(())
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.cut_clients();
        for s in lock(&self.shared.upstreams).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wake the accept loop so it sees `stopping`.
        let _ = TcpStream::connect(self.addr);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
