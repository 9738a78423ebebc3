//! The DNS records an operator publishes for a hosted domain, as a BIND zone
//! file snippet.

use crate::keys::DomainKeys;
use crate::mta_sts::{StsMode, StsPolicy, TlsRpt, sts_record};

/// Longest character-string in a TXT record (RFC 1035 §3.3: one length octet).
pub const MAX_TXT_STRING: usize = 255;

/// TTL of the records we print.
pub const ZONE_TTL: u32 = 3600;

/// The DMARC policy we publish: quarantine what fails, strict alignment (we sign
/// with `d=` the exact domain and send with the inbox as envelope sender).
pub const DMARC_POLICY: &str = "v=DMARC1; p=quarantine; adkim=s; aspf=s";

/// The SPF policy we publish: only the domain's MX hosts send for it.
pub const SPF_POLICY: &str = "v=spf1 mx -all";

/// Quotes `value` as the character-strings of one TXT record: chunks of at most
/// [`MAX_TXT_STRING`] bytes, each in double quotes (`"` and `\` escaped; DKIM
/// and our policies contain neither). One chunk stays on the record's line; more
/// are wrapped in parentheses, one per line, which BIND joins into one record.
pub fn txt_rdata(value: &str) -> String {
    let chunks: Vec<String> = value
        .as_bytes()
        .chunks(MAX_TXT_STRING)
        .map(|c| {
            let s = String::from_utf8_lossy(c).replace('\\', "\\\\").replace('"', "\\\"");
            format!("\"{s}\"")
        })
        .collect();
    match chunks.as_slice() {
        [one] => one.clone(),
        many => format!("( {} )", many.join("\n\t\t\t")),
    }
}

/// What a hosted domain publishes besides its DKIM keys: the host its MX
/// record points to, and optionally an MTA-STS policy (RFC 8461) and where TLS
/// reports go (RFC 8460). [`zone_file`] prints it, [`verify_domain`](crate::verify_domain)
/// checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The MX host (no trailing dot).
    pub mx_host: String,
    /// The MTA-STS policy served for `mta-sts.<domain>`; `None` (or a policy in
    /// mode `none`): no `_mta-sts` record.
    pub mta_sts: Option<StsPolicy>,
    /// The `_smtp._tls` record's report addresses.
    pub tls_rpt: Option<TlsRpt>,
}

impl Publication {
    /// MX, SPF, DMARC and DKIM only, the MX pointing to `mx_host`.
    pub fn new(mx_host: &str) -> Self {
        Self { mx_host: mx_host.trim_end_matches('.').to_owned(), mta_sts: None, tls_rpt: None }
    }

    /// The same, publishing `policy` (not when its mode is `none`: nothing to ask of senders).
    #[must_use]
    pub fn with_mta_sts(mut self, policy: StsPolicy) -> Self {
        self.mta_sts = (policy.mode != StsMode::None).then_some(policy);
        self
    }

    /// The same, with a TLS-RPT record.
    #[must_use]
    pub fn with_tls_rpt(mut self, tls_rpt: TlsRpt) -> Self {
        self.tls_rpt = Some(tls_rpt);
        self
    }
}

/// The zone file snippet for `keys.domain()`: MX (priority 10 to the MX host),
/// SPF, DMARC and both DKIM keys, then the `_mta-sts` TXT record (with what
/// `mta-sts.<domain>` needs) and the `_smtp._tls` TXT record when published;
/// every name fully qualified.
pub fn zone_file(keys: &DomainKeys, publication: &Publication) -> String {
    let d = keys.domain().as_str();
    let mx = publication.mx_host.as_str();
    let sel = keys.selectors();
    let mut out = String::new();
    out.push_str(&format!(
        "; DNS records for {d} (DKIM key version {}). Publish all of them;\n; {mx} also needs A/AAAA records and a PTR matching its name.\n",
        keys.version()
    ));
    let record = |out: &mut String, name: &str, kind: &str, rdata: &str| {
        out.push_str(&format!("{name}\t{ZONE_TTL}\tIN\t{kind}\t{rdata}\n"));
    };
    record(&mut out, &format!("{d}."), "MX", &format!("10 {mx}."));
    record(&mut out, &format!("{d}."), "TXT", &txt_rdata(SPF_POLICY));
    record(&mut out, &format!("_dmarc.{d}."), "TXT", &txt_rdata(DMARC_POLICY));
    record(&mut out, &format!("{}._domainkey.{d}.", sel.ed25519), "TXT", &txt_rdata(&keys.ed25519_txt()));
    record(&mut out, &format!("{}._domainkey.{d}.", sel.rsa), "TXT", &txt_rdata(&keys.rsa_txt()));
    if let Some(policy) = &publication.mta_sts {
        out.push_str(&format!(
            "; MTA-STS (RFC 8461), mode {}: senders fetch https://mta-sts.{d}/.well-known/mta-sts.txt.\n\
             ; mta-sts.{d} must point (A/AAAA or CNAME) at an HTTPS front with a valid certificate for\n\
             ; mta-sts.{d} that forwards to this server's HTTP listener (plain HTTP; it serves the policy\n\
             ; for that Host). The id changes whenever the policy does: publish the new one each time.\n",
            policy.mode
        ));
        if !policy.allows_mx(mx) {
            out.push_str(&format!(
                "; WARNING: the MX host {mx} is not in the policy's mx ({}): senders honouring it will not deliver.\n",
                policy.mx_list()
            ));
        }
        record(&mut out, &format!("_mta-sts.{d}."), "TXT", &txt_rdata(&sts_record(&policy.id())));
    }
    if let Some(tls_rpt) = &publication.tls_rpt {
        record(&mut out, &format!("_smtp._tls.{d}."), "TXT", &txt_rdata(&tls_rpt.record()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_one_string() {
        assert_eq!(txt_rdata("v=spf1 mx -all"), "\"v=spf1 mx -all\"");
    }

    #[test]
    fn long_values_split_at_255_bytes_inside_parentheses() {
        let value = format!("v=DKIM1; k=rsa; p={}", "A".repeat(392));
        let golden = format!(
            "( \"v=DKIM1; k=rsa; p={}\"\n\t\t\t\"{}\" )",
            "A".repeat(MAX_TXT_STRING - "v=DKIM1; k=rsa; p=".len()),
            "A".repeat(392 + "v=DKIM1; k=rsa; p=".len() - MAX_TXT_STRING)
        );
        assert_eq!(txt_rdata(&value), golden);
        // Exactly 255 stays one string; 256 becomes two.
        assert_eq!(txt_rdata(&"x".repeat(255)), format!("\"{}\"", "x".repeat(255)));
        assert_eq!(txt_rdata(&"x".repeat(256)), format!("( \"{}\"\n\t\t\t\"x\" )", "x".repeat(255)));
    }

    fn keys() -> DomainKeys {
        let seed = agentkeys_core::MasterSeed::from_bytes([3; 32]);
        let domain: agentkeys_core::Domain = "example.test".parse().unwrap();
        let record = DomainKeys::generate_record(&seed, &domain, 1, &crate::Selectors::default(), 0).unwrap();
        DomainKeys::open(&seed, &record).unwrap()
    }

    #[test]
    fn mta_sts_and_tls_rpt_records_are_printed_when_published() {
        let keys = keys();
        let plain = zone_file(&keys, &Publication::new("mx.example.test."));
        assert!(!plain.contains("_mta-sts") && !plain.contains("_smtp._tls"), "{plain}");
        assert!(plain.contains("example.test.\t3600\tIN\tMX\t10 mx.example.test.\n"), "{plain}");
        let policy = StsPolicy::new(StsMode::Enforce, vec!["mx.example.test".parse().unwrap()], 604_800).unwrap();
        let id = policy.id();
        let full = zone_file(
            &keys,
            &Publication::new("mx.example.test")
                .with_mta_sts(policy.clone())
                .with_tls_rpt(TlsRpt::parse_rua("mailto:tlsrpt@example.com").unwrap()),
        );
        assert!(full.contains(&format!("_mta-sts.example.test.\t3600\tIN\tTXT\t\"v=STSv1; id={id}\"\n")), "{full}");
        assert!(full.contains("_smtp._tls.example.test.\t3600\tIN\tTXT\t\"v=TLSRPTv1; rua=mailto:tlsrpt@example.com\"\n"), "{full}");
        assert!(full.contains("; mta-sts.example.test must point (A/AAAA or CNAME) at an HTTPS front"), "{full}");
        assert!(!full.contains("WARNING"), "{full}");
        let elsewhere = zone_file(&keys, &Publication::new("other.example.net").with_mta_sts(policy));
        assert!(elsewhere.contains("; WARNING: the MX host other.example.net is not in the policy's mx (mx.example.test)"), "{elsewhere}");
        let none = StsPolicy::new(StsMode::None, Vec::new(), 1).unwrap();
        assert_eq!(Publication::new("mx.example.test").with_mta_sts(none).mta_sts, None, "mode none publishes nothing");
    }

    #[test]
    fn quotes_and_backslashes_are_escaped() {
        assert_eq!(txt_rdata("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
