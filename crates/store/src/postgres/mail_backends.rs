//! [`MailBackends`] on PostgreSQL: the same statements as on SQLite.

use agentkeys_audit::{AuditEvent, AuditReceipt};
use agentkeys_core::{Domain, UnixTime};
use async_trait::async_trait;

use super::audit::commit_audited;
use super::{PgStore, backend};
use crate::mail_backends::{
    BackendRow, ImportCursor, MailBackendRecord, MailBackends, check_kind, check_status, cursor_from_row, from_row,
};
use crate::meta::StoreError;
use crate::sqlite::require_ok;

#[async_trait]
impl MailBackends for PgStore {
    async fn set_mail_backend(&self, record: &MailBackendRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        check_kind(&record.kind)?;
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "INSERT INTO mail_backends (domain, kind, settings, secret_sealed, status, status_detail, status_at, updated_at)
             SELECT name, $2, $3, $4, 'connecting', NULL, NULL, $5 FROM domains WHERE name = $1
             ON CONFLICT (domain) DO UPDATE SET kind = excluded.kind, settings = excluded.settings,
               secret_sealed = excluded.secret_sealed, status = 'connecting', status_detail = NULL,
               status_at = NULL, updated_at = excluded.updated_at",
        )
        .bind(record.domain.as_str())
        .bind(&record.kind)
        .bind(&record.settings)
        .bind(&record.secret_sealed)
        .bind(record.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: format!("domain {}", record.domain) });
        }
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn clear_mail_backend(&self, domain: &Domain, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        let done = sqlx::query("DELETE FROM mail_backends WHERE domain = $1")
            .bind(domain.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: format!("mail backend of {domain}") });
        }
        sqlx::query("DELETE FROM mail_import_cursors WHERE domain = $1")
            .bind(domain.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn mail_backends(&self) -> Result<Vec<MailBackendRecord>, StoreError> {
        let rows: Vec<BackendRow> = sqlx::query_as(
            "SELECT domain, kind, settings, secret_sealed, status, status_detail, status_at, updated_at
               FROM mail_backends ORDER BY domain",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(from_row).collect()
    }

    async fn set_mail_backend_status(
        &self,
        domain: &Domain,
        status: &str,
        detail: Option<&str>,
        at: UnixTime,
    ) -> Result<(), StoreError> {
        check_status(status)?;
        let done = sqlx::query("UPDATE mail_backends SET status = $2, status_detail = $3, status_at = $4 WHERE domain = $1")
            .bind(domain.as_str())
            .bind(status)
            .bind(detail)
            .bind(at)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: format!("mail backend of {domain}") });
        }
        Ok(())
    }

    async fn import_cursor(&self, domain: &Domain, mailbox: &str) -> Result<Option<ImportCursor>, StoreError> {
        let row: Option<(i64, i64, Option<i64>, Option<String>)> = sqlx::query_as(
            "SELECT uid_validity, last_uid, pending_uid, pending_id FROM mail_import_cursors WHERE domain = $1 AND mailbox = $2",
        )
        .bind(domain.as_str())
        .bind(mailbox)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(row.map(cursor_from_row))
    }

    async fn save_import_cursor(&self, domain: &Domain, mailbox: &str, cursor: &ImportCursor) -> Result<(), StoreError> {
        let (pending_uid, pending_id) = cursor.pending.clone().unzip();
        let done = sqlx::query(
            "INSERT INTO mail_import_cursors (domain, mailbox, uid_validity, last_uid, pending_uid, pending_id)
             SELECT name, $2, $3, $4, $5, $6 FROM domains WHERE name = $1
             ON CONFLICT (domain, mailbox) DO UPDATE SET uid_validity = excluded.uid_validity,
               last_uid = excluded.last_uid, pending_uid = excluded.pending_uid, pending_id = excluded.pending_id",
        )
        .bind(domain.as_str())
        .bind(mailbox)
        .bind(cursor.uid_validity)
        .bind(cursor.last_uid)
        .bind(pending_uid)
        .bind(pending_id)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: format!("domain {domain}") });
        }
        Ok(())
    }

    /// One statement: the conditional upsert decides under the row lock (a
    /// statement that waited for it re-checks the row it waited for); when it
    /// changed nothing, whether the domain exists.
    async fn lease_follower(
        &self,
        domain: &Domain,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let granted: Option<(i64,)> = sqlx::query_as(
            crate::mail_backends::SQL_LEASE_FOLLOWER,
        )
        .bind(domain.as_str())
        .bind(holder)
        .bind(now_ms)
        .bind(ttl_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        if granted.is_none() {
            let hosted: Option<(i32,)> = sqlx::query_as(crate::mail_backends::SQL_HOSTED)
                .bind(domain.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
            if hosted.is_none() {
                return Err(StoreError::NotFound { what: format!("domain {domain}") });
            }
        }
        Ok(granted.map(|(until,)| until))
    }

    async fn release_follower(&self, domain: &Domain, holder: &str) -> Result<(), StoreError> {
        sqlx::query(crate::mail_backends::SQL_RELEASE_FOLLOWER)
            .bind(domain.as_str())
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }
}
