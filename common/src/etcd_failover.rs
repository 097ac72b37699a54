//! Going on when one etcd member is away: one connection per endpoint, a
//! deadline per endpoint shorter than the caller's, and the request tried
//! on the next endpoint when one is dead, frozen, cut off from its peers or
//! caught in an election.
//!
//! `etcd-client`'s balanced channel over several endpoints fails a request
//! whenever it picks the one that is down (etcdv3/etcd-client#12, #39) and
//! cannot tell a frozen member from a slow one. So every binary connects
//! through [`EtcdClient`]: a client per endpoint, the one that answered
//! last tried first, and [`EtcdClient::call`] moving on after
//! [`EtcdClient::attempt_timeout`] or an error that says the member could
//! not serve (connection refused or reset, "no leader", "leader changed",
//! "request timed out"); an error that is etcd's answer (permission, bad
//! request, ...) ends the call. A request retried elsewhere may still apply
//! where it was first sent: callers write only guarded transactions, and
//! [`Failed::outcome_unknown`] says when a failed call's write may apply.

use etcd_client::Client;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A write goes to an endpoint only if it answered within this long, or
/// answers a status request first: a write sent to a frozen member sits in
/// its socket and may apply whenever it resumes, long after it was retried
/// elsewhere and its pod deleted.
const FRESH_ANSWER: Duration = Duration::from_secs(1);

/// How long that status request may take: a member that serves answers it
/// in milliseconds, and a frozen one must not take a whole attempt's time
/// (with a leader frozen, the call's budget has to cover the election).
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// A pause before going round the endpoints again (all of them were
/// caught in the same election).
const ROUND_PAUSE: Duration = Duration::from_millis(100);

/// The clients of every endpoint of one etcd cluster. Cheap to clone;
/// clones share which endpoint is in use.
#[derive(Clone)]
pub struct EtcdClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// Every endpoint with its own connection (opened by its first request).
    clients: Vec<(String, Client)>,
    /// When each endpoint last answered this process.
    answered: Vec<Mutex<Option<Instant>>>,
    /// The endpoint tried first: the one that answered last.
    current: AtomicUsize,
    attempt_timeout: Duration,
    /// The user name and password, when etcd is used with authentication.
    credentials: Option<(String, String)>,
    /// Whether each endpoint's client has logged in (or found
    /// authentication off); an endpoint that did not answer at start is
    /// logged in by its first request.
    logged_in: Vec<AtomicBool>,
}

/// The client of one endpoint, as [`EtcdClient::pick`] handed it out.
pub struct Picked {
    pub index: usize,
    pub endpoint: String,
    pub client: Client,
}

/// Why a call failed, after every endpoint it could try.
#[derive(Debug)]
pub struct Failed {
    /// The last attempt's failure.
    pub last: Attempt,
    /// Whether a write of this call may have been applied, or still apply
    /// (an attempt got no answer, or an error that does not say it was
    /// refused).
    pub outcome_unknown: bool,
    /// Every attempt: the endpoint and what it answered.
    pub attempts: Vec<String>,
}

/// How one attempt failed.
#[derive(Debug)]
pub enum Attempt {
    /// No answer within this long.
    Timeout(Duration),
    Etcd(etcd_client::Error),
}

impl Failed {
    /// The attempts in words, e.g. `http://a:2379: connection refused;
    /// http://b:2379: no answer within 1s`.
    pub fn describe(&self) -> String {
        self.attempts.join("; ")
    }

    /// Whether the call gave up for lack of an answer in time (rather than
    /// an error from etcd or the connection).
    pub fn timed_out(&self) -> bool {
        matches!(self.last, Attempt::Timeout(_))
    }
}

impl EtcdClient {
    /// Clients for `endpoints` (already checked), each built by `connect`.
    pub(crate) fn new(
        clients: Vec<(String, Client)>,
        attempt_timeout: Duration,
        credentials: Option<(String, String)>,
    ) -> EtcdClient {
        // Short-lived processes spread over the members from the start.
        let first = if clients.len() > 1 {
            std::process::id() as usize % clients.len()
        } else {
            0
        };
        EtcdClient {
            inner: Arc::new(Inner {
                answered: clients.iter().map(|_| Mutex::new(None)).collect(),
                logged_in: clients.iter().map(|_| AtomicBool::new(false)).collect(),
                clients,
                current: AtomicUsize::new(first),
                attempt_timeout,
                credentials,
            }),
        }
    }

    /// The endpoints, comma separated (for messages).
    pub fn endpoints(&self) -> String {
        let urls: Vec<&str> = self.inner.clients.iter().map(|(u, _)| u.as_str()).collect();
        urls.join(",")
    }

    /// How long one attempt on one endpoint may take.
    pub fn attempt_timeout(&self) -> Duration {
        self.inner.attempt_timeout
    }

    /// The client of the endpoint in use, logged in if it can be within an
    /// attempt's time. A caller that keeps its own connection (a watch, a
    /// keep-alive stream) reports its failure with [`EtcdClient::failed`]
    /// so that the next pick is another endpoint.
    pub async fn pick(&self) -> Picked {
        let picked = self.current();
        let login = tokio::time::timeout(self.inner.attempt_timeout, self.log_in(picked.index));
        match login.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!(
                "etcd at {}: could not log in: {}",
                picked.endpoint,
                crate::etcd_errors::describe(&e)
            ),
            Err(_) => log::debug!("etcd at {}: no answer to the log-in yet", picked.endpoint),
        }
        picked
    }

    fn current(&self) -> Picked {
        let index = self.inner.current.load(Ordering::Relaxed) % self.inner.clients.len();
        let (endpoint, client) = &self.inner.clients[index];
        Picked {
            index,
            endpoint: endpoint.clone(),
            client: client.clone(),
        }
    }

    /// Log the client of endpoint `index` in, once (nothing without
    /// credentials). An etcd with authentication off counts as logged in.
    async fn log_in(&self, index: usize) -> Result<(), etcd_client::Error> {
        let Some(credentials) = &self.inner.credentials else {
            return Ok(());
        };
        if self.inner.logged_in[index].load(Ordering::Acquire) {
            return Ok(());
        }
        // Clones share the token and the credentials: this logs in every
        // clone of the endpoint's client.
        let mut client = self.inner.clients[index].1.clone();
        match client.update_user(Some(credentials.clone())).await {
            Ok(()) => {}
            Err(e) if crate::etcd_errors::auth_not_enabled(&e) => {
                log::info!(
                    "etcd at {} has authentication off: using it without user \"{}\"",
                    self.inner.clients[index].0,
                    credentials.0
                );
            }
            Err(e) => return Err(e),
        }
        self.inner.logged_in[index].store(true, Ordering::Release);
        Ok(())
    }

    /// Log in on every endpoint at once, each within an attempt's time. An
    /// endpoint that does not answer is left for its first request; a
    /// refusal (wrong user or password) is the error.
    pub(crate) async fn log_in_everywhere(&self) -> Result<(), etcd_client::Error> {
        let attempts = (0..self.inner.clients.len())
            .map(|i| tokio::time::timeout(self.inner.attempt_timeout, self.log_in(i)));
        for result in futures::future::join_all(attempts).await {
            match result {
                Ok(Err(e)) if !member_could_not_serve(&e) => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// The endpoint `index` failed: move on to the next one, unless another
    /// caller did already.
    pub fn failed(&self, index: usize) {
        let next = (index + 1) % self.inner.clients.len();
        let _ =
            self.inner
                .current
                .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Run `op` on one endpoint after another until one answers, each
    /// attempt bounded by [`EtcdClient::attempt_timeout`] and all of them by
    /// `deadline`. An error that is etcd's own answer ends the call at
    /// once; so does any failure with a single endpoint.
    pub async fn call<T, F, Fut>(&self, deadline: Instant, op: F) -> Result<T, Failed>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.run(deadline, false, op).await
    }

    /// [`EtcdClient::call`] for a write: each endpoint that has not
    /// answered within [`FRESH_ANSWER`] is first asked for its status (a
    /// frozen or leaderless member fails that, and gets no write).
    pub async fn call_write<T, F, Fut>(&self, deadline: Instant, op: F) -> Result<T, Failed>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.run(deadline, true, op).await
    }

    fn fresh(&self, index: usize) -> bool {
        let last = *self.inner.answered[index]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        last.is_some_and(|t| t.elapsed() < FRESH_ANSWER)
    }

    fn mark_answered(&self, index: usize) {
        *self.inner.answered[index]
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    async fn run<T, F, Fut>(&self, deadline: Instant, write: bool, mut op: F) -> Result<T, Failed>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.inner.clients.len();
        let mut attempts = Vec::new();
        let mut outcome_unknown = false;
        let mut tried = 0usize;
        loop {
            let picked = self.current();
            let left = deadline.saturating_duration_since(Instant::now());
            let budget = self.inner.attempt_timeout.min(left);
            // With one endpoint there is nowhere else to go: no status
            // request, and the first failure is the call's.
            let probe = write && n > 1;
            // Whether the request itself went out (an attempt that timed
            // out before it did sent nothing that may apply).
            let sent = AtomicBool::new(false);
            let attempt = async {
                self.log_in(picked.index).await.map_err(Probe::unsent)?;
                if probe && !self.fresh(picked.index) {
                    let mut probe = picked.client.clone();
                    let wait = STATUS_TIMEOUT.min(budget);
                    match tokio::time::timeout(wait, probe.status()).await {
                        Ok(answer) => answer.map_err(Probe::unsent)?,
                        Err(_) => return Err(Probe::NoStatus(wait)),
                    };
                    self.mark_answered(picked.index);
                }
                sent.store(true, Ordering::Relaxed);
                op(picked.client)
                    .await
                    .map_err(|error| Probe::Failed { error, sent: true })
            };
            let result = tokio::time::timeout(budget, attempt).await;
            tried += 1;
            let last = match result {
                Ok(Ok(v)) => {
                    self.mark_answered(picked.index);
                    return Ok(v);
                }
                Ok(Err(Probe::Failed { error: e, sent })) => {
                    if sent {
                        outcome_unknown |= self::outcome_unknown(&e);
                    }
                    // Unsent: nothing went out but the log-in or the
                    // status request.
                    let before = if sent { "" } else { "before the request: " };
                    attempts.push(format!(
                        "{}: {before}{}",
                        picked.endpoint,
                        crate::etcd_errors::describe(&e)
                    ));
                    if !member_could_not_serve(&e) {
                        // etcd's own answer (a refusal, a wrong password).
                        return Err(Failed {
                            last: Attempt::Etcd(e),
                            outcome_unknown,
                            attempts,
                        });
                    }
                    Attempt::Etcd(e)
                }
                Ok(Err(Probe::NoStatus(wait))) => {
                    // The status request got no answer: the write was not sent.
                    attempts.push(format!(
                        "{}: no answer to a status request within {wait:?}",
                        picked.endpoint
                    ));
                    Attempt::Timeout(wait)
                }
                Err(_) if !sent.load(Ordering::Relaxed) => {
                    // The log-in or the status request got no answer:
                    // the write was not sent.
                    attempts.push(format!(
                        "{}: no answer before the request within {budget:?}",
                        picked.endpoint
                    ));
                    Attempt::Timeout(budget)
                }
                Err(_) => {
                    outcome_unknown = true;
                    attempts.push(format!("{}: no answer within {budget:?}", picked.endpoint));
                    Attempt::Timeout(budget)
                }
            };
            self.failed(picked.index);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || n == 1 {
                return Err(Failed {
                    last,
                    outcome_unknown,
                    attempts,
                });
            }
            if tried.is_multiple_of(n) {
                tokio::time::sleep(ROUND_PAUSE.min(left)).await;
            }
        }
    }
}

/// How an attempt failed: before its request went out (the log-in, the
/// status request of a write) or at the request itself.
enum Probe {
    /// An error, before the request went out (`sent` false: the log-in
    /// or the status request failed) or as its answer.
    Failed {
        error: etcd_client::Error,
        sent: bool,
    },
    /// The status request got no answer within this long.
    NoStatus(Duration),
}

impl Probe {
    fn unsent(error: etcd_client::Error) -> Probe {
        Probe::Failed { error, sent: false }
    }
}

/// Whether `e` says the member could not serve the request (it is down,
/// unreachable, without a leader, in an election, stopped mid-request), so
/// that another member may: everything but etcd's own refusals.
pub fn member_could_not_serve(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::Unknown
                | Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::Internal
        ),
        etcd_client::Error::IoError(_) | etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::LeaseKeepAliveError(_) | etcd_client::Error::WatchError(_) => true,
        _ => false,
    }
}

/// Whether a request that failed with `e` may have reached etcd and been (or
/// still be) applied. Only errors that say the request was refused, or never
/// sent, are "no": etcd's own refusals (bad request, permission, too many
/// requests, ...) and a connection that could not be opened. A dropped
/// connection, a cancelled call, "request timed out" or "leader changed"
/// (`Unavailable`) leave it open.
pub fn outcome_unknown(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(status) => match status.code() {
            Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::ResourceExhausted
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::Unauthenticated => false,
            Code::Ok
            | Code::Cancelled
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss => !never_connected(status) && !no_leader(status),
        },
        etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// A status whose cause is a refused connection: the request never left.
fn never_connected(status: &tonic::Status) -> bool {
    let mut cur = std::error::Error::source(status);
    while let Some(cause) = cur {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cur = cause.source();
    }
    false
}

/// "etcdserver: no leader": a member refusing the request before it
/// proposed anything (the require-leader check).
fn no_leader(status: &tonic::Status) -> bool {
    status.message() == "etcdserver: no leader"
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    fn status(code: Code, msg: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(Status::new(code, msg))
    }

    #[test]
    fn dropped_or_timed_out_requests_may_have_applied() {
        for e in [
            status(Code::Unavailable, "etcdserver: request timed out"),
            status(Code::Unavailable, "etcdserver: leader changed"),
            status(Code::Unknown, "h2 protocol error: connection reset"),
            status(Code::Cancelled, "operation was canceled"),
            status(Code::Internal, "stream closed"),
            etcd_client::Error::IoError(std::io::ErrorKind::BrokenPipe.into()),
        ] {
            assert!(outcome_unknown(&e), "{e:?}");
            assert!(member_could_not_serve(&e), "{e:?}");
        }
    }

    #[test]
    fn refused_or_unsent_requests_did_not_apply() {
        for e in [
            status(Code::ResourceExhausted, "etcdserver: too many requests"),
            status(Code::InvalidArgument, "etcdserver: request is too large"),
            status(Code::PermissionDenied, "etcdserver: permission denied"),
            status(Code::FailedPrecondition, "etcdserver: not capable"),
            etcd_client::Error::InvalidArgs("no endpoints".into()),
        ] {
            assert!(!outcome_unknown(&e), "{e:?}");
            assert!(!member_could_not_serve(&e), "{e:?}");
        }
        // Unavailable because the connection could not be opened at all,
        // or because the member has no leader: another member may serve.
        let mut refused = Status::new(Code::Unavailable, "tcp connect error");
        refused.set_source(Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        let refused = etcd_client::Error::GRpcStatus(refused);
        assert!(!outcome_unknown(&refused));
        assert!(member_could_not_serve(&refused));
        let no_leader = status(Code::Unavailable, "etcdserver: no leader");
        assert!(!outcome_unknown(&no_leader));
        assert!(member_could_not_serve(&no_leader));
    }

    fn client_of(urls: &[&str]) -> EtcdClient {
        client_with(urls, Duration::from_millis(50))
    }

    fn client_with(urls: &[&str], attempt: Duration) -> EtcdClient {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let clients = urls
            .iter()
            .map(|u| {
                let c = rt.block_on(Client::connect([*u], None)).unwrap();
                (u.to_string(), c)
            })
            .collect();
        EtcdClient::new(clients, attempt, None)
    }

    /// A member that accepts connections on loopback and never answers:
    /// frozen.
    fn frozen_member() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let held: Vec<_> = listener.incoming().collect();
            drop(held);
        });
        format!("http://{addr}")
    }

    #[test]
    fn a_write_is_not_sent_to_members_whose_status_fails_or_goes_unanswered() {
        let (a, b) = (frozen_member(), frozen_member());
        let c = client_with(&[&a, &b], Duration::from_millis(200));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut sent = 0;
        let failed = rt
            .block_on(
                c.call_write(Instant::now() + Duration::from_millis(500), |_| {
                    sent += 1;
                    async { Ok::<(), etcd_client::Error>(()) }
                }),
            )
            .unwrap_err();
        assert_eq!(sent, 0);
        assert!(!failed.outcome_unknown, "{}", failed.describe());
        let said = failed.describe();
        assert!(
            said.contains("status request") || said.contains("before the request"),
            "{said}"
        );
        assert!(failed.attempts.len() >= 2, "{}", failed.describe());
    }

    #[test]
    fn a_write_sent_and_unanswered_may_apply_however_long_the_attempt() {
        // An attempt longer than FRESH_ANSWER: the member was fresh when
        // the write went out, stale by the time it timed out.
        let (a, b) = (frozen_member(), frozen_member());
        let c = client_with(&[&a, &b], FRESH_ANSWER + Duration::from_millis(200));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // A read that answered makes the current member fresh.
        rt.block_on(c.call(Instant::now() + Duration::from_secs(1), |_| async {
            Ok::<(), etcd_client::Error>(())
        }))
        .unwrap();
        let failed = rt
            .block_on(c.call_write(
                Instant::now() + FRESH_ANSWER + Duration::from_millis(200),
                |_| std::future::pending::<Result<(), etcd_client::Error>>(),
            ))
            .unwrap_err();
        assert!(failed.outcome_unknown, "{}", failed.describe());
        assert!(failed.timed_out());
    }

    #[test]
    fn a_failed_endpoint_hands_over_to_the_next_once() {
        let c = client_of(&["http://192.0.2.1:2379", "http://192.0.2.2:2379"]);
        let first = c.current().index;
        c.failed(first);
        let second = c.current().index;
        assert_ne!(first, second);
        // A late report of the same failure does not skip the new one.
        c.failed(first);
        assert_eq!(c.current().index, second);
    }

    #[test]
    fn call_goes_round_the_endpoints_until_the_deadline() {
        let c = client_of(&["http://192.0.2.1:2379", "http://192.0.2.2:2379"]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(400);
        let failed = rt
            .block_on(c.call(deadline, |_| {
                seen.push(());
                async { Err::<(), _>(status(Code::Unavailable, "etcdserver: leader changed")) }
            }))
            .unwrap_err();
        assert!(seen.len() >= 2, "tried {} times", seen.len());
        assert!(failed.outcome_unknown);
        assert!(failed.describe().contains("leader changed"));
        // etcd's own refusal is final.
        let mut tries = 0;
        let failed = rt
            .block_on(c.call(Instant::now() + Duration::from_secs(5), |_| {
                tries += 1;
                async { Err::<(), _>(status(Code::PermissionDenied, "denied")) }
            }))
            .unwrap_err();
        assert_eq!(tries, 1);
        assert!(!failed.outcome_unknown);
        // No answer: the attempt's own timeout, then the next endpoint.
        let mut tries = 0;
        let failed = rt
            .block_on(c.call(Instant::now() + Duration::from_millis(120), |_| {
                tries += 1;
                std::future::pending::<Result<(), etcd_client::Error>>()
            }))
            .unwrap_err();
        assert!(tries >= 2);
        assert!(failed.timed_out() && failed.outcome_unknown);
    }
}
