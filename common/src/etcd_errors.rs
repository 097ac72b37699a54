//! etcd client errors as one line a user can act on (tonic hides the
//! useful part, a TLS handshake failure say, levels down).

/// An etcd client error in words: for a gRPC status its message and the
/// transport causes under it ("tcp connect error: Connection refused"),
/// without the debug dump tonic's own Display gives.
pub fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let mut parts: Vec<String> = Vec::new();
            if !status.message().is_empty() {
                parts.push(status.message().to_string());
            }
            let mut cur = std::error::Error::source(status);
            while let Some(s) = cur {
                let text = s.to_string();
                if text != "transport error" && !parts.iter().any(|p| p.contains(&text)) {
                    parts.push(text);
                }
                cur = s.source();
            }
            if parts.is_empty() {
                format!("{:?}", status.code())
            } else {
                parts.join(": ")
            }
        }
        other => chain(other),
    }
}

/// An error and all its causes on one line (tonic hides the useful part,
/// e.g. a TLS handshake failure, two levels down).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}

/// etcd's answer to an authentication when it has authentication off.
pub fn auth_not_enabled(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("authentication is not enabled"))
}
