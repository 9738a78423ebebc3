//! Grants: what an agent may do with which inboxes, until when (DESIGN.md §4).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::UnixTime;
use crate::ids::{Address, AgentId, Domain, GrantId, OwnerId};

/// One permission a grant can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read the inbox's messages.
    Read,
    /// Send as the inbox.
    Send,
    /// Manage the inbox.
    Admin,
    /// Create new inboxes under the grant's pattern, for the agent itself, each
    /// with an expiry within the grant's ([`crate::inbox::agent_inbox_expiry`]).
    Create,
}

impl Scope {
    /// Every scope, in canonical order.
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Send, Scope::Admin, Scope::Create];

    fn bit(self) -> u8 {
        match self {
            Self::Read => 1,
            Self::Send => 2,
            Self::Admin => 4,
            Self::Create => 8,
        }
    }

    /// The stored and printed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Send => "send",
            Self::Admin => "admin",
            Self::Create => "create",
        }
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s).ok_or_else(|| {
            format!("unknown scope {s:?}: expected a comma-separated list of read, send, admin, create")
        })
    }
}

/// A non-empty set of scopes, written `read,send`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scopes(u8);

impl Scopes {
    /// Whether `scope` is in the set.
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// The scopes in the set, in canonical order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// Whether every scope of `self` is also in `other` (`self` ⊆ `other`).
    pub fn is_subset_of(self, other: Scopes) -> bool {
        self.0 & !other.0 == 0
    }

    /// Builds a set from scopes; `None` if empty.
    pub fn from_scopes(scopes: impl IntoIterator<Item = Scope>) -> Option<Self> {
        let bits = scopes.into_iter().fold(0, |acc, s| acc | s.bit());
        (bits != 0).then_some(Self(bits))
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Scope::as_str).collect();
        f.write_str(&names.join(","))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({self})")
    }
}

impl FromStr for Scopes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut scopes = Vec::new();
        for part in s.split(',').map(str::trim) {
            scopes.push(part.parse::<Scope>()?);
        }
        Self::from_scopes(scopes).ok_or_else(|| "no scopes given: expected read, send, admin or create".to_owned())
    }
}

/// Which inboxes a grant covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum InboxPattern {
    /// Exactly one address.
    Exact(Address),
    /// Every address starting with the given text (written `prefix*`).
    Prefix(String),
    /// Every address of one domain whose local part starts with the given text
    /// (written `prefix*@domain`, e.g. `signup-*@agents.example.com`).
    PrefixInDomain {
        /// The start of every covered local part (lowercase, not empty).
        prefix: String,
        /// The domain of every covered address.
        domain: Domain,
    },
    /// Every address in a domain (written `*@domain`).
    Domain(Domain),
}

/// Length of the random tail of a generated inbox name ([`InboxPattern::random_address`]).
pub const RANDOM_NAME_LEN: usize = 10;

/// The characters a random tail is drawn from: lowercase letters and digits
/// (base32 without look-alikes), valid in every local part and subaddress-free.
const RANDOM_NAME_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Whether `prefix` may start a pattern's local parts: characters of the
/// inbox alphabet only (`a-z 0-9 . _ -`), not empty, not starting with a dot
/// and without two dots in a row (no covered address could have them).
fn is_local_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && !prefix.starts_with('.')
        && !prefix.contains("..")
        && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

impl InboxPattern {
    /// Whether `address` falls under the pattern, by its text alone. This is only
    /// half of a grant's coverage: a grant covers an inbox when the pattern
    /// matches its address **and** the inbox belongs to the grant's owner
    /// ([`Grant::covers`]); every door decides through that.
    pub fn covers(&self, address: &Address) -> bool {
        match self {
            Self::Exact(a) => a == address,
            Self::Prefix(p) => address.as_str().starts_with(p.as_str()),
            Self::PrefixInDomain { prefix, domain } => {
                address.domain() == domain.as_str() && address.local_part().starts_with(prefix.as_str())
            }
            Self::Domain(d) => address.domain() == d.as_str(),
        }
    }

    /// The one domain every covered address is in, when the pattern fixes it.
    pub fn domain(&self) -> Option<Domain> {
        match self {
            Self::Exact(a) => a.domain().parse().ok(),
            Self::PrefixInDomain { domain, .. } | Self::Domain(domain) => Some(domain.clone()),
            Self::Prefix(_) => None,
        }
    }

    /// A fresh address under the pattern in `domain` (or the pattern's own
    /// domain when `None`): the pattern's local-part prefix (`bot-` for a
    /// domain pattern) followed by [`RANDOM_NAME_LEN`] random characters.
    /// `None` when the pattern cannot name a new address there: an exact
    /// address, another domain, a text prefix that reaches into the domain
    /// (`bot@agents.*`), or no domain at all.
    pub fn random_address(&self, rng: &mut impl rand::RngCore, domain: Option<&Domain>) -> Option<Address> {
        use rand::Rng as _;
        let (prefix, fixed) = match self {
            Self::Exact(_) => return None,
            Self::Prefix(p) if p.contains('@') => return None,
            Self::Prefix(p) => (p.as_str(), None),
            Self::PrefixInDomain { prefix, domain } => (prefix.as_str(), Some(domain)),
            Self::Domain(d) => ("bot-", Some(d)),
        };
        let domain = match (fixed, domain) {
            (Some(f), Some(d)) if f != d => return None,
            (Some(f), _) => f,
            (None, Some(d)) => d,
            (None, None) => return None,
        };
        let tail: String = (0..RANDOM_NAME_LEN)
            .map(|_| char::from(RANDOM_NAME_ALPHABET[rng.gen_range(0..RANDOM_NAME_ALPHABET.len())]))
            .collect();
        let address = Address::new(&format!("{prefix}{tail}"), domain).ok()?;
        self.covers(&address).then_some(address)
    }
}

impl fmt::Display for InboxPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(a) => write!(f, "{a}"),
            Self::Prefix(p) => write!(f, "{p}*"),
            Self::PrefixInDomain { prefix, domain } => write!(f, "{prefix}*@{domain}"),
            Self::Domain(d) => write!(f, "*@{d}"),
        }
    }
}

impl FromStr for InboxPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hint = "expected an address, a prefix ending in * (bot-*), a prefix in a domain (signup-*@domain), or *@domain";
        if let Some(domain) = s.strip_prefix("*@") {
            return domain.parse().map(Self::Domain).map_err(|e| format!("{e}; {hint}"));
        }
        if let Some((prefix, domain)) = s.split_once("*@") {
            let prefix = prefix.to_ascii_lowercase();
            if !is_local_prefix(&prefix) {
                return Err(format!("invalid inbox pattern {s:?}: {hint}"));
            }
            let domain: Domain = domain.parse().map_err(|e| format!("{e}; {hint}"))?;
            return Ok(Self::PrefixInDomain { prefix, domain });
        }
        if let Some(prefix) = s.strip_suffix('*') {
            let prefix = prefix.to_ascii_lowercase();
            let ok = !prefix.is_empty()
                && !prefix.contains('*')
                && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-@".contains(&b));
            return if ok { Ok(Self::Prefix(prefix)) } else { Err(format!("invalid inbox pattern {s:?}: {hint}")) };
        }
        s.parse().map(Self::Exact).map_err(|e| format!("{e}; {hint}"))
    }
}

/// A grant as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Its id.
    pub id: GrantId,
    /// The owner who granted it.
    pub owner: OwnerId,
    /// The agent it is granted to.
    pub agent: AgentId,
    /// The inboxes it covers.
    pub pattern: InboxPattern,
    /// What it allows.
    pub scopes: Scopes,
    /// When it was created.
    pub created_at: UnixTime,
    /// When it stops working.
    pub expires_at: UnixTime,
    /// When it was revoked, if it was.
    pub revoked_at: Option<UnixTime>,
}

impl Grant {
    /// Not revoked and not expired at `now`.
    pub fn is_active(&self, now: UnixTime) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }

    /// Whether the grant covers the inbox `address` owned by `inbox_owner`.
    ///
    /// A grant is scoped to its owner's inboxes: its pattern (`bot-*`,
    /// `*@domain`, an address) only ever matches inboxes that belong to
    /// [`owner`](Self::owner), whoever else has an inbox the text would match.
    /// (Creation also refuses an exact address that is not an inbox of the owner,
    /// `NOT_FOUND`, so such a grant is never stored.)
    pub fn covers(&self, address: &Address, inbox_owner: &OwnerId) -> bool {
        &self.owner == inbox_owner && self.pattern.covers(address)
    }

    /// Active at `now`, carries `scope` and covers the inbox `address` of `inbox_owner`.
    pub fn allows(&self, scope: Scope, address: &Address, inbox_owner: &OwnerId, now: UnixTime) -> bool {
        self.is_active(now) && self.scopes.contains(scope) && self.covers(address, inbox_owner)
    }

    /// Granted by `owner` to `agent`.
    pub fn held_by(&self, agent: &AgentId, owner: &OwnerId) -> bool {
        &self.agent == agent && &self.owner == owner
    }
}

/// What an owner may change on a grant: narrower scopes and a new expiry. The
/// inbox pattern and the agent never change (that is a new grant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantChange {
    /// New scopes; must be a subset of the current ones. `None` keeps them.
    pub scopes: Option<Scopes>,
    /// New expiry; at most [`MAX_GRANT_TTL_SECS`](crate::MAX_GRANT_TTL_SECS) after
    /// the change and after it. `None` keeps it.
    pub expires_at: Option<UnixTime>,
}

/// Why a grant change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantChangeError {
    /// The change names nothing to change.
    #[error("nothing to change: give new scopes, a new lifetime, or both")]
    Empty,
    /// The new scopes are not a subset of the current ones.
    #[error("scopes {requested} are not within the grant's {current}: a change only narrows; create a new grant to allow more")]
    Widens {
        /// The grant's current scopes.
        current: Scopes,
        /// What was asked for.
        requested: Scopes,
    },
    /// The new expiry is not in the future or more than 30 days away.
    #[error("expiry {expires_at} is outside (now, now + 30 days]")]
    Expiry {
        /// What was asked for.
        expires_at: UnixTime,
    },
    /// The grant was revoked; revocation is final.
    #[error("the grant was revoked; revocation is final, create a new grant")]
    Revoked,
}

impl Grant {
    /// The grant after `change` at `now`, or why the change is refused. Scopes only
    /// narrow; the expiry moves anywhere in `(now, now + 30 d]`; a revoked grant
    /// does not change.
    pub fn changed(&self, change: &GrantChange, now: UnixTime) -> Result<Grant, GrantChangeError> {
        if change.scopes.is_none() && change.expires_at.is_none() {
            return Err(GrantChangeError::Empty);
        }
        if self.revoked_at.is_some() {
            return Err(GrantChangeError::Revoked);
        }
        let mut next = self.clone();
        if let Some(scopes) = change.scopes {
            if !scopes.is_subset_of(self.scopes) {
                return Err(GrantChangeError::Widens { current: self.scopes, requested: scopes });
            }
            next.scopes = scopes;
        }
        if let Some(expires_at) = change.expires_at {
            if expires_at <= now || expires_at > now.saturating_add(crate::MAX_GRANT_TTL_SECS) {
                return Err(GrantChangeError::Expiry { expires_at });
            }
            next.expires_at = expires_at;
        }
        Ok(next)
    }
}

/// Why no grant lets an agent use a scope on an inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantMiss {
    /// No unrevoked grant of the agent carries the scope and covers the inbox.
    NoGrant,
    /// Such grants exist, but every one of them has expired.
    Expired,
}

/// The one rule that decides grant coverage, shared by SMTP submission and the
/// token broker: among the grants `owner` gave `agent`, the unrevoked ones carrying
/// `scope` and covering `inbox` (owned by `inbox_owner`, see [`Grant::covers`]);
/// of those, the active one that lasts longest. An inbox of another owner is
/// never covered, whatever the patterns say.
pub fn covering_grant<'a>(
    grants: &'a [Grant],
    agent: &AgentId,
    owner: &OwnerId,
    scope: Scope,
    inbox: &Address,
    inbox_owner: &OwnerId,
    now: UnixTime,
) -> Result<&'a Grant, GrantMiss> {
    let mut covering = grants.iter().filter(|g| {
        g.held_by(agent, owner) && g.revoked_at.is_none() && g.scopes.contains(scope) && g.covers(inbox, inbox_owner)
    });
    let mut any = false;
    let best = covering
        .by_ref()
        .inspect(|_| any = true)
        .filter(|g| g.is_active(now))
        .max_by_key(|g| g.expires_at);
    match best {
        Some(grant) => Ok(grant),
        None if any => Err(GrantMiss::Expired),
        None => Err(GrantMiss::NoGrant),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_scope_sets() -> Vec<Scopes> {
        (1u8..16).map(|bits| Scopes::from_scopes(Scope::ALL.into_iter().filter(|s| bits & s.bit() != 0)).unwrap()).collect()
    }

    fn sample_grant(scopes: Scopes, expires_at: UnixTime) -> Grant {
        Grant {
            id: format!("gr_{}", "a".repeat(22)).parse().unwrap(),
            owner: format!("0x{}", "1".repeat(40)).parse().unwrap(),
            agent: format!("0x{}", "a".repeat(40)).parse().unwrap(),
            pattern: "bot-*".parse().unwrap(),
            scopes,
            created_at: 1_000,
            expires_at,
            revoked_at: None,
        }
    }

    #[test]
    fn a_change_never_widens_scopes() {
        // Every (current, requested) pair of the 15 non-empty scope sets.
        let now = 2_000;
        for current in all_scope_sets() {
            for requested in all_scope_sets() {
                let g = sample_grant(current, now + 100);
                let change = GrantChange { scopes: Some(requested), expires_at: None };
                match g.changed(&change, now) {
                    Ok(next) => {
                        assert!(next.scopes.is_subset_of(current), "{current} -> {requested} widened");
                        assert_eq!(next.scopes, requested);
                        assert_eq!((next.pattern, next.agent, next.owner, next.id), (g.pattern, g.agent, g.owner, g.id));
                    }
                    Err(e) => {
                        assert!(!requested.is_subset_of(current), "{current} -> {requested} refused: {e}");
                        assert!(matches!(e, GrantChangeError::Widens { .. }));
                    }
                }
            }
        }
    }

    #[test]
    fn a_change_keeps_expiry_within_thirty_days_and_revocation_final() {
        let now = 10_000;
        let g = sample_grant("read,send".parse().unwrap(), now + 60);
        let at = |t| GrantChange { scopes: None, expires_at: Some(t) };
        assert_eq!(g.changed(&at(now + crate::MAX_GRANT_TTL_SECS), now).unwrap().expires_at, now + crate::MAX_GRANT_TTL_SECS);
        assert_eq!(g.changed(&at(now + 1), now).unwrap().expires_at, now + 1);
        for bad in [now, now - 1, now + crate::MAX_GRANT_TTL_SECS + 1, i64::MAX] {
            assert_eq!(g.changed(&at(bad), now), Err(GrantChangeError::Expiry { expires_at: bad }));
        }
        assert_eq!(g.changed(&GrantChange { scopes: None, expires_at: None }, now), Err(GrantChangeError::Empty));
        let revoked = Grant { revoked_at: Some(now - 5), ..g };
        assert_eq!(revoked.changed(&at(now + 60), now), Err(GrantChangeError::Revoked));
    }

    #[test]
    fn patterns() {
        let a: Address = "bot-1@agents.localhost".parse().unwrap();
        let b: Address = "other@agents.localhost".parse().unwrap();
        let c: Address = "bot-1@else.test".parse().unwrap();
        let exact: InboxPattern = "bot-1@agents.localhost".parse().unwrap();
        let prefix: InboxPattern = "bot-*".parse().unwrap();
        let domain: InboxPattern = "*@agents.localhost".parse().unwrap();
        assert!(exact.covers(&a) && !exact.covers(&b) && !exact.covers(&c));
        assert!(prefix.covers(&a) && !prefix.covers(&b) && prefix.covers(&c));
        assert!(domain.covers(&a) && domain.covers(&b) && !domain.covers(&c));
        for p in [&exact, &prefix, &domain] {
            assert_eq!(&p.to_string().parse::<InboxPattern>().unwrap(), p);
        }
        for bad in ["*", "a*b*", "*@", "not an address", "x y*"] {
            assert!(bad.parse::<InboxPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn covering_grant_prefers_the_longest_active_one() {
        let owner: OwnerId = format!("0x{}", "1".repeat(40)).parse().unwrap();
        let other: OwnerId = format!("0x{}", "2".repeat(40)).parse().unwrap();
        let agent: AgentId = format!("0x{}", "a".repeat(40)).parse().unwrap();
        let inbox: Address = "bot-1@agents.localhost".parse().unwrap();
        let grant = |n: u8, pattern: &str, scopes: &str, expires_at: UnixTime, revoked: bool, owner: &OwnerId| Grant {
            id: format!("gr_{}", char::from(b'a' + n).to_string().repeat(22)).parse().unwrap(),
            owner: owner.clone(),
            agent: agent.clone(),
            pattern: pattern.parse().unwrap(),
            scopes: scopes.parse().unwrap(),
            created_at: 0,
            expires_at,
            revoked_at: revoked.then_some(1),
        };
        let now = 100;
        let pick = |grants: &[Grant]| covering_grant(grants, &agent, &owner, Scope::Send, &inbox, &owner, now).map(|g| g.id.clone());
        assert_eq!(pick(&[]), Err(GrantMiss::NoGrant));
        // Wrong scope, revoked, another owner's, not covering: none count.
        let ignored = [
            grant(0, "bot-*", "read", 200, false, &owner),
            grant(1, "bot-*", "send", 200, true, &owner),
            grant(2, "bot-*", "send", 200, false, &other),
            grant(3, "x@agents.localhost", "send", 200, false, &owner),
        ];
        assert_eq!(pick(&ignored), Err(GrantMiss::NoGrant));
        let expired = [grant(4, "bot-*", "send", now, false, &owner)];
        assert_eq!(pick(&expired), Err(GrantMiss::Expired));
        let mixed = [
            grant(5, "bot-*", "send", 150, false, &owner),
            grant(6, "*@agents.localhost", "read,send", 300, false, &owner),
            grant(7, "bot-1@agents.localhost", "send", 50, false, &owner),
        ];
        assert_eq!(pick(&mixed).unwrap(), mixed[1].id);
        // The same grants never cover an inbox of another owner, even one whose
        // address every pattern matches.
        let foreign = covering_grant(&mixed, &agent, &owner, Scope::Send, &inbox, &other, now);
        assert_eq!(foreign.map(|g| g.id.clone()), Err(GrantMiss::NoGrant));
        for g in &mixed {
            assert!(g.pattern.covers(&inbox) && g.covers(&inbox, &owner) && !g.covers(&inbox, &other));
            assert!(!g.allows(Scope::Send, &inbox, &other, now));
        }
    }

    #[test]
    fn scopes() {
        let s: Scopes = "send,read".parse().unwrap();
        assert_eq!(s.to_string(), "read,send");
        assert!(s.contains(Scope::Send) && !s.contains(Scope::Admin));
        assert!("".parse::<Scopes>().is_err());
        assert!("read,write".parse::<Scopes>().is_err());
        let c: Scopes = "create, read".parse().unwrap();
        assert_eq!(c.to_string(), "read,create");
        assert!(c.contains(Scope::Create) && !c.contains(Scope::Send));
        assert!("read".parse::<Scopes>().unwrap().is_subset_of(c));
        assert!(!c.is_subset_of("read,send,admin".parse().unwrap()), "create is not implied by the others");
        for set in all_scope_sets() {
            assert_eq!(set.to_string().parse::<Scopes>().unwrap(), set, "{set}");
        }
    }

    #[test]
    fn prefix_in_domain_patterns() {
        let signup: InboxPattern = "Signup-*@Agents.Localhost".parse().unwrap();
        assert_eq!(signup.to_string(), "signup-*@agents.localhost");
        assert_eq!(signup.domain(), Some("agents.localhost".parse().unwrap()));
        for (address, covered) in [
            ("signup-gh@agents.localhost", true),
            ("signup-@agents.localhost", true), // `*` matches the empty tail too
            ("signup@agents.localhost", false),
            ("xsignup-gh@agents.localhost", false),
            ("signup-gh@agents.localhost.evil", false),
            ("signup-gh@sub.agents.localhost", false),
        ] {
            let a: Address = address.parse().unwrap();
            assert_eq!(signup.covers(&a), covered, "{address}");
        }
        for bad in ["@x*@agents.localhost", ".a*@agents.localhost", "a..b*@agents.localhost", "a*b*@agents.localhost", "a*@", "a*@bad domain"] {
            assert!(bad.parse::<InboxPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn random_addresses_stay_under_their_pattern() {
        let d: Domain = "agents.localhost".parse().unwrap();
        let other: Domain = "else.test".parse().unwrap();
        let mut rng = rand::thread_rng();
        let signup: InboxPattern = "signup-*@agents.localhost".parse().unwrap();
        let a = signup.random_address(&mut rng, None).unwrap();
        assert!(a.local_part().starts_with("signup-") && a.local_part().len() == "signup-".len() + RANDOM_NAME_LEN);
        assert_eq!(signup.random_address(&mut rng, Some(&d)).map(|a| signup.covers(&a)), Some(true));
        assert_eq!(signup.random_address(&mut rng, Some(&other)), None, "another domain");
        let domain: InboxPattern = "*@agents.localhost".parse().unwrap();
        assert!(domain.random_address(&mut rng, None).unwrap().local_part().starts_with("bot-"));
        let prefix: InboxPattern = "bot-*".parse().unwrap();
        assert_eq!(prefix.random_address(&mut rng, None), None, "a text prefix needs a domain");
        assert_eq!(prefix.random_address(&mut rng, Some(&other)).map(|a| a.domain().to_owned()), Some("else.test".to_owned()));
        let exact: InboxPattern = "bot-1@agents.localhost".parse().unwrap();
        assert_eq!(exact.random_address(&mut rng, Some(&d)), None);
        let into_domain: InboxPattern = "bot@agents.*".parse().unwrap();
        assert_eq!(into_domain.random_address(&mut rng, Some(&d)), None);
    }

    mod generated {
        use proptest::prelude::*;

        use super::super::*;

        fn pattern() -> impl Strategy<Value = InboxPattern> {
            let domain = "[a-z]{1,8}(\\.[a-z]{1,8}){0,2}".prop_map(|d| d.parse::<Domain>().unwrap());
            let local = "[a-z0-9]{1,6}([-_.][a-z0-9]{1,6}){0,2}";
            prop_oneof![
                (local, domain.clone()).prop_map(|(l, d)| InboxPattern::Exact(Address::new(&l, &d).unwrap())),
                "[a-z0-9][a-z0-9_-]{0,8}".prop_map(InboxPattern::Prefix),
                ("[a-z0-9][a-z0-9_-]{0,8}", domain.clone())
                    .prop_map(|(prefix, domain)| InboxPattern::PrefixInDomain { prefix, domain }),
                domain.prop_map(InboxPattern::Domain),
            ]
        }

        fn scopes() -> impl Strategy<Value = Scopes> {
            (1u8..16).prop_map(|bits| Scopes::from_scopes(Scope::ALL.into_iter().filter(|s| bits & s.bit() != 0)).unwrap())
        }

        proptest! {
            /// Every pattern prints to text that parses back to it (grants are
            /// stored as text), and a random address it names is one it covers.
            #[test]
            fn patterns_round_trip_and_name_only_covered_addresses(p in pattern(), seed: u64) {
                prop_assert_eq!(&p.to_string().parse::<InboxPattern>().unwrap(), &p);
                let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
                let fallback: Domain = "fallback.test".parse().unwrap();
                if let Some(a) = p.random_address(&mut rng, Some(&fallback)) {
                    prop_assert!(p.covers(&a), "{} does not cover {}", p, a);
                    if let Some(d) = p.domain() {
                        prop_assert_eq!(a.domain(), d.as_str());
                    }
                }
            }

            /// Scopes print and parse back; a change narrows to exactly the
            /// requested set when it is a subset (create included) and is
            /// refused otherwise.
            #[test]
            fn scopes_round_trip_and_changes_only_narrow(current in scopes(), requested in scopes()) {
                prop_assert_eq!(current.to_string().parse::<Scopes>().unwrap(), current);
                let g = sample_grant(current, 3_000);
                let change = GrantChange { scopes: Some(requested), expires_at: None };
                match g.changed(&change, 2_000) {
                    Ok(next) => {
                        prop_assert!(requested.is_subset_of(current));
                        prop_assert_eq!(next.scopes, requested);
                    }
                    Err(e) => {
                        prop_assert!(!requested.is_subset_of(current));
                        let widens = matches!(e, GrantChangeError::Widens { .. });
                        prop_assert!(widens);
                    }
                }
            }
        }

        fn sample_grant(scopes: Scopes, expires_at: UnixTime) -> Grant {
            super::sample_grant(scopes, expires_at)
        }
    }
}
