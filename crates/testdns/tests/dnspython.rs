//! The server against an independent client: dnspython
//! (`tests/resources/dns_query.py`), over UDP and over TCP.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use agentkeys_testdns::{TestDns, Zone};
use serde_json::Value;

fn query(dns: &TestDns, name: &str, rtype: &str, transport: &str) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/resources/dns_query.py");
    let addr = dns.addr();
    let out = Command::new("python3")
        .arg(script)
        .args([&addr.ip().to_string(), &addr.port().to_string(), name, rtype, transport])
        .output()
        .expect("spawn python3");
    assert!(out.status.success(), "dns_query.py failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn dnspython_reads_what_testdns_serves() {
    let long = "p".repeat(300);
    let dns = TestDns::start(
        Zone::new()
            .mx("example.test", 10, "mx.example.test")
            .a("mx.example.test", Ipv4Addr::LOCALHOST)
            .txt_strings("multi.example.test", &["v=DKIM1; k=rsa; ", "p=AB"])
            .txt("long.example.test", &long),
    )
    .unwrap();
    for transport in ["udp", "tcp"] {
        let r = query(&dns, "multi.example.test.", "TXT", transport);
        assert_eq!(r["rcode"], "NOERROR", "{r}");
        assert_eq!(r["aa"], true, "{r}");
        assert_eq!(r["answers"], serde_json::json!([["TXT", ["v=DKIM1; k=rsa; ", "p=AB"]]]), "{transport}: {r}");
        let r = query(&dns, "EXAMPLE.test.", "MX", transport);
        assert_eq!(r["answers"], serde_json::json!([["MX", "10 mx.example.test."]]), "{r}");
        let r = query(&dns, "missing.example.test.", "A", transport);
        assert_eq!(r["rcode"], "NXDOMAIN", "{r}");
        let r = query(&dns, "mx.example.test.", "TXT", transport);
        assert_eq!((r["rcode"].as_str(), r["answers"].as_array().unwrap().len()), (Some("NOERROR"), 0), "NODATA: {r}");
    }
    let r = query(&dns, "long.example.test.", "TXT", "tcp");
    let strings = r["answers"][0][1].as_array().unwrap();
    assert_eq!(strings.iter().map(|s| s.as_str().unwrap().len()).collect::<Vec<_>>(), [255, 45]);
}

#[test]
fn dnspython_sees_truncation_without_edns() {
    // dnspython's make_query sends no EDNS: 512 bytes is the UDP limit.
    let mut zone = Zone::new();
    for i in 0..6 {
        zone = zone.txt("big.example.test", &format!("{i}-{}", "q".repeat(120)));
    }
    let dns = TestDns::start(zone).unwrap();
    let r = query(&dns, "big.example.test.", "TXT", "udp");
    assert_eq!(r["tc"], true, "{r}");
    let r = query(&dns, "big.example.test.", "TXT", "tcp");
    assert_eq!((r["tc"].as_bool(), r["answers"].as_array().unwrap().len()), (Some(false), 6), "{r}");
}
