//! `agentkeys domain verify`: are the records of [`zone_file`](crate::zone_file)
//! published? One lookup per record through the injectable [`Resolver`], then a
//! pure verdict ([`DomainStatus::from_checks`]) over the findings.
//!
//! A domain's status moves `NotStarted → Pending → Verifying → Verified |
//! Invalid | Failed`:
//! - `NotStarted`: added, never checked.
//! - `Verifying`: a check is running (stored at its start, so `domain list` in
//!   another process shows it).
//! - `Pending`: checked, and none of the records is published yet.
//! - `Verified`: every record is there and right.
//! - `Invalid`: some record is missing or wrong while others are published; each
//!   check names which and why.
//! - `Failed`: DNS could not answer (timeout, SERVFAIL) for some record: nothing
//!   can be concluded; try again.

use std::fmt;

use serde::Serialize;

use crate::keys::DomainKeys;
use crate::mta_sts::{TlsRpt, parse_sts_record, sts_record};
use crate::route::{ResolveError, Resolver};
use crate::zone::{DMARC_POLICY, Publication, SPF_POLICY};

/// Where a domain's DNS verification stands (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainStatus {
    /// Never checked.
    NotStarted,
    /// Checked; nothing published yet.
    Pending,
    /// A check is running.
    Verifying,
    /// Every record is published and right.
    Verified,
    /// Some record is missing or wrong.
    Invalid,
    /// DNS did not answer for some record.
    Failed,
}

impl DomainStatus {
    /// The stored form (`not_started`, `pending`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotStarted => "not_started",
            Self::Pending => "pending",
            Self::Verifying => "verifying",
            Self::Verified => "verified",
            Self::Invalid => "invalid",
            Self::Failed => "failed",
        }
    }

    /// The outcome of a finished check: `Failed` if any lookup failed, else
    /// `Verified` if every record is right, `Pending` if none is published,
    /// `Invalid` otherwise.
    pub fn from_checks(checks: &[RecordCheck]) -> Self {
        if checks.iter().any(|c| matches!(c.finding, Finding::Unresolved(_))) {
            Self::Failed
        } else if checks.iter().all(|c| c.finding == Finding::Ok) {
            Self::Verified
        } else if checks.iter().all(|c| c.finding == Finding::Missing) {
            Self::Pending
        } else {
            Self::Invalid
        }
    }
}

impl fmt::Display for DomainStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the lookup of one record found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "finding", content = "why", rename_all = "snake_case")]
pub enum Finding {
    /// Published and right.
    Ok,
    /// Not published.
    Missing,
    /// Published, but not what it must be; the text says how.
    Wrong(String),
    /// DNS gave no answer (timeout, SERVFAIL).
    Unresolved(String),
}

/// One record's check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordCheck {
    /// `MX`, `SPF`, `DMARC`, `DKIM <selector>`, `MTA-STS` or `TLS-RPT`.
    pub record: String,
    /// The DNS name looked up.
    pub name: String,
    /// What must be published there.
    pub expected: String,
    /// What was found.
    pub finding: Finding,
}

impl RecordCheck {
    /// One line for the CLI: `ok`, `MISSING`, `WRONG` or `DNS FAILED`, the
    /// record, its name and what to do.
    pub fn line(&self) -> String {
        match &self.finding {
            Finding::Ok => format!("ok          {} {}", self.record, self.name),
            Finding::Missing => format!(
                "MISSING     {} {}: publish {}",
                self.record, self.name, self.expected
            ),
            Finding::Wrong(why) => format!(
                "WRONG       {} {}: {why}; publish {}",
                self.record, self.name, self.expected
            ),
            Finding::Unresolved(why) => {
                format!("DNS FAILED  {} {}: {why}; try again", self.record, self.name)
            }
        }
    }
}

fn lookup_txt(found: Result<Vec<String>, ResolveError>) -> Result<Vec<String>, Finding> {
    match found {
        Ok(records) => Ok(records),
        Err(ResolveError::Permanent(_)) => Ok(Vec::new()),
        Err(ResolveError::Temporary(why)) => Err(Finding::Unresolved(why)),
    }
}

/// The `tag=value` pairs of a DKIM/DMARC record, tags lowercased, whitespace
/// removed from values (RFC 6376 §3.2).
fn tags(record: &str) -> Vec<(String, String)> {
    record
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_ascii_lowercase(),
                v.chars().filter(|c| !c.is_whitespace()).collect(),
            )
        })
        .collect()
}

fn tag<'a>(tags: &'a [(String, String)], name: &str) -> Option<&'a str> {
    tags.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn starts_with_version(record: &str, version: &str) -> bool {
    let r = record.trim_start();
    r.len() >= version.len()
        && r[..version.len()].eq_ignore_ascii_case(version)
        && r[version.len()..]
            .chars()
            .next()
            .is_none_or(|c| c == ' ' || c == ';')
}

/// MX: one of the domain's MX records must point at `mx_host`.
pub fn check_mx(found: Result<Vec<crate::Mx>, ResolveError>, mx_host: &str) -> Finding {
    let mx_host = mx_host.trim_end_matches('.').to_ascii_lowercase();
    match found {
        Err(ResolveError::Temporary(why)) => Finding::Unresolved(why),
        Err(ResolveError::Permanent(_)) => Finding::Missing,
        Ok(list) if list.is_empty() => Finding::Missing,
        Ok(list) if list.iter().any(|m| m.exchange == mx_host) => Finding::Ok,
        Ok(list) => Finding::Wrong(format!(
            "MX points to {}, not {mx_host}",
            list.iter()
                .map(|m| m.exchange.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// SPF: exactly one `v=spf1` TXT record (RFC 7208 §4.5), and it lets the MX
/// hosts send (`mx`, `+mx` or `a:<mx host>`).
pub fn check_spf(found: Result<Vec<String>, ResolveError>, mx_host: &str) -> Finding {
    let records = match lookup_txt(found) {
        Ok(r) => r,
        Err(finding) => return finding,
    };
    let spf: Vec<&String> = records
        .iter()
        .filter(|r| starts_with_version(r, "v=spf1"))
        .collect();
    match spf.as_slice() {
        [] => Finding::Missing,
        [one] => {
            let mx_host = mx_host.trim_end_matches('.').to_ascii_lowercase();
            let allows = one.split_whitespace().any(|m| {
                let m = m.to_ascii_lowercase();
                m == "mx" || m == "+mx" || m == format!("a:{mx_host}") || m == format!("+a:{mx_host}")
            });
            if allows {
                Finding::Ok
            } else {
                Finding::Wrong(format!("\"{one}\" does not let the MX hosts send"))
            }
        }
        many => Finding::Wrong(format!(
            "{} SPF records (RFC 7208 allows one, receivers treat more as an error)",
            many.len()
        )),
    }
}

/// DMARC: exactly one `v=DMARC1` record at `_dmarc.<domain>` with a policy.
pub fn check_dmarc(found: Result<Vec<String>, ResolveError>) -> Finding {
    let records = match lookup_txt(found) {
        Ok(r) => r,
        Err(finding) => return finding,
    };
    let dmarc: Vec<&String> = records
        .iter()
        .filter(|r| starts_with_version(r, "v=DMARC1"))
        .collect();
    match dmarc.as_slice() {
        [] => Finding::Missing,
        [one] => match tag(&tags(one), "p") {
            Some("none" | "quarantine" | "reject") => Finding::Ok,
            Some(other) => Finding::Wrong(format!("policy p={other} is not none, quarantine or reject")),
            None => Finding::Wrong("the record has no p= policy".to_owned()),
        },
        many => Finding::Wrong(format!("{} DMARC records (there must be one)", many.len())),
    }
}

/// DKIM: the selector's TXT record must carry this server's public key
/// (`p=`) with the right key type (`k=`, `rsa` when absent).
pub fn check_dkim(found: Result<Vec<String>, ResolveError>, expected: &str) -> Finding {
    let records = match lookup_txt(found) {
        Ok(r) => r,
        Err(finding) => return finding,
    };
    let want = tags(expected);
    let dkim: Vec<Vec<(String, String)>> = records
        .iter()
        .map(|r| tags(r))
        .filter(|t| tag(t, "p").is_some())
        .collect();
    if dkim.is_empty() {
        return Finding::Missing;
    }
    let key_type = |t: &[(String, String)]| tag(t, "k").unwrap_or("rsa").to_ascii_lowercase();
    if dkim
        .iter()
        .any(|t| tag(t, "p") == tag(&want, "p") && key_type(t) == key_type(&want))
    {
        return Finding::Ok;
    }
    if dkim.iter().any(|t| tag(t, "p") == Some("")) {
        return Finding::Wrong("the key is revoked (empty p=)".to_owned());
    }
    Finding::Wrong("the published key is not this server's key (old version, another server, or cut short)".to_owned())
}

/// MTA-STS: exactly one `v=STSv1` record at `_mta-sts.<domain>` (RFC 8461
/// §3.1), carrying the id of the policy this server serves.
pub fn check_mta_sts(found: Result<Vec<String>, ResolveError>, id: &str) -> Finding {
    let records = match lookup_txt(found) {
        Ok(r) => r,
        Err(finding) => return finding,
    };
    match parse_sts_record(&records) {
        Ok(None) => Finding::Missing,
        Ok(Some(published)) if published == id => Finding::Ok,
        Ok(Some(published)) => Finding::Wrong(format!(
            "id={published} is not the id of the policy served now ({id}); senders keep the old policy until it changes"
        )),
        Err(err) => Finding::Wrong(err.to_string()),
    }
}

/// TLS-RPT: exactly one `v=TLSRPTv1` record at `_smtp._tls.<domain>` (RFC 8460
/// §3) whose `rua` is the configured one.
pub fn check_tls_rpt(found: Result<Vec<String>, ResolveError>, expected: &TlsRpt) -> Finding {
    let records = match lookup_txt(found) {
        Ok(r) => r,
        Err(finding) => return finding,
    };
    match TlsRpt::from_records(&records) {
        Ok(None) => Finding::Missing,
        Ok(Some(published)) if published.rua() == expected.rua() => Finding::Ok,
        Ok(Some(published)) => Finding::Wrong(format!(
            "rua={} is not the configured {}",
            published.rua().join(","),
            expected.rua().join(",")
        )),
        Err(err) => Finding::Wrong(err.to_string()),
    }
}

/// Looks up every record of `keys.domain()` that `publication` prints and
/// checks it (MX, SPF, DMARC, each DKIM selector, then MTA-STS and TLS-RPT
/// when published). The lookups run at once; the order is the zone file's.
pub async fn verify_domain(resolver: &dyn Resolver, keys: &DomainKeys, publication: &Publication) -> Vec<RecordCheck> {
    let d = keys.domain().as_str();
    let mx = publication.mx_host.as_str();
    let sel = keys.selectors();
    let dmarc_name = format!("_dmarc.{d}");
    let ed_name = format!("{}._domainkey.{d}", sel.ed25519);
    let rsa_name = format!("{}._domainkey.{d}", sel.rsa);
    let sts_name = format!("_mta-sts.{d}");
    let rpt_name = format!("_smtp._tls.{d}");
    let (ed_txt, rsa_txt) = (keys.ed25519_txt(), keys.rsa_txt());
    let sts_id = publication.mta_sts.as_ref().map(|p| p.id());
    let (mx_found, spf_found, dmarc_found, ed_found, rsa_found, sts_found, rpt_found) = tokio::join!(
        resolver.mx(d),
        resolver.txt(d),
        resolver.txt(&dmarc_name),
        resolver.txt(&ed_name),
        resolver.txt(&rsa_name),
        async {
            match sts_id {
                Some(_) => Some(resolver.txt(&sts_name).await),
                None => None,
            }
        },
        async {
            match publication.tls_rpt {
                Some(_) => Some(resolver.txt(&rpt_name).await),
                None => None,
            }
        },
    );
    let mut checks = vec![
        RecordCheck {
            record: "MX".into(),
            name: d.to_owned(),
            expected: format!("\"{d}. MX 10 {mx}.\""),
            finding: check_mx(mx_found, mx),
        },
        RecordCheck {
            record: "SPF".into(),
            name: d.to_owned(),
            expected: format!("\"{d}. TXT {SPF_POLICY}\""),
            finding: check_spf(spf_found, mx),
        },
        RecordCheck {
            record: "DMARC".into(),
            name: dmarc_name.clone(),
            expected: format!("\"{dmarc_name}. TXT {DMARC_POLICY}\""),
            finding: check_dmarc(dmarc_found),
        },
        RecordCheck {
            record: format!("DKIM {}", sel.ed25519),
            name: ed_name.clone(),
            expected: format!("the {} TXT record of `agentkeys domain dns {d}`", sel.ed25519),
            finding: check_dkim(ed_found, &ed_txt),
        },
        RecordCheck {
            record: format!("DKIM {}", sel.rsa),
            name: rsa_name.clone(),
            expected: format!("the {} TXT record of `agentkeys domain dns {d}`", sel.rsa),
            finding: check_dkim(rsa_found, &rsa_txt),
        },
    ];
    if let (Some(id), Some(found)) = (&sts_id, sts_found) {
        checks.push(RecordCheck {
            record: "MTA-STS".into(),
            name: sts_name.clone(),
            expected: format!("\"{sts_name}. TXT {}\"", sts_record(id)),
            finding: check_mta_sts(found, id),
        });
    }
    if let (Some(tls_rpt), Some(found)) = (&publication.tls_rpt, rpt_found) {
        checks.push(RecordCheck {
            record: "TLS-RPT".into(),
            name: rpt_name.clone(),
            expected: format!("\"{rpt_name}. TXT {}\"", tls_rpt.record()),
            finding: check_tls_rpt(found, tls_rpt),
        });
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Selectors;
    use crate::mta_sts::{StsMode, StsPolicy};
    use crate::route::StaticResolver;
    use agentkeys_core::{Domain, MasterSeed};

    fn keys() -> DomainKeys {
        let seed = MasterSeed::from_bytes([9; 32]);
        let domain: Domain = "mail.example.com".parse().unwrap();
        let record = DomainKeys::generate_record(&seed, &domain, 1, &Selectors::default(), 0).unwrap();
        DomainKeys::open(&seed, &record).unwrap()
    }

    fn published(keys: &DomainKeys) -> StaticResolver {
        StaticResolver::new()
            .with_mx("mail.example.com", 10, "mx.example.net")
            .with_txt("mail.example.com", "google-site-verification=abc")
            .with_txt("mail.example.com", SPF_POLICY)
            .with_txt("_dmarc.mail.example.com", DMARC_POLICY)
            .with_txt("ed1._domainkey.mail.example.com", &keys.ed25519_txt())
            .with_txt("rsa1._domainkey.mail.example.com", &keys.rsa_txt())
    }

    fn findings(checks: &[RecordCheck]) -> Vec<(&str, &Finding)> {
        checks.iter().map(|c| (c.record.as_str(), &c.finding)).collect()
    }

    #[tokio::test]
    async fn every_record_published_is_verified() {
        let keys = keys();
        let checks = verify_domain(&published(&keys), &keys, &Publication::new("mx.example.net.")).await;
        assert!(checks.iter().all(|c| c.finding == Finding::Ok), "{checks:#?}");
        assert_eq!(DomainStatus::from_checks(&checks), DomainStatus::Verified);
        assert_eq!(
            checks.iter().map(|c| c.record.as_str()).collect::<Vec<_>>(),
            ["MX", "SPF", "DMARC", "DKIM ed1", "DKIM rsa1"]
        );
    }

    #[tokio::test]
    async fn nothing_published_is_pending() {
        let keys = keys();
        let checks = verify_domain(&StaticResolver::new(), &keys, &Publication::new("mx.example.net")).await;
        assert!(checks.iter().all(|c| c.finding == Finding::Missing), "{checks:#?}");
        assert_eq!(DomainStatus::from_checks(&checks), DomainStatus::Pending);
        assert!(checks[0].line().starts_with("MISSING     MX mail.example.com: publish"));
    }

    #[tokio::test]
    async fn a_missing_or_wrong_record_is_invalid_and_named() {
        let keys = keys();
        let other = {
            let seed = MasterSeed::from_bytes([10; 32]);
            let record = DomainKeys::generate_record(&seed, keys.domain(), 1, &Selectors::default(), 0).unwrap();
            DomainKeys::open(&seed, &record).unwrap()
        };
        let r = StaticResolver::new()
            .with_mx("mail.example.com", 10, "elsewhere.example.org")
            .with_txt("mail.example.com", "v=spf1 include:_spf.example.org -all")
            .with_txt("_dmarc.mail.example.com", "v=DMARC1; rua=mailto:d@example.com")
            .with_txt("ed1._domainkey.mail.example.com", &other.ed25519_txt());
        let checks = verify_domain(&r, &keys, &Publication::new("mx.example.net")).await;
        let f = findings(&checks);
        assert!(matches!(f[0], ("MX", Finding::Wrong(w)) if w.contains("elsewhere.example.org")), "{f:?}");
        assert!(matches!(f[1], ("SPF", Finding::Wrong(w)) if w.contains("does not let the MX hosts send")), "{f:?}");
        assert!(matches!(f[2], ("DMARC", Finding::Wrong(w)) if w.contains("no p=")), "{f:?}");
        assert!(matches!(f[3], ("DKIM ed1", Finding::Wrong(w)) if w.contains("not this server's key")), "{f:?}");
        assert_eq!(f[4], ("DKIM rsa1", &Finding::Missing));
        assert_eq!(DomainStatus::from_checks(&checks), DomainStatus::Invalid);
        assert!(checks[4].line().starts_with("MISSING     DKIM rsa1 rsa1._domainkey.mail.example.com"));
    }

    #[tokio::test]
    async fn one_missing_record_among_good_ones_is_invalid() {
        let keys = keys();
        let r = StaticResolver::new()
            .with_mx("mail.example.com", 10, "mx.example.net")
            .with_txt("mail.example.com", SPF_POLICY)
            .with_txt("ed1._domainkey.mail.example.com", &keys.ed25519_txt())
            .with_txt("rsa1._domainkey.mail.example.com", &keys.rsa_txt());
        let checks = verify_domain(&r, &keys, &Publication::new("mx.example.net")).await;
        let wrong: Vec<&str> = checks
            .iter()
            .filter(|c| c.finding != Finding::Ok)
            .map(|c| c.record.as_str())
            .collect();
        assert_eq!(wrong, ["DMARC"]);
        assert_eq!(DomainStatus::from_checks(&checks), DomainStatus::Invalid);
    }

    #[tokio::test]
    async fn a_dns_failure_is_failed_not_invalid() {
        let keys = keys();
        let r = published(&keys).with_failure("_dmarc.mail.example.com");
        let checks = verify_domain(&r, &keys, &Publication::new("mx.example.net")).await;
        assert!(matches!(checks[2].finding, Finding::Unresolved(_)));
        assert_eq!(DomainStatus::from_checks(&checks), DomainStatus::Failed);
        assert!(checks[2].line().starts_with("DNS FAILED  DMARC"));
    }

    fn with_sts() -> (Publication, String) {
        let policy = StsPolicy::new(StsMode::Enforce, vec!["mx.example.net".parse().unwrap()], 86_400).unwrap();
        let id = policy.id();
        let publication = Publication::new("mx.example.net")
            .with_mta_sts(policy)
            .with_tls_rpt(TlsRpt::parse_rua("mailto:tls@example.com").unwrap());
        (publication, id)
    }

    #[tokio::test]
    async fn mta_sts_and_tls_rpt_records_are_checked_when_published() {
        let keys = keys();
        let (publication, id) = with_sts();
        let full = published(&keys)
            .with_txt("_mta-sts.mail.example.com", &format!("v=STSv1; id={id}"))
            .with_txt("_smtp._tls.mail.example.com", "v=TLSRPTv1; rua=mailto:tls@example.com");
        let checks = verify_domain(&full, &keys, &publication).await;
        assert_eq!(
            checks.iter().map(|c| c.record.as_str()).collect::<Vec<_>>(),
            ["MX", "SPF", "DMARC", "DKIM ed1", "DKIM rsa1", "MTA-STS", "TLS-RPT"]
        );
        assert_eq!(DomainStatus::from_checks(&checks), DomainStatus::Verified, "{checks:#?}");
        // Without them: named as missing.
        let checks = verify_domain(&published(&keys), &keys, &publication).await;
        assert_eq!(DomainStatus::from_checks(&checks), DomainStatus::Invalid);
        assert!(checks[5].line().starts_with(&format!("MISSING     MTA-STS _mta-sts.mail.example.com: publish \"_mta-sts.mail.example.com. TXT v=STSv1; id={id}\"")), "{}", checks[5].line());
        assert!(checks[6].line().starts_with("MISSING     TLS-RPT _smtp._tls.mail.example.com"), "{}", checks[6].line());
        // An old id, another rua.
        let stale = published(&keys)
            .with_txt("_mta-sts.mail.example.com", "v=STSv1; id=20240101")
            .with_txt("_smtp._tls.mail.example.com", "v=TLSRPTv1; rua=mailto:other@example.com");
        let checks = verify_domain(&stale, &keys, &publication).await;
        assert!(matches!(&checks[5].finding, Finding::Wrong(w) if w.contains("id=20240101 is not the id")), "{:?}", checks[5]);
        assert!(matches!(&checks[6].finding, Finding::Wrong(w) if w.contains("rua=mailto:other@example.com")), "{:?}", checks[6]);
        // Not published: not checked.
        let checks = verify_domain(&published(&keys), &keys, &Publication::new("mx.example.net")).await;
        assert_eq!(checks.len(), 5);
    }

    #[test]
    fn mta_sts_record_rules() {
        let found = |r: &[&str]| Ok(r.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(check_mta_sts(found(&["v=STSv1; id=abc;"]), "abc"), Finding::Ok);
        assert_eq!(check_mta_sts(found(&["v=spf1 -all"]), "abc"), Finding::Missing);
        assert!(matches!(check_mta_sts(found(&["v=STSv1; id=abc", "v=STSv1; id=abd"]), "abc"), Finding::Wrong(w) if w.contains("2 records")));
        assert!(matches!(check_mta_sts(found(&["v=STSv1; id=a_b"]), "abc"), Finding::Wrong(w) if w.contains("letters and digits")));
        assert!(matches!(check_mta_sts(Err(ResolveError::Temporary("timeout".into())), "abc"), Finding::Unresolved(_)));
        assert_eq!(check_mta_sts(Err(ResolveError::Permanent("nxdomain".into())), "abc"), Finding::Missing);
        let rua = TlsRpt::parse_rua("mailto:a@example.com").unwrap();
        assert_eq!(check_tls_rpt(found(&["v=TLSRPTv1; rua=mailto:a@example.com;"]), &rua), Finding::Ok);
        assert!(matches!(check_tls_rpt(found(&["v=TLSRPTv1"]), &rua), Finding::Wrong(w) if w.contains("no rua")));
    }

    #[test]
    fn record_rules() {
        let two = Ok(vec!["v=spf1 mx -all".to_owned(), "v=spf1 a -all".to_owned()]);
        assert!(matches!(check_spf(two, "mx.test"), Finding::Wrong(w) if w.starts_with("2 SPF records")));
        assert_eq!(check_spf(Ok(vec!["v=spf1 a:mx.test ~all".into()]), "mx.test."), Finding::Ok);
        assert_eq!(check_spf(Ok(vec!["v=spf10 mx".into()]), "mx.test"), Finding::Missing, "not v=spf1");
        assert_eq!(check_dmarc(Ok(vec!["v=DMARC1;p=reject".into()])), Finding::Ok);
        assert_eq!(
            check_dkim(Ok(vec!["v=DKIM1; k=ed25519; p=".into()]), "v=DKIM1; k=ed25519; p=AAAA"),
            Finding::Wrong("the key is revoked (empty p=)".into())
        );
        assert_eq!(
            check_dkim(Ok(vec!["v=DKIM1; k=rsa; p=AA AA".into()]), "v=DKIM1; p=AAAA"),
            Finding::Ok,
            "whitespace in p= and the default k=rsa"
        );
        assert_eq!(
            check_dkim(Ok(vec!["v=DKIM1; k=rsa; p=AAAA".into()]), "v=DKIM1; k=ed25519; p=AAAA"),
            Finding::Wrong("the published key is not this server's key (old version, another server, or cut short)".into())
        );
    }
}
