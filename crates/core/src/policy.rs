//! An inbox's allow and block lists (issue 13 §2): who may write to it, whom it
//! may write to, and what its agent is shown of mail that failed
//! authentication. Pure rules; the MX, both sending doors and the agent apply
//! them.
//!
//! A pattern is an address (`alice@example.com`, exact, case-insensitive) or a
//! domain (`example.com`), which matches the domain itself and its subdomains,
//! never a substring: [`domain_is_or_under`] is the one rule, shared with the
//! agent's `from_domain` filter.
//!
//! ```
//! use agentkeys_core::policy::{InboxPolicy, ReceiveRefusal};
//!
//! let mut policy = InboxPolicy::default();
//! policy.receive_allow = vec!["github.com".parse().unwrap()];
//! assert_eq!(policy.receive(Some("noreply@github.com"), ""), Ok(()));
//! assert!(matches!(policy.receive(Some("x@evilgithub.com"), ""), Err(ReceiveRefusal::NotAllowed { .. })));
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::Domain;

/// Most patterns in one list (each of the four lists), so a policy stays a
/// small row and one check stays cheap.
pub const MAX_POLICY_PATTERNS: usize = 200;

/// Longest pattern, in bytes (an address: 64 local + `@` + 253 domain, rounded).
pub const MAX_PATTERN_LEN: usize = 320;

fn normalize_domain(d: &str) -> String {
    d.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `candidate` is `parent` or a subdomain of it: `parent` itself or
/// `<label>.…<parent>`. Never a substring (`evilexample.com` is not under
/// `example.com`), case-insensitive, a trailing dot ignored. The one rule for
/// domain patterns: the agent's `from_domain` filter and every allow/block
/// list use it.
pub fn domain_is_or_under(candidate: &str, parent: &str) -> bool {
    let got = normalize_domain(candidate);
    let want = normalize_domain(parent);
    if want.is_empty() {
        return false;
    }
    got == want || got.strip_suffix(want.as_str()).is_some_and(|head| head.ends_with('.') && head.len() > 1)
}

/// One entry of an allow or block list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressPattern {
    /// One exact address, lowercase.
    Address(String),
    /// A domain and its subdomains.
    Domain(Domain),
}

/// Why a pattern is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is neither an address (alice@example.com) nor a domain (example.com)")]
pub struct PatternError {
    /// The text given.
    pub value: String,
}

impl FromStr for AddressPattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, PatternError> {
        let err = || PatternError { value: s.to_owned() };
        let t = s.trim();
        if t.is_empty() || t.len() > MAX_PATTERN_LEN {
            return Err(err());
        }
        match t.rsplit_once('@') {
            Some((local, domain)) => {
                let local_ok = !local.is_empty()
                    && local.len() <= 64
                    && !local.contains(|c: char| c.is_whitespace() || c.is_control() || "@<>\",;:()[]\\".contains(c));
                let domain: Domain = domain.parse().map_err(|_| err())?;
                if !local_ok {
                    return Err(err());
                }
                Ok(Self::Address(format!("{}@{domain}", local.to_lowercase())))
            }
            None => Ok(Self::Domain(t.parse().map_err(|_| err())?)),
        }
    }
}

impl fmt::Display for AddressPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(a) => f.write_str(a),
            Self::Domain(d) => f.write_str(d.as_str()),
        }
    }
}

impl Serialize for AddressPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AddressPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl AddressPattern {
    /// Whether `address` (a bare `local@domain`, any case) is this address or
    /// has this domain or a subdomain of it. Text without `@` matches nothing.
    pub fn matches(&self, address: &str) -> bool {
        let address = address.trim().trim_start_matches('<').trim_end_matches('>');
        let Some((_, domain)) = address.rsplit_once('@') else { return false };
        match self {
            Self::Address(want) => address.to_lowercase() == *want,
            Self::Domain(want) => domain_is_or_under(domain, want.as_str()),
        }
    }
}

/// What the agent is shown of mail our MX did not authenticate (no DMARC
/// pass, no aligned DKIM pass).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unauthenticated {
    /// Shown like any mail (its `authenticated: false` is still reported).
    #[default]
    Show,
    /// Shown, marked as unauthenticated in every listing and answer.
    Label,
    /// Never shown to the agent: lists, waits, OTP reads and MCP skip it.
    Hide,
}

impl Unauthenticated {
    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Show => "show",
            Self::Label => "label",
            Self::Hide => "hide",
        }
    }
}

impl FromStr for Unauthenticated {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "show" => Ok(Self::Show),
            "label" => Ok(Self::Label),
            "hide" => Ok(Self::Hide),
            other => Err(format!("unauthenticated must be show, label or hide, not {other:?}")),
        }
    }
}

/// An inbox's policy. The default lets everything through, like an inbox with
/// no policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxPolicy {
    /// When not empty, only mail whose `From:` matches one of these reaches the inbox.
    #[serde(default)]
    pub receive_allow: Vec<AddressPattern>,
    /// Mail whose `From:` or envelope sender matches one of these never reaches the inbox.
    #[serde(default)]
    pub receive_block: Vec<AddressPattern>,
    /// When not empty, the inbox may send only to recipients matching one of these.
    #[serde(default)]
    pub send_allow: Vec<AddressPattern>,
    /// The inbox may never send to a recipient matching one of these.
    #[serde(default)]
    pub send_block: Vec<AddressPattern>,
    /// What the agent is shown of unauthenticated mail.
    #[serde(default)]
    pub unauthenticated: Unauthenticated,
}

/// Which list refused, for answers and audit details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyList {
    /// `receive_allow`.
    ReceiveAllow,
    /// `receive_block`.
    ReceiveBlock,
    /// `send_allow`.
    SendAllow,
    /// `send_block`.
    SendBlock,
    /// `unauthenticated` (in a refused change only).
    Unauthenticated,
}

impl PolicyList {
    /// The list's name as in the policy document.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReceiveAllow => "receive_allow",
            Self::ReceiveBlock => "receive_block",
            Self::SendAllow => "send_allow",
            Self::SendBlock => "send_block",
            Self::Unauthenticated => "unauthenticated",
        }
    }
}

/// Why mail may not reach an inbox.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiveRefusal {
    /// The `From:` address or the envelope sender is on the block list.
    #[error("sender {sender} is on the inbox's receive block list ({pattern})")]
    Blocked {
        /// The address that matched.
        sender: String,
        /// The pattern it matched.
        pattern: AddressPattern,
    },
    /// The inbox has a receive allow list and the `From:` address is not on it
    /// (or the message has no single `From:` address).
    #[error("sender {sender} is not on the inbox's receive allow list")]
    NotAllowed {
        /// The `From:` address (empty when there is none).
        sender: String,
    },
}

/// Why an inbox may not send to a recipient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendRefusal {
    /// The recipient matches the send block list.
    #[error("recipient {recipient} is on the inbox's send block list ({pattern})")]
    Blocked {
        /// The recipient.
        recipient: String,
        /// The pattern it matched.
        pattern: AddressPattern,
    },
    /// The inbox has a send allow list and the recipient is not on it.
    #[error("recipient {recipient} is not on the inbox's send allow list")]
    NotAllowed {
        /// The recipient.
        recipient: String,
    },
}

impl SendRefusal {
    /// The list that refused.
    pub fn list(&self) -> PolicyList {
        match self {
            Self::Blocked { .. } => PolicyList::SendBlock,
            Self::NotAllowed { .. } => PolicyList::SendAllow,
        }
    }
}

impl ReceiveRefusal {
    /// The list that refused.
    pub fn list(&self) -> PolicyList {
        match self {
            Self::Blocked { .. } => PolicyList::ReceiveBlock,
            Self::NotAllowed { .. } => PolicyList::ReceiveAllow,
        }
    }
}

fn first_match<'a>(list: &'a [AddressPattern], address: &str) -> Option<&'a AddressPattern> {
    list.iter().find(|p| p.matches(address))
}

impl InboxPolicy {
    /// Whether the policy lets everything through (the same as having none).
    pub fn is_open(&self) -> bool {
        *self == Self::default()
    }

    /// Checks the sizes of the lists: at most [`MAX_POLICY_PATTERNS`] each.
    pub fn validate(&self) -> Result<(), String> {
        for (list, patterns) in [
            (PolicyList::ReceiveAllow, &self.receive_allow),
            (PolicyList::ReceiveBlock, &self.receive_block),
            (PolicyList::SendAllow, &self.send_allow),
            (PolicyList::SendBlock, &self.send_block),
        ] {
            if patterns.len() > MAX_POLICY_PATTERNS {
                return Err(format!(
                    "{} has {} patterns; at most {MAX_POLICY_PATTERNS} are allowed",
                    list.as_str(),
                    patterns.len()
                ));
            }
        }
        Ok(())
    }

    /// Whether mail may reach the inbox. `header_from` is the single `From:`
    /// address (`None` when the message has none or several); `envelope_from`
    /// the `MAIL FROM` address (empty for `<>`). The block list applies to both
    /// (whoever controls either is refused); the allow list to `From:` only,
    /// the address the agent reads and DMARC authenticates (an envelope sender
    /// is often a sending service's bounce address).
    pub fn receive(&self, header_from: Option<&str>, envelope_from: &str) -> Result<(), ReceiveRefusal> {
        for sender in header_from.into_iter().chain((!envelope_from.is_empty()).then_some(envelope_from)) {
            if let Some(pattern) = first_match(&self.receive_block, sender) {
                return Err(ReceiveRefusal::Blocked { sender: sender.to_lowercase(), pattern: pattern.clone() });
            }
        }
        if self.receive_allow.is_empty() {
            return Ok(());
        }
        match header_from {
            Some(from) if first_match(&self.receive_allow, from).is_some() => Ok(()),
            other => Err(ReceiveRefusal::NotAllowed { sender: other.unwrap_or_default().to_lowercase() }),
        }
    }

    /// Whether the agent may read mail from `from` (its `From:` address): the
    /// receive lists applied to the address alone, for mail stored before the
    /// policy changed and for OTP reads.
    pub fn allows_sender(&self, from: Option<&str>) -> bool {
        self.receive(from, "").is_ok()
    }

    /// Whether the inbox's agent is shown a stored message whose `From:` is
    /// `header_from` and whose verdict (our MX's, from the header summary) is
    /// `authenticated`: its sender passes the receive lists
    /// ([`allows_sender`](Self::allows_sender)) and, under
    /// `unauthenticated: hide`, it is authenticated. The one rule of the
    /// server's read routes (list, fetch, events) and the agent's tools, applied
    /// with the policy as it is now, so a list changed after mail arrived
    /// applies to that mail too.
    pub fn shows(&self, header_from: Option<&str>, authenticated: bool) -> bool {
        self.allows_sender(header_from) && (authenticated || self.unauthenticated != Unauthenticated::Hide)
    }

    /// Whether `self` refuses at least everything `previous` refuses, on every
    /// list: each block list keeps every pattern it had; each allow list is,
    /// when `previous`'s was empty, anything, and otherwise a non-empty subset
    /// of it; `unauthenticated` moves only from `show` towards `hide`. The
    /// change an agent may make to its own inbox's policy (loosening is its
    /// owner's): `Err` names the first list that would let more through.
    pub fn tightens(&self, previous: &InboxPolicy) -> Result<(), PolicyList> {
        let keeps = |new: &[AddressPattern], old: &[AddressPattern]| old.iter().all(|p| new.contains(p));
        let narrows = |new: &[AddressPattern], old: &[AddressPattern]| old.is_empty() || (!new.is_empty() && keeps(old, new));
        let strictness = |u: Unauthenticated| match u {
            Unauthenticated::Show => 0,
            Unauthenticated::Label => 1,
            Unauthenticated::Hide => 2,
        };
        if !narrows(&self.receive_allow, &previous.receive_allow) {
            return Err(PolicyList::ReceiveAllow);
        }
        if !keeps(&self.receive_block, &previous.receive_block) {
            return Err(PolicyList::ReceiveBlock);
        }
        if !narrows(&self.send_allow, &previous.send_allow) {
            return Err(PolicyList::SendAllow);
        }
        if !keeps(&self.send_block, &previous.send_block) {
            return Err(PolicyList::SendBlock);
        }
        if strictness(self.unauthenticated) < strictness(previous.unauthenticated) {
            return Err(PolicyList::Unauthenticated);
        }
        Ok(())
    }

    /// Whether the inbox may send to `recipient`: the block list first, then
    /// the allow list when there is one.
    pub fn send(&self, recipient: &str) -> Result<(), SendRefusal> {
        if let Some(pattern) = first_match(&self.send_block, recipient) {
            return Err(SendRefusal::Blocked { recipient: recipient.to_lowercase(), pattern: pattern.clone() });
        }
        if self.send_allow.is_empty() || first_match(&self.send_allow, recipient).is_some() {
            return Ok(());
        }
        Err(SendRefusal::NotAllowed { recipient: recipient.to_lowercase() })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn p(s: &str) -> AddressPattern {
        s.parse().unwrap()
    }

    #[test]
    fn patterns_parse_as_address_or_domain() {
        assert_eq!(p("Alice@Example.COM"), AddressPattern::Address("alice@example.com".into()));
        assert_eq!(p("Example.com."), AddressPattern::Domain("example.com".parse().unwrap()));
        for bad in ["", "@example.com", "a@", "a b@example.com", "exa mple.com", "-x.com", "a@b@"] {
            assert!(bad.parse::<AddressPattern>().is_err(), "{bad:?}");
        }
        assert!("x".repeat(MAX_PATTERN_LEN + 1).parse::<AddressPattern>().is_err());
    }

    #[test]
    fn named_cases() {
        let d = p("example.com");
        assert!(d.matches("a@example.com"));
        assert!(d.matches("a@mail.EXAMPLE.com"));
        assert!(!d.matches("a@evilexample.com"));
        assert!(!d.matches("a@example.com.evil"));
        assert!(!d.matches("example.com"));
        let a = p("boss@example.com");
        assert!(a.matches("<Boss@Example.com>"));
        assert!(!a.matches("boss@sub.example.com"));
    }

    #[test]
    fn receive_block_applies_to_from_and_envelope_allow_to_from_only() {
        let mut policy = InboxPolicy { receive_block: vec![p("spam.test")], ..Default::default() };
        assert!(matches!(policy.receive(Some("a@ok.test"), "b@spam.test"), Err(ReceiveRefusal::Blocked { .. })));
        assert!(matches!(policy.receive(Some("a@x.spam.test"), ""), Err(ReceiveRefusal::Blocked { .. })));
        assert_eq!(policy.receive(Some("a@ok.test"), ""), Ok(()));
        policy.receive_allow = vec![p("github.com")];
        assert_eq!(policy.receive(Some("noreply@github.com"), "bounce@sendgrid.net"), Ok(()));
        assert!(matches!(policy.receive(None, "x@github.com"), Err(ReceiveRefusal::NotAllowed { .. })));
        // The block list wins over the allow list.
        policy.receive_block.push(p("evil@github.com"));
        assert!(matches!(policy.receive(Some("evil@github.com"), ""), Err(ReceiveRefusal::Blocked { .. })));
    }

    #[test]
    fn send_lists() {
        let policy = InboxPolicy {
            send_allow: vec![p("partner.test"), p("me@gmail.com")],
            send_block: vec![p("legal.partner.test")],
            ..Default::default()
        };
        assert_eq!(policy.send("a@partner.test"), Ok(()));
        assert_eq!(policy.send("ME@gmail.com"), Ok(()));
        assert_eq!(policy.send("x@gmail.com").unwrap_err().list(), PolicyList::SendAllow);
        assert_eq!(policy.send("a@legal.partner.test").unwrap_err().list(), PolicyList::SendBlock);
        assert!(InboxPolicy::default().send("anyone@anywhere.test").is_ok());
    }

    #[test]
    fn what_the_agent_is_shown() {
        let open = InboxPolicy::default();
        assert!(open.shows(None, false) && open.shows(Some("a@x.test"), false));
        let label = InboxPolicy { unauthenticated: Unauthenticated::Label, ..Default::default() };
        assert!(label.shows(Some("a@x.test"), false));
        let hide = InboxPolicy { unauthenticated: Unauthenticated::Hide, ..Default::default() };
        assert!(hide.shows(Some("a@x.test"), true));
        assert!(!hide.shows(Some("a@x.test"), false));
        let allow = InboxPolicy { receive_allow: vec![p("github.com")], ..Default::default() };
        assert!(allow.shows(Some("noreply@github.com"), false));
        assert!(!allow.shows(Some("noreply@github.com.evil"), true));
        assert!(!allow.shows(None, true), "no From: is no allowed sender");
        let block = InboxPolicy { receive_block: vec![p("spam.test")], ..Default::default() };
        assert!(!block.shows(Some("a@spam.test"), true));
        assert!(block.shows(None, true));
    }

    #[test]
    fn list_size_limit() {
        let mut policy = InboxPolicy { send_block: vec![p("a.test"); MAX_POLICY_PATTERNS], ..Default::default() };
        assert!(policy.validate().is_ok());
        policy.send_block.push(p("b.test"));
        assert!(policy.validate().unwrap_err().contains("send_block"));
    }

    #[test]
    fn json_form() {
        let json = r#"{"receive_allow":["github.com"],"send_block":["x@y.test"],"unauthenticated":"hide"}"#;
        let policy: InboxPolicy = serde_json::from_str(json).unwrap();
        assert_eq!(policy.unauthenticated, Unauthenticated::Hide);
        assert_eq!(serde_json::to_value(&policy).unwrap()["send_block"][0], "x@y.test");
        assert!(serde_json::from_str::<InboxPolicy>(r#"{"receive_allow":["a b"]}"#).is_err());
        assert!(serde_json::from_str::<InboxPolicy>(r#"{"bogus":[]}"#).is_err());
    }

    #[test]
    fn tightening_named_cases() {
        let open = InboxPolicy::default();
        let allow = InboxPolicy { receive_allow: vec![p("a.test"), p("b.test")], ..Default::default() };
        assert_eq!(allow.tightens(&open), Ok(()));
        assert_eq!(open.tightens(&allow), Err(PolicyList::ReceiveAllow), "emptying an allow list opens it");
        let narrower = InboxPolicy { receive_allow: vec![p("a.test")], ..Default::default() };
        assert_eq!(narrower.tightens(&allow), Ok(()));
        assert_eq!(allow.tightens(&narrower), Err(PolicyList::ReceiveAllow));
        let blocked = InboxPolicy { send_block: vec![p("x.test")], ..Default::default() };
        assert_eq!(open.tightens(&blocked), Err(PolicyList::SendBlock));
        let hide = InboxPolicy { unauthenticated: Unauthenticated::Hide, ..Default::default() };
        assert_eq!(hide.tightens(&open), Ok(()));
        assert_eq!(open.tightens(&hide), Err(PolicyList::Unauthenticated));
    }

    fn pattern() -> impl Strategy<Value = AddressPattern> {
        prop_oneof![
            prop::sample::select(vec!["a.test", "b.test", "x.a.test", "c.test"]).prop_map(p),
            prop::sample::select(vec!["u@a.test", "v@x.a.test", "w@c.test"]).prop_map(p),
        ]
    }

    fn policy() -> impl Strategy<Value = InboxPolicy> {
        let list = || prop::collection::vec(pattern(), 0..3);
        let mode = prop::sample::select(vec![Unauthenticated::Show, Unauthenticated::Label, Unauthenticated::Hide]);
        (list(), list(), list(), list(), mode).prop_map(|(ra, rb, sa, sb, u)| InboxPolicy {
            receive_allow: ra,
            receive_block: rb,
            send_allow: sa,
            send_block: sb,
            unauthenticated: u,
        })
    }

    proptest! {
        /// A change that `tightens` never lets through anything the previous
        /// policy refused: no sender, no recipient, no unauthenticated mail.
        #[test]
        fn a_tightened_policy_refuses_everything_the_previous_refused(
            old in policy(),
            new in policy(),
            sender in prop::sample::select(vec!["u@a.test", "v@x.a.test", "w@c.test", "z@b.test", "q@other.test"]),
            authenticated in any::<bool>(),
        ) {
            if new.tightens(&old).is_ok() {
                prop_assert!(old.receive(Some(sender), "").is_ok() || new.receive(Some(sender), "").is_err());
                prop_assert!(old.send(sender).is_ok() || new.send(sender).is_err());
                prop_assert!(old.shows(Some(sender), authenticated) || !new.shows(Some(sender), authenticated));
            }
            // Every policy tightens itself.
            prop_assert_eq!(old.tightens(&old), Ok(()));
        }
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?"
    }

    proptest! {
        /// Over generated domains and look-alikes of them, a domain pattern
        /// matches exactly the domain and its subdomains, on every list.
        #[test]
        fn domain_pattern_is_exact_or_subdomain(
            want in prop::collection::vec(label(), 1..4),
            other in prop::collection::vec(label(), 1..4),
            join in 0usize..6,
            upper in any::<bool>(),
        ) {
            let want = want.join(".");
            let other = other.join(".");
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
            let address = format!("no-reply@{candidate}");
            prop_assert_eq!(domain_is_or_under(&candidate, &want), truth);
            prop_assert_eq!(p(&want).matches(&address), truth);
            let allow = InboxPolicy { receive_allow: vec![p(&want)], send_allow: vec![p(&want)], ..Default::default() };
            prop_assert_eq!(allow.receive(Some(&address), "").is_ok(), truth);
            prop_assert_eq!(allow.send(&address).is_ok(), truth);
            let block = InboxPolicy { receive_block: vec![p(&want)], send_block: vec![p(&want)], ..Default::default() };
            prop_assert_eq!(block.receive(Some(&address), "").is_err(), truth);
            prop_assert_eq!(block.send(&address).is_err(), truth);
        }
    }
}
