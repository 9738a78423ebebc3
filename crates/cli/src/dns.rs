//! The server's one DNS configuration (`dns.nameservers` /
//! `AGENTKEYS_DNS_NAMESERVERS`), shared by outbound delivery (MX lookups) and the
//! MX's SPF/DKIM/DMARC checks, so both see the same answers.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use hickory_resolver::config::{ResolverConfig, ResolverOpts};

/// The resolver configuration: the given name servers (UDP and TCP each, no search
/// domains), or the system's (`/etc/resolv.conf`) when the list is empty.
pub(crate) fn resolver_config(nameservers: &[SocketAddr]) -> Result<(ResolverConfig, ResolverOpts)> {
    if nameservers.is_empty() {
        return hickory_resolver::system_conf::read_system_conf()
            .context("cannot read the system DNS configuration (/etc/resolv.conf); set dns.nameservers / AGENTKEYS_DNS_NAMESERVERS");
    }
    let servers = nameservers.iter().copied().map(agentkeys_smtp::verdict_dns::name_server).collect();
    Ok((ResolverConfig::from_parts(None, Vec::new(), servers), ResolverOpts::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_servers_keep_their_port_on_both_transports() {
        let (config, _) = resolver_config(&["127.0.0.1:5300".parse().unwrap()]).unwrap();
        let [server] = config.name_servers() else { panic!("{config:?}") };
        assert_eq!(server.ip.to_string(), "127.0.0.1");
        let ports: Vec<u16> = server.connections.iter().map(|c| c.port).collect();
        assert_eq!(ports, [5300, 5300]);
        assert!(config.search().is_empty());
    }
}
