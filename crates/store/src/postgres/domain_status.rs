//! [`DomainStatusStore`] on PostgreSQL: one statement each, as on SQLite.

use agentkeys_core::{Domain, UnixTime};
use async_trait::async_trait;

use super::{PgStore, backend};
use crate::domain_status::{DOMAIN_STATUSES, DomainStatusRecord, DomainStatusStore};
use crate::meta::StoreError;

#[async_trait]
impl DomainStatusStore for PgStore {
    async fn set_domain_status(
        &self,
        domain: &Domain,
        status: &str,
        detail: Option<&str>,
        checked_at: Option<UnixTime>,
    ) -> Result<(), StoreError> {
        if !DOMAIN_STATUSES.contains(&status) {
            return Err(StoreError::Invalid(format!("unknown domain status {status:?}")));
        }
        let done = sqlx::query("UPDATE domains SET status = $2, status_detail = $3, checked_at = $4 WHERE name = $1")
            .bind(domain.as_str())
            .bind(status)
            .bind(detail)
            .bind(checked_at)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: format!("domain {domain}") });
        }
        Ok(())
    }

    async fn domain_statuses(&self) -> Result<Vec<DomainStatusRecord>, StoreError> {
        let rows: Vec<(String, String, Option<String>, Option<i64>)> =
            sqlx::query_as("SELECT name, status, status_detail, checked_at FROM domains ORDER BY name")
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        rows.into_iter()
            .map(|(name, status, detail, checked_at)| {
                Ok(DomainStatusRecord {
                    domain: name
                        .parse()
                        .map_err(|e| StoreError::Backend(format!("stored domain {name:?} is invalid: {e}")))?,
                    status,
                    detail,
                    checked_at,
                })
            })
            .collect()
    }
}
