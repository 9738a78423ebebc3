//! The DNS verification status of hosted domains (`agentkeys domain verify`,
//! shown by `domain list`). A separate trait from
//! [`MetadataStore`](crate::MetadataStore): only the CLI uses it.

use agentkeys_core::{Domain, UnixTime};
use async_trait::async_trait;
use serde::Serialize;

use crate::meta::StoreError;
use crate::sqlite::SqliteStore;

/// The states a domain's verification moves through, as stored.
pub const DOMAIN_STATUSES: [&str; 6] = ["not_started", "pending", "verifying", "verified", "invalid", "failed"];

/// A domain's stored verification status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DomainStatusRecord {
    /// The domain.
    pub domain: Domain,
    /// One of [`DOMAIN_STATUSES`].
    pub status: String,
    /// The last check's findings (JSON), if any check ran.
    pub detail: Option<String>,
    /// When the last check ended.
    pub checked_at: Option<UnixTime>,
}

/// Reads and writes domains' verification status.
#[async_trait]
pub trait DomainStatusStore: Send + Sync + 'static {
    /// Sets a hosted domain's status (one of [`DOMAIN_STATUSES`]). `NotFound` if the
    /// domain is not hosted, `Invalid` for an unknown status.
    async fn set_domain_status(
        &self,
        domain: &Domain,
        status: &str,
        detail: Option<&str>,
        checked_at: Option<UnixTime>,
    ) -> Result<(), StoreError>;
    /// Every hosted domain's status, by name.
    async fn domain_statuses(&self) -> Result<Vec<DomainStatusRecord>, StoreError>;
}

#[async_trait]
impl DomainStatusStore for SqliteStore {
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
        let done = sqlx::query("UPDATE domains SET status = ?2, status_detail = ?3, checked_at = ?4 WHERE name = ?1")
            .bind(domain.as_str())
            .bind(status)
            .bind(detail)
            .bind(checked_at)
            .execute(&mut *self.hot_write().await?)
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?;
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
                .map_err(|e| StoreError::Backend(e.to_string()))?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_new_domain_has_not_started_and_the_status_is_stored() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        let domain: Domain = "mail.example.com".parse().unwrap();
        sqlx::query("INSERT INTO domains (name, created_at) VALUES (?1, 0)")
            .bind(domain.as_str())
            .execute(&store.pool)
            .await
            .unwrap();
        let all = store.domain_statuses().await.unwrap();
        assert_eq!(all[0].status, "not_started");
        assert_eq!(all[0].checked_at, None);
        store.set_domain_status(&domain, "invalid", Some("{\"mx\":\"missing\"}"), Some(42)).await.unwrap();
        let all = store.domain_statuses().await.unwrap();
        assert_eq!(all[0].status, "invalid");
        assert_eq!(all[0].detail.as_deref(), Some("{\"mx\":\"missing\"}"));
        assert_eq!(all[0].checked_at, Some(42));
        assert!(matches!(
            store.set_domain_status(&domain, "bogus", None, None).await,
            Err(StoreError::Invalid(_))
        ));
        let other: Domain = "other.example.com".parse().unwrap();
        assert!(matches!(
            store.set_domain_status(&other, "pending", None, None).await,
            Err(StoreError::NotFound { .. })
        ));
    }
}
