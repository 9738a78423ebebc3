//! The DNS records an operator publishes for a hosted domain, as a BIND zone
//! file snippet.

use crate::keys::DomainKeys;

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

/// The zone file snippet for `keys.domain()`: MX (priority 10 to `mx_host`), SPF,
/// DMARC and both DKIM keys, every name fully qualified.
pub fn zone_file(keys: &DomainKeys, mx_host: &str) -> String {
    let d = keys.domain().as_str();
    let mx = mx_host.trim_end_matches('.');
    let sel = keys.selectors();
    let mut out = String::new();
    out.push_str(&format!(
        "; DNS records for {d} (DKIM key version {}). Publish all of them;\n; {mx} also needs A/AAAA records and a PTR matching its name.\n",
        keys.version()
    ));
    let mut record = |name: &str, kind: &str, rdata: &str| {
        out.push_str(&format!("{name}\t{ZONE_TTL}\tIN\t{kind}\t{rdata}\n"));
    };
    record(&format!("{d}."), "MX", &format!("10 {mx}."));
    record(&format!("{d}."), "TXT", &txt_rdata(SPF_POLICY));
    record(&format!("_dmarc.{d}."), "TXT", &txt_rdata(DMARC_POLICY));
    record(&format!("{}._domainkey.{d}.", sel.ed25519), "TXT", &txt_rdata(&keys.ed25519_txt()));
    record(&format!("{}._domainkey.{d}.", sel.rsa), "TXT", &txt_rdata(&keys.rsa_txt()));
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

    #[test]
    fn quotes_and_backslashes_are_escaped() {
        assert_eq!(txt_rdata("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
