//! etcd refused a request of the store for want of access (its user's
//! role lacks a key, no user on an etcd with authentication on, a password
//! no longer accepted): which key, in words an operator can act on.
//!
//! etcd refuses a whole transaction when its user may not touch one of its
//! keys, without saying which. The store then asks about each key it meant
//! to write with a transaction that can never apply (its condition,
//! version -1, never holds) yet is checked for the same permissions: read
//! for the condition, write for the put.

use crate::error::IpamError;
use etcd_client::{Compare, CompareOp, KvClient, Txn, TxnOp};
use std::time::Duration;
use trellis_common::etcd::{describe, Denial, EtcdClient, SettingsSource};

/// The keys a refused request touched.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Touched<'a> {
    /// A read of this key (or of the keys under it).
    Read(&'a str),
    /// A transaction writing these keys.
    Write(&'a [&'a str]),
}

/// Who the store is to etcd, to name in its errors.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) endpoints: String,
    pub(crate) user: Option<String>,
    /// The settings that give the user, as the user wrote them.
    pub(crate) credentials_setting: &'static str,
}

impl Identity {
    /// The client's, without a user (the agent's store names none).
    pub(crate) fn of(client: &EtcdClient) -> Identity {
        Identity {
            endpoints: client.endpoints(),
            user: None,
            credentials_setting: SettingsSource::Flags.credentials(),
        }
    }

    /// The error for `e`, a refusal for want of access of a request that
    /// touched `touched` while `doing`; `kv` asks etcd which key it was,
    /// each question within `budget`.
    pub(crate) async fn access_denied(
        &self,
        kv: &KvClient,
        budget: Duration,
        doing: &str,
        e: &etcd_client::Error,
        touched: Touched<'_>,
    ) -> IpamError {
        let who = match &self.user {
            Some(user) => format!("user \"{user}\""),
            None => "a request without a user".to_string(),
        };
        let detail = match Denial::of(e) {
            Some(Denial::Permission) => {
                let what = match touched {
                    Touched::Read(key) => format!("to read {key}"),
                    Touched::Write(keys) => {
                        let mut denied = Vec::new();
                        for key in keys {
                            if !may_write(kv, budget, key).await {
                                denied.push(*key);
                            }
                        }
                        if denied.is_empty() {
                            format!("to write one of {}", keys.join(", "))
                        } else {
                            format!("to read and write {}", denied.join(" and "))
                        }
                    }
                };
                format!(
                    "permission denied {what}: its etcd role must grant that key (README, \"etcd permissions\")"
                )
            }
            Some(Denial::NoCredentials) => format!(
                "{}: etcd has authentication on; set {}",
                describe(e),
                self.credentials_setting
            ),
            Some(Denial::BadCredentials) | None => {
                format!("{} (check {})", describe(e), self.credentials_setting)
            }
        };
        IpamError::AccessDenied(format!(
            "etcd ({}) refused {who} while {doing}: {detail}",
            self.endpoints
        ))
    }
}

/// Whether etcd lets the user of `kv` read and write `key`, asked with a
/// transaction that never applies. `true` when the question itself fails
/// otherwise (the key is then not the one to blame).
async fn may_write(kv: &KvClient, budget: Duration, key: &str) -> bool {
    let probe = Txn::new()
        .when([Compare::version(key, CompareOp::Equal, -1)])
        .and_then([TxnOp::put(key, "", None)]);
    let mut kv = kv.clone();
    match tokio::time::timeout(budget, kv.txn(probe)).await {
        Ok(Err(e)) => Denial::of(&e) != Some(Denial::Permission),
        _ => true,
    }
}
