//! The agent's DNS server (hickory), on the bridge's gateway addresses of
//! this node, port 53, UDP and TCP: the containers' names on every node
//! ([`crate::names`]), answered with a TTL of 0 so that a removed
//! container stops resolving as soon as the table forgets it, and every
//! other name forwarded to the node's own resolvers (or `--dns-upstream`).

use crate::names::{Answer, NameTable};
use crate::node_network::NodeNetwork;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::resolver::config::{ConnectionConfig, NameServerConfig, ResolverOpts};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::forwarder::{ForwardConfig, ForwardZoneHandler};
use hickory_server::zone_handler::{Catalog, MessageResponseBuilder};
use hickory_server::Server;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long a TCP client may stay silent.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses buffered per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 16;
/// How long a query waits for the names' first listing (an agent just
/// started) before it is answered SERVFAIL: never NXDOMAIN for a name the
/// agent has not yet read.
const LISTING_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("binding the DNS server to {addr} ({proto}): {source}")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        source: std::io::Error,
    },
    #[error("the DNS forwarder: {0}")]
    Forwarder(String),
}

/// Where the server listens and where it forwards.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// The gateway addresses of this node's bridge.
    pub listen: Vec<IpAddr>,
    pub port: u16,
    /// The resolvers other names go to; empty: none (they are refused).
    pub upstreams: Vec<SocketAddr>,
}

/// Where the agent serves DNS: the port, and where other names go (empty:
/// the node's resolvers).
#[derive(Debug, Clone)]
pub struct On {
    pub port: u16,
    pub upstreams: Vec<SocketAddr>,
}

/// The DNS server on the gateways of `net` (a bridge of this node),
/// answering from `names`. One that cannot start (port 53 taken on a
/// gateway address) is warned about and leaves the network without it:
/// containers then keep the runtime's resolvers.
pub fn serve_gateways(net: &NodeNetwork, on: &On, names: NameTable) -> Option<DnsServer> {
    let listen: Vec<IpAddr> = net.bridge_addresses().iter().map(|n| n.ip()).collect();
    let upstreams = if on.upstreams.is_empty() {
        system_upstreams(&listen)
    } else {
        on.upstreams.clone()
    };
    let settings = DnsSettings {
        listen,
        port: on.port,
        upstreams,
    };
    match DnsServer::start(&settings, Arc::new(RwLock::new(names))) {
        Ok(server) => {
            log::info!(
                "serving DNS on {:?} port {}, forwarding to {:?}",
                settings.listen,
                settings.port,
                settings.upstreams
            );
            Some(server)
        }
        Err(e) => {
            log::warn!("no DNS on {}: {e}", net.bridge);
            None
        }
    }
}

/// The node's resolvers (`/etc/resolv.conf`, port 53), without `own`
/// addresses (forwarding to ourselves would loop).
pub fn system_upstreams(own: &[IpAddr]) -> Vec<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    resolv_conf_nameservers(&text)
        .into_iter()
        .filter(|ip| !own.contains(ip))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The `nameserver` lines of a resolv.conf.
fn resolv_conf_nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then_some(())?;
            // A scoped address (fe80::1%eth0) is dropped: it names a link
            // of the node's namespace that a forwarder cannot choose.
            words.next()?.parse().ok()
        })
        .collect()
}

/// The running server; dropping it stops it (its tasks are aborted).
pub struct DnsServer {
    /// Held for its tasks: dropping it stops them.
    _server: Server<Handler>,
    names: Arc<RwLock<NameTable>>,
}

impl DnsServer {
    /// Bind every address of `settings` (UDP and TCP) and serve `table`.
    pub fn start(settings: &DnsSettings, table: Arc<RwLock<NameTable>>) -> Result<Self, DnsError> {
        let listing = table.read().expect("name table lock").listing();
        let handler = Handler {
            table: table.clone(),
            listing,
            forward: forwarder(&settings.upstreams)?,
        };
        let mut server = Server::new(handler);
        for &ip in &settings.listen {
            let addr = SocketAddr::new(ip, settings.port);
            let udp = bind_udp(addr).map_err(|source| DnsError::Bind {
                addr,
                proto: "UDP",
                source,
            })?;
            let tcp = bind_tcp(addr).map_err(|source| DnsError::Bind {
                addr,
                proto: "TCP",
                source,
            })?;
            server.register_socket(udp);
            server.register_listener(tcp, TCP_TIMEOUT, TCP_RESPONSE_BUFFER);
        }
        Ok(DnsServer {
            _server: server,
            names: table,
        })
    }

    /// The table it answers from.
    pub fn names(&self) -> Arc<RwLock<NameTable>> {
        self.names.clone()
    }
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(socket)
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// A catalog that forwards every name to `upstreams` (none: no catalog).
fn forwarder(upstreams: &[SocketAddr]) -> Result<Option<Catalog>, DnsError> {
    if upstreams.is_empty() {
        return Ok(None);
    }
    let name_servers = upstreams
        .iter()
        .map(|addr| {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
        })
        .collect();
    let mut options = ResolverOpts::default();
    options.timeout = Duration::from_secs(2);
    options.attempts = 2;
    let handler = ForwardZoneHandler::builder_tokio(ForwardConfig {
        name_servers,
        options: Some(options),
    })
    .build()
    .map_err(DnsError::Forwarder)?;
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::from(Name::root()), vec![Arc::new(handler)]);
    Ok(Some(catalog))
}

struct Handler {
    table: Arc<RwLock<NameTable>>,
    listing: tokio::sync::watch::Receiver<bool>,
    forward: Option<Catalog>,
}

/// The records answering `qtype` for `name` from `ips`.
fn records(name: &Name, qtype: RecordType, ips: &[IpAddr]) -> Vec<Record> {
    ips.iter()
        .filter_map(|ip| {
            let rdata = match (ip, qtype) {
                (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(*v4)),
                (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(*v6)),
                _ => return None,
            };
            Some(Record::from_rdata(name.clone(), 0, rdata))
        })
        .collect()
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let Ok(info) = request.request_info() else {
            let msg = builder.error_msg(&request.metadata, ResponseCode::FormErr);
            return sent(response.send_response(msg).await, request);
        };
        let listed = *self.listing.borrow();
        if !listed {
            let mut listing = self.listing.clone();
            let listed = tokio::time::timeout(LISTING_WAIT, listing.wait_for(|l| *l))
                .await
                .is_ok_and(|waited| waited.is_ok());
            if !listed {
                let msg = builder.error_msg(&request.metadata, ResponseCode::ServFail);
                return sent(response.send_response(msg).await, request);
            }
        }
        let query = info.query;
        let text = query.name().to_string();
        let text = text.strip_suffix('.').unwrap_or(&text);
        let answer = self.table.read().expect("name table lock").lookup(text);
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        match answer {
            Answer::Addresses(ips) => {
                let name = Name::from(query.name().clone());
                let answers = records(&name, query.query_type(), &ips);
                let msg = builder.build(metadata, answers.iter(), [], [], []);
                sent(response.send_response(msg).await, request)
            }
            Answer::NoSuchName => {
                metadata.response_code = ResponseCode::NXDomain;
                let msg = builder.build_no_records(metadata);
                sent(response.send_response(msg).await, request)
            }
            Answer::NotOurs => match &self.forward {
                Some(catalog) => catalog.handle_request::<R, T>(request, response).await,
                None => {
                    let msg = builder.error_msg(&request.metadata, ResponseCode::Refused);
                    sent(response.send_response(msg).await, request)
                }
            },
        }
    }
}

/// What sending a response came to, as the server counts it.
fn sent(
    result: Result<ResponseInfo, hickory_server::net::NetError>,
    request: &Request,
) -> ResponseInfo {
    result.unwrap_or_else(|e| {
        log::debug!("DNS: answering {}: {e}", request.src());
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = ResponseCode::ServFail;
        hickory_server::proto::op::Header {
            metadata,
            counts: Default::default(),
        }
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_server::proto::op::{Message, Query};

    /// A query held while the names are unread is answered once they are
    /// in, with what they say (not NXDOMAIN from the empty table).
    #[tokio::test]
    async fn a_query_before_the_first_listing_waits_for_it() {
        // A free port on loopback, for UDP and TCP alike.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let table = Arc::new(RwLock::new(NameTable::new(vec!["10.244.0.0/16"
            .parse()
            .unwrap()])));
        let settings = DnsSettings {
            listen: vec!["127.0.0.1".parse().unwrap()],
            port,
            upstreams: vec![],
        };
        let _server = DnsServer::start(&settings, table.clone()).unwrap();
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut query = Message::query();
        query.add_query(Query::query(
            Name::from_ascii("web.").unwrap(),
            RecordType::A,
        ));
        client
            .send_to(&query.to_vec().unwrap(), ("127.0.0.1", port))
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let early = tokio::time::timeout(Duration::from_millis(300), client.recv(&mut buf)).await;
        assert!(early.is_err(), "answered before the names were read");
        let owner = trellis_ipam::Owner {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            network: "trellis".into(),
            name: "web".into(),
            ..Default::default()
        };
        table
            .write()
            .unwrap()
            .replace([("10.244.1.2".parse().unwrap(), owner)]);
        let n = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf))
            .await
            .expect("the held query is answered once the names are in")
            .unwrap();
        let answer = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        let ips: Vec<String> = answer.answers.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(ips, vec!["10.244.1.2"]);
    }

    #[test]
    fn resolv_conf_nameservers_are_read_and_scoped_ones_dropped() {
        let text = "# generated\nsearch example.org\nnameserver 10.0.0.2\n\
                    nameserver fe80::1%eth0\nnameserver  2001:db8::53 \noptions ndots:2\n";
        assert_eq!(
            resolv_conf_nameservers(text),
            vec![
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "2001:db8::53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn records_of_the_asked_family() {
        let name = Name::from_ascii("web.").unwrap();
        let ips: Vec<IpAddr> = vec!["10.244.1.2".parse().unwrap(), "fd10::2".parse().unwrap()];
        assert_eq!(records(&name, RecordType::A, &ips).len(), 1);
        assert_eq!(records(&name, RecordType::AAAA, &ips).len(), 1);
        assert_eq!(records(&name, RecordType::ANY, &ips).len(), 2);
        assert!(records(&name, RecordType::MX, &ips).is_empty());
        assert_eq!(records(&name, RecordType::A, &ips)[0].ttl, 0);
    }
}
