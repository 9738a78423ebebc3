//! Where a recipient goes: the one `RCPT TO` rule of both sending doors (and the
//! MX, which refuses [`RecipientRoute::Remote`] as relaying).

use agentkeys_core::{Address, InboxStatus, OwnerId, Subaddressing};
use agentkeys_store::{Recipient, Recipients, StoreError};

/// A recipient to look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientQuery {
    /// The envelope address, domain lowercased.
    pub address: String,
    /// Its domain, lowercased.
    pub domain: String,
    /// The inbox the address is delivered to, if it names one by the one inbox
    /// address rule ([`Address`]'s `FromStr`, the rule `inbox create` applies),
    /// after subaddressing ([`Subaddressing::resolve`]: `bot+tag@d` is `bot@d`).
    /// The inbox lookup and the RCPT cache use this base address only.
    pub inbox: Option<Address>,
    /// The subaddress tag, if the address had one.
    pub tag: Option<String>,
}

impl RecipientQuery {
    /// The query for an envelope address (domain lowercased, a trailing dot
    /// dropped); `None` without an `@` (`<>`, `<postmaster>`).
    pub fn parse(address: &str) -> Option<Self> {
        Self::parse_with(address, &Subaddressing::default())
    }

    /// [`RecipientQuery::parse`] under the configured subaddressing.
    pub fn parse_with(address: &str, subaddressing: &Subaddressing) -> Option<Self> {
        let (local, domain) = address.rsplit_once('@')?;
        let domain = domain.trim_end_matches('.').to_lowercase();
        let address = format!("{local}@{domain}");
        let resolved = subaddressing.resolve(&address);
        Some(Self {
            tag: resolved.as_ref().and_then(|r| r.tag.clone()),
            inbox: resolved.map(|r| r.inbox),
            address,
            domain,
        })
    }
}

/// The answer to a [`RecipientQuery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientAnswer {
    /// The domain is not hosted here.
    NotHosted,
    /// The domain is hosted; the inbox, if it exists.
    Hosted(Option<Recipient>),
}

/// A hosted inbox that receives a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRecipient {
    /// The inbox.
    pub inbox: Address,
    /// Its owner, the first component of the blob key.
    pub owner: OwnerId,
    /// The envelope address as given, lowercased, when it carried a subaddress
    /// tag: the inbox copy starts with `Delivered-To: <it>`.
    pub delivered_to: Option<String>,
}

/// Answers a [`RecipientQuery`]: is the domain hosted, and if so, which inbox is it.
///
/// An inbox exists only in a hosted domain, so the common case (a known inbox) costs
/// one lookup; the domain is consulted only to tell an unknown inbox (`550 5.1.1`)
/// from a relay attempt (`550 5.7.1`).
pub async fn lookup_recipient(
    recipients: &dyn Recipients,
    query: &RecipientQuery,
) -> Result<RecipientAnswer, StoreError> {
    if let Some(inbox) = &query.inbox
        && let Some(found) = recipients.recipient(inbox).await?
    {
        return Ok(RecipientAnswer::Hosted(Some(found)));
    }
    if recipients.is_hosted_domain(&query.domain).await? {
        Ok(RecipientAnswer::Hosted(None))
    } else {
        Ok(RecipientAnswer::NotHosted)
    }
}

/// Where a submitted message's recipient goes, by the store's answer. The one
/// rule of both submission doors (SMTP `RCPT TO` and HTTP send); the MX refuses
/// [`RecipientRoute::Remote`] as relaying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientRoute {
    /// A hosted, active inbox: a local copy.
    Local(LocalRecipient),
    /// Not a hosted domain: queued for remote delivery.
    Remote(String),
    /// A hosted domain without such an inbox (`550 5.1.1`).
    Unknown,
    /// A disabled or suspended inbox (`550 5.2.1`).
    Inactive,
}

/// Routes one recipient ([`RecipientRoute`]).
pub fn route_recipient(query: RecipientQuery, answer: RecipientAnswer) -> RecipientRoute {
    match (answer, query.inbox) {
        (RecipientAnswer::NotHosted, _) => RecipientRoute::Remote(query.address),
        (RecipientAnswer::Hosted(None), _) | (RecipientAnswer::Hosted(Some(_)), None) => RecipientRoute::Unknown,
        (RecipientAnswer::Hosted(Some(recipient)), Some(inbox)) => {
            if recipient.status == InboxStatus::Active {
                let delivered_to = query.tag.is_some().then(|| query.address.to_ascii_lowercase());
                RecipientRoute::Local(LocalRecipient { inbox, owner: recipient.owner, delivered_to })
            } else {
                RecipientRoute::Inactive
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_lowercases_the_domain_and_names_the_inbox_only_when_it_is_one() {
        let q = RecipientQuery::parse("Bot@Agents.Localhost.").unwrap();
        assert_eq!(q.address, "Bot@agents.localhost");
        assert_eq!(q.domain, "agents.localhost");
        assert_eq!(q.inbox.unwrap().as_str(), "bot@agents.localhost");
        // The inbox address rule: not a dot-string, not an inbox (so never a local copy).
        for not_inbox in ["a..b@agents.localhost", ".a@agents.localhost", "a..b+c@agents.localhost", "+b@agents.localhost"] {
            assert_eq!(RecipientQuery::parse(not_inbox).unwrap().inbox, None, "{not_inbox}");
        }
        let tagged = RecipientQuery::parse("Bot+GitHub@Agents.Localhost").unwrap();
        assert_eq!((tagged.inbox.unwrap().as_str(), tagged.tag.as_deref()), ("bot@agents.localhost", Some("github")));
        let off = Subaddressing::new(None).unwrap();
        assert_eq!(RecipientQuery::parse_with("a+b@agents.localhost", &off).unwrap().inbox, None);
        assert_eq!(RecipientQuery::parse("postmaster"), None);
    }
}
