//! Identifiers (DESIGN.md §3): owners and agents, addresses and domains, grant and key ids.
//!
//! Every identifier is validated once, at the edge, by `FromStr`; after that the
//! type is proof that the string is well-formed and in canonical (lowercase) form.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Longest local part of an inbox address.
pub const MAX_LOCAL_PART_LEN: usize = 64;
/// Longest domain name (RFC 1035).
pub const MAX_DOMAIN_LEN: usize = 253;
/// Longest label of a domain name (RFC 1035).
pub const MAX_DOMAIN_LABEL_LEN: usize = 63;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const BASE32_LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Why an identifier was refused. The message says what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// An owner or agent id that is not `0x` followed by 40 hex digits.
    #[error("invalid {kind} id {value:?}: expected 0x followed by 40 hex digits")]
    WalletId {
        /// `owner` or `agent`.
        kind: &'static str,
        /// The refused input.
        value: String,
    },
    /// An address that is not `local@domain` with a valid local part and domain.
    #[error(
        "invalid address {value:?}: expected local@domain, local part of 1-64 characters from a-z 0-9 . _ - \
         with no dot first, last or next to another dot"
    )]
    Address {
        /// The refused input.
        value: String,
    },
    /// A domain name that is not a valid hostname.
    #[error("invalid domain {value:?}: expected a hostname such as agents.example.com")]
    Domain {
        /// The refused input.
        value: String,
    },
    /// A random id without its prefix or with a wrong body.
    #[error("invalid {kind} id {value:?}: expected {prefix} followed by {len} letters or digits")]
    RandomId {
        /// `grant` or `key`.
        kind: &'static str,
        /// The required prefix.
        prefix: &'static str,
        /// The body length.
        len: usize,
        /// The refused input.
        value: String,
    },
}

/// Draws `len` base62 characters.
pub fn random_base62(rng: &mut impl rand::RngCore, len: usize) -> String {
    (0..len).map(|_| BASE62[rng.gen_range(0..BASE62.len())] as char).collect()
}

fn parse_wallet(kind: &'static str, s: &str) -> Result<String, IdError> {
    let err = || IdError::WalletId { kind, value: s.to_owned() };
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).ok_or_else(err)?;
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(err());
    }
    Ok(format!("0x{}", hex.to_ascii_lowercase()))
}

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The canonical string form.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// An owner (the human): `0x` + 40 lowercase hex digits.
    OwnerId
);
string_id!(
    /// An agent: `0x` + 40 lowercase hex digits.
    AgentId
);
string_id!(
    /// A hosted or remote domain name, lowercase.
    Domain
);
string_id!(
    /// An inbox address `local@domain`; the inbox id is the address itself.
    Address
);
string_id!(
    /// A grant id: `gr_` + 22 base62 characters.
    GrantId
);
string_id!(
    /// An agent key id (not the secret): `key_` + 16 base62 characters.
    KeyId
);

impl FromStr for OwnerId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        parse_wallet("owner", s).map(Self)
    }
}

impl FromStr for AgentId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        parse_wallet("agent", s).map(Self)
    }
}

impl AgentId {
    /// A fresh random agent id (`0x` + 40 hex digits), for an agent the
    /// operator adds without naming one. Paired agents derive theirs from the
    /// device key instead.
    pub fn generate(rng: &mut impl rand::RngCore) -> Self {
        let mut bytes = [0u8; 20];
        rng.fill_bytes(&mut bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Self(format!("0x{hex}"))
    }
}

impl FromStr for Domain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= MAX_DOMAIN_LABEL_LEN
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if lower.is_empty() || lower.len() > MAX_DOMAIN_LEN || !lower.split('.').all(valid_label) {
            return Err(IdError::Domain { value: s.to_owned() });
        }
        Ok(Self(lower))
    }
}

impl FromStr for Address {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let err = || IdError::Address { value: s.to_owned() };
        let (local, domain) = s.rsplit_once('@').ok_or_else(err)?;
        let local = local.to_ascii_lowercase();
        if !is_inbox_local_part(&local) {
            return Err(err());
        }
        let domain: Domain = domain.parse().map_err(|_| err())?;
        Ok(Self(format!("{local}@{domain}")))
    }
}

/// The one rule for an inbox's local part, used wherever an inbox address is
/// made or looked up (`inbox create`, the MX's `RCPT TO`, both sending doors):
/// 1 to [`MAX_LOCAL_PART_LEN`] characters from `a-z 0-9 . _ -` (lowercase; callers
/// lowercase first), forming an RFC 5321 dot-string: dot-separated atoms, so no
/// dot first, last or next to another (`.`, `.a`, `a.`, `a..b` are refused, as
/// every SMTP client and server refuses them unquoted).
fn is_inbox_local_part(local: &str) -> bool {
    let atom_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-';
    !local.is_empty()
        && local.len() <= MAX_LOCAL_PART_LEN
        && local.split('.').all(|atom| !atom.is_empty() && atom.bytes().all(atom_char))
}

impl Address {
    /// Builds an address from a checked local part and domain.
    pub fn new(local: &str, domain: &Domain) -> Result<Self, IdError> {
        format!("{local}@{domain}").parse()
    }

    /// A random `bot-<10 base32>` address in `domain` (DESIGN.md §3).
    pub fn random_bot(rng: &mut impl rand::RngCore, domain: &Domain) -> Self {
        let tail: String =
            (0..10).map(|_| BASE32_LOWER[rng.gen_range(0..BASE32_LOWER.len())] as char).collect();
        Self(format!("bot-{tail}@{domain}"))
    }

    /// The local part, before the `@`.
    pub fn local_part(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(l, _)| l)
    }

    /// The domain part, after the `@`.
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

/// Local parts no inbox may take, on any hosted domain: the addresses the
/// server itself sends from (`notifications`, the sender of the owner's
/// notices and emailed approval codes; `mailer-daemon`, the sender of
/// delivery status notifications) and the role mailboxes RFC 5321 §4.5.1 and
/// RFC 2142 give the operator (`postmaster`, `abuse`, `hostmaster`). An agent
/// holding one could receive the replies and bounces to the owner's notices,
/// or pose as the server to the people its mail reaches.
pub const RESERVED_LOCAL_PARTS: [&str; 5] = ["notifications", "mailer-daemon", "postmaster", "abuse", "hostmaster"];

/// Whether an inbox named `local` (any case) is one of [`RESERVED_LOCAL_PARTS`].
pub fn is_reserved_local_part(local: &str) -> bool {
    RESERVED_LOCAL_PARTS.iter().any(|r| r.eq_ignore_ascii_case(local))
}

/// The subaddress separator when none is configured (RFC 5233's `+`).
pub const DEFAULT_SUBADDRESS_SEPARATOR: char = '+';
/// The characters that may separate an inbox's local part from a tag.
pub const SUBADDRESS_SEPARATORS: [char; 4] = ['+', '-', '_', '='];

/// Subaddressing (RFC 5233 style): `local<sep>tag@domain` is delivered to the
/// inbox `local@domain`. With a separator from inside the inbox alphabet (`-`,
/// `_`) inboxes whose local part contains it cannot be created
/// ([`Subaddressing::check_inbox`]), so every address resolves to one inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subaddressing {
    separator: Option<char>,
}

impl Default for Subaddressing {
    fn default() -> Self {
        Self { separator: Some(DEFAULT_SUBADDRESS_SEPARATOR) }
    }
}

/// A recipient resolved by [`Subaddressing::resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The inbox that receives the mail.
    pub inbox: Address,
    /// The tag after the separator, lowercase; `None` for the plain address.
    pub tag: Option<String>,
}

impl Subaddressing {
    /// Subaddressing with `separator`, or none at all (`None`: `a+b@d` is no inbox).
    /// A separator outside [`SUBADDRESS_SEPARATORS`] is refused.
    pub fn new(separator: Option<char>) -> Result<Self, String> {
        match separator {
            Some(c) if !SUBADDRESS_SEPARATORS.contains(&c) => Err(format!(
                "subaddress separator {c:?} is not one of + - _ = (or empty to turn subaddressing off)"
            )),
            _ => Ok(Self { separator }),
        }
    }

    /// Parses a configured separator: one of `+ - _ =`, or empty for none.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut chars = s.chars();
        match (chars.next(), chars.next()) {
            (None, _) => Self::new(None),
            (Some(c), None) => Self::new(Some(c)),
            _ => Err(format!("subaddress separator {s:?} must be one character of + - _ = (or empty)")),
        }
    }

    /// The separator, if subaddressing is on.
    pub fn separator(&self) -> Option<char> {
        self.separator
    }

    /// The inbox an envelope address is delivered to, and its tag: the local part
    /// up to the first separator must be an inbox local part (the one address
    /// rule); the tag after it is 1 or more characters from `a-z 0-9 . _ - + =`,
    /// and the whole local part at most [`MAX_LOCAL_PART_LEN`] characters and a
    /// dot-string. Without a separator in it, exactly `address.parse::<Address>()`.
    pub fn resolve(&self, address: &str) -> Option<Resolved> {
        let (local, domain) = address.rsplit_once('@')?;
        let local = local.to_ascii_lowercase();
        let split = self.separator.and_then(|sep| local.split_once(sep));
        let Some((base, tag)) = split else {
            return address.parse().ok().map(|inbox| Resolved { inbox, tag: None });
        };
        let tag_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-+=".contains(&b);
        let tag_ok = !tag.is_empty()
            && tag.bytes().all(tag_char)
            && !tag.ends_with('.')
            && !tag.starts_with('.')
            && !tag.contains("..");
        if !tag_ok || local.len() > MAX_LOCAL_PART_LEN || !is_inbox_local_part(base) {
            return None;
        }
        let domain: Domain = domain.parse().ok()?;
        Some(Resolved { inbox: Address(format!("{base}@{domain}")), tag: Some(tag.to_owned()) })
    }

    /// Refuses an inbox whose local part contains the separator: mail to it would
    /// go to the part before the separator.
    pub fn check_inbox(&self, inbox: &Address) -> Result<(), String> {
        match self.separator {
            Some(sep) if inbox.local_part().contains(sep) => Err(format!(
                "{inbox} contains the subaddress separator {sep:?}: mail to it would be delivered to {}@{}; \
                 pick a name without {sep:?}",
                inbox.local_part().split(sep).next().unwrap_or(""),
                inbox.domain()
            )),
            _ => Ok(()),
        }
    }

    /// The one rule for a new inbox's name, used by every way of creating one
    /// (`inbox create`, the owner API and console, an agent's `create_inbox`):
    /// not a reserved name ([`RESERVED_LOCAL_PARTS`], in any case and with or
    /// without a subaddress tag, nor the part of one before the separator),
    /// then [`Subaddressing::check_inbox`].
    pub fn check_new_inbox(&self, inbox: &Address) -> Result<(), String> {
        let local = inbox.local_part();
        let base = self.separator.and_then(|sep| local.split(sep).next()).unwrap_or(local);
        // Under a separator inside a reserved name (`-`: `mailer-daemon` is
        // `mailer`'s subaddress), the part before it is reserved too.
        let reserved_base = |name: &str| {
            self.separator.and_then(|sep| name.split(sep).next()).is_some_and(|b| b.eq_ignore_ascii_case(local))
        };
        if is_reserved_local_part(local) || is_reserved_local_part(base) || RESERVED_LOCAL_PARTS.iter().any(|r| reserved_base(r)) {
            return Err(format!(
                "{inbox} is reserved: the server sends from it or it belongs to the operator ({}); pick another name",
                RESERVED_LOCAL_PARTS.join(", ")
            ));
        }
        self.check_inbox(inbox)
    }

    /// A random inbox address (`bot-<10 base32>`, `bot.<...>` when `-` is the separator).
    pub fn random_inbox(&self, rng: &mut impl rand::RngCore, domain: &Domain) -> Address {
        let bot = Address::random_bot(rng, domain);
        match self.separator {
            Some('-') => Address(bot.0.replacen('-', ".", 1)),
            _ => bot,
        }
    }
}

fn parse_random(
    s: &str,
    kind: &'static str,
    prefix: &'static str,
    len: usize,
) -> Result<String, IdError> {
    match s.strip_prefix(prefix) {
        Some(body) if body.len() == len && body.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            Ok(s.to_owned())
        }
        _ => Err(IdError::RandomId { kind, prefix, len, value: s.to_owned() }),
    }
}

/// Body length of a grant id.
pub const GRANT_ID_LEN: usize = 22;
/// Body length of a key id.
pub const KEY_ID_LEN: usize = 16;

impl FromStr for GrantId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        parse_random(s, "grant", "gr_", GRANT_ID_LEN).map(Self)
    }
}

impl GrantId {
    /// A fresh random grant id.
    pub fn generate(rng: &mut impl rand::RngCore) -> Self {
        Self(format!("gr_{}", random_base62(rng, GRANT_ID_LEN)))
    }
}

impl FromStr for KeyId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        parse_random(s, "key", "key_", KEY_ID_LEN).map(Self)
    }
}

impl KeyId {
    /// A fresh random key id.
    pub fn generate(rng: &mut impl rand::RngCore) -> Self {
        Self(format!("key_{}", random_base62(rng, KEY_ID_LEN)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_agent_ids_parse() {
        let mut rng = rand::thread_rng();
        for _ in 0..100 {
            let id = AgentId::generate(&mut rng);
            assert_eq!(id.as_str().parse::<AgentId>().unwrap(), id);
        }
    }

    #[test]
    fn wallet_ids_are_lowercased_and_checked() {
        let id: OwnerId = "0xABCDEF0123456789abcdef0123456789ABCDEF01".parse().unwrap();
        assert_eq!(id.as_str(), "0xabcdef0123456789abcdef0123456789abcdef01");
        for bad in ["", "0x", "abcdef0123456789abcdef0123456789abcdef01", "0x123", "0xg000000000000000000000000000000000000000"] {
            assert!(bad.parse::<AgentId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        let a: Address = "Bot.One_2-x@Agents.Localhost".parse().unwrap();
        assert_eq!(a.as_str(), "bot.one_2-x@agents.localhost");
        assert_eq!(a.local_part(), "bot.one_2-x");
        assert_eq!(a.domain(), "agents.localhost");
        let long = format!("{}@a.b", "x".repeat(MAX_LOCAL_PART_LEN + 1));
        for bad in [
            "", "@a.b", "a@", "a b@c.d", "a+b@c.d", "a@-c.d", "a@c..d", long.as_str(),
            // Not a dot-string: the MX could never receive mail for these.
            ".@a.b", "..@a.b", ".a@a.b", "a.@a.b", "a..b@a.b", "a.b..c@a.b",
        ] {
            assert!(bad.parse::<Address>().is_err(), "{bad:?}");
        }
        assert!(format!("{}@a.b", "x".repeat(MAX_LOCAL_PART_LEN)).parse::<Address>().is_ok());
        for good in ["a.b@a.b", "a.b.c@a.b", "-@a.b", "_x_@a.b", "a-.b_@a.b"] {
            assert!(good.parse::<Address>().is_ok(), "{good:?}");
        }
        assert!(matches!(Address::new("a..b", &"a.b".parse().unwrap()), Err(IdError::Address { .. })));
    }

    /// The rule over every local part of up to 5 characters from a, `.`, `-`, `_`:
    /// accepted exactly when it is dot-separated non-empty atoms.
    #[test]
    fn local_parts_are_dot_strings_exhaustively() {
        let alphabet = [b'a', b'.', b'-', b'_'];
        let mut checked = 0;
        for len in 1..=5u32 {
            for n in 0..4usize.pow(len) {
                let local: String = (0..len).map(|i| alphabet[(n >> (2 * i)) & 3] as char).collect();
                let dot_string = !local.starts_with('.') && !local.ends_with('.') && !local.contains("..");
                assert_eq!(format!("{local}@a.b").parse::<Address>().is_ok(), dot_string, "{local:?}");
                checked += 1;
            }
        }
        assert_eq!(checked, 4 + 16 + 64 + 256 + 1024);
    }

    #[test]
    fn random_ids_round_trip() {
        let mut rng = rand::thread_rng();
        let d: Domain = "agents.localhost".parse().unwrap();
        let bot = Address::random_bot(&mut rng, &d);
        assert_eq!(bot.as_str().parse::<Address>().unwrap(), bot);
        assert!(bot.local_part().starts_with("bot-") && bot.local_part().len() == 14);
        let g = GrantId::generate(&mut rng);
        assert_eq!(g.as_str().parse::<GrantId>().unwrap(), g);
        let k = KeyId::generate(&mut rng);
        assert_eq!(k.as_str().parse::<KeyId>().unwrap(), k);
        assert!("gr_short".parse::<GrantId>().is_err());
    }

    #[test]
    fn subaddresses_resolve_to_the_base_inbox() {
        let plus = Subaddressing::default();
        let r = plus.resolve("Hello+GitHub@Agents.Localhost").unwrap();
        assert_eq!((r.inbox.as_str(), r.tag.as_deref()), ("hello@agents.localhost", Some("github")));
        let r = plus.resolve("hello+a+b@agents.localhost").unwrap();
        assert_eq!(r.tag.as_deref(), Some("a+b"));
        assert_eq!(plus.resolve("hello@agents.localhost").unwrap().tag, None);
        for none in ["+x@a.b", "hello+@a.b", "a..b+x@a.b", "hello+x.@a.b", "hello+x y@a.b", "hello+x@-a.b"] {
            assert_eq!(plus.resolve(none), None, "{none}");
        }
        let long = format!("{}+x@a.b", "h".repeat(MAX_LOCAL_PART_LEN - 1));
        assert_eq!(plus.resolve(&long), None);
        let off = Subaddressing::new(None).unwrap();
        assert_eq!(off.resolve("hello+x@a.b"), None);
        let dash = Subaddressing::parse("-").unwrap();
        assert_eq!(dash.resolve("a-b-c@a.b").unwrap().inbox.as_str(), "a@a.b");
        assert!(dash.check_inbox(&"a-b@a.b".parse().unwrap()).unwrap_err().contains("a@a.b"));
        assert!(plus.check_inbox(&"a-b@a.b".parse().unwrap()).is_ok());
        let bot = dash.random_inbox(&mut rand::thread_rng(), &"a.b".parse().unwrap());
        assert!(dash.check_inbox(&bot).is_ok() && bot.local_part().starts_with("bot."));
        assert!(Subaddressing::parse(".").is_err() && Subaddressing::parse("++").is_err() && Subaddressing::parse("@").is_err());
        assert_eq!(Subaddressing::parse("").unwrap().separator(), None);
    }

    proptest::proptest! {
        /// Resolution agrees with the one address rule: whatever resolves names an
        /// inbox that can be created (a valid address without the separator) and
        /// is the local part up to the first separator; an address without the
        /// separator resolves exactly when it is an inbox address.
        #[test]
        fn resolution_is_consistent_with_the_address_rule(
            local in "[a-cA._+=-]{0,70}",
            sep in proptest::sample::select(vec![None, Some('+'), Some('-'), Some('_'), Some('=')]),
        ) {
            let rule = Subaddressing::new(sep).unwrap();
            let address = format!("{local}@agents.localhost");
            let lower = local.to_ascii_lowercase();
            match rule.resolve(&address) {
                Some(Resolved { inbox, tag }) => {
                    proptest::prop_assert_eq!(inbox.as_str().parse::<Address>().ok(), Some(inbox.clone()));
                    proptest::prop_assert!(rule.check_inbox(&inbox).is_ok());
                    let rebuilt = match (&tag, sep) {
                        (Some(t), Some(s)) => format!("{}{s}{t}", inbox.local_part()),
                        (None, _) => inbox.local_part().to_owned(),
                        (Some(_), None) => unreachable!("a tag without a separator"),
                    };
                    proptest::prop_assert_eq!(&rebuilt, &lower);
                }
                None => {
                    let has_sep = sep.is_some_and(|s| lower.contains(s));
                    if !has_sep {
                        proptest::prop_assert!(address.parse::<Address>().is_err());
                    }
                }
            }
            if !sep.is_some_and(|s| lower.contains(s)) {
                proptest::prop_assert_eq!(rule.resolve(&address).map(|r| r.inbox), address.parse::<Address>().ok());
            }
        }

        /// Every creatable inbox with every valid tag resolves back to that inbox and tag.
        #[test]
        fn every_inbox_and_tag_round_trips(
            base in "[a-z0-9_-]{1,10}(\\.[a-z0-9_-]{1,10}){0,2}",
            tag in "[a-z0-9_=+-]{1,10}(\\.[a-z0-9_=+-]{1,10}){0,2}",
            sep in proptest::sample::select(SUBADDRESS_SEPARATORS.to_vec()),
        ) {
            let rule = Subaddressing::new(Some(sep)).unwrap();
            let inbox: Address = format!("{base}@agents.localhost").parse().unwrap();
            proptest::prop_assume!(rule.check_inbox(&inbox).is_ok());
            let r = rule.resolve(&format!("{base}{sep}{tag}@Agents.Localhost")).unwrap();
            proptest::prop_assert_eq!(r.inbox, inbox);
            proptest::prop_assert_eq!(r.tag.as_deref(), Some(tag.as_str()));
        }

        /// A reserved name cannot be taken in any case or with any tag, under
        /// any separator setting: the name as typed is no address, or the
        /// creation rule refuses it; and mail to any of these variants resolves
        /// to the reserved name itself, which no inbox holds.
        #[test]
        fn reserved_names_cannot_be_created_in_any_variant(
            which in 0..RESERVED_LOCAL_PARTS.len(),
            mask in proptest::collection::vec(proptest::bool::ANY, 16),
            tag in proptest::option::of("[A-Za-z0-9_=+.-]{1,8}"),
            sep in proptest::sample::select(vec![None, Some('+'), Some('-'), Some('_'), Some('=')]),
            typed_sep in proptest::sample::select(SUBADDRESS_SEPARATORS.to_vec()),
        ) {
            let rule = Subaddressing::new(sep).unwrap();
            let cased: String = RESERVED_LOCAL_PARTS[which]
                .chars()
                .zip(mask.iter().cycle())
                .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
                .collect();
            let typed = match &tag {
                Some(t) => format!("{cased}{typed_sep}{t}"),
                None => cased.clone(),
            };
            let domain: Domain = "agents.localhost".parse().unwrap();
            if let Ok(address) = Address::new(&typed, &domain) {
                let refused = rule.check_new_inbox(&address);
                // Only a tag that is an ordinary name part under this setting
                // (e.g. `notifications-x` with `+` as the separator) makes
                // another, unreserved inbox.
                let other_name = sep != Some(typed_sep) && tag.is_some();
                proptest::prop_assert!(refused.is_err() || other_name, "{typed} was accepted");
                if let Err(e) = refused {
                    proptest::prop_assert!(e.contains("reserved") || e.contains("separator"), "{}", e);
                }
            }
            // Whatever inbox mail to the reserved name (or its subaddress) is
            // delivered to, no one can create it.
            if let Some(r) = rule.resolve(&format!("{typed}@Agents.Localhost"))
                && (tag.is_none() || sep == Some(typed_sep))
            {
                proptest::prop_assert!(rule.check_new_inbox(&r.inbox).is_err(), "{typed} is delivered to {}", r.inbox);
            }
        }
    }

    #[test]
    fn reserved_names_are_refused_and_others_are_not() {
        let plus = Subaddressing::default();
        let domain: Domain = "agents.localhost".parse().unwrap();
        for name in RESERVED_LOCAL_PARTS {
            let err = plus.check_new_inbox(&Address::new(name, &domain).unwrap()).unwrap_err();
            assert!(err.contains("reserved") && err.contains("pick another name"), "{err}");
        }
        assert!(plus.check_new_inbox(&Address::new("NotiFications", &domain).unwrap()).is_err());
        assert!(Address::new("notifications+x", &domain).is_err(), "a tag is no inbox name");
        for fine in ["notification", "notifications.bot", "my-postmaster", "abuse2", "bot"] {
            assert!(plus.check_new_inbox(&Address::new(fine, &domain).unwrap()).is_ok(), "{fine}");
        }
        // With `-` as the separator, `postmaster-x` is postmaster's subaddress,
        // and `mailer-daemon` is `mailer`'s: `mailer` is reserved too.
        let dash = Subaddressing::parse("-").unwrap();
        assert!(dash.check_new_inbox(&Address::new("postmaster-x", &domain).unwrap()).unwrap_err().contains("reserved"));
        assert!(dash.check_new_inbox(&Address::new("mailer", &domain).unwrap()).unwrap_err().contains("reserved"));
        assert!(plus.check_new_inbox(&Address::new("mailer", &domain).unwrap()).is_ok());
        assert_eq!(plus.resolve("Notifications+x@agents.localhost").unwrap().inbox.local_part(), "notifications");
    }
}
