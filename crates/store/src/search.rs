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
    format!("x{:016x}", scope_hash(owner, inbox))
}

/// The word naming the (owner, inbox)'s messages **with an attachment**: `y`
/// and the same digits as [`scope_word`]. Such a message carries both words,
/// so `has_attachment: true` reads this one short list instead of checking
/// the flag on every row of the inbox's matches (BENCHMARKS.md, "Search").
pub(crate) fn attachment_scope_word(owner: &OwnerId, inbox: &Address) -> String {
    format!("y{:016x}", scope_hash(owner, inbox))
}

fn scope_hash(owner: &OwnerId, inbox: &Address) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in owner.as_str().bytes().chain([0u8]).chain(inbox.as_str().bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The scope words of a message: [`scope_word`], and [`attachment_scope_word`]
/// when it has an attachment.
pub(crate) fn scope_words(owner: &OwnerId, inbox: &Address, has_attachment: bool) -> Vec<String> {
    let mut words = vec![scope_word(owner, inbox)];
    if has_attachment {
        words.push(attachment_scope_word(owner, inbox));
    }
    words
}

/// Version of the words and thread keys [`insert_message`] (and PostgreSQL's
/// indexing statement) write for a row, stored in `messages.facts_version`:
/// 0 for rows indexed before threads and search existed (sqlite 0023,
/// postgres 0013) or before the attachment word (sqlite 0028, postgres 0019).
/// [`crate::Mailroom::backfill_facts`] brings older rows to this version. The
/// partial index `messages_facts_pending` is on `facts_version < 1`: raising
/// this needs a migration that recreates it.
pub const FACTS_VERSION: i64 = 1;

/// The PostgreSQL lexemes of a new message: `i_<scope>` (and `i_<attachment
/// scope>`), then `s_`, `f_`, `t_`, `b_` prefixed words, separated by spaces.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn pg_terms(m: &NewMessage) -> String {
    let f = &m.facts;
    let mut out = scope_words(&m.owner, &m.inbox, f.has_attachment)
        .iter()
        .map(|w| format!("i_{w}"))
        .collect::<Vec<_>>()
        .join(" ");
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
/// digits only, so nothing needs escaping). `has_attachment: true` names the
/// attachment scope instead of the scope; `false` excludes it.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn pg_tsquery(owner: &OwnerId, inbox: &Address, words: &QueryWords, has_attachment: Option<bool>) -> String {
    let mut parts = vec![match has_attachment {
        Some(true) => format!("'i_{}'", attachment_scope_word(owner, inbox)),
        Some(false) => format!("'i_{}' & !'i_{}'", scope_word(owner, inbox), attachment_scope_word(owner, inbox)),
        None => format!("'i_{}'", scope_word(owner, inbox)),
    }];
    parts.extend(words.subject.iter().map(|w| format!("'s_{w}'")));
    parts.extend(words.text.iter().map(|w| format!("('s_{w}' | 'b_{w}')")));
    parts.extend(words.from.iter().map(|w| format!("'f_{w}'")));
    parts.extend(words.to.iter().map(|w| format!("'t_{w}'")));
    parts.join(" & ")
}

/// The FTS5 `MATCH` expression of a search.
/// `has_attachment` as in [`pg_tsquery`]. The other field terms come first:
/// FTS5 applies `NOT` to what its left side matched.
fn fts_match(owner: &OwnerId, inbox: &Address, words: &QueryWords, has_attachment: Option<bool>) -> String {
    let mut parts = vec![match has_attachment {
        Some(true) => format!("scope : \"{}\"", attachment_scope_word(owner, inbox)),
        _ => format!("scope : \"{}\"", scope_word(owner, inbox)),
    }];
    parts.extend(words.subject.iter().map(|w| format!("subject : \"{w}\"")));
    parts.extend(words.text.iter().map(|w| format!("{{subject body}} : \"{w}\"")));
    parts.extend(words.from.iter().map(|w| format!("sender : \"{w}\"")));
    parts.extend(words.to.iter().map(|w| format!("recipients : \"{w}\"")));
    let all = parts.join(" AND ");
    match has_attachment {
        Some(false) => format!("({all}) NOT scope : \"{}\"", attachment_scope_word(owner, inbox)),
        _ => all,
    }
}

/// The oldest thread that `keys` reach among the rows of (owner, inbox)
/// committed or written earlier in `tx`, with every other thread they reach
/// merged into it; `None` when they reach none.
async fn merge_reached_threads(
    tx: &mut SqliteConnection,
    owner: &OwnerId,
    inbox: &Address,
    keys: &[String],
) -> Result<Option<String>, StoreError> {
    if keys.is_empty() {
        return Ok(None);
    }
    let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "SELECT DISTINCT m.thread_id FROM message_thread_keys k JOIN messages m ON m.seq = k.seq WHERE k.owner = ",
    );
    q.push_bind(owner.as_str()).push(" AND k.inbox = ").push_bind(inbox.as_str()).push(" AND k.key IN (");
    let mut sep = q.separated(", ");
    for k in keys {
        sep.push_bind(k.as_str());
    }
    q.push(") AND m.thread_id IS NOT NULL ORDER BY m.thread_id");
    let threads: Vec<(String,)> = q.build_query_as().fetch_all(&mut *tx).await.map_err(backend)?;
    let Some(((first,), rest)) = threads.split_first() else {
        return Ok(None);
    };
    for (other,) in rest {
        sqlx::query("UPDATE messages SET thread_id = ?1 WHERE owner = ?2 AND inbox = ?3 AND thread_id = ?4")
            .bind(first)
            .bind(owner.as_str())
            .bind(inbox.as_str())
            .bind(other)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
    }
    Ok(Some(first.clone()))
}

/// Stores the thread keys of row `seq` (`m`'s), keeping those stored already.
async fn insert_thread_keys(tx: &mut SqliteConnection, m: &NewMessage, seq: i64) -> Result<(), StoreError> {
    let keys = m.facts.thread_keys();
    if !keys.is_empty() {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT OR IGNORE INTO message_thread_keys (owner, inbox, key, seq) ");
        q.push_values(&keys, |mut row, k| {
            row.push_bind(m.owner.as_str()).push_bind(m.inbox.as_str()).push_bind(k.as_str()).push_bind(seq);
        });
        q.build().execute(&mut *tx).await.map_err(backend)?;
    }
    Ok(())
}

/// Writes row `seq`'s words (`m`'s), replacing any it had.
async fn write_words(tx: &mut SqliteConnection, m: &NewMessage, seq: i64) -> Result<(), StoreError> {
    let f = &m.facts;
    sqlx::query("DELETE FROM message_search WHERE rowid = ?1").bind(seq).execute(&mut *tx).await.map_err(backend)?;
    sqlx::query("INSERT INTO message_search (rowid, scope, subject, sender, recipients, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
        .bind(seq)
        .bind(scope_words(&m.owner, &m.inbox, f.has_attachment).join(" "))
        .bind(f.subject_terms.join(" "))
        .bind(f.sender_terms.join(" "))
        .bind(f.recipient_terms.join(" "))
        .bind(f.body_terms.join(" "))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    Ok(())
}

/// Writes a new message's row with its thread, thread keys and words, in `tx`;
/// returns its `seq`.
pub(crate) async fn insert_message(tx: &mut SqliteConnection, m: &NewMessage) -> Result<i64, StoreError> {
    let size = i64::try_from(m.size).map_err(|_| StoreError::Invalid(format!("message size {} is too large", m.size)))?;
    let thread = merge_reached_threads(tx, &m.owner, &m.inbox, &m.facts.thread_lookup_keys())
        .await?
        .unwrap_or_else(|| m.id.to_string());
    let (seq,): (i64,) = sqlx::query_as(
        "INSERT INTO messages (owner, inbox, id, received_at, size, header_from_address, header_from_name, subject,
                               authenticated, thread_id, has_attachment, recipients, facts_version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) RETURNING seq",
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
    .bind(FACTS_VERSION)
    .fetch_one(&mut *tx)
    .await
    .map_err(backend)?;
    insert_thread_keys(tx, m, seq).await?;
    write_words(tx, m, seq).await?;
    Ok(seq)
}

/// The `seq` of `m`'s row as `tx` sees it, if there is one (with
/// `pending_only`, only while its facts are older than [`FACTS_VERSION`]).
pub(crate) async fn row_seq(tx: &mut SqliteConnection, m: &NewMessage, pending_only: bool) -> Result<Option<i64>, StoreError> {
    let pending = if pending_only { format!(" AND facts_version < {FACTS_VERSION}") } else { String::new() };
    let row: Option<(i64,)> =
        sqlx::query_as(&format!("SELECT seq FROM messages WHERE owner = ?1 AND inbox = ?2 AND id = ?3{pending}"))
            .bind(m.owner.as_str())
            .bind(m.inbox.as_str())
            .bind(m.id.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
    Ok(row.map(|(seq,)| seq))
}

/// [`crate::MessageIndex::refresh_facts`] of one row, in `tx`: whether it was
/// written (`false` when missing or current).
pub(crate) async fn refresh_message(tx: &mut SqliteConnection, m: &NewMessage) -> Result<bool, StoreError> {
    let Some(seq) = row_seq(tx, m, true).await? else {
        return Ok(false);
    };
    // Its keys first: the lookup then reaches its own thread too, and the
    // threads of later rows that link to it (a reply indexed before the backfill).
    insert_thread_keys(tx, m, seq).await?;
    let thread = merge_reached_threads(tx, &m.owner, &m.inbox, &m.facts.thread_lookup_keys()).await?;
    write_words(tx, m, seq).await?;
    sqlx::query(
        "UPDATE messages SET thread_id = coalesce(?2, thread_id, id), has_attachment = ?3, recipients = ?4, facts_version = ?5
          WHERE seq = ?1",
    )
    .bind(seq)
    .bind(thread)
    .bind(m.facts.has_attachment)
    .bind(m.facts.recipients.join(" "))
    .bind(FACTS_VERSION)
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    Ok(true)
}

/// The SQL condition (SQLite or PostgreSQL: both spell these alike) and binds
/// of the exact rules of a query (all but the page cursor), on `messages` aliased `m`. `next` numbers
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
                // Inside a CASE so that PostgreSQL's planner counts it as
                // unknown (half the rows) instead of guessing 0.5 % for a
                // comparison of a computed value: with that guess it read every
                // match of the domain's word through the GIN index and sorted
                // them (240 ms p99 at 100,000 messages), where walking the
                // inbox newest first stops after a few hundred rows.
                sql.push_str(&format!(
                    " AND CASE WHEN length(m.header_from_address) >= {n} AND lower(substr(m.header_from_address, \
                     CAST(length(m.header_from_address) - {n} + 1 AS INTEGER))) IN ({at}, {dot}) THEN true ELSE false END"
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

/// How a backend spells a search: placeholders, its `strpos`, where the
/// candidates come from and how the full-text condition (on the first
/// placeholder) and its order are written, and the full-text query itself.
pub(crate) struct SearchDialect {
    pub(crate) placeholder: fn(usize) -> String,
    pub(crate) strpos: &'static str,
    pub(crate) from: &'static str,
    pub(crate) full_text: &'static str,
    pub(crate) order: &'static str,
    pub(crate) match_text: fn(&OwnerId, &Address, &QueryWords, Option<bool>) -> String,
}

fn sqlite_placeholder(n: usize) -> String {
    format!("?{n}")
}

/// SQLite: FTS5 candidates newest first, each row by its primary key.
const SQLITE_SEARCH: SearchDialect = SearchDialect {
    placeholder: sqlite_placeholder,
    strpos: "instr(",
    from: "message_search JOIN messages m ON m.seq = message_search.rowid",
    full_text: "message_search MATCH ?1",
    order: "message_search.rowid",
    match_text: fts_match,
};

/// The statement and binds of a search in `dialect`; `None` when it matches
/// nothing. Owner and inbox are checked on the row, with the exact rules.
pub(crate) fn search_statement(
    dialect: &SearchDialect,
    owner: &OwnerId,
    inbox: &Address,
    query: &SearchQuery,
) -> Option<(String, Vec<Bind>)> {
    let words = query.words();
    if !can_match(query, &words) || query.limit == 0 {
        return None;
    }
    let p = dialect.placeholder;
    let mut next = 4;
    let (rules, mut rule_binds) = exact_rules(query, &p, &mut next);
    let mut rules = rules.replace("strpos_(", dialect.strpos);
    // The page cursor on the ordering column itself: on SQLite FTS5 then
    // starts its walk there. On `m.seq`, SQLite's planner would walk the
    // inbox's rows by `seq` and probe FTS5 for each (the plan test pins this).
    if let Some(before) = query.before_seq {
        rules.push_str(&format!(" AND {} < {}", dialect.order, p(next)));
        rule_binds.push(Bind::Int(before));
        next += 1;
    }
    let sql = format!(
        "SELECT {SEARCH_COLUMNS} FROM {} WHERE {} AND m.owner = {} AND m.inbox = {}{rules} ORDER BY {} DESC LIMIT {}",
        dialect.from,
        dialect.full_text,
        p(2),
        p(3),
        dialect.order,
        p(next)
    );
    let mut binds = vec![
        Bind::Text((dialect.match_text)(owner, inbox, &words, query.has_attachment)),
        Bind::Text(owner.as_str().to_owned()),
        Bind::Text(inbox.as_str().to_owned()),
    ];
    binds.extend(rule_binds);
    binds.push(Bind::Int(i64::from(query.limit)));
    Some((sql, binds))
}

/// Binds `binds` in order.
fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    binds: Vec<Bind>,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    for b in binds {
        q = match b {
            Bind::Text(s) => q.bind(s),
            Bind::Int(i) => q.bind(i),
            Bind::Bool(v) => q.bind(v),
        };
    }
    q
}

/// The backfill's read: the literal bound matches the partial index
/// `messages_facts_pending` (a bound parameter would not let SQLite use it).
fn facts_pending_sql() -> String {
    format!("SELECT {SEARCH_COLUMNS} FROM messages m WHERE m.facts_version < {FACTS_VERSION} AND m.seq > ?1 ORDER BY m.seq LIMIT ?2")
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
        let Some((sql, binds)) = search_statement(&SQLITE_SEARCH, owner, inbox, query) else {
            return Ok(Vec::new());
        };
        let rows = bind_all(sqlx::query(&sql), binds).fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter()
            .map(|row| {
                let message = crate::index::from_row(row)?;
                let thread_id = thread_of(row, 10, message.id)?;
                Ok(SearchHit { message, thread_id })
            })
            .collect()
    }

    /// SQLite's plan (`EXPLAIN QUERY PLAN`, one line per step) of the
    /// statement [`crate::MessageIndex::search_messages`] runs for `query`;
    /// empty when it runs none. For the plan tests and the search bench.
    pub async fn search_plan(&self, owner: &OwnerId, inbox: &Address, query: &SearchQuery) -> Result<Vec<String>, StoreError> {
        let Some((sql, binds)) = search_statement(&SQLITE_SEARCH, owner, inbox, query) else {
            return Ok(Vec::new());
        };
        let sql = format!("EXPLAIN QUERY PLAN {sql}");
        let rows = bind_all(sqlx::query(&sql), binds).fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(|r| r.try_get::<String, _>(3).map_err(backend)).collect()
    }

    /// SQLite's plan of the backfill's read ([`crate::MessageIndex::facts_pending`]).
    pub async fn facts_pending_plan(&self) -> Result<Vec<String>, StoreError> {
        let sql = format!("EXPLAIN QUERY PLAN {}", facts_pending_sql());
        let rows = sqlx::query(&sql).bind(0i64).bind(1i64).fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(|r| r.try_get::<String, _>(3).map_err(backend)).collect()
    }

    pub(crate) async fn facts_pending_sqlite(&self, after_seq: i64, limit: u32) -> Result<Vec<IndexedMessage>, StoreError> {
        let rows = sqlx::query(&facts_pending_sql()).bind(after_seq).bind(i64::from(limit)).fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(crate::index::from_row).collect()
    }

    pub(crate) async fn refresh_facts_sqlite(&self, rows: &[NewMessage]) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let mut tx = self.write_tx().await?;
        let mut written = 0;
        for m in rows {
            if refresh_message(&mut tx, m).await? {
                written += 1;
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(written)
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

#[cfg(feature = "conformance")]
impl crate::SqliteStore {
    /// Test support: makes the rows of these message ids look as rows indexed
    /// before threads and search look after the migrations (no words, no
    /// thread keys, no attachment flag or recipients, a thread of their own,
    /// `facts_version` 0).
    #[doc(hidden)]
    pub async fn forget_facts(&self, ids: &[Ulid]) -> Result<(), StoreError> {
        let rows = format!("SELECT seq FROM messages WHERE id IN ({})", ids.iter().map(|id| format!("'{id}'")).collect::<Vec<_>>().join(", "));
        let mut tx = self.write_tx().await?;
        for sql in [
            format!("DELETE FROM message_search WHERE rowid IN ({rows})"),
            format!("DELETE FROM message_thread_keys WHERE seq IN ({rows})"),
            format!("UPDATE messages SET facts_version = 0, has_attachment = 0, recipients = '', thread_id = id WHERE seq IN ({rows})"),
        ] {
            sqlx::query(&sql).execute(&mut *tx).await.map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
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
        let m = fts_match(&owner, &inbox, &q.words(), None);
        let aw = address_word("a@b.c");
        assert!(m.ends_with(&format!("{{subject body}} : \"hello\" AND {{subject body}} : \"or\" AND {{subject body}} : \"world\" AND sender : \"{aw}\"")), "{m}");
        let t = pg_tsquery(&owner, &inbox, &q.words(), None);
        assert!(t.contains("('s_hello' | 'b_hello') & ('s_or' | 'b_or')"), "{t}");
        assert_eq!(scope_word(&owner, &inbox), scope_word(&owner, &inbox));
        assert_ne!(scope_word(&owner, &inbox), scope_word(&owner, &"other@agents.localhost".parse().unwrap()));
    }
}

