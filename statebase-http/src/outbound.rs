//! Where the server may send requests of its own (webhook deliveries): by default only to
//! public addresses, so that a tenant cannot make it reach a loopback, link-local, private
//! or cloud-metadata address and read what answered. Names are checked after resolution,
//! at every connection, so one that resolves to 127.0.0.1 (or starts to) is refused too.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The addresses outbound requests may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Targets {
    /// Public addresses only (the default).
    #[default]
    Public,
    /// Any address, private and loopback ones included: for development and tests
    /// (`statebase serve --allow-private-webhooks`).
    Any,
}

/// A request refused because its address is not public.
#[derive(Debug, thiserror::Error)]
#[error("refused: the endpoint's address is not a public one")]
pub struct NotPublic;

impl Targets {
    /// Whether `ip` may be reached.
    pub fn allows(self, ip: IpAddr) -> bool {
        self == Targets::Any || is_public(ip)
    }

    /// Checks the host of `url` now: an address literal against the rule, and a name by
    /// what it resolves to (a name that does not resolve yet is let through: deliveries
    /// check it again).
    pub async fn check_url(self, url: &reqwest::Url) -> Result<(), NotPublic> {
        if self == Targets::Any {
            return Ok(());
        }
        if let Some(ip) = literal_ip(url) {
            return self.check(ip);
        }
        let name = url.host_str().ok_or(NotPublic)?;
        let port = url.port_or_known_default().unwrap_or(80);
        match tokio::net::lookup_host((name, port)).await {
            Ok(mut addrs) => addrs.try_for_each(|a| self.check(a.ip())),
            Err(_) => Ok(()),
        }
    }

    /// Whether `url` may be requested without resolving it: its address literal is
    /// checked here, since literals never reach the checking resolver.
    pub fn check_literal(self, url: &reqwest::Url) -> Result<(), NotPublic> {
        literal_ip(url).map_or(Ok(()), |ip| self.check(ip))
    }

    fn check(self, ip: IpAddr) -> Result<(), NotPublic> {
        if self.allows(ip) {
            Ok(())
        } else {
            Err(NotPublic)
        }
    }
}

/// The address of `url` when its host is written as one (`[…]` for IPv6).
fn literal_ip(url: &reqwest::Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// True for an address on the public internet: not loopback, unspecified, private,
/// shared (CGNAT), link-local, multicast, broadcast, documentation or reserved, in IPv4
/// or IPv6 (IPv4-mapped and -compatible IPv6 addresses are judged as their IPv4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4() {
            Some(v4) if !v6.is_loopback() && !v6.is_unspecified() => is_public_v4(v4),
            _ => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)) // documentation
}

/// A resolver for reqwest that keeps only the addresses `Targets` allows, and fails with
/// [`NotPublic`] when none is left.
#[derive(Debug, Clone, Copy)]
pub struct CheckedResolver(pub Targets);

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let targets = self.0;
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = found.filter(|a| targets.allows(a.ip())).collect();
            if allowed.is_empty() {
                return Err(Box::new(NotPublic) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "2001:db8::1",
        ] {
            let ip: IpAddr = private.parse().unwrap();
            assert!(!is_public(ip), "{private} counted as public");
            assert!(Targets::Any.allows(ip));
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
