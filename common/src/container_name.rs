//! Container names, as the agents' DNS answers them: where a name comes
//! from (`K8S_POD_NAME` in `CNI_ARGS`, which podman sets to the container
//! name and the dnsname plugin reads too), which names DNS can carry, and
//! the one spelling names are compared in (DNS is case-insensitive).

use crate::cni::env::CniEnv;

/// The `CNI_ARGS` key that names the container.
pub const NAME_ARG: &str = "K8S_POD_NAME";

/// The longest name DNS carries (RFC 1035: 253 characters in text form).
const MAX_NAME: usize = 253;
/// The longest label.
const MAX_LABEL: usize = 63;

/// The name of the container of `env`, in the spelling names are compared
/// in; `None` when it has none or one DNS cannot carry (the address then
/// resolves by no name).
pub fn of_env(env: &CniEnv) -> Option<String> {
    env.arg(NAME_ARG).and_then(normalized)
}

/// `name` lowercased, if DNS can carry it: labels of letters, digits, `-`
/// and `_` (podman allows `_` in container names, and resolvers pass it),
/// 1 to 63 characters each, 253 in all. A trailing dot is dropped.
pub fn normalized(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let fits = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    fits.then(|| name.to_ascii_lowercase())
}

/// The DNS domain of the CNI network `network` (the conflist's `name`):
/// the agents answer `NAME.<domain>`, and the plugin's result gives it as
/// the container's search domain.
pub fn domain_of(network: &str) -> String {
    network.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercased_and_only_dns_shaped_ones_kept() {
        assert_eq!(normalized("Web-1").as_deref(), Some("web-1"));
        assert_eq!(normalized("my_db").as_deref(), Some("my_db"));
        assert_eq!(normalized("a.b.").as_deref(), Some("a.b"));
        for bad in ["", ".", "a..b", "sp ace", "ünï", "x/y", &"l".repeat(64)] {
            assert_eq!(normalized(bad), None, "{bad:?}");
        }
        let long = vec!["a".repeat(63); 4].join(".");
        assert_eq!(long.len(), 255);
        assert_eq!(normalized(&long), None);
    }
}
