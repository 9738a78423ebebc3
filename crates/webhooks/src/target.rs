//! Where a webhook may go: `https://` or `http://` URLs whose host resolves
//! only to public addresses. The check runs at creation and again on the
//! addresses each attempt connects to (we connect to exactly the addresses we
//! checked, never re-resolve), so a name that later resolves to a private
//! address (DNS rebinding) is refused at connect time. The operator may allow
//! private targets (`[webhooks] allow_private`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Longest accepted target URL.
pub const MAX_URL_BYTES: usize = 2048;
/// How long resolving a target's host may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether private targets are allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    /// Allow loopback, private, link-local, CGNAT, … targets (tests, closed networks).
    pub allow_private: bool,
}

/// Why a target is refused. The texts say what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not a URL we accept.
    #[error("url: {0}")]
    Url(String),
    /// The host resolves to an address in a range we do not call.
    #[error(
        "url: {host} resolves to {ip}, a loopback, private, link-local, shared (CGNAT), multicast, reserved or unspecified address; webhooks go to public addresses only (an operator can allow private ones with [webhooks] allow_private)"
    )]
    Forbidden {
        /// The URL's host.
        host: String,
        /// The refused address.
        ip: IpAddr,
    },
    /// The host does not resolve.
    #[error("url: cannot resolve {host}: {reason}")]
    Resolve {
        /// The URL's host.
        host: String,
        /// Why.
        reason: String,
    },
}

/// A checked target URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as given (normalized by the parser).
    pub url: String,
    /// `https`?
    pub https: bool,
    /// The host (a name, or an IP literal without brackets).
    pub host: String,
    /// The port (default 443/80).
    pub port: u16,
    /// Path and query, as sent in the request line.
    pub path_and_query: String,
    /// The `Host` header value.
    pub authority: String,
}

impl Target {
    /// Parses and checks the form of `url`: `https://` or `http://`, a host, no
    /// user name or password, no fragment, at most [`MAX_URL_BYTES`].
    pub fn parse(url: &str) -> Result<Self, TargetError> {
        if url.len() > MAX_URL_BYTES {
            return Err(TargetError::Url(format!("longer than {MAX_URL_BYTES} bytes")));
        }
        let parsed = url::Url::parse(url).map_err(|e| TargetError::Url(format!("{e} (give an absolute https:// URL)")))?;
        let https = match parsed.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(TargetError::Url(format!("scheme {other}: only https:// and http:// are delivered to"))),
        };
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(TargetError::Url("a user name or password in the URL is not allowed; authenticate with the signature".to_owned()));
        }
        if parsed.fragment().is_some() {
            return Err(TargetError::Url("a fragment (#…) is not allowed".to_owned()));
        }
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(TargetError::Url("no host".to_owned())),
        };
        let port = parsed.port_or_known_default().unwrap_or(if https { 443 } else { 80 });
        let mut path_and_query = parsed.path().to_owned();
        if let Some(q) = parsed.query() {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }
        let authority = match parsed.port() {
            Some(p) => format!("{}:{p}", parsed.host_str().unwrap_or(&host)),
            None => parsed.host_str().unwrap_or(&host).to_owned(),
        };
        Ok(Self { url: parsed.to_string(), https, host, port, path_and_query, authority })
    }

    /// The addresses to connect to, every one checked against `policy`: an IP
    /// literal is itself; a name is resolved (within [`RESOLVE_TIMEOUT`]) and
    /// refused if ANY of its addresses is forbidden.
    pub async fn resolve(&self, policy: TargetPolicy) -> Result<Vec<SocketAddr>, TargetError> {
        let addrs: Vec<SocketAddr> = match self.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, self.port)],
            Err(_) => {
                let lookup = tokio::net::lookup_host((self.host.as_str(), self.port));
                match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                    Ok(Ok(found)) => found.collect(),
                    Ok(Err(e)) => return Err(TargetError::Resolve { host: self.host.clone(), reason: e.to_string() }),
                    Err(_) => return Err(TargetError::Resolve { host: self.host.clone(), reason: "timed out".to_owned() }),
                }
            }
        };
        if addrs.is_empty() {
            return Err(TargetError::Resolve { host: self.host.clone(), reason: "no address".to_owned() });
        }
        if !policy.allow_private
            && let Some(bad) = addrs.iter().find(|a| is_forbidden(a.ip()))
        {
            return Err(TargetError::Forbidden { host: self.host.clone(), ip: bad.ip() });
        }
        Ok(addrs)
    }
}

/// Whether `ip` is in a range webhooks never call unless allowed: unspecified,
/// loopback, private (RFC 1918, IPv6 ULA), link-local, shared address space
/// (CGNAT, RFC 6598), multicast, broadcast, documentation, benchmarking,
/// reserved, the IETF protocol block, and IPv6 forms that embed an IPv4
/// address (v4-mapped, v4-compatible, NAT64, 6to4) when that address is.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_forbidden(v4),
        IpAddr::V6(v6) => v6_forbidden(v6),
    }
}

fn v4_forbidden(ip: Ipv4Addr) -> bool {
    let n = u32::from(ip);
    const RANGES: [(u32, u32); 15] = [
        (0x0000_0000, 8),  // 0.0.0.0/8 "this network", unspecified
        (0x0A00_0000, 8),  // 10/8
        (0x6440_0000, 10), // 100.64/10 shared (CGNAT)
        (0x7F00_0000, 8),  // 127/8 loopback
        (0xA9FE_0000, 16), // 169.254/16 link-local
        (0xAC10_0000, 12), // 172.16/12
        (0xC000_0000, 24), // 192.0.0/24 IETF protocol assignments
        (0xC000_0200, 24), // 192.0.2/24 documentation
        (0xC058_6300, 24), // 192.88.99/24 6to4 relay anycast
        (0xC0A8_0000, 16), // 192.168/16
        (0xC612_0000, 15), // 198.18/15 benchmarking
        (0xC633_6400, 24), // 198.51.100/24 documentation
        (0xCB00_7100, 24), // 203.0.113/24 documentation
        (0xE000_0000, 4),  // 224/4 multicast
        (0xF000_0000, 4),  // 240/4 reserved, 255.255.255.255 broadcast
    ];
    RANGES.iter().any(|&(base, len)| n >> (32 - len) == base >> (32 - len))
}

fn v6_forbidden(ip: Ipv6Addr) -> bool {
    let n = u128::from(ip);
    let within = |base: u128, len: u32| n >> (128 - len) == base >> (128 - len);
    let embedded = Ipv4Addr::from(u32::try_from(n & 0xFFFF_FFFF).unwrap_or(0));
    if within(0xFFFF_0000_0000, 96)              // ::ffff:0:0/96 v4-mapped
        || within(0, 96)                          // ::/96 v4-compatible (and :: , ::1)
        || within(0x0064_FF9B << 96, 96)          // 64:ff9b::/96 NAT64
        || within(0x0064_FF9B_0001 << 80, 48)
    // 64:ff9b:1::/48 local NAT64
    {
        return n <= 1 || v4_forbidden(embedded);
    }
    if within(0x2002 << 112, 16) {
        // 6to4: the IPv4 address is bits 16..48.
        let v4 = Ipv4Addr::from(u32::try_from((n >> 80) & 0xFFFF_FFFF).unwrap_or(0));
        return v4_forbidden(v4);
    }
    within(0xFC00 << 112, 7)                      // fc00::/7 unique local
        || within(0xFE80 << 112, 10)              // fe80::/10 link-local
        || within(0xFEC0 << 112, 10)              // fec0::/10 site-local (deprecated)
        || within(0xFF00 << 112, 8)               // ff00::/8 multicast
        || within(0x2001_0DB8 << 96, 32)          // 2001:db8::/32 documentation
        || within(0x3FFF << 112, 20)              // 3fff::/20 documentation
        || within(0x0100 << 112, 64)              // 100::/64 discard
        || within(0x2001 << 112, 23)              // 2001::/23 IETF protocol assignments (Teredo, ORCHID, …)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    /// The forbidden IPv4 ranges written as CIDR text: an independent statement of the rule.
    const V4_CIDRS: [&str; 15] = [
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
        "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
        "224.0.0.0/4", "240.0.0.0/4",
    ];

    fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
        let (base, len) = cidr.split_once('/').unwrap();
        let (base, len): (Ipv4Addr, u32) = (base.parse().unwrap(), len.parse().unwrap());
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        u32::from(ip) & mask == u32::from(base) & mask
    }

    fn cidr_strategy() -> impl Strategy<Value = Ipv4Addr> {
        (0..V4_CIDRS.len(), any::<u32>()).prop_map(|(i, r)| {
            let (base, len) = V4_CIDRS[i].split_once('/').unwrap();
            let (base, len): (Ipv4Addr, u32) = (base.parse().unwrap(), len.parse().unwrap());
            let host_bits = if len == 32 { 0 } else { r & (u32::MAX >> len) };
            Ipv4Addr::from(u32::from(base) | host_bits)
        })
    }

    proptest! {
        #[test]
        fn every_address_in_a_forbidden_v4_range_is_refused_also_v4_mapped_and_6to4(ip in cidr_strategy()) {
            prop_assert!(is_forbidden(IpAddr::V4(ip)));
            prop_assert!(is_forbidden(IpAddr::V6(ip.to_ipv6_mapped())));
            prop_assert!(is_forbidden(IpAddr::V6(ip.to_ipv6_compatible())));
            let nat64 = Ipv6Addr::from((0x0064_FF9Bu128 << 96) | u128::from(u32::from(ip)));
            prop_assert!(is_forbidden(IpAddr::V6(nat64)));
            let six_to_four = Ipv6Addr::from((0x2002u128 << 112) | (u128::from(u32::from(ip)) << 80) | 1);
            prop_assert!(is_forbidden(IpAddr::V6(six_to_four)));
        }

        #[test]
        fn an_ipv4_address_is_refused_exactly_when_a_listed_range_holds_it(n in any::<u32>()) {
            let ip = Ipv4Addr::from(n);
            let listed = V4_CIDRS.iter().any(|c| in_cidr(ip, c));
            prop_assert_eq!(is_forbidden(IpAddr::V4(ip)), listed);
            prop_assert_eq!(is_forbidden(IpAddr::V6(ip.to_ipv6_mapped())), listed);
        }

        #[test]
        fn forbidden_v6_ranges_are_refused_whatever_the_host_bits(
            (prefix, len) in prop::sample::select(vec![
                (0xFC00u128 << 112, 7u32), (0xFE80 << 112, 10), (0xFF00 << 112, 8), (0x2001_0DB8 << 96, 32),
                (0xFEC0 << 112, 10), (0x0100 << 112, 64),
            ]),
            bits in any::<u128>(),
        ) {
            let ip = Ipv6Addr::from(prefix | (bits & (u128::MAX >> len)));
            prop_assert!(is_forbidden(IpAddr::V6(ip)));
        }

        #[test]
        fn global_unicast_v6_outside_the_listed_ranges_is_allowed(bits in any::<u128>()) {
            // 2400::/6 .. : inside 2000::/3, away from 2001::/23, 2001:db8::/32 and 2002::/16.
            let ip = Ipv6Addr::from((0x2400u128 << 112) | (bits & (u128::MAX >> 8)));
            prop_assert!(!is_forbidden(IpAddr::V6(ip)));
        }
    }

    #[test]
    fn named_cases() {
        for bad in [
            "127.0.0.1", "0.0.0.0", "10.1.2.3", "172.31.255.255", "192.168.1.1", "169.254.169.254", "100.100.100.100",
            "224.0.0.1", "255.255.255.255", "::", "::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "fd00::1",
            "fe80::1", "ff02::1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::1", "2001:db8::1",
        ] {
            assert!(is_forbidden(bad.parse().unwrap()), "{bad}");
        }
        for good in ["1.1.1.1", "8.8.8.8", "93.184.216.34", "172.32.0.1", "100.128.0.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"] {
            assert!(!is_forbidden(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn urls_are_https_or_http_with_a_host_and_nothing_secret_in_them() {
        let t = Target::parse("https://hooks.example.com/in?x=1").unwrap();
        assert_eq!((t.https, t.host.as_str(), t.port, t.path_and_query.as_str()), (true, "hooks.example.com", 443, "/in?x=1"));
        let t = Target::parse("http://[::1]:8080/h").unwrap();
        assert_eq!((t.https, t.host.as_str(), t.port, t.authority.as_str()), (false, "::1", 8080, "[::1]:8080"));
        for bad in ["ftp://x.example/", "https://user:pw@x.example/", "https://x.example/#f", "/relative", "file:///etc/passwd"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert!(Target::parse(&format!("https://x.example/{}", "a".repeat(MAX_URL_BYTES))).is_err());
    }

    #[tokio::test]
    async fn loopback_and_private_literals_are_refused_unless_allowed() {
        let strict = TargetPolicy::default();
        let open = TargetPolicy { allow_private: true };
        for url in ["http://127.0.0.1:9/", "http://[::1]/", "http://[::ffff:10.0.0.1]/", "http://169.254.169.254/latest"] {
            let t = Target::parse(url).unwrap();
            assert!(matches!(t.resolve(strict).await, Err(TargetError::Forbidden { .. })), "{url}");
            assert!(t.resolve(open).await.is_ok(), "{url}");
        }
        // A name that resolves to loopback is refused on its addresses, not its text.
        let t = Target::parse("http://localhost:9/").unwrap();
        assert!(matches!(t.resolve(strict).await, Err(TargetError::Forbidden { .. })));
    }
}
