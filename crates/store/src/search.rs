//! Threads and search over the message index (issue 13 §4), on SQLite.
//!
//! What is stored is [`MessageFacts`](crate::message_facts::MessageFacts),
//! taken at acceptance; this module writes it in the indexing transaction and
//! answers the two questions only the index can answer cheaply:
//!
//! - **Threads.** A message joins the oldest thread any of its lookup keys
//!   reaches (`Message-ID`, `In-Reply-To`, `References`; the base subject only
//!   for a reply without those headers), merging the threads it bridges;
//!   otherwise it starts one, whose id is its own. Keys are per inbox: a
//!   message never joins another inbox's thread.
//! - **Search.** SQLite FTS5 (contentless, rowid = `seq`) over the words
//!   MessageFacts extracted, with one word naming the inbox, so candidates are
//!   that inbox's rows; the exact `from`/`to` rules, dates and the attachment
//!   flag are checked on the joined `messages` row, which also checks owner and
//!   inbox. Newest first by `seq`; the cursor is a `seq`.
//!
//! PostgreSQL does the same in `postgres/index.rs` with a tsvector and GIN index
//! over the same words; the conformance suite holds both to the same answers.

use agentkeys_core::{Address, OwnerId, UnixTime};
use sqlx::Row;
use sqlx::sqlite::SqliteConnection;
use ulid::Ulid;

use crate::index::{IndexedMessage, NewMessage};
use crate::message_facts::{MAX_BODY_TERMS, address_word, domain_word, terms};
use crate::meta::StoreError;
use crate::sqlite::backend;

/// Most words a search may carry over all its fields (the API refuses more).
pub const MAX_QUERY_TERMS: usize = 32;
/// Most messages [`crate::MessageIndex::thread_messages`] returns.
pub const MAX_THREAD_MESSAGES: u32 = 500;

/// One search within one inbox. Every given field must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SearchQuery {
    /// `From:` address (with `@`: exactly, any case) or domain (itself or a
    /// subdomain).
    pub from: Option<String>,
    /// A `To:`/`Cc:` address or domain, the same rule as `from`.
    pub to: Option<String>,
    /// Words that must all appear in the subject.
    pub subject: Option<String>,
    /// Words that must each appear in the subject or the decoded body.
    pub text: Option<String>,
    /// Received at or after (Unix seconds).
    pub since: Option<UnixTime>,
    /// Received before (Unix seconds).
    pub until: Option<UnixTime>,
    /// With (`true`) or without (`false`) an attachment.
    pub has_attachment: Option<bool>,
    /// Only rows with a smaller `seq` (the previous page's cursor).
    pub before_seq: Option<i64>,
    /// Most rows returned.
    pub limit: u32,
}

/// How an address filter matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AddressRule {
    /// Exactly this address (lower-cased).
    Address(String),
    /// This domain or a subdomain (lower-cased).
    Domain(String),
}

impl AddressRule {
    pub(crate) fn parse(pattern: &str) -> Option<Self> {
        let p = pattern.trim().trim_start_matches('@').to_lowercase();
        if p.is_empty() || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return None;
        }
        Some(if p.contains('@') { Self::Address(p) } else { Self::Domain(p) })
    }
}

impl SearchQuery {
    /// The words of each field, as indexed: (subject, text, from, to).
    pub(crate) fn words(&self) -> QueryWords {
        let t = |s: &Option<String>| s.as_deref().map(|s| terms(s, MAX_BODY_TERMS)).unwrap_or_default();
        // An address or a domain is one word of its own (message_facts::address_words).
        let a = |s: &Option<String>| match s.as_deref().and_then(AddressRule::parse) {
            Some(AddressRule::Address(a)) => vec![address_word(&a)],
            Some(AddressRule::Domain(d)) => vec![domain_word(&d)],
            None => Vec::new(),
        };
        QueryWords { subject: t(&self.subject), text: t(&self.text), from: a(&self.from), to: a(&self.to) }
    }

    /// How many words the query carries (the API holds it to [`MAX_QUERY_TERMS`]).
    pub fn word_count(&self) -> usize {
        let w = self.words();
        w.subject.len() + w.text.len() + w.from.len() + w.to.len()
    }
}

/// The words of a query by field.
#[derive(Debug, Clone, Default)]
pub(crate) struct QueryWords {
    pub(crate) subject: Vec<String>,
    pub(crate) text: Vec<String>,
    pub(crate) from: Vec<String>,
    pub(crate) to: Vec<String>,
}

/// One search answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchHit {
    /// The message.
    pub message: IndexedMessage,
    /// Its thread.
    pub thread_id: Ulid,
}

/// One thread of an inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadSummary {
    /// The thread id: the id of the first of its messages that reached the inbox.
    pub thread_id: Ulid,
    /// How many of its messages the inbox holds.
    pub message_count: u64,
    /// Its newest message.
    pub latest: IndexedMessage,
}

/// The word naming an (owner, inbox) in the full-text index: `x` and 16 hex
/// digits of FNV-1a over both. A collision only adds candidates, which the
/// join on owner and inbox removes.
pub(crate) fn scope_word(owner: &OwnerId, inbox: &Address) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in owner.as_str().bytes().chain([0u8]).chain(inbox.as_str().bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("x{h:016x}")
}

/// The PostgreSQL lexemes of a new message: `i_<scope>`, then `s_`, `f_`,
/// `t_`, `b_` prefixed words, separated by spaces.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn pg_terms(m: &NewMessage) -> String {
    let f = &m.facts;
    let mut out = format!("i_{}", scope_word(&m.owner, &m.inbox));
    for (prefix, words) in
        [("s_", &f.subject_terms), ("f_", &f.sender_terms), ("t_", &f.recipient_terms), ("b_", &f.body_terms)]
    {
        for w in words {
            out.push(' ');
            out.push_str(prefix);
            out.push_str(w);
        }
    }
    out
}

/// The PostgreSQL `tsquery` of a search (lexemes quoted; words are letters and
/// digits only, so nothing needs escaping).
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn pg_tsquery(owner: &OwnerId, inbox: &Address, words: &QueryWords) -> String {
    let mut parts = vec![format!("'i_{}'", scope_word(owner, inbox))];
    parts.extend(words.subject.iter().map(|w| format!("'s_{w}'")));
    parts.extend(words.text.iter().map(|w| format!("('s_{w}' | 'b_{w}')")));
    parts.extend(words.from.iter().map(|w| format!("'f_{w}'")));
    parts.extend(words.to.iter().map(|w| format!("'t_{w}'")));
    parts.join(" & ")
}

/// The FTS5 `MATCH` expression of a search.
fn fts_match(owner: &OwnerId, inbox: &Address, words: &QueryWords) -> String {
    let mut parts = vec![format!("scope : \"{}\"", scope_word(owner, inbox))];
    parts.extend(words.subject.iter().map(|w| format!("subject : \"{w}\"")));
    parts.extend(words.text.iter().map(|w| format!("{{subject body}} : \"{w}\"")));
    parts.extend(words.from.iter().map(|w| format!("sender : \"{w}\"")));
    parts.extend(words.to.iter().map(|w| format!("recipients : \"{w}\"")));
    parts.join(" AND ")
}

/// Finds the thread of `m` among the rows committed or written earlier in
/// `tx`, merging the threads it bridges; its own id when none.
async fn resolve_thread(tx: &mut SqliteConnection, m: &NewMessage) -> Result<String, StoreError> {
    let keys = m.facts.thread_lookup_keys();
    if keys.is_empty() {
        return Ok(m.id.to_string());
    }
    let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "SELECT DISTINCT m.thread_id FROM message_thread_keys k JOIN messages m ON m.seq = k.seq WHERE k.owner = ",
    );
    q.push_bind(m.owner.as_str()).push(" AND k.inbox = ").push_bind(m.inbox.as_str()).push(" AND k.key IN (");
    let mut sep = q.separated(", ");
    for k in &keys {
        sep.push_bind(k.as_str());
    }
    q.push(") AND m.thread_id IS NOT NULL ORDER BY m.thread_id");
    let threads: Vec<(String,)> = q.build_query_as().fetch_all(&mut *tx).await.map_err(backend)?;
    let Some(((first,), rest)) = threads.split_first() else {
        return Ok(m.id.to_string());
    };
    for (other,) in rest {
        sqlx::query("UPDATE messages SET thread_id = ?1 WHERE owner = ?2 AND inbox = ?3 AND thread_id = ?4")
            .bind(first)
            .bind(m.owner.as_str())
            .bind(m.inbox.as_str())
            .bind(other)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
    }
    Ok(first.clone())
}

/// Writes a new message's row with its thread, thread keys and words, in `tx`;
/// returns its `seq`.
pub(crate) async fn insert_message(tx: &mut SqliteConnection, m: &NewMessage) -> Result<i64, StoreError> {
    let size = i64::try_from(m.size).map_err(|_| StoreError::Invalid(format!("message size {} is too large", m.size)))?;
    let thread = resolve_thread(tx, m).await?;
    let (seq,): (i64,) = sqlx::query_as(
        "INSERT INTO messages (owner, inbox, id, received_at, size, header_from_address, header_from_name, subject,
                               authenticated, thread_id, has_attachment, recipients)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) RETURNING seq",
    )
    .bind(m.owner.as_str())
    .bind(m.inbox.as_str())
    .bind(m.id.to_string())
    .bind(m.received_at())
    .bind(size)
    .bind(m.summary.header_from.as_ref().map(|f| f.address.as_str()))
    .bind(m.summary.header_from.as_ref().and_then(|f| f.name.as_deref()))
    .bind(m.summary.subject.as_deref())
    .bind(m.summary.authenticated)
    .bind(&thread)
    .bind(m.facts.has_attachment)
    .bind(m.facts.recipients.join(" "))
    .fetch_one(&mut *tx)
    .await
    .map_err(backend)?;
    let keys = m.facts.thread_keys();
    if !keys.is_empty() {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT OR IGNORE INTO message_thread_keys (owner, inbox, key, seq) ");
        q.push_values(&keys, |mut row, k| {
            row.push_bind(m.owner.as_str()).push_bind(m.inbox.as_str()).push_bind(k.as_str()).push_bind(seq);
        });
        q.build().execute(&mut *tx).await.map_err(backend)?;
    }
    let f = &m.facts;
    sqlx::query("INSERT INTO message_search (rowid, scope, subject, sender, recipients, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
        .bind(seq)
        .bind(scope_word(&m.owner, &m.inbox))
        .bind(f.subject_terms.join(" "))
        .bind(f.sender_terms.join(" "))
        .bind(f.recipient_terms.join(" "))
        .bind(f.body_terms.join(" "))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    Ok(seq)
}

/// The SQL condition (SQLite or PostgreSQL: both spell these alike) and binds
/// of the exact rules of a query, on `messages` aliased `m`. `next` numbers
/// the placeholders (`?N` / `$N`).
pub(crate) fn exact_rules(query: &SearchQuery, placeholder: &dyn Fn(usize) -> String, next: &mut usize) -> (String, Vec<Bind>) {
    let mut sql = String::new();
    let mut binds = Vec::new();
    let mut p = |b: Bind, binds: &mut Vec<Bind>| {
        binds.push(b);
        *next += 1;
        placeholder(*next - 1)
    };
    if let Some(rule) = query.from.as_deref().and_then(AddressRule::parse) {
        match rule {
            AddressRule::Address(a) => {
                let x = p(Bind::Text(a), &mut binds);
                sql.push_str(&format!(" AND lower(m.header_from_address) = {x}"));
            }
            AddressRule::Domain(d) => {
                let len = d.chars().count() as i64 + 1;
                let at = p(Bind::Text(format!("@{d}")), &mut binds);
                let dot = p(Bind::Text(format!(".{d}")), &mut binds);
                let n = p(Bind::Int(len), &mut binds);
                // substr from a position of at least 1 (SQLite counts a negative
                // one from the end); CAST for PostgreSQL's substr(text, int).
                sql.push_str(&format!(
                    " AND length(m.header_from_address) >= {n} AND lower(substr(m.header_from_address, \
                     CAST(length(m.header_from_address) - {n} + 1 AS INTEGER))) IN ({at}, {dot})"
                ));
            }
        }
    }
    if let Some(rule) = query.to.as_deref().and_then(AddressRule::parse) {
        let hay = "(' ' || m.recipients || ' ')";
        match rule {
            AddressRule::Address(a) => {
                let x = p(Bind::Text(format!(" {a} ")), &mut binds);
                sql.push_str(&format!(" AND strpos_({hay}, {x}) > 0"));
            }
            AddressRule::Domain(d) => {
                let at = p(Bind::Text(format!("@{d} ")), &mut binds);
                let dot = p(Bind::Text(format!(".{d} ")), &mut binds);
                sql.push_str(&format!(" AND (strpos_({hay}, {at}) > 0 OR strpos_({hay}, {dot}) > 0)"));
            }
        }
    }
    if let Some(since) = query.since {
        let x = p(Bind::Int(since), &mut binds);
        sql.push_str(&format!(" AND m.received_at >= {x}"));
    }
    if let Some(until) = query.until {
        let x = p(Bind::Int(until), &mut binds);
        sql.push_str(&format!(" AND m.received_at < {x}"));
    }
    if let Some(has) = query.has_attachment {
        let x = p(Bind::Bool(has), &mut binds);
        sql.push_str(&format!(" AND m.has_attachment = {x}"));
    }
    if let Some(before) = query.before_seq {
        let x = p(Bind::Int(before), &mut binds);
        sql.push_str(&format!(" AND m.seq < {x}"));
    }
    (sql, binds)
}

/// A value bound to a placeholder of [`exact_rules`].
#[derive(Debug, Clone)]
pub(crate) enum Bind {
    Text(String),
    Int(i64),
    Bool(bool),
}

/// Whether a query can match anything: a `from`/`to` that is no address or
/// domain, or a field whose words are all punctuation, matches nothing.
pub(crate) fn can_match(query: &SearchQuery, words: &QueryWords) -> bool {
    let field_ok = |given: &Option<String>, w: &Vec<String>| given.as_deref().is_none_or(|s| s.trim().is_empty() || !w.is_empty());
    let addr_ok = |given: &Option<String>| given.as_deref().is_none_or(|s| s.trim().is_empty() || AddressRule::parse(s).is_some());
    field_ok(&query.subject, &words.subject)
        && field_ok(&query.text, &words.text)
        && field_ok(&query.from, &words.from)
        && field_ok(&query.to, &words.to)
        && addr_ok(&query.from)
        && addr_ok(&query.to)
}

pub(crate) const SEARCH_COLUMNS: &str = "m.seq, m.owner, m.inbox, m.id, m.received_at, m.size, m.header_from_address, m.header_from_name, m.subject, m.authenticated, m.thread_id";

fn thread_of(row: &sqlx::sqlite::SqliteRow, i: usize, id: Ulid) -> Result<Ulid, StoreError> {
    let t: Option<String> = row.try_get(i).map_err(backend)?;
    match t {
        None => Ok(id),
        Some(t) => Ulid::from_string(&t).map_err(|_| StoreError::Backend(format!("stored thread id {t:?} is invalid"))),
    }
}

impl crate::SqliteStore {
    pub(crate) async fn search_sqlite(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        query: &SearchQuery,
    ) -> Result<Vec<SearchHit>, StoreError> {
        let words = query.words();
        if !can_match(query, &words) || query.limit == 0 {
            return Ok(Vec::new());
        }
        let mut next = 4;
        let (rules, binds) = exact_rules(query, &|n| format!("?{n}"), &mut next);
        let rules = rules.replace("strpos_(", "instr(");
        let sql = format!(
            "SELECT {SEARCH_COLUMNS} FROM message_search JOIN messages m ON m.seq = message_search.rowid
              WHERE message_search MATCH ?1 AND m.owner = ?2 AND m.inbox = ?3{rules}
              ORDER BY message_search.rowid DESC LIMIT ?{next}"
        );
        let mut q = sqlx::query(&sql).bind(fts_match(owner, inbox, &words)).bind(owner.as_str()).bind(inbox.as_str());
        for b in binds {
            q = match b {
                Bind::Text(s) => q.bind(s),
                Bind::Int(i) => q.bind(i),
                Bind::Bool(v) => q.bind(v),
            };
        }
        let rows = q.bind(i64::from(query.limit)).fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter()
            .map(|row| {
                let message = crate::index::from_row(row)?;
                let thread_id = thread_of(row, 10, message.id)?;
                Ok(SearchHit { message, thread_id })
            })
            .collect()
    }

    pub(crate) async fn list_threads_sqlite(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        before: Option<Ulid>,
        limit: u32,
    ) -> Result<Vec<ThreadSummary>, StoreError> {
        let sql = format!(
            "SELECT {SEARCH_COLUMNS}, t.n FROM
               (SELECT thread_id, count(*) AS n, max(id) AS last_id FROM messages
                 WHERE owner = ?1 AND inbox = ?2 GROUP BY thread_id HAVING max(id) < ?3
                 ORDER BY last_id DESC LIMIT ?4) t
               JOIN messages m ON m.owner = ?1 AND m.inbox = ?2 AND m.id = t.last_id
              ORDER BY t.last_id DESC"
        );
        let rows = sqlx::query(&sql)
            .bind(owner.as_str())
            .bind(inbox.as_str())
            .bind(before.map_or_else(|| "~".to_owned(), |u| u.to_string()))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let latest = crate::index::from_row(row)?;
                let thread_id = thread_of(row, 10, latest.id)?;
                let n: i64 = row.try_get(11).map_err(backend)?;
                Ok(ThreadSummary { thread_id, message_count: u64::try_from(n).unwrap_or(0), latest })
            })
            .collect()
    }

    pub(crate) async fn thread_messages_sqlite(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        thread: Ulid,
        limit: u32,
    ) -> Result<Vec<IndexedMessage>, StoreError> {
        let sql = format!(
            "SELECT {SEARCH_COLUMNS} FROM messages m WHERE m.owner = ?1 AND m.inbox = ?2 AND m.thread_id = ?3
              ORDER BY m.id LIMIT ?4"
        );
        let rows = sqlx::query(&sql)
            .bind(owner.as_str())
            .bind(inbox.as_str())
            .bind(thread.to_string())
            .bind(i64::from(limit.min(MAX_THREAD_MESSAGES)))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(crate::index::from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_rules() {
        assert_eq!(AddressRule::parse("Bob@Example.COM"), Some(AddressRule::Address("bob@example.com".into())));
        assert_eq!(AddressRule::parse("@example.com"), Some(AddressRule::Domain("example.com".into())));
        assert_eq!(AddressRule::parse("a b"), None);
        assert_eq!(AddressRule::parse("  "), None);
    }

    #[test]
    fn queries_quote_only_words() {
        let owner: OwnerId = "0x00000000000000000000000000000000000000aa".parse().unwrap();
        let inbox: Address = "bot@agents.localhost".parse().unwrap();
        let q = SearchQuery { text: Some("\"hello\" OR world*".into()), from: Some("a@b.c".into()), ..Default::default() };
        let m = fts_match(&owner, &inbox, &q.words());
        let aw = address_word("a@b.c");
        assert!(m.ends_with(&format!("{{subject body}} : \"hello\" AND {{subject body}} : \"or\" AND {{subject body}} : \"world\" AND sender : \"{aw}\"")), "{m}");
        let t = pg_tsquery(&owner, &inbox, &q.words());
        assert!(t.contains("('s_hello' | 'b_hello') & ('s_or' | 'b_or')"), "{t}");
        assert_eq!(scope_word(&owner, &inbox), scope_word(&owner, &inbox));
        assert_ne!(scope_word(&owner, &inbox), scope_word(&owner, &"other@agents.localhost".parse().unwrap()));
    }
}
