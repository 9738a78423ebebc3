//! The metadata role traits ([`Recipients`], [`Directory`], [`KeysAndGrants`],
//! [`AuthLookup`], [`OwnerApproval`], [`Pairing`], [`AuditLog`], [`Checkpoints`],
//! [`Outbox`]) for [`PgStore`]: the same statements as the SQLite backend, with
//! the locks and conditions that keep each contract when several nodes write at
//! once (module docs of [`super`]).

use agentkeys_audit::{AuditEvent, AuditReceipt, AuditRecord, ChainHead, SealedRecord, hash_from_hex, hash_to_hex};
use agentkeys_core::{
    Address, AgentId, AuthFacts, Credentials, Domain, Grant, GrantId, InboxPattern, InboxStatus, KeyFacts, KeyHash, KeyId,
    OwnerId, UnixTime,
};
use async_trait::async_trait;
use sqlx::PgConnection;

use super::audit::commit_audited;
use super::{PgStore, backend, constraint, hex32, insert_error, is_foreign_key_violation, is_unique_violation, to_i64};
use crate::meta::{
    AgentRecord, AuditFilter, AuditLog, AuthLookup, CheckpointRecord, Checkpoints, Directory, DomainKeyRecord, EnrollmentTicketRecord,
    InboxExpiry, InboxRecord, KeyRecord, KeysAndGrants, NewOutbound, NonceUse, Outbox, OwnerApproval, OwnerRecord, Pairing,
    MAX_AUDIT_SEARCH_PAGE, PairingRecord, Recipient, Recipients, StoreError,
};
use crate::sqlite::{
    AgentRow, AuditRow, AuthRow, CHECKPOINT_COLUMNS, CheckpointRow, DOMAIN_KEYS_COLUMNS, DomainKeyRow, GrantRow,
    INBOX_COLUMNS, InboxRow, check_inbox_expiry,
    KeyRow, OwnerRow, PairingRow, agent_from_row, audit_from_row, auth_facts_from_rows, checkpoint_from_row,
    domain_keys_from_row, domain_not_hosted, grant_from_row, head_from_row, inbox_from_row, key_from_row, owner_from_row,
    pairing_from_row, require_ok, stored, stored_key_hash,
};

/// Key of the transaction-scoped advisory lock that serializes checkpoint
/// additions across nodes (`0x616b636b7074`, "akckpt").
const CHECKPOINT_LOCK: i64 = 0x616b_636b_7074;

/// Revokes a grant by id; `$3`, when not NULL, must be the grant's owner.
const REVOKE_GRANT: &str =
    "UPDATE grants SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 AND ($3::text IS NULL OR owner = $3)";
/// Revokes an agent key by id; `$3`, when not NULL, must own the key's agent.
const REVOKE_KEY: &str = "UPDATE agent_keys SET revoked_at = COALESCE(revoked_at, $1)
  WHERE id = $2 AND ($3::text IS NULL OR agent IN (SELECT id FROM agents WHERE owner = $3))";

const AUDIT_COLUMNS: &str = "seq, ts, actor, operation, subject, outcome, detail, prev_hash, hash";
const GRANT_COLUMNS: &str = "id, owner, agent, pattern, scopes, created_at, expires_at, revoked_at";

/// Everything `auth_facts` needs in one statement, hence one snapshot (the
/// SQLite backend's `AUTH_FACTS`, typed for PostgreSQL).
const AUTH_FACTS: &str = "\
SELECT 'key'::text, k.id, k.hash, k.agent, a.owner, NULL::text, k.created_at, k.expires_at, k.revoked_at
  FROM agent_keys k JOIN agents a ON a.id = k.agent
 WHERE k.hash = $1
UNION ALL
SELECT 'grant'::text, g.id, g.pattern, g.agent, g.owner, g.scopes, g.created_at, g.expires_at, g.revoked_at
  FROM agent_keys k JOIN grants g ON g.agent = k.agent
 WHERE k.hash = $1
UNION ALL
SELECT 'inbox'::text, i.address, i.status, i.agent, i.owner, NULL::text, i.created_at, NULL::bigint, NULL::bigint
  FROM inboxes i
 WHERE i.address = $2 AND (i.expires_at IS NULL OR i.expires_at > $3)";

/// The owner of `agent` as `tx` sees it; `None` if the agent does not exist.
/// Inserts `grant` in `tx` after the checks every grant passes (the SQLite
/// twin: `sqlite::insert_grant_in`).
pub(crate) async fn insert_grant_in(tx: &mut PgConnection, grant: &Grant) -> Result<(), StoreError> {
    let Some(agent_owner) = agent_owner_in(tx, &grant.agent).await? else {
        return Err(StoreError::NotFound { what: format!("agent {}", grant.agent) });
    };
    if agent_owner != grant.owner.as_str() {
        return Err(StoreError::Invalid(format!(
            "grant owner {} is not the owner of agent {} ({agent_owner}): only an agent's owner can grant it access",
            grant.owner, grant.agent
        )));
    }
    // An exact address must be one of the owner's inboxes; another owner's
    // answers exactly like a missing one. (Inboxes never change owner.)
    if let InboxPattern::Exact(address) = &grant.pattern {
        let inbox_owner: Option<(String,)> = sqlx::query_as("SELECT owner FROM inboxes WHERE address = $1")
            .bind(address.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if inbox_owner.is_none_or(|(o,)| o != grant.owner.as_str()) {
            return Err(StoreError::NotFound { what: format!("inbox {address}") });
        }
    }
    sqlx::query(&format!("INSERT INTO grants ({GRANT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"))
        .bind(grant.id.as_str())
        .bind(grant.owner.as_str())
        .bind(grant.agent.as_str())
        .bind(grant.pattern.to_string())
        .bind(grant.scopes.to_string())
        .bind(grant.created_at)
        .bind(grant.expires_at)
        .bind(grant.revoked_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| insert_error(e, || format!("grant {}", grant.id)))?;
    Ok(())
}

async fn agent_owner_in(tx: &mut PgConnection, agent: &AgentId) -> Result<Option<String>, StoreError> {
    let row: Option<(String,)> = sqlx::query_as("SELECT owner FROM agents WHERE id = $1")
        .bind(agent.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
    Ok(row.map(|(owner,)| owner))
}

/// Whether `domain` is hosted, locking its row against removal until the end
/// of `tx` (`FOR SHARE`): a concurrent `remove_domain` waits, then sees what
/// this transaction added.
async fn domain_hosted_locked(tx: &mut PgConnection, domain: &str) -> Result<bool, StoreError> {
    let row: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM domains WHERE name = $1 FOR SHARE")
        .bind(domain)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
    Ok(row.is_some())
}

/// Inserts an agent key row inside `tx`. A collision on the id is a conflict
/// on `key <id>`, one on the hash is `hash_what`.
async fn insert_key(tx: &mut PgConnection, key: &KeyRecord, hash_what: impl FnOnce() -> String) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO agent_keys (id, agent, hash, created_at, expires_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(key.id.as_str())
    .bind(key.agent.as_str())
    .bind(key.hash.to_hex())
    .bind(key.created_at)
    .bind(key.expires_at)
    .bind(key.revoked_at)
    .execute(&mut *tx)
    .await
    .map_err(|e| {
        if is_foreign_key_violation(&e) {
            return StoreError::NotFound { what: format!("agent {}", key.agent) };
        }
        if is_unique_violation(&e) && constraint(&e) == Some("agent_keys_hash_key") {
            return StoreError::Conflict { what: hash_what() };
        }
        insert_error(e, || format!("key {}", key.id))
    })?;
    Ok(())
}

/// Stores `ticket` as its owner's only enrollment ticket inside `tx`.
async fn upsert_ticket(tx: &mut PgConnection, ticket: &EnrollmentTicketRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO enrollment_tickets (owner, code_hash, expires_at, consumed_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (owner) DO UPDATE SET code_hash = excluded.code_hash, expires_at = excluded.expires_at,
                                           consumed_at = excluded.consumed_at",
    )
    .bind(ticket.owner.as_str())
    .bind(hex32(&ticket.code_hash))
    .bind(ticket.expires_at)
    .bind(ticket.consumed_at)
    .execute(&mut *tx)
    .await
    .map_err(|e| {
        if is_foreign_key_violation(&e) {
            StoreError::NotFound { what: format!("owner {}", ticket.owner) }
        } else {
            backend(e)
        }
    })?;
    Ok(())
}

/// Inserts one DKIM key version inside `tx`; `false` if that version exists.
async fn insert_domain_keys(tx: &mut PgConnection, keys: &DomainKeyRecord) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO domain_keys (domain, version, selector_ed, selector_rsa, rsa_key_wrapped, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (domain, version) DO NOTHING",
    )
    .bind(keys.domain.as_str())
    .bind(i64::from(keys.version))
    .bind(&keys.selector_ed)
    .bind(&keys.selector_rsa)
    .bind(&keys.rsa_key_wrapped)
    .bind(keys.created_at)
    .execute(&mut *tx)
    .await
    .map_err(|e| {
        if is_foreign_key_violation(&e) {
            StoreError::NotFound { what: format!("domain {}", keys.domain) }
        } else {
            backend(e)
        }
    })?;
    Ok(done.rows_affected() == 1)
}

/// Inserts an owner row inside `tx`; `Conflict` if it exists.
async fn insert_owner(tx: &mut PgConnection, owner: &OwnerRecord) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO owners (id, email, created_at) VALUES ($1, $2, $3)")
        .bind(owner.id.as_str())
        .bind(owner.email.as_deref())
        .bind(owner.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| insert_error(e, || format!("owner {}", owner.id)))?;
    Ok(())
}

/// Deletes the rows of `table` that `condition` (on `$1`) selects, skipping rows
/// another transaction is deleting right now (it removes them anyway), so
/// concurrent pruners on several nodes never wait for or deadlock on each other.
pub(crate) async fn prune(executor: impl sqlx::PgExecutor<'_>, table: &str, condition: &str, value: i64) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "DELETE FROM {table} WHERE ctid = ANY (ARRAY(SELECT ctid FROM {table} WHERE {condition} FOR UPDATE SKIP LOCKED))"
    ))
    .bind(value)
    .execute(executor)
    .await
    .map_err(backend)?;
    Ok(())
}

impl PgStore {
    /// Revokes the row `statement` matches (`$1` = now, `$2` = id, `$3` = owner or
    /// NULL for the operator), keeping an earlier revocation time, with its audit
    /// record in the same transaction. `NotFound { what }` when nothing matches,
    /// so another owner's object answers exactly like a missing one.
    async fn revoke_audited(
        &self,
        statement: &'static str,
        id: &str,
        owner: Option<&OwnerId>,
        now: UnixTime,
        what: String,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        // PostgreSQL counts matched rows too: a second revocation still updates one.
        let done = sqlx::query(statement)
            .bind(now)
            .bind(id)
            .bind(owner.map(OwnerId::as_str))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what });
        }
        let sealed = self.append_in(&mut tx, event).await?;
        let ended = if statement == REVOKE_GRANT { self.end_grant_inboxes(&mut tx, id, now, event).await? } else { None };
        let receipt = commit_audited(tx, sealed).await?;
        let _ended = ended.map(SealedRecord::into_receipt);
        Ok(receipt)
    }

    /// Ends the inboxes an agent created under grant `grant` no later than
    /// `end` and, if any ended, appends their `inbox.end_with_grant` record
    /// (after `change`'s, with its actor) inside `tx`.
    async fn end_grant_inboxes(
        &self,
        tx: &mut PgConnection,
        grant: &str,
        end: UnixTime,
        change: &AuditEvent,
    ) -> Result<Option<SealedRecord>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            // An inbox created in the second the grant ends ends one second
            // after its creation (an expiry is always after the creation).
            "UPDATE inboxes SET expires_at = GREATEST($2, created_at + 1)
              WHERE created_by_grant = $1 AND (expires_at IS NULL OR expires_at > $2)
              RETURNING address, owner",
        )
        .bind(grant)
        .bind(end)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        let Some((_, owner)) = rows.first() else { return Ok(None) };
        let mut addresses: Vec<String> = rows.iter().map(|(a, _)| a.clone()).collect();
        addresses.sort();
        let event = crate::meta::inbox_end_with_grant_event(change, owner, grant, end, &addresses);
        Ok(Some(self.append_in(tx, &event).await?))
    }

    /// [`Directory::create_inbox`], remembering the creating grant if any.
    async fn insert_inbox(
        &self,
        inbox: &InboxRecord,
        grant: Option<&GrantId>,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        check_inbox_expiry(inbox)?;
        let mut tx = self.begin().await?;
        let domain = inbox.address.domain();
        if !domain_hosted_locked(&mut tx, domain).await? {
            return Err(domain_not_hosted(domain));
        }
        let Some(agent_owner) = agent_owner_in(&mut tx, &inbox.agent).await? else {
            return Err(StoreError::NotFound { what: format!("agent {}", inbox.agent) });
        };
        if agent_owner != inbox.owner.as_str() {
            return Err(StoreError::Invalid(format!(
                "inbox {} must belong to {agent_owner}, the owner of agent {}, not to {}",
                inbox.address, inbox.agent, inbox.owner
            )));
        }
        sqlx::query(
            "INSERT INTO inboxes (address, owner, agent, status, created_at, expires_at, created_by_grant)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(inbox.address.as_str())
        .bind(inbox.owner.as_str())
        .bind(inbox.agent.as_str())
        .bind(inbox.status.as_str())
        .bind(inbox.created_at)
        .bind(inbox.expires_at)
        .bind(grant.map(GrantId::as_str))
        .execute(&mut *tx)
        .await
        .map_err(|e| insert_error(e, || format!("inbox {}", inbox.address)))?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }
}

#[async_trait]
impl Recipients for PgStore {
    async fn is_hosted_domain(&self, domain: &str) -> Result<bool, StoreError> {
        let (hosted,): (bool,) = sqlx::query_as("SELECT EXISTS (SELECT 1 FROM domains WHERE name = $1)")
            .bind(domain)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(hosted)
    }

    async fn recipient(&self, address: &Address) -> Result<Option<Recipient>, StoreError> {
        // No cache: another node may change the inbox at any time (a cache in
        // front of any store belongs in a decorator).
        let row: Option<(String, String, Option<i64>)> = sqlx::query_as(
            "SELECT owner, status, expires_at FROM inboxes
              WHERE address = $1 AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(address.as_str())
        .bind((self.clock)())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|(owner, status, expires_at)| {
            Ok(Recipient { owner: stored("owner id", &owner)?, status: stored("inbox status", &status)?, expires_at })
        })
        .transpose()
    }
}

#[async_trait]
impl Directory for PgStore {
    async fn ensure_domain(&self, domain: &Domain, now: UnixTime) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO domains (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(domain.as_str())
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn list_domains(&self) -> Result<Vec<Domain>, StoreError> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT name FROM domains ORDER BY name").fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(|(name,)| stored("domain", name)).collect()
    }

    async fn add_domain(
        &self,
        keys: &DomainKeyRecord,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO domains (name, created_at) VALUES ($1, $2)")
            .bind(keys.domain.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| insert_error(e, || format!("domain {}", keys.domain)))?;
        insert_domain_keys(&mut tx, keys).await?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn domain_owner(&self, domain: &Domain) -> Result<Option<OwnerId>, StoreError> {
        let row: Option<(Option<String>,)> = sqlx::query_as("SELECT owner FROM domains WHERE name = $1")
            .bind(domain.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.and_then(|(o,)| o).map(|o| stored("domain owner", &o)).transpose()
    }

    async fn assign_domain(
        &self,
        domain: &Domain,
        owner: Option<&OwnerId>,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        if let Some(o) = owner {
            let known: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM owners WHERE id = $1")
                .bind(o.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
            if known.is_none() {
                return Err(StoreError::NotFound { what: format!("owner {o}") });
            }
        }
        let done = sqlx::query("UPDATE domains SET owner = $1 WHERE name = $2")
            .bind(owner.map(OwnerId::as_str))
            .bind(domain.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: format!("domain {domain}") });
        }
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn remove_domain(&self, domain: &Domain, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        // Lock the domain first: an inbox creation holding it (FOR SHARE) finishes
        // before the check below, which then sees its inbox.
        let locked: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM domains WHERE name = $1 FOR UPDATE")
            .bind(domain.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if locked.is_none() {
            return Err(StoreError::NotFound { what: format!("domain {domain}") });
        }
        let inboxes: Vec<(String,)> =
            sqlx::query_as("SELECT address FROM inboxes WHERE right(address, length($1) + 1) = '@' || $1 ORDER BY address")
                .bind(domain.as_str())
                .fetch_all(&mut *tx)
                .await
                .map_err(backend)?;
        if !inboxes.is_empty() {
            const SHOWN: usize = 5;
            let mut names = inboxes.iter().take(SHOWN).map(|(a,)| a.clone()).collect::<Vec<_>>().join(", ");
            if inboxes.len() > SHOWN {
                names.push_str(&format!(" and {} more", inboxes.len() - SHOWN));
            }
            return Err(StoreError::Invalid(format!(
                "domain {domain} still has {} inbox(es): {names}; inboxes are not deleted (only expired ones, by the sweeper), so a domain with inboxes cannot be removed",
                inboxes.len()
            )));
        }
        sqlx::query("DELETE FROM domain_keys WHERE domain = $1")
            .bind(domain.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM domains WHERE name = $1").bind(domain.as_str()).execute(&mut *tx).await.map_err(backend)?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn add_domain_keys(
        &self,
        keys: &DomainKeyRecord,
        event: &AuditEvent,
    ) -> Result<(DomainKeyRecord, Option<AuditReceipt>), StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        if !domain_hosted_locked(&mut tx, keys.domain.as_str()).await? {
            return Err(StoreError::NotFound { what: format!("domain {}", keys.domain) });
        }
        if insert_domain_keys(&mut tx, keys).await? {
            let sealed = self.append_in(&mut tx, event).await?;
            return Ok((keys.clone(), Some(commit_audited(tx, sealed).await?)));
        }
        let row: DomainKeyRow = sqlx::query_as(&format!(
            "SELECT {DOMAIN_KEYS_COLUMNS} FROM domain_keys WHERE domain = $1 AND version = $2"
        ))
        .bind(keys.domain.as_str())
        .bind(i64::from(keys.version))
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok((domain_keys_from_row(row)?, None))
    }

    async fn domain_keys(&self, domain: &Domain) -> Result<Vec<DomainKeyRecord>, StoreError> {
        let rows: Vec<DomainKeyRow> =
            sqlx::query_as(&format!("SELECT {DOMAIN_KEYS_COLUMNS} FROM domain_keys WHERE domain = $1 ORDER BY version"))
                .bind(domain.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        rows.into_iter().map(domain_keys_from_row).collect()
    }

    async fn add_owner(&self, owner: &OwnerRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        insert_owner(&mut tx, owner).await?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn list_owners(&self) -> Result<Vec<OwnerRecord>, StoreError> {
        let rows: Vec<OwnerRow> = sqlx::query_as("SELECT id, email, created_at FROM owners ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.into_iter().map(owner_from_row).collect()
    }

    async fn add_agent(&self, agent: &AgentRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        let owner_exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM owners WHERE id = $1")
            .bind(agent.owner.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if owner_exists.is_none() {
            return Err(StoreError::NotFound { what: format!("owner {}", agent.owner) });
        }
        sqlx::query("INSERT INTO agents (id, owner, name, created_at) VALUES ($1, $2, $3, $4)")
            .bind(agent.id.as_str())
            .bind(agent.owner.as_str())
            .bind(agent.name.as_deref())
            .bind(agent.created_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| insert_error(e, || format!("agent {}", agent.id)))?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn get_agent(&self, id: &AgentId) -> Result<Option<AgentRecord>, StoreError> {
        let row: Option<AgentRow> = sqlx::query_as("SELECT id, owner, name, created_at FROM agents WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(agent_from_row).transpose()
    }

    async fn list_agents(&self, owner: Option<&OwnerId>) -> Result<Vec<AgentRecord>, StoreError> {
        let rows: Vec<AgentRow> = sqlx::query_as(
            "SELECT id, owner, name, created_at FROM agents
              WHERE $1::text IS NULL OR owner = $1
              ORDER BY created_at, id",
        )
        .bind(owner.map(OwnerId::as_str))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(agent_from_row).collect()
    }

    async fn create_inbox(&self, inbox: &InboxRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        self.insert_inbox(inbox, None, event).await
    }

    async fn create_granted_inbox(
        &self,
        inbox: &InboxRecord,
        grant: &GrantId,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        if inbox.expires_at.is_none() {
            return Err(StoreError::Invalid(format!("inbox {} created under grant {grant} needs an expiry", inbox.address)));
        }
        self.insert_inbox(inbox, Some(grant), event).await
    }

    async fn list_inboxes(&self, owner: Option<&OwnerId>) -> Result<Vec<InboxRecord>, StoreError> {
        let rows: Vec<InboxRow> = sqlx::query_as(&format!(
            "SELECT {INBOX_COLUMNS} FROM inboxes
              WHERE $1::text IS NULL OR owner = $1
              ORDER BY address"
        ))
        .bind(owner.map(OwnerId::as_str))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(inbox_from_row).collect()
    }

    async fn set_inbox_status(
        &self,
        address: &Address,
        status: InboxStatus,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        let done = sqlx::query("UPDATE inboxes SET status = $1 WHERE address = $2")
            .bind(status.as_str())
            .bind(address.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: format!("inbox {address}") });
        }
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }
}

#[async_trait]
impl KeysAndGrants for PgStore {
    async fn create_key(&self, key: &KeyRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        if agent_owner_in(&mut tx, &key.agent).await?.is_none() {
            return Err(StoreError::NotFound { what: format!("agent {}", key.agent) });
        }
        // The constraint tells an id collision from the same secret twice.
        insert_key(&mut tx, key, || "an agent key with the same secret".to_owned()).await?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn list_keys(&self, agent: &AgentId) -> Result<Vec<KeyRecord>, StoreError> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT id, agent, hash, created_at, expires_at, revoked_at FROM agent_keys
              WHERE agent = $1
              ORDER BY created_at, id",
        )
        .bind(agent.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(key_from_row).collect()
    }

    async fn revoke_key(&self, id: &KeyId, now: UnixTime, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        self.revoke_audited(REVOKE_KEY, id.as_str(), None, now, format!("key {id}"), event).await
    }

    async fn add_grant(&self, grant: &Grant, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        insert_grant_in(&mut tx, grant).await?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn list_grants(&self, agent: Option<&AgentId>) -> Result<Vec<Grant>, StoreError> {
        let rows: Vec<GrantRow> = sqlx::query_as(&format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE $1::text IS NULL OR agent = $1 ORDER BY created_at, id"
        ))
        .bind(agent.map(AgentId::as_str))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(grant_from_row).collect()
    }

    async fn revoke_grant(&self, id: &GrantId, now: UnixTime, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        self.revoke_audited(REVOKE_GRANT, id.as_str(), None, now, format!("grant {id}"), event).await
    }
}

#[async_trait]
impl InboxExpiry for PgStore {
    async fn expired_inboxes(&self, now: UnixTime, limit: u32) -> Result<Vec<InboxRecord>, StoreError> {
        let rows: Vec<InboxRow> = sqlx::query_as(&format!(
            "SELECT {INBOX_COLUMNS} FROM inboxes
              WHERE expires_at IS NOT NULL AND expires_at <= $1
              ORDER BY expires_at, address
              LIMIT $2"
        ))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(inbox_from_row).collect()
    }

    async fn remove_expired_inbox(
        &self,
        address: &Address,
        now: UnixTime,
        event: &(dyn Fn(u64) -> AuditEvent + Send + Sync),
    ) -> Result<Option<AuditReceipt>, StoreError> {
        let mut tx = self.begin().await?;
        // A second node's DELETE waits for this row lock, then re-reads the row,
        // finds it gone and deletes nothing: each inbox is removed (and recorded) once.
        let owner: Option<(String,)> = sqlx::query_as(
            "DELETE FROM inboxes WHERE address = $1 AND expires_at IS NOT NULL AND expires_at <= $2 RETURNING owner",
        )
        .bind(address.as_str())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let Some((owner,)) = owner else {
            return Ok(None);
        };
        let messages = sqlx::query("DELETE FROM messages WHERE owner = $1 AND inbox = $2")
            .bind(&owner)
            .bind(address.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        let event = event(messages);
        require_ok(&event)?;
        let sealed = self.append_in(&mut tx, &event).await?;
        commit_audited(tx, sealed).await.map(Some)
    }
}

#[async_trait]
impl AuthLookup for PgStore {
    async fn auth_facts(&self, credentials: &Credentials) -> Result<AuthFacts, StoreError> {
        let rows: Vec<AuthRow> = sqlx::query_as(AUTH_FACTS)
            .bind(credentials.key_hash.to_hex())
            .bind(credentials.address.as_str())
            .bind((self.clock)())
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        auth_facts_from_rows(rows)
    }

    async fn key_facts_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyFacts>, StoreError> {
        let row: Option<(String, String, String, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT k.id, k.hash, k.agent, a.owner, k.expires_at, k.revoked_at
               FROM agent_keys k JOIN agents a ON a.id = k.agent
              WHERE k.hash = $1",
        )
        .bind(hash.to_hex())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|(id, hash, agent, owner, expires_at, revoked_at)| {
            Ok(KeyFacts {
                hash: stored_key_hash(&id, &hash)?,
                id: stored("key id", &id)?,
                agent: stored("agent id", &agent)?,
                owner: stored("owner id", &owner)?,
                expires_at,
                revoked_at,
            })
        })
        .transpose()
    }

    async fn grants_and_inbox_owner(
        &self,
        agent: &AgentId,
        inbox: &Address,
    ) -> Result<(Vec<Grant>, Option<OwnerId>), StoreError> {
        // One statement (one round trip, one snapshot): the grants, then the inbox.
        let rows: Vec<GrantRow> = sqlx::query_as(&format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE agent = $1
             UNION ALL
             SELECT '', owner, '', '', '', 0, 0, NULL::bigint FROM inboxes
              WHERE address = $2 AND (expires_at IS NULL OR expires_at > $3)"
        ))
        .bind(agent.as_str())
        .bind(inbox.as_str())
        .bind((self.clock)())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut grants = Vec::with_capacity(rows.len());
        let mut owner = None;
        for row in rows {
            if row.0.is_empty() {
                owner = Some(stored("owner id", &row.1)?);
            } else {
                grants.push(grant_from_row(row)?);
            }
        }
        Ok((grants, owner))
    }
}

#[async_trait]
impl OwnerApproval for PgStore {
    async fn add_owner_with_enrollment(
        &self,
        owner: &OwnerRecord,
        ticket: &EnrollmentTicketRecord,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        if ticket.owner != owner.id {
            return Err(StoreError::Invalid(format!(
                "enrollment ticket for {} cannot come with owner {}",
                ticket.owner, owner.id
            )));
        }
        let mut tx = self.begin().await?;
        insert_owner(&mut tx, owner).await?;
        upsert_ticket(&mut tx, ticket).await?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn issue_enrollment(
        &self,
        ticket: &EnrollmentTicketRecord,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        // Owners are never deleted: the foreign key answers for a missing one.
        upsert_ticket(&mut tx, ticket).await?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn enrollment_ticket(&self, owner: &OwnerId) -> Result<Option<EnrollmentTicketRecord>, StoreError> {
        let row: Option<(String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT code_hash, expires_at, consumed_at FROM enrollment_tickets WHERE owner = $1 AND consumed_at IS NULL",
        )
        .bind(owner.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|(hash, expires_at, consumed_at)| {
            let code_hash = hash_from_hex(&hash).ok_or_else(|| {
                StoreError::Backend(format!("stored enrollment code hash of owner {owner} is not 64 hex digits"))
            })?;
            Ok(EnrollmentTicketRecord { owner: owner.clone(), code_hash, expires_at, consumed_at })
        })
        .transpose()
    }

    async fn redeem_enrollment(
        &self,
        owner: &OwnerId,
        code_hash: &[u8; 32],
        public_key: &[u8; 32],
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        // One conditional UPDATE: a concurrent redemption (any node) holds the
        // row until it commits; this one then re-reads it, spent, and matches nothing.
        let spent = sqlx::query(
            "UPDATE enrollment_tickets SET consumed_at = $1
              WHERE owner = $2 AND code_hash = $3 AND consumed_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(owner.as_str())
        .bind(hex32(code_hash))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if spent.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: "enrollment code".to_owned() });
        }
        sqlx::query(
            "INSERT INTO owner_keys (owner, public_key, enrolled_at) VALUES ($1, $2, $3)
             ON CONFLICT (owner) DO UPDATE SET public_key = excluded.public_key, enrolled_at = excluded.enrolled_at",
        )
        .bind(owner.as_str())
        .bind(hex32(public_key))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn owner_public_key(&self, owner: &OwnerId) -> Result<Option<[u8; 32]>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as("SELECT public_key FROM owner_keys WHERE owner = $1")
            .bind(owner.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(|(hex,)| {
            hash_from_hex(&hex)
                .ok_or_else(|| StoreError::Backend(format!("stored public key of owner {owner} is not 64 hex digits")))
        })
        .transpose()
    }

    async fn record_owner_nonce(
        &self,
        owner: &OwnerId,
        nonce: &str,
        ts: UnixTime,
        forget_before: UnixTime,
    ) -> Result<NonceUse, StoreError> {
        prune(&self.pool, "owner_nonces", "ts < $1", forget_before).await?;
        // One statement: of two nodes inserting the same nonce, the second waits
        // for the first's row and then inserts nothing.
        let inserted: Option<(i32,)> = sqlx::query_as(
            "INSERT INTO owner_nonces (owner, nonce, ts) VALUES ($1, $2, $3) ON CONFLICT (owner, nonce) DO NOTHING RETURNING 1",
        )
        .bind(owner.as_str())
        .bind(nonce)
        .bind(ts)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(if inserted.is_some() { NonceUse::Fresh(agentkeys_core::NonceRecord::first_use(owner, nonce)) } else { NonceUse::Replayed })
    }

    async fn list_owner_grants(&self, owner: &OwnerId) -> Result<Vec<Grant>, StoreError> {
        let rows: Vec<GrantRow> =
            sqlx::query_as(&format!("SELECT {GRANT_COLUMNS} FROM grants WHERE owner = $1 ORDER BY created_at, id"))
                .bind(owner.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        rows.into_iter().map(grant_from_row).collect()
    }

    async fn revoke_owner_grant(
        &self,
        owner: &OwnerId,
        id: &GrantId,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        self.revoke_audited(REVOKE_GRANT, id.as_str(), Some(owner), now, format!("grant {id}"), event).await
    }

    async fn change_owner_grant(
        &self,
        owner: &OwnerId,
        before: &Grant,
        after: &Grant,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let same = after.id == before.id
            && after.owner == before.owner
            && after.agent == before.agent
            && after.pattern == before.pattern
            && &before.owner == owner;
        if !same || !after.scopes.is_subset_of(before.scopes) {
            return Err(StoreError::Invalid(format!(
                "a change of grant {} may only narrow its scopes and move its expiry",
                before.id
            )));
        }
        let mut tx = self.begin().await?;
        // Compare-and-set in one statement: a concurrent change (any node) holds
        // the row until it commits; this one then re-checks the new version
        // against `before` and matches nothing.
        let done = sqlx::query(
            "UPDATE grants SET scopes = $1, expires_at = $2
              WHERE id = $3 AND owner = $4 AND revoked_at IS NULL AND scopes = $5 AND expires_at = $6",
        )
        .bind(after.scopes.to_string())
        .bind(after.expires_at)
        .bind(before.id.as_str())
        .bind(owner.as_str())
        .bind(before.scopes.to_string())
        .bind(before.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM grants WHERE id = $1 AND owner = $2")
                .bind(before.id.as_str())
                .bind(owner.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
            return Err(match exists {
                Some(_) => StoreError::Conflict { what: format!("a change of grant {} made meanwhile", before.id) },
                None => StoreError::NotFound { what: format!("grant {}", before.id) },
            });
        }
        let sealed = self.append_in(&mut tx, event).await?;
        let end = if after.scopes.contains(agentkeys_core::Scope::Create) { after.expires_at } else { (self.clock)() };
        let ended = self.end_grant_inboxes(&mut tx, before.id.as_str(), end, event).await?;
        let receipt = commit_audited(tx, sealed).await?;
        let _ended = ended.map(SealedRecord::into_receipt);
        Ok(receipt)
    }

    async fn revoke_owner_key(
        &self,
        owner: &OwnerId,
        id: &KeyId,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        self.revoke_audited(REVOKE_KEY, id.as_str(), Some(owner), now, format!("key {id}"), event).await
    }
}

#[async_trait]
impl Pairing for PgStore {
    async fn open_pairing(
        &self,
        request: &PairingRecord,
        forget_before: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        prune(&self.pool, "pairing_requests", "opened_at < $1", forget_before).await?;
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO pairing_requests (code_hash, device_key, agent, name, opened_at, status, addressed_to)
             VALUES ($1, $2, $3, $4, $5, 'pending', $6)",
        )
        .bind(hex32(&request.code_hash))
        .bind(hex32(&request.device_key))
        .bind(request.agent.as_str())
        .bind(request.name.as_deref())
        .bind(request.opened_at)
        .bind(request.addressed_to.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(|e| insert_error(e, || "a pairing request with this code".to_owned()))?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn pairing(&self, code_hash: &[u8; 32]) -> Result<Option<PairingRecord>, StoreError> {
        let row: Option<PairingRow> = sqlx::query_as(
            "SELECT code_hash, device_key, agent, name, opened_at, status, owner, approved_at, addressed_to
               FROM pairing_requests WHERE code_hash = $1",
        )
        .bind(hex32(code_hash))
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(pairing_from_row).transpose()
    }

    async fn approve_pairing(
        &self,
        code_hash: &[u8; 32],
        agent: &AgentRecord,
        approved_at: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        let won = sqlx::query(
            "UPDATE pairing_requests SET status = 'approved', owner = $1, approved_at = $2
              WHERE code_hash = $3 AND status = 'pending' AND agent = $4",
        )
        .bind(agent.owner.as_str())
        .bind(approved_at)
        .bind(hex32(code_hash))
        .bind(agent.id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_foreign_key_violation(&e) {
                StoreError::NotFound { what: format!("owner {}", agent.owner) }
            } else {
                backend(e)
            }
        })?;
        if won.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: "pending pairing request".to_owned() });
        }
        // Kept if it exists (a concurrent creation of the same agent included:
        // the insert waits for it and then does nothing); then its owner decides.
        sqlx::query("INSERT INTO agents (id, owner, name, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING")
            .bind(agent.id.as_str())
            .bind(agent.owner.as_str())
            .bind(agent.name.as_deref())
            .bind(agent.created_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                if is_foreign_key_violation(&e) {
                    StoreError::NotFound { what: format!("owner {}", agent.owner) }
                } else {
                    backend(e)
                }
            })?;
        match agent_owner_in(&mut tx, &agent.id).await? {
            Some(owner) if owner == agent.owner.as_str() => {}
            _ => return Err(StoreError::Conflict { what: format!("agent {}", agent.id) }),
        }
        // Delivered to every node's listener when, and only if, this commits:
        // collects waiting on other nodes wake and read the approval (events.rs).
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(super::events::PAIRING_CHANNEL)
            .bind(hex32(code_hash))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn collect_pairing(
        &self,
        code_hash: &[u8; 32],
        key: &KeyRecord,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        let won = sqlx::query(
            "UPDATE pairing_requests SET status = 'consumed', consumed_at = $1
              WHERE code_hash = $2 AND status = 'approved' AND agent = $3",
        )
        .bind(now)
        .bind(hex32(code_hash))
        .bind(key.agent.as_str())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if won.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: "approved pairing request".to_owned() });
        }
        insert_key(&mut tx, key, || format!("key {}", key.id)).await?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn deny_pairing(
        &self,
        code_hash: &[u8; 32],
        owner: &OwnerId,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        let won = sqlx::query(crate::meta::DENY_PAIRING_SQL)
            .bind(owner.as_str())
            .bind(now)
            .bind(hex32(code_hash))
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                if is_foreign_key_violation(&e) {
                    StoreError::NotFound { what: format!("owner {owner}") }
                } else {
                    backend(e)
                }
            })?;
        if won.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: "pending pairing request".to_owned() });
        }
        // Collects waiting on any node wake and read the denial (events.rs).
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(super::events::PAIRING_CHANNEL)
            .bind(hex32(code_hash))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }
}

#[async_trait]
impl AuditLog for PgStore {
    async fn audit_append(&self, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        // Batched with every other append waiting in this process: one commit for all.
        self.audit.append(self, event).await
    }

    async fn audit_list(&self, after_seq: u64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let Ok(after) = i64::try_from(after_seq) else {
            return Ok(Vec::new());
        };
        let rows: Vec<AuditRow> =
            sqlx::query_as(&format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"))
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        rows.into_iter().map(audit_from_row).collect()
    }

    async fn audit_head(&self) -> Result<ChainHead, StoreError> {
        let head: Option<(i64, String)> = sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        head_from_row(head)
    }

    async fn audit_list_for_owner(
        &self,
        owner: &OwnerId,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let Ok(after) = i64::try_from(after_seq) else {
            return Ok(Vec::new());
        };
        // SQLite's query; the detail's `owner` and `agent` strings are columns
        // copied at insert (`audit::prepare`) instead of json_extract.
        let scope = crate::meta::audit_owner_scope("detail_owner", "detail_agent");
        let rows: Vec<AuditRow> = sqlx::query_as(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > $1 AND {scope} ORDER BY seq LIMIT $4"
        ))
        .bind(after)
        .bind(format!("owner:{owner}"))
        .bind(owner.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(audit_from_row).collect()
    }

    async fn audit_search_for_owner(
        &self,
        owner: &OwnerId,
        filter: &AuditFilter,
        before_seq: Option<u64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let before = before_seq.map_or(i64::MAX, |s| i64::try_from(s).unwrap_or(i64::MAX));
        let sql = crate::meta::audit_search_sql(AUDIT_COLUMNS, "detail_owner", "detail_agent");
        let rows: Vec<AuditRow> = sqlx::query_as(&sql)
            .bind(before)
            .bind(format!("owner:{owner}"))
            .bind(owner.as_str())
            .bind(filter.operation.as_deref())
            .bind(filter.from)
            .bind(filter.to)
            .bind(filter.agent.as_deref())
            .bind(filter.agent.as_deref().map(|a| format!("agent:{a}")))
            .bind(i64::from(limit.min(MAX_AUDIT_SEARCH_PAGE)))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.into_iter().map(audit_from_row).collect()
    }
}

#[async_trait]
impl Checkpoints for PgStore {
    async fn add_checkpoint(&self, checkpoint: &CheckpointRecord) -> Result<bool, StoreError> {
        let seq = to_i64(checkpoint.seq, "checkpoint seq")?;
        let counter = checkpoint.counter.map(|c| to_i64(c, "checkpoint counter")).transpose()?;
        let signature: String = checkpoint.signature.iter().map(|b| format!("{b:02x}")).collect();
        let prev = checkpoint.prev.as_ref().map(hash_to_hex);
        let mut tx = self.begin().await?;
        // Nodes add checkpoints one at a time; every read below, in its own
        // statement, sees what the previous holder committed.
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(CHECKPOINT_LOCK).execute(&mut *tx).await.map_err(backend)?;
        if let Some(counter) = checkpoint.counter {
            // The chain only grows by its next link; anything else lost a race
            // with another node (or the chain was tampered with: verify says).
            let last: Option<CheckpointRow> = sqlx::query_as(&format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE counter IS NOT NULL ORDER BY counter DESC LIMIT 1"
            ))
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
            let last = last.map(checkpoint_from_row).transpose()?;
            let max_seq: Option<i64> =
                sqlx::query_scalar("SELECT MAX(seq) FROM audit_checkpoints").fetch_one(&mut *tx).await.map_err(backend)?;
            let highest = max_seq.map(|m| u64::try_from(m).unwrap_or(u64::MAX));
            let agentkeys_audit::SignedCheckpoint::V2 { checkpoint: next, .. } = checkpoint.signed() else {
                return Ok(false);
            };
            if !next.extends(last.map(|l| l.signed()).as_ref(), highest) {
                return Ok(false);
            }
            if counter == 1 {
                let started: Option<(i64,)> = sqlx::query_as("SELECT ts FROM audit_checkpoint_start WHERE id = 1")
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend)?;
                if let Some((ts,)) = started {
                    return Err(StoreError::Invalid(format!(
                        "the audit checkpoint chain started at Unix time {ts} but its checkpoints are gone; \
                         run `agentkeys audit verify` and investigate before signing anything"
                    )));
                }
                sqlx::query(
                    "INSERT INTO audit_checkpoint_start (id, seq, head_hash, ts, signature, counter, prev_hash)
                     VALUES (1, $1, $2, $3, $4, 1, $5)",
                )
                .bind(seq)
                .bind(hash_to_hex(&checkpoint.hash))
                .bind(checkpoint.ts)
                .bind(&signature)
                .bind(&prev)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            }
        }
        let done = sqlx::query(
            "INSERT INTO audit_checkpoints (seq, head_hash, ts, signature, counter, prev_hash) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT DO NOTHING",
        )
        .bind(seq)
        .bind(hash_to_hex(&checkpoint.hash))
        .bind(checkpoint.ts)
        .bind(&signature)
        .bind(counter)
        .bind(&prev)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }

    async fn list_checkpoints(&self) -> Result<Vec<CheckpointRecord>, StoreError> {
        let rows: Vec<CheckpointRow> =
            sqlx::query_as(&format!("SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY seq"))
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        rows.into_iter().map(checkpoint_from_row).collect()
    }

    async fn last_checkpoint(&self) -> Result<Option<CheckpointRecord>, StoreError> {
        let row: Option<CheckpointRow> =
            sqlx::query_as(&format!("SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY seq DESC LIMIT 1"))
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        row.map(checkpoint_from_row).transpose()
    }

    async fn checkpoint_start(&self) -> Result<Option<CheckpointRecord>, StoreError> {
        let row: Option<CheckpointRow> =
            sqlx::query_as(&format!("SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoint_start WHERE id = 1"))
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        row.map(checkpoint_from_row).transpose()
    }
}

#[async_trait]
impl Outbox for PgStore {
    async fn enqueue_outbound(&self, message: &NewOutbound) -> Result<(), StoreError> {
        let message = crate::enqueue::Queued::check(message)?;
        super::queue::insert_outbound(self, &message).await
    }
}
