//! [`MailBackends`]: which hosted domains receive and send through an external
//! provider (issue 14), their sealed credentials, the status the server last
//! saw, and the import cursors that make an external source's messages arrive
//! once. SQLite here, PostgreSQL in `postgres/mail_backends.rs`; a domain
//! without a row uses the native MTA.

use agentkeys_audit::{AuditEvent, AuditReceipt};
use agentkeys_core::{Domain, UnixTime};
use async_trait::async_trait;

use crate::meta::StoreError;
use crate::sqlite::{SqliteStore, backend, commit_audited, require_ok};

/// The backend kinds stored (the native MTA has no row).
pub const MAIL_BACKEND_KINDS: [&str; 2] = ["imap", "ses"];
/// The statuses a backend's follower reports.
pub const MAIL_BACKEND_STATUSES: [&str; 4] = ["connecting", "running", "auth_failed", "failing"];
/// Audit operation of setting a domain's backend.
pub const OP_DOMAIN_SET_BACKEND: &str = "domain.set_backend";
/// Audit operation of a backend's login being refused by the provider.
pub const OP_BACKEND_AUTH_FAILED: &str = "backend.auth_failed";

/// A domain's stored backend.
#[derive(Clone, PartialEq, Eq)]
pub struct MailBackendRecord {
    /// The hosted domain.
    pub domain: Domain,
    /// One of [`MAIL_BACKEND_KINDS`].
    pub kind: String,
    /// The backend's settings (JSON; never a secret).
    pub settings: String,
    /// The provider credential, sealed (opened only by the server).
    pub secret_sealed: Vec<u8>,
    /// One of [`MAIL_BACKEND_STATUSES`].
    pub status: String,
    /// What the last status change said (no secret).
    pub status_detail: Option<String>,
    /// When the status last changed.
    pub status_at: Option<UnixTime>,
    /// When the backend was set.
    pub updated_at: UnixTime,
}

impl std::fmt::Debug for MailBackendRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailBackendRecord")
            .field("domain", &self.domain)
            .field("kind", &self.kind)
            .field("settings", &self.settings)
            .field("status", &self.status)
            .field("status_detail", &self.status_detail)
            .finish_non_exhaustive()
    }
}

/// Where an external source's import stands: the source's generation
/// (IMAP UIDVALIDITY), the highest position stored, and the one message being
/// stored, under the id it is stored with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImportCursor {
    /// The source's generation; a change means every position restarts.
    pub uid_validity: i64,
    /// Every message up to this position is stored.
    pub last_uid: i64,
    /// The message being stored: its position and the message id (ULID text).
    pub pending: Option<(i64, String)>,
}

/// Stores domains' backends and import cursors.
#[async_trait]
pub trait MailBackends: Send + Sync + 'static {
    /// Sets (replaces) a hosted domain's backend, status `connecting`, audited
    /// in the same transaction. `NotFound` if the domain is not hosted,
    /// `Invalid` for an unknown kind.
    async fn set_mail_backend(&self, record: &MailBackendRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError>;
    /// Makes a domain native again (removes its backend and cursors), audited.
    /// `NotFound` if it had no backend.
    async fn clear_mail_backend(&self, domain: &Domain, event: &AuditEvent) -> Result<AuditReceipt, StoreError>;
    /// Every domain with a backend, by name.
    async fn mail_backends(&self) -> Result<Vec<MailBackendRecord>, StoreError>;
    /// Records what a backend's follower saw. `NotFound` without a backend,
    /// `Invalid` for an unknown status.
    async fn set_mail_backend_status(
        &self,
        domain: &Domain,
        status: &str,
        detail: Option<&str>,
        at: UnixTime,
    ) -> Result<(), StoreError>;
    /// A source's cursor; `None` before the first import.
    async fn import_cursor(&self, domain: &Domain, mailbox: &str) -> Result<Option<ImportCursor>, StoreError>;
    /// Writes a source's cursor (durably, before the caller goes on).
    /// `NotFound` if the domain is not hosted.
    async fn save_import_cursor(&self, domain: &Domain, mailbox: &str, cursor: &ImportCursor) -> Result<(), StoreError>;
    /// Takes or renews the follower lease of `domain`'s receive source for
    /// `holder` until `now_ms + ttl_ms`, in one atomic step across every
    /// process on the store: granted when no one holds it, when its lease ended
    /// at or before `now_ms`, or when `holder` holds it already. Answers the
    /// new end, or `None` while another holder's lease runs (nothing changes).
    /// `NotFound` if the domain is not hosted.
    async fn lease_follower(
        &self,
        domain: &Domain,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<i64>, StoreError>;
    /// Ends `holder`'s lease of `domain` at once (anyone may take it); nothing
    /// if another holds it.
    async fn release_follower(&self, domain: &Domain, holder: &str) -> Result<(), StoreError>;
}

/// The follower lease's statements, the same text on both backends (SQLite
/// reads `$n` as numbered parameters too): the conditional upsert that takes
/// or renews ($1 domain, $2 holder, $3 now, $4 ttl), the hosted check, the release.
pub(crate) const SQL_LEASE_FOLLOWER: &str = "INSERT INTO backend_leases (domain, holder, until_ms)
     SELECT name, $2, $3 + $4 FROM domains WHERE name = $1
     ON CONFLICT (domain) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
       WHERE backend_leases.holder = excluded.holder OR backend_leases.until_ms <= $3
     RETURNING until_ms";
pub(crate) const SQL_HOSTED: &str = "SELECT 1 FROM domains WHERE name = $1";
pub(crate) const SQL_RELEASE_FOLLOWER: &str = "DELETE FROM backend_leases WHERE domain = $1 AND holder = $2";

pub(crate) fn check_kind(kind: &str) -> Result<(), StoreError> {
    if MAIL_BACKEND_KINDS.contains(&kind) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("unknown mail backend kind {kind:?}")))
    }
}

pub(crate) fn check_status(status: &str) -> Result<(), StoreError> {
    if MAIL_BACKEND_STATUSES.contains(&status) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("unknown mail backend status {status:?}")))
    }
}

pub(crate) type BackendRow = (String, String, String, Vec<u8>, String, Option<String>, Option<i64>, i64);

pub(crate) fn from_row(row: BackendRow) -> Result<MailBackendRecord, StoreError> {
    let (domain, kind, settings, secret_sealed, status, status_detail, status_at, updated_at) = row;
    Ok(MailBackendRecord {
        domain: domain.parse().map_err(|e| StoreError::Backend(format!("stored domain {domain:?} is invalid: {e}")))?,
        kind,
        settings,
        secret_sealed,
        status,
        status_detail,
        status_at,
        updated_at,
    })
}

pub(crate) fn cursor_from_row(row: (i64, i64, Option<i64>, Option<String>)) -> ImportCursor {
    let (uid_validity, last_uid, pending_uid, pending_id) = row;
    ImportCursor { uid_validity, last_uid, pending: pending_uid.zip(pending_id) }
}

#[async_trait]
impl MailBackends for SqliteStore {
    async fn set_mail_backend(&self, record: &MailBackendRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        check_kind(&record.kind)?;
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "INSERT INTO mail_backends (domain, kind, settings, secret_sealed, status, status_detail, status_at, updated_at)
             SELECT name, ?2, ?3, ?4, 'connecting', NULL, NULL, ?5 FROM domains WHERE name = ?1
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
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("DELETE FROM mail_backends WHERE domain = ?1")
            .bind(domain.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: format!("mail backend of {domain}") });
        }
        sqlx::query("DELETE FROM mail_import_cursors WHERE domain = ?1")
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
        let done = sqlx::query("UPDATE mail_backends SET status = ?2, status_detail = ?3, status_at = ?4 WHERE domain = ?1")
            .bind(domain.as_str())
            .bind(status)
            .bind(detail)
            .bind(at)
            .execute(&mut *self.hot_write().await?)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: format!("mail backend of {domain}") });
        }
        Ok(())
    }

    async fn import_cursor(&self, domain: &Domain, mailbox: &str) -> Result<Option<ImportCursor>, StoreError> {
        let row: Option<(i64, i64, Option<i64>, Option<String>)> = sqlx::query_as(
            "SELECT uid_validity, last_uid, pending_uid, pending_id FROM mail_import_cursors WHERE domain = ?1 AND mailbox = ?2",
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
             SELECT name, ?2, ?3, ?4, ?5, ?6 FROM domains WHERE name = ?1
             ON CONFLICT (domain, mailbox) DO UPDATE SET uid_validity = excluded.uid_validity,
               last_uid = excluded.last_uid, pending_uid = excluded.pending_uid, pending_id = excluded.pending_id",
        )
        .bind(domain.as_str())
        .bind(mailbox)
        .bind(cursor.uid_validity)
        .bind(cursor.last_uid)
        .bind(pending_uid)
        .bind(pending_id)
        .execute(&mut *self.hot_write().await?)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: format!("domain {domain}") });
        }
        Ok(())
    }

    /// One write transaction (SQLite's one writer makes it atomic): the
    /// conditional upsert, then, when it changed nothing, whether the domain exists.
    async fn lease_follower(
        &self,
        domain: &Domain,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let mut tx = self.write_tx().await?;
        let granted: Option<(i64,)> = sqlx::query_as(
            SQL_LEASE_FOLLOWER,
        )
        .bind(domain.as_str())
        .bind(holder)
        .bind(now_ms)
        .bind(ttl_ms)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        if granted.is_none() {
            let hosted: Option<(i64,)> = sqlx::query_as(SQL_HOSTED)
                .bind(domain.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
            if hosted.is_none() {
                return Err(StoreError::NotFound { what: format!("domain {domain}") });
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(granted.map(|(until,)| until))
    }

    async fn release_follower(&self, domain: &Domain, holder: &str) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query(SQL_RELEASE_FOLLOWER)
            .bind(domain.as_str())
            .bind(holder)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }
}
