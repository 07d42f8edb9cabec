//! Names, addresses and the key layout of the registry.
//!
//! Names (namespace, group, service, cluster) are 1 to 512 bytes of ASCII letters, digits
//! and `.` `:` `_` `-` `@`, never containing `@@` (which separates a group from a service
//! in Nacos's `group@@service` form) and never `/` (the key separator). Dubbo's
//! `providers:com.x.Y:1.0` is a valid service name.
//!
//! Keys: `registry/services/{ns}/{group}/{service}` and
//! `registry/instances/{ns}/{group}/{service}/{cluster}/{ip}:{port}`.

use std::fmt;
use std::net::IpAddr;

use crate::error::{RegistryError, RegistryResult};

pub const DEFAULT_NAMESPACE: &str = "public";
pub const DEFAULT_GROUP: &str = "DEFAULT_GROUP";
pub const DEFAULT_CLUSTER: &str = "DEFAULT";
/// Separates a group from a service in Nacos's combined form.
pub const GROUP_SEPARATOR: &str = "@@";
pub const MAX_NAME_BYTES: usize = 512;

/// Everything the registry stores lives under this prefix.
pub const REGISTRY_PREFIX: &str = "registry/";
const SERVICES_PREFIX: &str = "registry/services/";
/// Every instance lives under this prefix.
pub const INSTANCES_PREFIX: &str = "registry/instances/";

/// Checks one name against the documented pattern.
pub fn check_name(field: &'static str, value: &str) -> RegistryResult<()> {
    if value.is_empty() {
        return Err(RegistryError::invalid(field, format!("{field} is empty")));
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(RegistryError::invalid(
            field,
            format!("{field} is {} bytes, limit is {MAX_NAME_BYTES} bytes", value.len()),
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '_' | '-' | '@');
    if let Some(bad) = value.chars().find(|c| !allowed(*c)) {
        return Err(RegistryError::invalid(
            field,
            format!("{field} {value:?} has {bad:?}; names are letters, digits and . : _ - @"),
        ));
    }
    if value.contains(GROUP_SEPARATOR) {
        return Err(RegistryError::invalid(
            field,
            format!("{field} {value:?} contains \"@@\", which separates a group from a service"),
        ));
    }
    Ok(())
}

/// A service: namespace → group → service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceId {
    pub namespace: String,
    pub group: String,
    pub service: String,
}

impl ServiceId {
    /// A checked id; an empty namespace or group means the default one.
    pub fn new(namespace: &str, group: &str, service: &str) -> RegistryResult<ServiceId> {
        let namespace = if namespace.is_empty() { DEFAULT_NAMESPACE } else { namespace };
        let group = if group.is_empty() { DEFAULT_GROUP } else { group };
        check_name("namespace", namespace)?;
        check_name("group", group)?;
        check_name("service", service)?;
        Ok(ServiceId { namespace: namespace.into(), group: group.into(), service: service.into() })
    }

    /// From Nacos's `serviceName`, which may carry `group@@service` (then the group in it
    /// wins over `group`).
    pub fn from_grouped(namespace: &str, group: &str, service_name: &str) -> RegistryResult<ServiceId> {
        match service_name.split_once(GROUP_SEPARATOR) {
            Some((group, service)) => ServiceId::new(namespace, group, service),
            None => ServiceId::new(namespace, group, service_name),
        }
    }

    /// `group@@service`, as Nacos names a service in its answers.
    pub fn grouped_name(&self) -> String {
        format!("{}{GROUP_SEPARATOR}{}", self.group, self.service)
    }

    pub fn service_key(&self) -> Vec<u8> {
        format!("{SERVICES_PREFIX}{}/{}/{}", self.namespace, self.group, self.service).into_bytes()
    }

    pub fn instances_prefix(&self) -> Vec<u8> {
        format!("{INSTANCES_PREFIX}{}/{}/{}/", self.namespace, self.group, self.service).into_bytes()
    }

    pub fn instance_key(&self, addr: &InstanceAddr) -> Vec<u8> {
        let mut key = self.instances_prefix();
        addr.push_key_suffix(&mut key);
        key
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@@{}", self.namespace, self.group, self.service)
    }
}

/// Where an instance is: its cluster, IP and port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceAddr {
    pub cluster: String,
    pub ip: IpAddr,
    pub port: u16,
}

impl InstanceAddr {
    /// A checked address: an IP (v4 or v6), a port from 1 to 65535, a cluster name (empty
    /// means `DEFAULT`).
    pub fn parse(cluster: &str, ip: &str, port: i64) -> RegistryResult<InstanceAddr> {
        let cluster = if cluster.is_empty() { DEFAULT_CLUSTER } else { cluster };
        check_name("cluster", cluster)?;
        let ip: IpAddr =
            ip.trim_start_matches('[').trim_end_matches(']').parse().map_err(|_| {
                RegistryError::invalid("ip", format!("ip {ip:?} is not an IPv4 or IPv6 address"))
            })?;
        if !(1..=65535).contains(&port) {
            return Err(RegistryError::invalid("port", format!("port is {port}, expected 1 to 65535")));
        }
        Ok(InstanceAddr { cluster: cluster.into(), ip, port: port as u16 })
    }

    /// `ip:port` (`[v6]:port` for IPv6).
    pub fn socket(&self) -> String {
        std::net::SocketAddr::new(self.ip, self.port).to_string()
    }

    /// Appends what follows the service's instances prefix in this instance's key
    /// (`{cluster}/{ip:port}`), without allocating.
    pub fn push_key_suffix(&self, key: &mut Vec<u8>) {
        use std::io::Write;
        key.extend_from_slice(self.cluster.as_bytes());
        // Writing to a Vec cannot fail.
        let _ = write!(key, "/{}", std::net::SocketAddr::new(self.ip, self.port));
    }

    /// Parses `ip:port` (or `[v6]:port`).
    pub fn parse_socket(cluster: &str, socket: &str) -> RegistryResult<InstanceAddr> {
        let (ip, port) = socket.rsplit_once(':').ok_or_else(|| {
            RegistryError::invalid("instance", format!("instance {socket:?} is not ip:port"))
        })?;
        let port = port
            .parse::<i64>()
            .map_err(|_| RegistryError::invalid("port", format!("port {port:?} is not a number")))?;
        InstanceAddr::parse(cluster, ip, port)
    }
}

/// What a registry key names.
#[derive(Debug, PartialEq, Eq)]
pub enum RegistryKey {
    Service(ServiceId),
    Instance(ServiceId, InstanceAddr),
}

/// Parses a store key of the registry; `None` for anything else.
pub fn parse_key(key: &[u8]) -> Option<RegistryKey> {
    let key = std::str::from_utf8(key).ok()?;
    if let Some(rest) = key.strip_prefix(SERVICES_PREFIX) {
        let mut parts = rest.split('/');
        let (ns, group, service) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let id = ServiceId { namespace: ns.into(), group: group.into(), service: service.into() };
        return Some(RegistryKey::Service(id));
    }
    let rest = key.strip_prefix(INSTANCES_PREFIX)?;
    let mut parts = rest.split('/');
    let (ns, group, service, cluster, socket) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let addr = InstanceAddr::parse_socket(cluster, socket).ok()?;
    let id = ServiceId { namespace: ns.into(), group: group.into(), service: service.into() };
    Some(RegistryKey::Instance(id, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dubbo_and_grouped_names() {
        let id = ServiceId::from_grouped("", "", "providers:com.x.Y:1.0").unwrap();
        assert_eq!(id.namespace, "public");
        assert_eq!(id.group, "DEFAULT_GROUP");
        let id = ServiceId::from_grouped("dev", "ignored", "g1@@svc.a").unwrap();
        assert_eq!((id.group.as_str(), id.service.as_str()), ("g1", "svc.a"));
        assert_eq!(id.grouped_name(), "g1@@svc.a");
        assert!(ServiceId::new("public", "g", "a/b").is_err());
        assert!(ServiceId::from_grouped("public", "g", "a@@b@@c").is_err());
    }

    #[test]
    fn keys_round_trip() {
        let id = ServiceId::new("public", "g", "providers:com.x.Y:1.0").unwrap();
        for ip in ["10.0.0.1", "::1"] {
            let addr = InstanceAddr::parse("c1", ip, 8080).unwrap();
            let key = id.instance_key(&addr);
            assert_eq!(parse_key(&key), Some(RegistryKey::Instance(id.clone(), addr)));
        }
        assert_eq!(parse_key(&id.service_key()), Some(RegistryKey::Service(id)));
    }

    #[test]
    fn bad_addresses_name_the_field() {
        let field = |r: RegistryResult<InstanceAddr>| match r {
            Err(RegistryError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(InstanceAddr::parse("", "1.2.3", 80)), "ip");
        assert_eq!(field(InstanceAddr::parse("", "1.2.3.4", 0)), "port");
        assert_eq!(field(InstanceAddr::parse("", "1.2.3.4", 65536)), "port");
    }
}
