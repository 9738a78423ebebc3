//! The owner's email channel (issue 12): codes mailed to the owner as the
//! fallback approval gate, the owner's notification settings, and which
//! once-only notices were sent (migrations `sqlite/0025_owner_mail.sql`,
//! `postgres/0015_owner_mail.sql`).
//!
//! The store knows no mail. A code and its link token arrive hashed (SHA-256)
//! and are never stored in clear; a code is bound to one gated action (the
//! action's canonical hash), and answers only for that owner and that action.
//! The contracts (`conformance/owner_mail.rs`): a code is consumed once across
//! every handle, a wrong code counts a try and the code locks at the limit,
//! an expired, locked or used code is refused (even with the right digits),
//! a link is approved once, another owner's or another action's code is the
//! same `NotFound` as a missing one, issuing is refused past the per-owner and
//! per-address limits, and a notice key is marked sent once.

use agentkeys_audit::{AuditEvent, AuditReceipt, hash_to_hex};
use agentkeys_core::{OwnerId, UnixTime};
use async_trait::async_trait;

use crate::console::owner_from;
use crate::meta::StoreError;
use crate::sqlite::{SqliteStore, backend, commit_audited, insert_error, require_ok};

/// The owner id that system mail (notices to owners) is queued under: no
/// owner's view of the queue lists it, and the delivery runner writes no DSN
/// for it (there is no inbox to put one in).
pub const SYSTEM_OWNER: &str = "0x0000000000000000000000000000000000000000";

/// How long a used or expired code's row is kept (it still counts against the
/// issuing limits until then), in seconds.
pub const EMAIL_CODE_RETENTION_SECS: i64 = 86_400;

/// An emailed approval code, as issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailCodeRecord {
    /// Random public id (the requesting screen and the link name it).
    pub id: String,
    /// The owner it was mailed to.
    pub owner: OwnerId,
    /// The canonical hash of the one action it approves.
    pub bound_to: [u8; 32],
    /// Hash of the 6 digits (the caller's keyed hash).
    pub code_hash: [u8; 32],
    /// SHA-256 of the link's token.
    pub link_hash: [u8; 32],
    /// The short phrase both the requesting screen and the link page show.
    pub phrase: String,
    /// What the action is, in words (shown on the link page).
    pub summary: String,
    /// The address key of the requesting client, for the per-address limit.
    pub requested_from: Option<String>,
    /// When it was issued.
    pub created_at: UnixTime,
    /// From this second on it is refused.
    pub expires_at: UnixTime,
}

/// The issuing limits: at most `per_owner` codes for one owner and
/// `per_address` for one requesting address issued at or after `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmailCodeLimits {
    /// Start of the window.
    pub since: UnixTime,
    /// Codes per owner in the window.
    pub per_owner: u32,
    /// Codes per requesting address in the window.
    pub per_address: u32,
}

/// What issuing a code did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailCodeIssue {
    /// Stored.
    Issued,
    /// Refused: the owner asked for `per_owner` codes in the window.
    OwnerLimited,
    /// Refused: the address asked for `per_address` codes in the window.
    AddressLimited,
}

/// Where a code stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailCodeState {
    /// Issued, neither used nor approved by its link.
    Waiting,
    /// Its link's button was pressed; the requesting screen may act once.
    LinkApproved,
    /// An action used it.
    Used,
    /// Past its expiry.
    Expired,
    /// Wrong digits were tried the maximum number of times.
    Locked,
}

/// A code as its link page shows it (no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailLinkView {
    /// The code's id.
    pub id: String,
    /// Whose.
    pub owner: OwnerId,
    /// The phrase.
    pub phrase: String,
    /// The action in words.
    pub summary: String,
    /// Expiry.
    pub expires_at: UnixTime,
    /// Where it stands at the time asked.
    pub state: EmailCodeState,
}

/// What pressing a link's button did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkApproval {
    /// Approved now (once).
    Approved(EmailLinkView),
    /// Refused: the code is in this state (approved or used already, expired, locked).
    Refused(EmailCodeState),
    /// No such link.
    NotFound,
}

/// What presenting a code (or, with no digits, its link approval) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeCheck {
    /// Consumed now: the action may proceed (once, across every handle).
    Consumed,
    /// Wrong digits; this many tries are left (0: now locked).
    Wrong {
        /// Tries left before the code locks.
        tries_left: u32,
    },
    /// Refused: no digits were given and the link was not approved.
    NotApproved,
    /// Refused in this state (used, expired, locked).
    Refused(EmailCodeState),
    /// No such code of this owner for this action.
    NotFound,
}

/// The owner's email channel's storage.
#[async_trait]
pub trait OwnerMail: Send + Sync + 'static {
    /// Stores a code unless the owner or the requesting address reached its
    /// limit in the window; first deletes rows expired more than
    /// [`EMAIL_CODE_RETENTION_SECS`] ago. `NotFound` if the owner is unknown,
    /// `Conflict` if the id or link hash is taken.
    async fn issue_email_code(&self, code: &EmailCodeRecord, limits: EmailCodeLimits) -> Result<EmailCodeIssue, StoreError>;
    /// Code `id` as its link page shows it, as it stands at `now` (changes nothing).
    async fn email_code_view(&self, id: &str, max_tries: u32, now: UnixTime) -> Result<Option<EmailLinkView>, StoreError>;
    /// Presses the link's button: code `id`, if `link_hash` is its link's and
    /// it is waiting, unexpired and unlocked, becomes link-approved, once
    /// across every handle. Another code's link is `NotFound`.
    async fn approve_email_link(&self, id: &str, link_hash: &[u8; 32], max_tries: u32, now: UnixTime) -> Result<LinkApproval, StoreError>;
    /// Presents `owner`'s code `id` for the action `bound_to`: with digits
    /// (their hash), consumed if they match, else a try is counted (locked at
    /// `max_tries`); without, consumed if its link was approved. Used,
    /// expired and locked codes are refused whatever is presented; another
    /// owner's code or another action's is `NotFound` and counts nothing.
    async fn consume_email_code(
        &self,
        owner: &OwnerId,
        id: &str,
        bound_to: &[u8; 32],
        code_hash: Option<&[u8; 32]>,
        max_tries: u32,
        now: UnixTime,
    ) -> Result<CodeCheck, StoreError>;
    /// The kinds of notice `owner` turned off (none: every kind is on).
    async fn notification_settings(&self, owner: &OwnerId) -> Result<Vec<String>, StoreError>;
    /// Replaces the kinds `owner` turned off, audited in the same transaction.
    /// `NotFound` if the owner is unknown.
    async fn set_notification_settings(
        &self,
        owner: &OwnerId,
        disabled: &[String],
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError>;
    /// Marks the notice `key` sent to `owner`: `true` the first time across
    /// every handle, `false` after.
    async fn mark_notice_sent(&self, owner: &OwnerId, key: &str, now: UnixTime) -> Result<bool, StoreError>;
}

/// A code's row as the decisions need it.
#[derive(Debug, Clone)]
pub(crate) struct CodeRow {
    pub(crate) id: String,
    pub(crate) owner: String,
    pub(crate) bound_to: String,
    pub(crate) code_hash: String,
    pub(crate) phrase: String,
    pub(crate) summary: String,
    pub(crate) expires_at: i64,
    pub(crate) tries: i64,
    pub(crate) link_approved_at: Option<i64>,
    pub(crate) used_at: Option<i64>,
}

pub(crate) type CodeTuple = (String, String, String, String, String, String, i64, i64, Option<i64>, Option<i64>);
pub(crate) const CODE_COLUMNS: &str =
    "id, owner, bound_to, code_hash, phrase, summary, expires_at, tries, link_approved_at, used_at";

impl From<CodeTuple> for CodeRow {
    fn from((id, owner, bound_to, code_hash, phrase, summary, expires_at, tries, link_approved_at, used_at): CodeTuple) -> Self {
        Self { id, owner, bound_to, code_hash, phrase, summary, expires_at, tries, link_approved_at, used_at }
    }
}

impl CodeRow {
    /// Where it stands at `now`: used first, then locked, then expired.
    pub(crate) fn state(&self, max_tries: u32, now: UnixTime) -> EmailCodeState {
        if self.used_at.is_some() {
            EmailCodeState::Used
        } else if self.tries >= i64::from(max_tries) {
            EmailCodeState::Locked
        } else if self.expires_at <= now {
            EmailCodeState::Expired
        } else if self.link_approved_at.is_some() {
            EmailCodeState::LinkApproved
        } else {
            EmailCodeState::Waiting
        }
    }

    pub(crate) fn view(&self, max_tries: u32, now: UnixTime) -> Result<EmailLinkView, StoreError> {
        Ok(EmailLinkView {
            id: self.id.clone(),
            owner: owner_from(&self.owner)?,
            phrase: self.phrase.clone(),
            summary: self.summary.clone(),
            expires_at: self.expires_at,
            state: self.state(max_tries, now),
        })
    }
}

/// What presenting to a row decides (both backends): the answer, and the
/// write to make (`Use`: set `used_at`, `Try`: count a try).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodeWrite {
    None,
    Use,
    Try,
}

pub(crate) fn decide(
    row: Option<&CodeRow>,
    owner: &OwnerId,
    bound_to: &[u8; 32],
    code_hash: Option<&[u8; 32]>,
    max_tries: u32,
    now: UnixTime,
) -> (CodeCheck, CodeWrite) {
    let Some(row) = row.filter(|r| r.owner == owner.as_str() && r.bound_to == hash_to_hex(bound_to)) else {
        return (CodeCheck::NotFound, CodeWrite::None);
    };
    let state = row.state(max_tries, now);
    if matches!(state, EmailCodeState::Used | EmailCodeState::Locked | EmailCodeState::Expired) {
        return (CodeCheck::Refused(state), CodeWrite::None);
    }
    match code_hash {
        None if state == EmailCodeState::LinkApproved => (CodeCheck::Consumed, CodeWrite::Use),
        None => (CodeCheck::NotApproved, CodeWrite::None),
        Some(presented) => {
            if equal_hex(&hash_to_hex(presented), &row.code_hash) {
                (CodeCheck::Consumed, CodeWrite::Use)
            } else {
                let left = i64::from(max_tries) - row.tries - 1;
                (CodeCheck::Wrong { tries_left: u32::try_from(left.max(0)).unwrap_or(0) }, CodeWrite::Try)
            }
        }
    }
}

/// Constant-time equality of two hex strings of equal length.
fn equal_hex(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The comma-separated column of disabled kinds.
pub(crate) fn disabled_from(text: &str) -> Vec<String> {
    text.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

pub(crate) fn disabled_text(disabled: &[String]) -> Result<String, StoreError> {
    if disabled.iter().any(|k| k.is_empty() || k.contains(',')) {
        return Err(StoreError::Invalid("a notification kind is a non-empty name without commas".to_owned()));
    }
    let mut sorted: Vec<&str> = disabled.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    Ok(sorted.join(","))
}

#[async_trait]
impl OwnerMail for SqliteStore {
    async fn issue_email_code(&self, code: &EmailCodeRecord, limits: EmailCodeLimits) -> Result<EmailCodeIssue, StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM owner_email_codes WHERE expires_at <= ?1")
            .bind(code.created_at - EMAIL_CODE_RETENTION_SECS)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let known: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM owners WHERE id = ?1")
            .bind(code.owner.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if known.is_none() {
            return Err(StoreError::NotFound { what: format!("owner {}", code.owner) });
        }
        let (by_owner,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM owner_email_codes WHERE owner = ?1 AND created_at >= ?2")
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
                sqlx::query_as("SELECT COUNT(*) FROM owner_email_codes WHERE requested_from = ?1 AND created_at >= ?2")
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
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .bind(&code.id)
        .bind(code.owner.as_str())
        .bind(hash_to_hex(&code.bound_to))
        .bind(hash_to_hex(&code.code_hash))
        .bind(hash_to_hex(&code.link_hash))
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
        let row: Option<CodeTuple> = sqlx::query_as(&format!("SELECT {CODE_COLUMNS} FROM owner_email_codes WHERE id = ?1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(|r| CodeRow::from(r).view(max_tries, now)).transpose()
    }

    async fn approve_email_link(&self, id: &str, link_hash: &[u8; 32], max_tries: u32, now: UnixTime) -> Result<LinkApproval, StoreError> {
        let mut tx = self.write_tx().await?;
        let row: Option<CodeTuple> =
            sqlx::query_as(&format!("SELECT {CODE_COLUMNS} FROM owner_email_codes WHERE link_hash = ?1 AND id = ?2"))
                .bind(hash_to_hex(link_hash))
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
            "UPDATE owner_email_codes SET link_approved_at = ?1 WHERE id = ?2 AND link_approved_at IS NULL AND used_at IS NULL",
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
        let mut tx = self.write_tx().await?;
        let row: Option<CodeTuple> = sqlx::query_as(&format!("SELECT {CODE_COLUMNS} FROM owner_email_codes WHERE id = ?1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        let row = row.map(CodeRow::from);
        let (answer, write) = decide(row.as_ref(), owner, bound_to, code_hash, max_tries, now);
        let query = match write {
            CodeWrite::None => return Ok(answer),
            CodeWrite::Use => sqlx::query("UPDATE owner_email_codes SET used_at = ?1 WHERE id = ?2 AND used_at IS NULL").bind(now),
            CodeWrite::Try => sqlx::query("UPDATE owner_email_codes SET tries = tries + 1 WHERE id = ?1 AND used_at IS NULL"),
        };
        let done = query.bind(id).execute(&mut *tx).await.map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        if done.rows_affected() == 0 {
            return Ok(CodeCheck::Refused(EmailCodeState::Used));
        }
        Ok(answer)
    }

    async fn notification_settings(&self, owner: &OwnerId) -> Result<Vec<String>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as("SELECT disabled FROM owner_notification_settings WHERE owner = ?1")
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
        let mut tx = self.write_tx().await?;
        let known: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM owners WHERE id = ?1")
            .bind(owner.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if known.is_none() {
            return Err(StoreError::NotFound { what: format!("owner {owner}") });
        }
        sqlx::query(
            "INSERT INTO owner_notification_settings (owner, disabled, updated_at) VALUES (?1, ?2, ?3)
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
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("INSERT INTO owner_notices_sent (owner, key, sent_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING")
            .bind(owner.as_str())
            .bind(key)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(tries: i64, expires_at: i64, link: Option<i64>, used: Option<i64>) -> CodeRow {
        CodeRow {
            id: "c1".into(),
            owner: "0x00000000000000000000000000000000000000aa".into(),
            bound_to: hash_to_hex(&[1; 32]),
            code_hash: hash_to_hex(&[2; 32]),
            phrase: "p".into(),
            summary: "s".into(),
            expires_at,
            tries,
            link_approved_at: link,
            used_at: used,
        }
    }

    #[test]
    fn the_right_digits_of_a_spent_code_do_nothing() {
        let owner: OwnerId = "0x00000000000000000000000000000000000000aa".parse().unwrap();
        let ok = |r: &CodeRow, h: Option<&[u8; 32]>| decide(Some(r), &owner, &[1; 32], h, 5, 100).0;
        assert_eq!(ok(&row(0, 200, None, None), Some(&[2; 32])), CodeCheck::Consumed);
        assert_eq!(ok(&row(4, 200, None, None), Some(&[3; 32])), CodeCheck::Wrong { tries_left: 0 });
        assert_eq!(ok(&row(5, 200, None, None), Some(&[2; 32])), CodeCheck::Refused(EmailCodeState::Locked));
        assert_eq!(ok(&row(0, 100, None, None), Some(&[2; 32])), CodeCheck::Refused(EmailCodeState::Expired));
        assert_eq!(ok(&row(0, 200, None, Some(90)), Some(&[2; 32])), CodeCheck::Refused(EmailCodeState::Used));
        assert_eq!(ok(&row(0, 200, None, None), None), CodeCheck::NotApproved);
        assert_eq!(ok(&row(0, 200, Some(99), None), None), CodeCheck::Consumed);
        assert_eq!(decide(Some(&row(0, 200, None, None)), &owner, &[9; 32], Some(&[2; 32]), 5, 100).0, CodeCheck::NotFound);
    }
}
