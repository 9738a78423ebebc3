//! [`InboxPolicies`] on PostgreSQL: the same statements as on SQLite (one
//! upsert conditional on the inbox's owner, reads joined on address and owner).

use agentkeys_audit::{AuditEvent, AuditReceipt};
use agentkeys_core::policy::InboxPolicy;
use agentkeys_core::{Address, OwnerId, UnixTime};
use async_trait::async_trait;

use super::audit::commit_audited;
use super::{PgStore, backend};
use crate::meta::StoreError;
use crate::policies::{InboxPolicies, decode, encode};
use crate::sqlite::require_ok;

#[async_trait]
impl InboxPolicies for PgStore {
    async fn inbox_policy(&self, inbox: &Address) -> Result<InboxPolicy, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT p.policy FROM inbox_policies p JOIN inboxes i ON i.address = p.inbox AND i.owner = p.owner
              WHERE p.inbox = $1",
        )
        .bind(inbox.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        decode(inbox, row.map(|(p,)| p))
    }

    async fn owner_inbox_policy(&self, owner: &OwnerId, inbox: &Address) -> Result<InboxPolicy, StoreError> {
        let row: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT p.policy FROM inboxes i LEFT JOIN inbox_policies p ON p.inbox = i.address AND p.owner = i.owner
              WHERE i.address = $1 AND i.owner = $2",
        )
        .bind(inbox.as_str())
        .bind(owner.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        match row {
            None => Err(StoreError::NotFound { what: format!("inbox {inbox}") }),
            Some((text,)) => decode(inbox, text),
        }
    }

    async fn set_inbox_policy(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        policy: &InboxPolicy,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let text = encode(policy)?;
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "INSERT INTO inbox_policies (inbox, owner, policy, updated_at)
             SELECT address, owner, $3, $4 FROM inboxes WHERE address = $1 AND owner = $2
             ON CONFLICT (inbox) DO UPDATE SET owner = excluded.owner, policy = excluded.policy, updated_at = excluded.updated_at",
        )
        .bind(inbox.as_str())
        .bind(owner.as_str())
        .bind(&text)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: format!("inbox {inbox}") });
        }
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }
}
