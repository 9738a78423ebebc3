//! Where a recipient goes: the one `RCPT TO` rule of both sending doors (and the
//! MX, which refuses [`RecipientRoute::Remote`] as relaying).

use agentkeys_core::{Address, InboxStatus, OwnerId};
use agentkeys_store::{MetadataStore, Recipient, StoreError};

/// A recipient to look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientQuery {
    /// The envelope address, domain lowercased.
    pub address: String,
    /// Its domain, lowercased.
    pub domain: String,
    /// The address as an inbox id, if it is one by the one inbox address rule
    /// ([`Address`]'s `FromStr`, the rule `inbox create` applies).
    pub inbox: Option<Address>,
}

impl RecipientQuery {
    /// The query for an envelope address (domain lowercased, a trailing dot
    /// dropped); `None` without an `@` (`<>`, `<postmaster>`).
    pub fn parse(address: &str) -> Option<Self> {
        let (local, domain) = address.rsplit_once('@')?;
        let domain = domain.trim_end_matches('.').to_lowercase();
        let address = format!("{local}@{domain}");
        Some(Self {
            inbox: address.parse().ok(),
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
}

/// Answers a [`RecipientQuery`]: is the domain hosted, and if so, which inbox is it.
///
/// An inbox exists only in a hosted domain, so the common case (a known inbox) costs
/// one lookup; the domain is consulted only to tell an unknown inbox (`550 5.1.1`)
/// from a relay attempt (`550 5.7.1`).
pub async fn lookup_recipient(
    meta: &dyn MetadataStore,
    query: &RecipientQuery,
) -> Result<RecipientAnswer, StoreError> {
    if let Some(inbox) = &query.inbox
        && let Some(found) = meta.recipient(inbox).await?
    {
        return Ok(RecipientAnswer::Hosted(Some(found)));
    }
    if meta.is_hosted_domain(&query.domain).await? {
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
                RecipientRoute::Local(LocalRecipient { inbox, owner: recipient.owner })
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
        for not_inbox in ["a..b@agents.localhost", ".a@agents.localhost", "a+b@agents.localhost"] {
            assert_eq!(RecipientQuery::parse(not_inbox).unwrap().inbox, None, "{not_inbox}");
        }
        assert_eq!(RecipientQuery::parse("postmaster"), None);
    }
}
