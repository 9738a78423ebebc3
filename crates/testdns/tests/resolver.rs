//! The server against a real client: hickory-resolver over UDP and TCP.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use agentkeys_testdns::{TestDns, Zone};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

fn resolver(addr: SocketAddr, timeout: Duration) -> TokioResolver {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
    ns.connections = vec![udp, tcp];
    let mut opts = ResolverOpts::default();
    opts.timeout = timeout;
    opts.attempts = 1;
    opts.cache_size = 0;
    TokioResolver::builder_with_config(ResolverConfig::from_parts(None, vec![], vec![ns]), TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .unwrap()
}

fn zone() -> Zone {
    Zone::new()
        .a("mx.example.test", Ipv4Addr::new(127, 0, 0, 1))
        .aaaa("mx.example.test", Ipv6Addr::LOCALHOST)
        .mx("example.test", 10, "mx.example.test")
        .txt("example.test", "v=spf1 ip4:127.0.0.1 -all")
        .txt_strings("sel._domainkey.example.test", &["v=DKIM1; k=rsa; ", "p=MIIB"])
        .cname("www.example.test", "mx.example.test")
        .servfail("broken.test")
        .no_answer("silent.test")
}

#[tokio::test]
async fn hickory_resolves_every_record_type() {
    let dns = TestDns::start(zone()).unwrap();
    let r = resolver(dns.addr(), Duration::from_secs(2));

    let ips: Vec<IpAddr> = r.lookup_ip("mx.example.test.").await.unwrap().iter().collect();
    assert!(ips.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{ips:?}");
    assert!(ips.contains(&IpAddr::V6(Ipv6Addr::LOCALHOST)), "{ips:?}");

    let mx = r.mx_lookup("EXAMPLE.test.").await.unwrap();
    let exchanges: Vec<String> = mx
        .answers()
        .iter()
        .filter_map(|rec| match &rec.data {
            RData::MX(m) => Some(format!("{} {}", m.preference, m.exchange)),
            _ => None,
        })
        .collect();
    assert_eq!(exchanges, ["10 mx.example.test."]);

    let txt = r.txt_lookup("sel._domainkey.example.test.").await.unwrap();
    let strings: Vec<Vec<String>> = txt
        .answers()
        .iter()
        .filter_map(|rec| match &rec.data {
            RData::TXT(t) => Some(t.txt_data.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect()),
            _ => None,
        })
        .collect();
    assert_eq!(strings, [vec!["v=DKIM1; k=rsa; ".to_owned(), "p=MIIB".to_owned()]], "multi-string TXT kept apart");

    let via_cname: Vec<IpAddr> = r.lookup_ip("www.example.test.").await.unwrap().iter().filter(IpAddr::is_ipv4).collect();
    assert_eq!(via_cname, [IpAddr::V4(Ipv4Addr::LOCALHOST)]);

    let err = r.txt_lookup("nope.example.test.").await.unwrap_err();
    assert!(err.is_nx_domain(), "{err}");
    let err = r.mx_lookup("mx.example.test.").await.unwrap_err();
    assert!(err.is_no_records_found() && !err.is_nx_domain(), "NODATA: {err}");

    let seen = dns.queries();
    assert!(seen.iter().any(|q| q.name == "sel._domainkey.example.test." && q.record_type == "TXT"), "{seen:?}");
}

#[tokio::test]
async fn servfail_and_silence_are_errors_not_nxdomain() {
    let dns = TestDns::start(zone()).unwrap();
    let r = resolver(dns.addr(), Duration::from_millis(300));
    let err = r.txt_lookup("broken.test.").await.unwrap_err();
    assert!(!err.is_nx_domain() && !err.is_no_records_found(), "{err}");
    let err = r.txt_lookup("silent.test.").await.unwrap_err();
    assert!(!err.is_nx_domain() && !err.is_no_records_found(), "{err}");
}

#[tokio::test]
async fn a_large_answer_is_truncated_over_udp_and_fetched_over_tcp() {
    let mut zone = Zone::new();
    for i in 0..12 {
        zone = zone.txt("big.example.test", &format!("{i:02}-{}", "z".repeat(200)));
    }
    let dns = TestDns::start(zone).unwrap();
    let r = resolver(dns.addr(), Duration::from_secs(2));
    let txt = r.txt_lookup("big.example.test.").await.unwrap();
    assert_eq!(txt.answers().len(), 12);
    let seen = dns.queries();
    assert!(seen.iter().any(|q| !q.tcp), "first over UDP: {seen:?}");
    assert!(seen.iter().any(|q| q.tcp), "then over TCP: {seen:?}");
}

#[tokio::test]
async fn zone_can_be_replaced_and_drop_stops_the_server() {
    let dns = TestDns::start(Zone::new()).unwrap();
    let addr = dns.addr();
    let r = resolver(addr, Duration::from_millis(300));
    assert!(r.txt_lookup("later.test.").await.unwrap_err().is_nx_domain());
    dns.set_zone(Zone::new().txt("later.test", "now"));
    assert_eq!(r.txt_lookup("later.test.").await.unwrap().answers().len(), 1);
    drop(dns);
    // Nothing listens any more: TCP is refused.
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
}
