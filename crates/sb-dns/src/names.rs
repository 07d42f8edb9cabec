//! DNS names of the registry and their reversible encoding.
//!
//! - `{service}.{group}.{namespace}.svc.switchboard.` and `{service}.svc.switchboard.`
//!   (`DEFAULT_GROUP` in `public`). Plain labels match names case-insensitively; `_` is
//!   allowed, so `orders.DEFAULT_GROUP.public.svc.switchboard.` works as is.
//! - A name that no label can carry (`:`, `.`, `@`, over 63 bytes, or one of two names
//!   differing only in case) is written as one or more labels holding the RFC 4648 base32 of
//!   its bytes (lowercase, no padding): every label but the last starts with `b32c-`, the
//!   last with `b32-` (see [`encode_name`]). The encoded
//!   form matches exactly (case included). A plain label that starts with `b32-` or `b32c-` is
//!   always read as an encoding.
//! - `{ip}.addr.switchboard.`: an instance's address, the target of its SRV records, with
//!   the IP's `.` or `:` written as `-` (`10-0-0-5`, `fd00--5`).

use std::net::IpAddr;

use data_encoding::BASE32_NOPAD;

pub const ZONE: &str = "switchboard";
const LAST: &str = "b32-";
const CONTINUED: &str = "b32c-";
/// Base32 characters per label, leaving room for the prefix within 63 bytes.
const CHUNK: usize = 56;

/// One name (namespace, group or service) as a query spells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Component {
    /// A plain label, lowercased: matches a name case-insensitively.
    Plain(String),
    /// Decoded from base32 labels: matches exactly.
    Exact(String),
}

impl Component {
    pub fn lower(&self) -> String {
        match self {
            Component::Plain(s) => s.clone(),
            Component::Exact(s) => s.to_ascii_lowercase(),
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            Component::Plain(s) => name.eq_ignore_ascii_case(s),
            Component::Exact(s) => name == s,
        }
    }
}

/// What a query name asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Service {
        namespace: Component,
        group: Component,
        service: Component,
    },
    Addr(IpAddr),
    /// Under `switchboard.` but naming nothing.
    Unknown,
    /// Outside `switchboard.`: refused.
    Foreign,
}

/// The labels a name is spelled with: one plain label if the name can be one, else its
/// base32 encoding.
pub fn encode_name(name: &str) -> String {
    let plain = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !name.to_ascii_lowercase().starts_with(LAST)
        && !name.to_ascii_lowercase().starts_with(CONTINUED);
    if plain {
        return name.to_owned();
    }
    let encoded = BASE32_NOPAD.encode(name.as_bytes()).to_ascii_lowercase();
    let chunks: Vec<&str> =
        encoded.as_bytes().chunks(CHUNK).map(|c| std::str::from_utf8(c).unwrap_or("")).collect();
    let last = chunks.len() - 1;
    chunks
        .iter()
        .enumerate()
        .map(|(n, chunk)| format!("{}{chunk}", if n == last { LAST } else { CONTINUED }))
        .collect::<Vec<_>>()
        .join(".")
}

/// `{service}.{group}.{namespace}.svc.switchboard.` with each part encoded as needed.
pub fn service_name(namespace: &str, group: &str, service: &str) -> String {
    format!("{}.{}.{}.svc.{ZONE}.", encode_name(service), encode_name(group), encode_name(namespace))
}

/// The name an instance's address answers to.
pub fn addr_name(ip: IpAddr) -> String {
    format!("{}.addr.{ZONE}.", ip.to_string().replace(['.', ':'], "-"))
}

fn parse_addr(label: &str) -> Option<IpAddr> {
    let v4 = label.replace('-', ".");
    if let Ok(ip @ IpAddr::V4(_)) = v4.parse() {
        return Some(ip);
    }
    match label.replace('-', ":").parse() {
        Ok(ip @ IpAddr::V6(_)) => Some(ip),
        _ => None,
    }
}

/// Groups labels (left to right) into components; `None` if an encoding is broken.
fn components(labels: &[String]) -> Option<Vec<Component>> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for label in labels {
        if let Some(chunk) = label.strip_prefix(CONTINUED) {
            pending.push_str(chunk);
        } else if let Some(chunk) = label.strip_prefix(LAST) {
            pending.push_str(chunk);
            let bytes = BASE32_NOPAD.decode(pending.to_ascii_uppercase().as_bytes()).ok()?;
            out.push(Component::Exact(String::from_utf8(bytes).ok()?));
            pending.clear();
        } else if pending.is_empty() {
            out.push(Component::Plain(label.clone()));
        } else {
            return None;
        }
    }
    pending.is_empty().then_some(out)
}

/// Reads a query name, given as its labels (left to right, without the root).
pub fn parse(labels: &[String]) -> Target {
    let labels: Vec<String> = labels.iter().map(|l| l.to_ascii_lowercase()).collect();
    let Some((zone, rest)) = labels.split_last() else { return Target::Foreign };
    if zone != ZONE {
        return Target::Foreign;
    }
    match rest.split_last() {
        Some((kind, [ip])) if kind == "addr" => parse_addr(ip).map_or(Target::Unknown, Target::Addr),
        Some((kind, rest)) if kind == "svc" => match components(rest).as_deref() {
            Some([service]) => Target::Service {
                namespace: Component::Exact(sb_registry::DEFAULT_NAMESPACE.into()),
                group: Component::Exact(sb_registry::DEFAULT_GROUP.into()),
                service: service.clone(),
            },
            Some([service, group, namespace]) => Target::Service {
                namespace: namespace.clone(),
                group: group.clone(),
                service: service.clone(),
            },
            _ => Target::Unknown,
        },
        _ => Target::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(name: &str) -> Vec<String> {
        name.trim_end_matches('.').split('.').map(str::to_owned).collect()
    }

    #[test]
    fn names_round_trip_through_the_encoding() {
        let long = "s".repeat(200);
        for name in ["orders", "providers:com.x.Y:1.0", "a@b", long.as_str(), "b32-x", "Orders"] {
            let dns = service_name("public", "DEFAULT_GROUP", name);
            match parse(&labels(&dns)) {
                Target::Service { service, group, .. } => {
                    assert!(service.matches(name), "{name} → {dns} → {service:?}");
                    assert!(group.matches("DEFAULT_GROUP"));
                }
                other => panic!("{dns}: {other:?}"),
            }
            assert!(dns.split('.').all(|l| l.len() <= 63), "{dns}");
        }
        // Encoded names match case exactly; plain ones do not.
        let Target::Service { service, .. } = parse(&labels(&service_name("p", "g", "a.B"))) else {
            panic!()
        };
        assert!(service.matches("a.B") && !service.matches("a.b"));
        assert!(Component::Plain("orders".into()).matches("ORDERS"));
    }

    #[test]
    fn short_forms_addresses_and_strangers() {
        match parse(&labels("Orders.svc.SWITCHBOARD.")) {
            Target::Service { namespace, group, service } => {
                assert!(
                    namespace.matches("public")
                        && group.matches("DEFAULT_GROUP")
                        && service.matches("orders")
                );
            }
            other => panic!("{other:?}"),
        }
        for ip in ["10.0.0.5", "fd00::5", "::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(parse(&labels(&addr_name(ip))), Target::Addr(ip));
        }
        assert_eq!(parse(&labels("x.example.com")), Target::Foreign);
        assert_eq!(parse(&labels("a.b.svc.switchboard")), Target::Unknown);
        assert_eq!(parse(&labels("b32c-aa.svc.switchboard")), Target::Unknown);
        assert_eq!(parse(&labels("nope.addr.switchboard")), Target::Unknown);
    }
}
