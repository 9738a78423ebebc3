//! The rules of a wait, without I/O: which messages a wait may hand out
//! (issue 11 §1) and which senders pass as the service (§2).
//!
//! - [`Since`]: the look-back window, `2m` / an RFC 3339 time / a message id,
//!   resolved against the **server's** clock (the clock that stamps message ids),
//!   with millisecond precision, into a [`Window`].
//! - [`SenderRule`]: `from_domain` matches the `From:` address's domain exactly
//!   or as a subdomain, never a substring and never the display name;
//!   `from_address` matches one address exactly.
//! - [`evaluation_order`] / [`choose`]: of the messages seen, the newest that
//!   matches and was not handed out before (unless `include_seen`).
//!
//! ```
//! use agentkeys_agent::wait::{Since, SenderRule};
//!
//! let window = Since::parse("2m").unwrap().window(1_700_000_120_000).unwrap();
//! assert!(window.contains_ms(1_700_000_000_000));
//! assert!(!window.contains_ms(1_699_999_999_999));
//! let rule = SenderRule::new(Some("example.com"), None).unwrap();
//! assert!(rule.domain_matches("mail.example.com"));
//! assert!(!rule.domain_matches("example.com.evil.test"));
//! assert!(!rule.domain_matches("notexample.com"));
//! ```

use std::collections::BTreeSet;

use serde::Serialize;
use ulid::Ulid;

use crate::message::Mailbox;

/// The look-back window when a wait names none: two minutes.
pub const DEFAULT_LOOKBACK_MS: i64 = 2 * 60 * 1000;
/// The longest look-back a wait may ask for: one day. Older mail is for
/// `list_messages`; the hand-out record keeps a little more than this.
pub const MAX_LOOKBACK_MS: i64 = 24 * 60 * 60 * 1000;
/// Longest accepted `since` text.
pub const MAX_SINCE_LEN: usize = 64;

/// Where a wait starts looking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// This many milliseconds before the server's now (`90s`, `2m`, `1h`, `500ms`).
    Ago(i64),
    /// At or after this instant (Unix milliseconds, from RFC 3339).
    At(i64),
    /// Strictly after this message id.
    After(Ulid),
}

impl Default for Since {
    fn default() -> Self {
        Since::Ago(DEFAULT_LOOKBACK_MS)
    }
}

impl Since {
    /// Parses `2m`, `90s`, `1h`, `500ms`, an RFC 3339 time
    /// (`2026-12-07T01:02:03.456Z`, offsets allowed) or a message id (a ULID).
    /// The error names the accepted forms.
    pub fn parse(text: &str) -> Result<Since, String> {
        let t = text.trim();
        let forms = "give a duration before now (90s, 2m, 1h, 500ms), an RFC 3339 time (2026-12-07T01:02:03.456Z) or a message id (a ULID)";
        if t.is_empty() || t.len() > MAX_SINCE_LEN {
            return Err(format!("since {text:?} is not understood: {forms}"));
        }
        if let Some(ms) = parse_duration_ms(t) {
            return Ok(Since::Ago(ms));
        }
        if t.len() == 26
            && let Ok(id) = Ulid::from_string(t)
        {
            return Ok(Since::After(id));
        }
        if let Some(ms) = parse_rfc3339_ms(t) {
            return Ok(Since::At(ms));
        }
        if t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("since {text:?} has no unit: {forms}"));
        }
        Err(format!("since {text:?} is not understood: {forms}"))
    }

    /// The window this gives when the server's clock reads `server_now_ms`.
    /// A start more than [`MAX_LOOKBACK_MS`] ago is refused (the error says so).
    pub fn window(self, server_now_ms: i64) -> Result<Window, String> {
        let (floor_ms, floor) = match self {
            Since::Ago(ms) => {
                let at = server_now_ms.saturating_sub(ms);
                (at, floor_at(at))
            }
            Since::At(ms) => (ms, floor_at(ms)),
            Since::After(id) => (i64::try_from(id.timestamp_ms()).unwrap_or(i64::MAX), id.0),
        };
        if server_now_ms.saturating_sub(floor_ms) > MAX_LOOKBACK_MS {
            return Err(format!(
                "since reaches back more than {} h: a wait looks at recent mail only; use list_messages for older mail",
                MAX_LOOKBACK_MS / 3_600_000
            ));
        }
        Ok(Window { after: floor })
    }
}

/// The ULID just below every id stamped at or after `ms`.
fn floor_at(ms: i64) -> u128 {
    let ms = u64::try_from(ms.max(0)).unwrap_or(0);
    Ulid::from_parts(ms, 0).0.saturating_sub(1)
}

fn parse_duration_ms(t: &str) -> Option<i64> {
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 9 {
        return None;
    }
    let n: i64 = t[..digits].parse().ok()?;
    let unit = match t[digits..].trim() {
        "ms" => 1,
        "s" | "sec" | "secs" => 1000,
        "m" | "min" | "mins" => 60_000,
        "h" | "hr" | "hrs" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// `YYYY-MM-DDTHH:MM:SS[.fff…](Z|±HH:MM)` to Unix milliseconds.
fn parse_rfc3339_ms(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    let num = |s: &[u8]| -> Option<i64> {
        if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(s).ok()?.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    let (hour, minute, second) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &b[19..];
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        let mut digits: Vec<u8> = frac[..n.min(3)].to_vec();
        digits.resize(3, b'0');
        millis = num(&digits)?;
        rest = &frac[n..];
    }
    let offset_min = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let v = num(&[*h1, *h2])? * 60 + num(&[*m1, *m2])?;
            if *sign == b'-' { -v } else { v }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    Some(secs * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The messages a wait looks at: every id above a floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    after: u128,
}

impl Window {
    /// Whether message `id` is in the window.
    pub fn contains(&self, id: Ulid) -> bool {
        id.0 > self.after
    }

    /// Whether a message stamped at `ms` (any random part) is in the window.
    pub fn contains_ms(&self, ms: i64) -> bool {
        self.contains(Ulid::from_parts(u64::try_from(ms.max(0)).unwrap_or(0), u128::MAX >> 48))
    }

    /// The id to resume after (`Last-Event-ID`; `since` of the next call):
    /// passing it back as `since` gives the same window.
    pub fn cursor(&self) -> String {
        Ulid(self.after).to_string()
    }
}

/// Which senders pass: a domain (exact or subdomain), an exact address, or any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderRule {
    domain: Option<String>,
    address: Option<String>,
}

/// Why a message did not pass as the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "refusal", rename_all = "snake_case")]
pub enum Refusal {
    /// The message has no usable `From:` address.
    NoFrom,
    /// The `From:` domain is not the wanted domain nor a subdomain of it, but
    /// looks like it (the wanted name appears in the address or display name).
    LookAlike {
        /// The From address.
        from: String,
        /// Why it looks alike.
        detail: String,
    },
    /// The `From:` address is another one (and does not look like the wanted one).
    OtherSender {
        /// The From address.
        from: String,
    },
    /// The sender matched, but our MX did not authenticate it (no DMARC pass,
    /// no aligned DKIM pass).
    Unauthenticated {
        /// The From address.
        from: String,
        /// The verdict's own words (`Authentication::basis`).
        basis: String,
    },
}

impl Refusal {
    /// Whether this refusal concerns a sender that claims to be the service
    /// (a look-alike or an unauthenticated match), as opposed to unrelated mail.
    pub fn is_spoof_like(&self) -> bool {
        matches!(self, Refusal::LookAlike { .. } | Refusal::Unauthenticated { .. })
    }

    /// One sentence for people and models.
    pub fn describe(&self) -> String {
        match self {
            Refusal::NoFrom => "the message has no From address".to_owned(),
            Refusal::LookAlike { from, detail } => format!("refused look-alike sender {from}: {detail}"),
            Refusal::OtherSender { from } => format!("sender {from} is not the one asked for"),
            Refusal::Unauthenticated { from, basis } => format!(
                "refused sender {from}: not authenticated by our MX ({basis}); anyone can write this From address"
            ),
        }
    }
}

fn normalize_domain(d: &str) -> String {
    d.trim().trim_end_matches('.').to_lowercase()
}

fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-'))
        && !d.contains(|c: char| c.is_whitespace() || "@<>\"',;:/\\()[]".contains(c))
}

impl SenderRule {
    /// A rule from `from_domain` and/or `from_address` (both: both must hold).
    /// The error says what is wrong with the input.
    pub fn new(domain: Option<&str>, address: Option<&str>) -> Result<Self, String> {
        let domain = domain.map(str::trim).filter(|d| !d.is_empty());
        let address = address.map(str::trim).filter(|a| !a.is_empty());
        let domain = match domain {
            None => None,
            Some(d) if d.contains('@') => {
                return Err(format!(
                    "from_domain {d:?} is an address: give the domain (example.com), or use from_address for one exact address"
                ));
            }
            Some(d) => {
                let n = normalize_domain(d);
                if !valid_domain(&n) {
                    return Err(format!("from_domain {d:?} is not a domain name (e.g. example.com)"));
                }
                Some(n)
            }
        };
        let address = match address {
            None => None,
            Some(a) => {
                let a = a.trim_start_matches('<').trim_end_matches('>');
                let ok = a.rsplit_once('@').is_some_and(|(l, d)| !l.is_empty() && valid_domain(&normalize_domain(d)));
                if !ok || a.contains(char::is_whitespace) {
                    return Err(format!("from_address {a:?} is not an address (e.g. no-reply@example.com)"));
                }
                Some(a.to_lowercase())
            }
        };
        Ok(SenderRule { domain, address })
    }

    /// Whether any sender passes.
    pub fn is_any(&self) -> bool {
        self.domain.is_none() && self.address.is_none()
    }

    /// The rule in words (`example.com or a subdomain`).
    pub fn describe(&self) -> String {
        match (&self.domain, &self.address) {
            (None, None) => "any sender".to_owned(),
            (Some(d), None) => format!("{d} or a subdomain"),
            (None, Some(a)) => a.clone(),
            (Some(d), Some(a)) => format!("{a} (in {d})"),
        }
    }

    /// Whether `domain` is the wanted domain or a subdomain of it (true when no
    /// domain is asked).
    pub fn domain_matches(&self, domain: &str) -> bool {
        match &self.domain {
            None => true,
            // The one exact-or-subdomain rule, shared with the inbox allow/block lists.
            Some(want) => agentkeys_core::policy::domain_is_or_under(domain, want),
        }
    }

    /// Checks the `From:` mailbox (address only; the display name never counts).
    pub fn check(&self, from: Option<&Mailbox>) -> Result<(), Refusal> {
        if self.is_any() {
            return Ok(());
        }
        let Some(from) = from else { return Err(Refusal::NoFrom) };
        let address = from.address.trim().to_lowercase();
        let Some((_, domain)) = address.rsplit_once('@') else { return Err(Refusal::NoFrom) };
        let domain_ok = self.domain_matches(domain);
        let address_ok = self.address.as_ref().is_none_or(|a| *a == address);
        if domain_ok && address_ok {
            return Ok(());
        }
        let name = from.name.as_deref().unwrap_or("").to_lowercase();
        let wanted: Vec<&str> = self.domain.iter().chain(self.address.iter()).map(String::as_str).collect();
        let by_name = wanted.iter().any(|w| name.contains(w)).then(|| {
            format!(
                "the display name {:?} names {} but the address is {address}",
                from.name.as_deref().unwrap_or(""),
                wanted.join(" / ")
            )
        });
        let by_domain = || {
            self.domain
                .as_deref()
                .filter(|d| domain.contains(d) || address.contains(d))
                .map(|d| format!("{domain} is neither {d} nor a subdomain of it"))
        };
        let by_address = || {
            self.address
                .as_deref()
                .filter(|a| {
                    let local = a.split('@').next().unwrap_or(a);
                    address.contains(a) || (domain_ok && address.starts_with(local))
                })
                .map(|a| format!("{address} is not exactly {a}"))
        };
        let detail = by_name.or_else(by_domain).or_else(by_address);
        Err(match detail {
            Some(detail) => Refusal::LookAlike { from: from.address.clone(), detail },
            None => Refusal::OtherSender { from: from.address.clone() },
        })
    }
}

/// The order in which a wait looks at the messages already there: newest
/// first, only those in `window`, without those in `handed_out` (unless
/// `include_seen`). The first of them that matches is the answer, so a wait
/// returns the newest matching message not handed out before.
pub fn evaluation_order(ids: &[Ulid], window: Window, handed_out: &BTreeSet<Ulid>, include_seen: bool) -> Vec<Ulid> {
    let mut order: Vec<Ulid> =
        ids.iter().copied().filter(|id| window.contains(*id) && (include_seen || !handed_out.contains(id))).collect();
    order.sort_unstable_by(|a, b| b.cmp(a));
    order.dedup();
    order
}

/// Of `ids` with their verdicts, the one a wait hands out: the first match in
/// [`evaluation_order`].
pub fn choose(seen: &[(Ulid, bool)], window: Window, handed_out: &BTreeSet<Ulid>, include_seen: bool) -> Option<Ulid> {
    let ids: Vec<Ulid> = seen.iter().map(|(id, _)| *id).collect();
    evaluation_order(&ids, window, handed_out, include_seen)
        .into_iter()
        .find(|id| seen.iter().any(|(s, m)| s == id && *m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn since_forms() {
        assert_eq!(Since::parse("2m"), Ok(Since::Ago(120_000)));
        assert_eq!(Since::parse("90s"), Ok(Since::Ago(90_000)));
        assert_eq!(Since::parse("500ms"), Ok(Since::Ago(500)));
        assert_eq!(Since::parse("1h"), Ok(Since::Ago(3_600_000)));
        assert_eq!(Since::parse("2026-12-07T01:02:03.456Z"), Ok(Since::At(1_796_605_323_456)));
        assert_eq!(Since::parse("2026-12-07T02:02:03.4+01:00"), Ok(Since::At(1_796_605_323_400)));
        assert_eq!(Since::parse("1970-01-01T00:00:00Z"), Ok(Since::At(0)));
        let id = Ulid::from_parts(1_796_605_323_456, 7);
        assert_eq!(Since::parse(&id.to_string()), Ok(Since::After(id)));
        for bad in ["", "120", "2 weeks", "yesterday", "2026-13-01T00:00:00Z", "2026-12-07T01:02:03", &"9".repeat(80)] {
            let e = Since::parse(bad).unwrap_err();
            assert!(e.contains("90s") && e.contains("RFC 3339"), "{bad}: {e}");
        }
    }

    #[test]
    fn windows_have_millisecond_precision_and_a_limit() {
        let now = 1_796_605_323_456;
        let w = Since::Ago(200).window(now).unwrap();
        assert!(w.contains(Ulid::from_parts(now as u64 - 200, 0)));
        assert!(!w.contains(Ulid::from_parts(now as u64 - 201, u128::MAX >> 48)));
        let id = Ulid::from_parts(now as u64 - 5, 42);
        let w = Since::After(id).window(now).unwrap();
        assert!(!w.contains(id) && w.contains(Ulid(id.0 + 1)));
        assert_eq!(Since::parse(&w.cursor()).unwrap().window(now).unwrap(), w, "a cursor gives the same window");
        assert!(Since::Ago(MAX_LOOKBACK_MS).window(now).is_ok());
        assert!(Since::Ago(MAX_LOOKBACK_MS + 1).window(now).unwrap_err().contains("24 h"));
    }

    #[test]
    fn the_look_alikes_of_the_issue_are_refused() {
        let rule = SenderRule::new(Some("example.com"), None).unwrap();
        let mb = |name: Option<&str>, a: &str| Mailbox { name: name.map(str::to_owned), address: a.to_owned() };
        assert_eq!(rule.check(Some(&mb(None, "no-reply@example.com"))), Ok(()));
        assert_eq!(rule.check(Some(&mb(None, "no-reply@mail.Example.COM"))), Ok(()));
        for (name, addr) in [
            (None, "no-reply@example.com.evil.test"),
            (None, "no-reply@notexample.com"),
            (Some("no-reply@example.com"), "attacker@evil.test"),
        ] {
            let r = rule.check(Some(&mb(name, addr))).unwrap_err();
            assert!(matches!(r, Refusal::LookAlike { .. }), "{addr}: {r:?}");
        }
        assert!(matches!(rule.check(Some(&mb(None, "news@shop.test"))), Err(Refusal::OtherSender { .. })));
        assert_eq!(rule.check(None), Err(Refusal::NoFrom));
        let exact = SenderRule::new(None, Some("No-Reply@Example.com")).unwrap();
        assert_eq!(exact.check(Some(&mb(None, "no-reply@example.com"))), Ok(()));
        assert!(matches!(exact.check(Some(&mb(None, "no-reply2@example.com"))), Err(Refusal::LookAlike { .. })));
        assert!(SenderRule::new(Some("no-reply@example.com"), None).unwrap_err().contains("from_address"));
        assert!(SenderRule::new(Some("exa mple.com"), None).is_err());
        assert!(SenderRule::new(None, Some("nobody")).is_err());
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?"
    }

    proptest! {
        /// Over generated look-alikes of a generated domain, the rule accepts
        /// exactly the domain and its subdomains.
        #[test]
        fn domain_rule_never_accepts_a_non_subdomain(
            want in prop::collection::vec(label(), 1..4),
            other in prop::collection::vec(label(), 1..4),
            join in 0usize..6,
            upper in any::<bool>(),
        ) {
            let want = want.join(".");
            let rule = SenderRule::new(Some(&want), None).unwrap();
            let other = other.join(".");
            // Look-alikes built from the wanted domain: prefixes glued without a
            // dot, suffixes, infixes, hyphens, and genuine subdomains.
            let candidate = match join {
                0 => format!("{other}{want}"),
                1 => format!("{want}.{other}"),
                2 => format!("{want}{other}"),
                3 => format!("{other}-{want}"),
                4 => format!("{other}.{want}"),
                _ => other.clone(),
            };
            let candidate = if upper { candidate.to_uppercase() } else { candidate };
            let c = candidate.to_lowercase();
            let truth = c == want || c.ends_with(&format!(".{want}"));
            prop_assert_eq!(rule.domain_matches(&candidate), truth, "{} vs {}", candidate, want);
            let mb = Mailbox { name: Some(format!("no-reply@{want}")), address: format!("no-reply@{candidate}") };
            prop_assert_eq!(rule.check(Some(&mb)).is_ok(), truth);
        }

        /// Over generated arrival sequences and hand-outs, `choose` returns the
        /// newest matching message in the window that was not handed out, and
        /// never a handed-out one.
        #[test]
        fn choose_is_the_newest_unseen_match(
            arrivals in prop::collection::vec((0u64..10_000, any::<bool>(), any::<bool>()), 0..40),
            floor in 0u64..10_000,
        ) {
            let base = 1_796_605_000_000u64;
            struct Seen { id: Ulid, matches: bool }
            let seen: Vec<Seen> = arrivals.iter().enumerate()
                .map(|(i, (t, m, _))| Seen { id: Ulid::from_parts(base + t, i as u128 + 1), matches: *m })
                .collect();
            let verdicts: Vec<(Ulid, bool)> = seen.iter().map(|s| (s.id, s.matches)).collect();
            let handed: BTreeSet<Ulid> = arrivals.iter().zip(&seen).filter(|((_, _, h), _)| *h).map(|(_, s)| s.id).collect();
            let window = Since::At((base + floor) as i64).window((base + 20_000) as i64).unwrap();
            let got = choose(&verdicts, window, &handed, false);
            if let Some(id) = got {
                prop_assert!(!handed.contains(&id), "handed out twice");
                prop_assert!(window.contains(id));
                let s = seen.iter().find(|s| s.id == id).unwrap();
                prop_assert!(s.matches);
                prop_assert!(seen.iter().all(|o| !(o.matches && window.contains(o.id) && !handed.contains(&o.id) && o.id > id)));
            } else {
                prop_assert!(seen.iter().all(|o| !(o.matches && window.contains(o.id) && !handed.contains(&o.id))));
            }
            // With include_seen: the newest match, handed out or not.
            let any = choose(&verdicts, window, &handed, true);
            prop_assert_eq!(any, seen.iter().filter(|s| s.matches && window.contains(s.id)).map(|s| s.id).max());
        }
    }
}
