//! [`OwnerMail`] on PostgreSQL: the SQLite statements with `$n` parameters.
//! Presenting a code reads its row `FOR UPDATE`, so of two nodes presenting
//! the same code at once the second waits for the first's commit and then
//! sees it used (or its try counted): exactly one consumes it.

use agentkeys_audit::{AuditEvent, AuditReceipt};
use agentkeys_core::{OwnerId, UnixTime};
use async_trait::async_trait;

use super::audit::commit_audited;
use super::{PgStore, backend, hex32, insert_error};
use crate::meta::StoreError;
use crate::owner_mail::{
    CODE_COLUMNS, CodeCheck, CodeRow, CodeTuple, CodeWrite, EMAIL_CODE_RETENTION_SECS, EmailCodeIssue, EmailCodeLimits,
    EmailCodeRecord, EmailCodeState, EmailLinkView, LinkApproval, OwnerMail, decide, disabled_from, disabled_text,
};
use crate::sqlite::require_ok;

#[async_trait]
impl OwnerMail for PgStore {
    async fn issue_email_code(&self, code: &EmailCodeRecord, limits: EmailCodeLimits) -> Result<EmailCodeIssue, StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM owner_email_codes WHERE expires_at <= $1")
            .bind(code.created_at - EMAIL_CODE_RETENTION_SECS)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        // The owner's row, locked until commit: one owner's issues count one after the other.
        let known: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM owners WHERE id = $1 FOR UPDATE")
            .bind(code.owner.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if known.is_none() {
            return Err(StoreError::NotFound { what: format!("owner {}", code.owner) });
        }
        let (by_owner,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM owner_email_codes WHERE owner = $1 AND created_at >= $2")
            .bind(code.owner.as_str())
            .bind(limits.since)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        if by_owner >= i64::from(limits.per_owner) {
            return Ok(EmailCodeIssue::OwnerLimited);
        }
        if let Some(from) = &code.requested_from {
            let (by_address,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM owner_email_codes WHERE requested_from = $1 AND created_at >= $2")
                    .bind(from)
                    .bind(limits.since)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(backend)?;
            if by_address >= i64::from(limits.per_address) {
                return Ok(EmailCodeIssue::AddressLimited);
            }
        }
        sqlx::query(
            "INSERT INTO owner_email_codes (id, owner, bound_to, code_hash, link_hash, phrase, summary, requested_from, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&code.id)
        .bind(code.owner.as_str())
        .bind(hex32(&code.bound_to))
        .bind(hex32(&code.code_hash))
        .bind(hex32(&code.link_hash))
        .bind(&code.phrase)
        .bind(&code.summary)
        .bind(code.requested_from.as_deref())
        .bind(code.created_at)
        .bind(code.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| insert_error(e, || "an email code with this id or link".to_owned()))?;
        tx.commit().await.map_err(backend)?;
        Ok(EmailCodeIssue::Issued)
    }

    async fn email_code_view(&self, id: &str, max_tries: u32, now: UnixTime) -> Result<Option<EmailLinkView>, StoreError> {
        let row: Option<CodeTuple> = sqlx::query_as(&format!("SELECT {CODE_COLUMNS} FROM owner_email_codes WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(|r| CodeRow::from(r).view(max_tries, now)).transpose()
    }

    async fn approve_email_link(&self, id: &str, link_hash: &[u8; 32], max_tries: u32, now: UnixTime) -> Result<LinkApproval, StoreError> {
        let mut tx = self.begin().await?;
        let row: Option<CodeTuple> =
            sqlx::query_as(&format!("SELECT {CODE_COLUMNS} FROM owner_email_codes WHERE link_hash = $1 AND id = $2 FOR UPDATE"))
                .bind(hex32(link_hash))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
        let Some(row) = row.map(CodeRow::from) else { return Ok(LinkApproval::NotFound) };
        let state = row.state(max_tries, now);
        if state != EmailCodeState::Waiting {
            return Ok(LinkApproval::Refused(state));
        }
        let done = sqlx::query(
            "UPDATE owner_email_codes SET link_approved_at = $1 WHERE id = $2 AND link_approved_at IS NULL AND used_at IS NULL",
        )
        .bind(now)
        .bind(&row.id)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        if done.rows_affected() == 0 {
            return Ok(LinkApproval::Refused(EmailCodeState::LinkApproved));
        }
        let mut view = row.view(max_tries, now)?;
        view.state = EmailCodeState::LinkApproved;
        Ok(LinkApproval::Approved(view))
    }

    async fn consume_email_code(
        &self,
        owner: &OwnerId,
        id: &str,
        bound_to: &[u8; 32],
        code_hash: Option<&[u8; 32]>,
        max_tries: u32,
        now: UnixTime,
    ) -> Result<CodeCheck, StoreError> {
        let mut tx = self.begin().await?;
        let row: Option<CodeTuple> = sqlx::query_as(&format!("SELECT {CODE_COLUMNS} FROM owner_email_codes WHERE id = $1 FOR UPDATE"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        let row = row.map(CodeRow::from);
        let (answer, write) = decide(row.as_ref(), owner, bound_to, code_hash, max_tries, now);
        let query = match write {
            CodeWrite::None => return Ok(answer),
            CodeWrite::Use => sqlx::query("UPDATE owner_email_codes SET used_at = $2 WHERE id = $1 AND used_at IS NULL").bind(id).bind(now),
            CodeWrite::Try => sqlx::query("UPDATE owner_email_codes SET tries = tries + 1 WHERE id = $1 AND used_at IS NULL").bind(id),
        };
        let done = query.execute(&mut *tx).await.map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        if done.rows_affected() == 0 {
            return Ok(CodeCheck::Refused(EmailCodeState::Used));
        }
        Ok(answer)
    }

    async fn notification_settings(&self, owner: &OwnerId) -> Result<Vec<String>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as("SELECT disabled FROM owner_notification_settings WHERE owner = $1")
            .bind(owner.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.map(|(d,)| disabled_from(&d)).unwrap_or_default())
    }

    async fn set_notification_settings(
        &self,
        owner: &OwnerId,
        disabled: &[String],
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let text = disabled_text(disabled)?;
        let mut tx = self.begin().await?;
        let known: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM owners WHERE id = $1")
            .bind(owner.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if known.is_none() {
            return Err(StoreError::NotFound { what: format!("owner {owner}") });
        }
        sqlx::query(
            "INSERT INTO owner_notification_settings (owner, disabled, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (owner) DO UPDATE SET disabled = excluded.disabled, updated_at = excluded.updated_at",
        )
        .bind(owner.as_str())
        .bind(text)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn mark_notice_sent(&self, owner: &OwnerId, key: &str, now: UnixTime) -> Result<bool, StoreError> {
        let done = sqlx::query("INSERT INTO owner_notices_sent (owner, key, sent_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(owner.as_str())
            .bind(key)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }
}
