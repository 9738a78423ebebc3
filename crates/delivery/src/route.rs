//! Where a recipient's mail goes: MX lookup through an injectable [`Resolver`]
//! (RFC 5321 §5.1: MX hosts by preference, else the domain's own A/AAAA), or a
//! configured smarthost for everything.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use async_trait::async_trait;
use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;

/// The standard SMTP port MX hosts listen on.
pub const SMTP_PORT: u16 = 25;

/// A DNS failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The name does not exist (NXDOMAIN) or has no usable record: permanent.
    #[error("{0}")]
    Permanent(String),
    /// Timeout, SERVFAIL or a transport error: try again later.
    #[error("{0}")]
    Temporary(String),
}

/// One MX record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mx {
    /// Lower is preferred.
    pub preference: u16,
    /// The exchange host, lowercase, without the trailing dot (`.` for a null MX).
    pub exchange: String,
}

/// DNS as delivery needs it. Injected so tests can point a domain at a loopback MTA.
#[async_trait]
pub trait Resolver: Send + Sync + 'static {
    /// The domain's MX records; empty if it has none (no error).
    async fn mx(&self, domain: &str) -> Result<Vec<Mx>, ResolveError>;
    /// The host's A and AAAA addresses; empty if it has none.
    async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError>;
    /// The name's TXT records, each one's character-strings joined (RFC 7208
    /// §3.3, RFC 6376 §3.6.2.2); empty if it has none. Used by `domain verify`;
    /// a resolver for delivery only may leave the default, which says it cannot.
    async fn txt(&self, name: &str) -> Result<Vec<String>, ResolveError> {
        Err(ResolveError::Temporary(format!("this resolver cannot look up TXT records ({name})")))
    }
}

/// The system resolver (`/etc/resolv.conf`) through hickory.
#[derive(Debug, Clone)]
pub struct HickoryResolver(TokioResolver);

impl HickoryResolver {
    /// A resolver with the system configuration.
    pub fn from_system() -> Result<Self, ResolveError> {
        let builder =
            TokioResolver::builder_tokio().map_err(|e| ResolveError::Temporary(e.to_string()))?;
        builder
            .build()
            .map(Self)
            .map_err(|e| ResolveError::Temporary(e.to_string()))
    }

    /// A resolver asking the name servers of `config` (the server's `dns.nameservers`).
    pub fn new(
        config: hickory_resolver::config::ResolverConfig,
        options: hickory_resolver::config::ResolverOpts,
    ) -> Result<Self, ResolveError> {
        TokioResolver::builder_with_config(
            config,
            hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
        )
        .with_options(options)
        .build()
        .map(Self)
        .map_err(|e| ResolveError::Temporary(e.to_string()))
    }
}

fn classify(err: &hickory_resolver::net::NetError) -> Option<ResolveError> {
    if err.is_nx_domain() {
        Some(ResolveError::Permanent(format!("no such domain ({err})")))
    } else if err.is_no_records_found() {
        None
    } else {
        Some(ResolveError::Temporary(err.to_string()))
    }
}

#[async_trait]
impl Resolver for HickoryResolver {
    async fn mx(&self, domain: &str) -> Result<Vec<Mx>, ResolveError> {
        let name = format!("{}.", domain.trim_end_matches('.'));
        match self.0.mx_lookup(name.as_str()).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some(Mx {
                        preference: mx.preference,
                        exchange: mx
                            .exchange
                            .to_lowercase()
                            .to_ascii()
                            .trim_end_matches('.')
                            .to_owned(),
                    }),
                    _ => None,
                })
                .map(|mut mx| {
                    if mx.exchange.is_empty() {
                        mx.exchange = ".".to_owned();
                    }
                    mx
                })
                .collect()),
            Err(err) => classify(&err).map_or(Ok(Vec::new()), Err),
        }
    }

    async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let name = format!("{}.", host.trim_end_matches('.'));
        match self.0.lookup_ip(name.as_str()).await {
            Ok(lookup) => Ok(lookup.iter().collect()),
            Err(err) => classify(&err).map_or(Ok(Vec::new()), Err),
        }
    }

    async fn txt(&self, name: &str) -> Result<Vec<String>, ResolveError> {
        let name = format!("{}.", name.trim_end_matches('.'));
        match self.0.txt_lookup(name.as_str()).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()),
            Err(err) => classify(&err).map_or(Ok(Vec::new()), Err),
        }
    }
}

/// A fixed map of names to records, for tests and closed setups.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    mx: BTreeMap<String, Vec<Mx>>,
    ips: BTreeMap<String, Vec<IpAddr>>,
    txt: BTreeMap<String, Vec<String>>,
    failing: Vec<String>,
}

impl StaticResolver {
    /// An empty map: every name is NXDOMAIN.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an MX record for `domain`.
    #[must_use]
    pub fn with_mx(mut self, domain: &str, preference: u16, exchange: &str) -> Self {
        self.mx
            .entry(domain.to_ascii_lowercase())
            .or_default()
            .push(Mx {
                preference,
                exchange: exchange.to_ascii_lowercase(),
            });
        self
    }

    /// Adds an address for `host`.
    #[must_use]
    pub fn with_ip(mut self, host: &str, ip: IpAddr) -> Self {
        self.ips
            .entry(host.to_ascii_lowercase())
            .or_default()
            .push(ip);
        self
    }

    /// Adds a TXT record (its strings already joined) for `name`.
    #[must_use]
    pub fn with_txt(mut self, name: &str, value: &str) -> Self {
        self.txt
            .entry(name.to_ascii_lowercase())
            .or_default()
            .push(value.to_owned());
        self
    }

    /// Every lookup of `name` fails temporarily (SERVFAIL, timeout).
    #[must_use]
    pub fn with_failure(mut self, name: &str) -> Self {
        self.failing.push(name.to_ascii_lowercase());
        self
    }

    fn known(&self, name: &str) -> bool {
        self.mx.contains_key(name) || self.ips.contains_key(name) || self.txt.contains_key(name)
    }

    fn check(&self, name: &str) -> Result<(), ResolveError> {
        if self.failing.iter().any(|f| f == name) {
            return Err(ResolveError::Temporary(format!("SERVFAIL for {name}")));
        }
        Ok(())
    }
}

#[async_trait]
impl Resolver for StaticResolver {
    async fn mx(&self, domain: &str) -> Result<Vec<Mx>, ResolveError> {
        let domain = domain.to_ascii_lowercase();
        self.check(&domain)?;
        if !self.known(&domain) {
            return Err(ResolveError::Permanent(format!("no such domain {domain}")));
        }
        Ok(self.mx.get(&domain).cloned().unwrap_or_default())
    }

    async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let host = host.to_ascii_lowercase();
        self.check(&host)?;
        if !self.known(&host) {
            return Err(ResolveError::Permanent(format!("no such host {host}")));
        }
        Ok(self.ips.get(&host).cloned().unwrap_or_default())
    }

    async fn txt(&self, name: &str) -> Result<Vec<String>, ResolveError> {
        let name = name.to_ascii_lowercase();
        self.check(&name)?;
        if !self.known(&name) {
            return Err(ResolveError::Permanent(format!("no such name {name}")));
        }
        Ok(self.txt.get(&name).cloned().unwrap_or_default())
    }
}

/// Where outbound mail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Look up each recipient domain's MX and connect on this port
    /// ([`SMTP_PORT`] in production; tests and unusual setups change it).
    Mx {
        /// The port MX hosts are contacted on.
        port: u16,
    },
    /// Hand everything to one relay, `host:port`.
    Smarthost {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
}

/// One host to try, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host name (MX exchange, smarthost or the domain itself): the TLS name
    /// and the per-destination limit's key.
    pub host: String,
    /// Addresses to try, in order.
    pub addrs: Vec<SocketAddr>,
}

/// The hosts to try for `domain`, most preferred first (RFC 5321 §5.1): the MX
/// hosts by preference, or the domain's own A/AAAA records when it has no MX.
/// A null MX (RFC 7505) or a name without any address is a permanent failure.
pub async fn targets(
    resolver: &dyn Resolver,
    route: &Route,
    domain: &str,
) -> Result<Vec<Target>, ResolveError> {
    let (hosts, port) = match route {
        Route::Smarthost { host, port } => {
            if let Ok(ip) = host.parse::<IpAddr>() {
                return Ok(vec![Target {
                    host: host.clone(),
                    addrs: vec![SocketAddr::new(ip, *port)],
                }]);
            }
            (vec![host.clone()], *port)
        }
        Route::Mx { port } => {
            let mut mx = resolver.mx(domain).await?;
            if mx
                .iter()
                .any(|m| m.exchange == "." || m.exchange.is_empty())
            {
                return Err(ResolveError::Permanent(format!(
                    "{domain} accepts no mail (null MX)"
                )));
            }
            mx.sort_by_key(|m| m.preference);
            let hosts = if mx.is_empty() {
                vec![domain.to_owned()]
            } else {
                mx.into_iter().map(|m| m.exchange).collect()
            };
            (hosts, *port)
        }
    };
    let mut out = Vec::new();
    let mut last_error = None;
    for host in hosts {
        match resolver.ips(&host).await {
            Ok(ips) if !ips.is_empty() => out.push(Target {
                addrs: ips
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect(),
                host,
            }),
            Ok(_) => last_error = Some(ResolveError::Permanent(format!("{host} has no address"))),
            Err(err) => last_error = Some(err),
        }
    }
    match (out.is_empty(), last_error) {
        (true, Some(err)) => Err(err),
        (true, None) => Err(ResolveError::Permanent(format!(
            "no host to deliver to for {domain}"
        ))),
        _ => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn mx_by_preference_then_a_record_fallback() {
        let r = StaticResolver::new()
            .with_mx("example.com", 20, "b.example.com")
            .with_mx("example.com", 10, "a.example.com")
            .with_ip("a.example.com", LOOPBACK)
            .with_ip("b.example.com", LOOPBACK)
            .with_ip("plain.example", LOOPBACK);
        let route = Route::Mx { port: 2500 };
        let t = targets(&r, &route, "example.com").await.unwrap();
        assert_eq!(
            t.iter().map(|t| t.host.as_str()).collect::<Vec<_>>(),
            ["a.example.com", "b.example.com"]
        );
        assert_eq!(t[0].addrs, [SocketAddr::new(LOOPBACK, 2500)]);
        let t = targets(&r, &route, "plain.example").await.unwrap();
        assert_eq!(
            t[0].host, "plain.example",
            "no MX: the domain's own address"
        );
        assert!(matches!(
            targets(&r, &route, "nowhere.example").await,
            Err(ResolveError::Permanent(_))
        ));
    }

    #[tokio::test]
    async fn null_mx_is_permanent_and_smarthost_skips_mx() {
        let r = StaticResolver::new()
            .with_mx("null.example", 0, ".")
            .with_ip("relay.local", LOOPBACK);
        assert!(matches!(
            targets(&r, &Route::Mx { port: 25 }, "null.example").await,
            Err(ResolveError::Permanent(_))
        ));
        let relay = Route::Smarthost {
            host: "relay.local".into(),
            port: 587,
        };
        let t = targets(&r, &relay, "null.example").await.unwrap();
        assert_eq!(t[0].addrs, [SocketAddr::new(LOOPBACK, 587)]);
    }
}
