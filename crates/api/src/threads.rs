//! Threads and search of one inbox (issue 13 §4), under a read capability,
//! scoped exactly like the listing, through the same
//! [`AgentRead`](crate::messages::AgentRead): owner and inbox come
//! from the verified capability, so another inbox, another owner's or an
//! unknown thread is the one `404 NOT_FOUND` (a search there is never run),
//! and what the inbox's allow/block policy withholds from the agent is left
//! out and counted by id (`withheld_ids`), as in the listing.
//!
//! - `GET /v1/inboxes/{address}/threads`: threads, the most recently active first.
//! - `GET /v1/inboxes/{address}/threads/{thread_id}`: one thread's messages,
//!   oldest first, and what the inbox sent into it (`sent`: its replies, by
//!   their `In-Reply-To`/`References`, with their delivery state).
//! - `GET /v1/inboxes/{address}/search`: messages matching `from`, `to`,
//!   `subject`, `text`, `since`, `until`, `has_attachment`, newest first.
//!
//! Threads and words come from the index ([`agentkeys_store::MessageFacts`],
//! taken at acceptance); what a message says is still read agent-side.

use agentkeys_store::{
    IndexedMessage, MAX_QUERY_TERMS, MAX_THREAD_MESSAGES, SearchHit, SearchQuery, ThreadSummary,
};
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use ulid::Ulid;
use utoipa::ToSchema;

use crate::ApiState;
use crate::error::{ApiError, Problem};
use crate::review::SentView;
use crate::messages::{
    AgentRead, CapabilityBearer, DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, MessageSummary, authorize, no_store,
};

/// One thread in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ThreadView {
    /// The thread id: the id (a ULID) of the first of its messages that reached the inbox.
    pub thread_id: String,
    /// How many of its messages the inbox holds.
    pub message_count: u64,
    /// Its newest message.
    pub latest: MessageSummary,
}

/// A page of threads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ThreadPage {
    /// Threads, the one with the newest message first.
    pub threads: Vec<ThreadView>,
    /// Pass as `before` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
    /// The ids of the newest messages of the threads in this page's range
    /// that the inbox's allow/block policy withholds from the agent (not
    /// listed, never described).
    #[serde(default)]
    pub withheld_ids: Vec<String>,
}

/// One thread's messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ThreadMessages {
    /// The thread id.
    pub thread_id: String,
    /// Its messages, oldest first (at most 500).
    pub messages: Vec<MessageSummary>,
    /// The ids of its messages the inbox's allow/block policy withholds from
    /// the agent.
    #[serde(default)]
    pub withheld_ids: Vec<String>,
    /// What the inbox sent into the thread, oldest first (at most 500): sends
    /// whose `In-Reply-To`/`References` name one of its messages, or whose
    /// `Message-ID` one of them names.
    #[serde(default)]
    pub sent: Vec<SentView>,
}

/// One search answer: a message and its thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SearchResult {
    /// The message.
    #[serde(flatten)]
    pub message: MessageSummary,
    /// Its thread's id.
    pub thread_id: String,
}

/// A page of search answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SearchPage {
    /// Matching messages, newest first.
    pub messages: Vec<SearchResult>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
    /// The ids of the matching messages in this page's range that the inbox's
    /// allow/block policy withholds from the agent.
    #[serde(default)]
    pub withheld_ids: Vec<String>,
}

fn bad(field: &str, detail: String) -> ApiError {
    ApiError::InvalidRequest { field: Some(field.to_owned()), detail }
}

/// Query pairs, percent-decoded; a repeated name is a 400.
fn pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if out.iter().any(|(n, _)| *n == k) {
            return Err(bad(&k, format!("{k} is given more than once")));
        }
        out.push((k.into_owned(), v.into_owned()));
    }
    Ok(out)
}

fn limit(value: &str) -> Result<u32, ApiError> {
    match value.parse::<u32>() {
        Ok(n) if (1..=MAX_PAGE_LIMIT).contains(&n) => Ok(n),
        _ => Err(bad("limit", format!("limit: expected a whole number from 1 to {MAX_PAGE_LIMIT}, got {value:?}"))),
    }
}

/// Lists an inbox's threads, the most recently active first.
#[utoipa::path(
    get,
    path = "/v1/inboxes/{address}/threads",
    tag = "messages",
    security(("read_capability" = [])),
    params(
        ("address" = String, Path, description = "The inbox the capability reads"),
        ("before" = Option<String>, Query, description = "Only threads whose newest message id is smaller (the previous page's `next_cursor`)"),
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 100 (default 50)"),
    ),
    responses(
        (status = 200, description = "One page", body = ThreadPage),
        (status = 400, description = "INVALID_REQUEST: a bad cursor or limit, or an unknown parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "INVALID_CAPABILITY: missing, malformed, tampered or expired", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND: not the capability's inbox (one answer for every reason)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_threads(
    State(state): State<ApiState>,
    Path(address): Path<String>,
    RawQuery(query): RawQuery,
    bearer: Result<CapabilityBearer, ApiError>,
) -> Result<Response, ApiError> {
    let capability = authorize(&state, &bearer?, &address)?;
    let (mut before, mut page) = (None, DEFAULT_PAGE_LIMIT);
    for (k, v) in pairs(query.as_deref())? {
        match k.as_str() {
            "before" => {
                before = Some(Ulid::from_string(&v).map_err(|_| bad("before", format!("before: {v:?} is not a message id (a ULID)")))?);
            }
            "limit" => page = limit(&v)?,
            other => return Err(bad(other, format!("unknown query parameter {other:?}; use before, limit"))),
        }
    }
    let read = AgentRead::new(&state, &capability).await?;
    let rows = read.index().list_threads(read.owner(), read.inbox(), before, AgentRead::ask(page)).await;
    let rows = read.page(rows, Some(page), |t: &ThreadSummary| &t.latest, |t| t.latest.id.to_string())?;
    let threads = rows
        .shown
        .iter()
        .map(|t| ThreadView {
            thread_id: t.thread_id.to_string(),
            message_count: t.message_count,
            latest: MessageSummary::from(&t.latest),
        })
        .collect();
    Ok(no_store(ThreadPage { threads, next_cursor: rows.next_cursor, withheld_ids: rows.withheld_ids }))
}

/// One thread's messages, oldest first.
#[utoipa::path(
    get,
    path = "/v1/inboxes/{address}/threads/{thread_id}",
    tag = "messages",
    security(("read_capability" = [])),
    params(
        ("address" = String, Path, description = "The inbox the capability reads"),
        ("thread_id" = String, Path, description = "The thread id (a ULID)"),
    ),
    responses(
        (status = 200, description = "The thread", body = ThreadMessages),
        (status = 401, description = "INVALID_CAPABILITY: missing, malformed, tampered or expired", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND: not the capability's inbox, or no such thread in it (one answer)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_thread(
    State(state): State<ApiState>,
    Path((address, thread_id)): Path<(String, String)>,
    bearer: Result<CapabilityBearer, ApiError>,
) -> Result<Response, ApiError> {
    let capability = authorize(&state, &bearer?, &address)?;
    let thread = Ulid::from_string(&thread_id).map_err(|_| ApiError::MailNotFound)?;
    let read = AgentRead::new(&state, &capability).await?;
    let rows = read.index().thread_messages(read.owner(), read.inbox(), thread, MAX_THREAD_MESSAGES).await;
    let rows = read.page(rows, None, |m: &IndexedMessage| m, |m| m.id.to_string())?;
    if rows.shown.is_empty() && rows.withheld_ids.is_empty() {
        return Err(ApiError::MailNotFound);
    }
    let messages = rows.shown.iter().map(MessageSummary::from).collect();
    // An API without a metadata store sends nothing (the send doors need its guardrails).
    let sent = match &state.meta {
        Some(meta) => meta
            .sent_in_thread(read.owner(), read.inbox(), thread, MAX_THREAD_MESSAGES)
            .await
            .map_err(|e| crate::owner::backend_error(&e))?
            .iter()
            .map(SentView::new)
            .collect(),
        None => Vec::new(),
    };
    Ok(no_store(ThreadMessages { thread_id: thread.to_string(), messages, withheld_ids: rows.withheld_ids, sent }))
}

/// Parses the search parameters into a store query (`limit`: the page size;
/// the route asks the index for one more, to know whether a next page exists).
pub fn parse_search_query(query: Option<&str>) -> Result<SearchQuery, ApiError> {
    let mut q = SearchQuery { limit: DEFAULT_PAGE_LIMIT, ..SearchQuery::default() };
    let time = |field: &str, v: &str| {
        v.parse::<i64>()
            .ok()
            .filter(|t| *t >= 0)
            .ok_or_else(|| bad(field, format!("{field}: expected Unix seconds, got {v:?}")))
    };
    for (k, v) in pairs(query)? {
        let text = |field: &str| {
            let v = v.trim();
            if v.is_empty() {
                return Err(bad(field, format!("{field} is empty")));
            }
            Ok(Some(v.to_owned()))
        };
        match k.as_str() {
            "from" => q.from = text("from")?,
            "to" => q.to = text("to")?,
            "subject" => q.subject = text("subject")?,
            "text" => q.text = text("text")?,
            "since" => q.since = Some(time("since", &v)?),
            "until" => q.until = Some(time("until", &v)?),
            "has_attachment" => {
                q.has_attachment = Some(match v.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("has_attachment", format!("has_attachment: expected true or false, got {v:?}"))),
                })
            }
            "cursor" => {
                q.before_seq = Some(v.parse::<i64>().ok().filter(|s| *s > 0).ok_or_else(|| {
                    bad("cursor", format!("cursor: {v:?} is not a cursor from a previous page"))
                })?)
            }
            "limit" => q.limit = limit(&v)?,
            other => {
                return Err(bad(
                    other,
                    format!("unknown query parameter {other:?}; use from, to, subject, text, since, until, has_attachment, cursor, limit"),
                ));
            }
        }
    }
    for (field, value) in [("from", &q.from), ("to", &q.to)] {
        if let Some(v) = value
            && v.chars().any(char::is_whitespace)
        {
            return Err(bad(field, format!("{field}: expected one address or domain, got {v:?}")));
        }
    }
    for (field, value) in [("subject", &q.subject), ("text", &q.text)] {
        if let Some(v) = value
            && agentkeys_store::message_facts::terms(v, 1).is_empty()
        {
            return Err(bad(field, format!("{field}: {v:?} has no words (letters or digits) to search for")));
        }
    }
    if q.word_count() > MAX_QUERY_TERMS {
        return Err(bad("text", format!("the search has {} words; at most {MAX_QUERY_TERMS}", q.word_count())));
    }
    Ok(q)
}

/// Searches one inbox.
#[utoipa::path(
    get,
    path = "/v1/inboxes/{address}/search",
    tag = "messages",
    security(("read_capability" = [])),
    params(
        ("address" = String, Path, description = "The inbox the capability reads"),
        ("from" = Option<String>, Query, description = "`From:` address (exactly, any case) or domain (with its subdomains)"),
        ("to" = Option<String>, Query, description = "A `To:`/`Cc:` address or domain, the same rule"),
        ("subject" = Option<String>, Query, description = "Words that must all be in the subject (whole words, any case)"),
        ("text" = Option<String>, Query, description = "Words that must each be in the subject or the decoded body (whole words, any case; CJK by character pairs)"),
        ("since" = Option<i64>, Query, description = "Received at or after, Unix seconds"),
        ("until" = Option<i64>, Query, description = "Received before, Unix seconds"),
        ("has_attachment" = Option<bool>, Query, description = "`true` or `false`"),
        ("cursor" = Option<String>, Query, description = "The previous page's `next_cursor`"),
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 100 (default 50)"),
    ),
    responses(
        (status = 200, description = "One page, newest first", body = SearchPage),
        (status = 400, description = "INVALID_REQUEST: a bad value, a wordless text, too many words, or an unknown parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "INVALID_CAPABILITY: missing, malformed, tampered or expired", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND: not the capability's inbox (one answer for every reason)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn search(
    State(state): State<ApiState>,
    Path(address): Path<String>,
    RawQuery(query): RawQuery,
    bearer: Result<CapabilityBearer, ApiError>,
) -> Result<Response, ApiError> {
    let capability = authorize(&state, &bearer?, &address)?;
    let q = parse_search_query(query.as_deref())?;
    let read = AgentRead::new(&state, &capability).await?;
    let rows = read.index().search_messages(read.owner(), read.inbox(), &SearchQuery { limit: AgentRead::ask(q.limit), ..q.clone() }).await;
    let rows = read.page(rows, Some(q.limit), |h: &SearchHit| &h.message, |h| h.message.seq.to_string())?;
    let messages = rows
        .shown
        .iter()
        .map(|h| SearchResult { message: MessageSummary::from(&h.message), thread_id: h.thread_id.to_string() })
        .collect();
    Ok(no_store(SearchPage { messages, next_cursor: rows.next_cursor, withheld_ids: rows.withheld_ids }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_parameters_are_checked() {
        let q = parse_search_query(Some("from=github.com&text=your%20code&since=10&has_attachment=false&limit=5")).unwrap();
        assert_eq!(q.from.as_deref(), Some("github.com"));
        assert_eq!(q.text.as_deref(), Some("your code"));
        assert_eq!((q.since, q.has_attachment, q.limit), (Some(10), Some(false), 5));
        for bad_query in [
            "text=%21%3F",
            "from=a%20b",
            "since=yesterday",
            "limit=0",
            "limit=101",
            "has_attachment=yes",
            "cursor=abc",
            "text=a&text=b",
            "colour=red",
            "subject=",
        ] {
            assert!(matches!(parse_search_query(Some(bad_query)), Err(ApiError::InvalidRequest { .. })), "{bad_query}");
        }
        let many = (0..=MAX_QUERY_TERMS).map(|i| format!("w{i}")).collect::<Vec<_>>().join("+");
        assert!(parse_search_query(Some(&format!("text={many}"))).is_err());
        let ok = (0..MAX_QUERY_TERMS).map(|i| format!("w{i}")).collect::<Vec<_>>().join("+");
        assert!(parse_search_query(Some(&format!("text={ok}"))).is_ok());
    }
}
