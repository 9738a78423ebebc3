//! The one error type of the HTTP API and its one mapping to status + problem JSON
//! (RFC 9457, `application/problem+json`).
//!
//! Every failure of every route is an [`ApiError`]; its `code` is stable and is what
//! clients match on. Reasons a caller must not learn (why an agent key was refused,
//! what the database said) go to the server log, never into the body.

use agentkeys_approval::PairingError;
use agentkeys_broker::MintError;
use agentkeys_core::GrantChangeError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The `detail` of every 401: the same whatever the reason.
pub const UNAUTHORIZED_DETAIL: &str =
    "send a valid agent key as `Authorization: Bearer ak_…`; the key is missing, malformed, unknown, revoked or expired";

/// The `detail` of every capability 401: the same whatever the reason.
pub const INVALID_CAPABILITY_DETAIL: &str = "send a valid read capability as `Authorization: Bearer akcap1.…` (from POST /v1/credentials/read); it is missing, malformed, tampered with or expired";
/// The `detail` of every send 401: the same whatever the reason.
pub const SEND_UNAUTHORIZED_DETAIL: &str = "send with `Authorization: Bearer ak_…` of an agent whose active send grant covers this inbox; the key, the grant or the inbox does not allow it";

/// `Retry-After` of [`ApiError::TooManyConnections`], seconds.
pub const TOO_MANY_CONNECTIONS_RETRY_AFTER_SECS: u64 = 5;

/// Why a request failed. Each variant has one status and one stable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 401 `INVALID_KEY`: no bearer key, not an agent key, or one the broker refused.
    /// One body for every reason; the reason is logged where the error is made.
    Unauthorized,
    /// 403 `NO_GRANT`: no grant of the agent covers the inbox with this scope. Also
    /// the answer for an inbox that does not exist or belongs to another owner, with
    /// the same body.
    NoGrant,
    /// 403 `GRANT_EXPIRED`: the covering grants have all expired.
    GrantExpired,
    /// 400 `INVALID_REQUEST`: the body is not JSON, has unknown or missing fields, or
    /// a field has the wrong type or an invalid value.
    InvalidRequest {
        /// The offending field, when one can be named.
        field: Option<String>,
        /// What is wrong.
        detail: String,
    },
    /// 400 `INVALID_TTL`: `ttl` is zero or negative.
    InvalidTtl {
        /// The refused value.
        requested: i64,
    },
    /// 400 `AUDIENCE_NOT_ALLOWED`: an OIDC audience other than the configured one.
    AudienceNotAllowed {
        /// The audience this server issues tokens for.
        allowed: String,
    },
    /// 413 `PAYLOAD_TOO_LARGE`: the body is over [`crate::MAX_BODY_BYTES`].
    PayloadTooLarge,
    /// 415 `UNSUPPORTED_MEDIA_TYPE`: the body is not `Content-Type: application/json`.
    UnsupportedMediaType,
    /// 404 `NOT_FOUND`: no such route.
    NotFound,
    /// 405 `METHOD_NOT_ALLOWED`: the route exists with another method.
    MethodNotAllowed,
    /// 503 `BACKEND_UNAVAILABLE` (metadata store) or `AUDIT_UNAVAILABLE` (the audit
    /// append failed, so no token was issued). Retry later.
    Unavailable {
        /// The code.
        code: &'static str,
    },
    /// 500 `INTERNAL`: the authority could not sign, or a response could not be built.
    Internal,
    /// 401: an owner request whose `Authorization: AgentKeys-Owner …` signature was
    /// refused. Codes: `BAD_AUTH_HEADER` (missing or malformed header),
    /// `STALE_TIMESTAMP` (more than 60 s from the server clock), `REPLAYED_NONCE`,
    /// and `OWNER_SIGNATURE_INVALID` for both an owner without a registered key and a
    /// signature that does not verify (one body, so enrollment is not revealed).
    OwnerUnauthorized {
        /// The code.
        code: &'static str,
    },
    /// 404 `INVALID_ENROLLMENT_CODE`: the code is malformed, wrong, used, or the
    /// owner unknown; one answer for all of them.
    InvalidEnrollmentCode,
    /// 410 `EXPIRED`: the right enrollment code, too late. Ask the operator for a new one.
    EnrollmentExpired,
    /// 404 `NOT_FOUND`: no such object among the signing owner's; an object of
    /// another owner answers the same.
    OwnerObjectNotFound {
        /// `agent`, `grant`, `key` or `inbox`.
        what: &'static str,
    },
    /// A pairing refusal: 404 `NOT_FOUND` (unknown, spent or someone else's; one
    /// body), 409 `ALREADY_CONSUMED`, 410 `EXPIRED`, 400 `CONFIRMATION_MISMATCH`
    /// (202 `PENDING` is answered as a status, not as this error).
    Pairing(agentkeys_approval::PairingError),
    /// 409 `AGENT_EXISTS`: the device key's agent id belongs to another owner.
    AgentExists,
    /// 401 `INVALID_CAPABILITY`: no `Authorization: Bearer akcap1.…`, or a
    /// capability that is malformed, tampered with or expired. One body for all.
    InvalidCapability,
    /// 404 `NOT_FOUND`: no such inbox or message under the capability. An inbox
    /// the capability does not cover, another owner's, a missing or malformed
    /// message id: all the same body, so nothing tells them apart.
    MailNotFound,
    /// 403 `MESSAGE_WITHHELD`: the message is in the capability's inbox, but the
    /// inbox's allow/block policy withholds it from the agent (its sender is
    /// refused, or it is unauthenticated under `unauthenticated: hide`). Nothing
    /// of it is described; only its owner reads it.
    MessageWithheld,
    /// 429 `TOO_MANY_STREAMS`: the inbox already has the most event streams allowed.
    TooManyStreams {
        /// The limit.
        max: usize,
    },
    /// 401 `SEND_NOT_AUTHORIZED`: `POST /v1/inboxes/{address}/send` refused by the
    /// submission AUTH order (no or malformed key, unknown, revoked or expired key,
    /// no send grant, no such or inactive inbox, another owner's inbox, a grant
    /// that does not cover it). One body for every reason, like SMTP's `535 5.7.8`;
    /// the reason is logged.
    SendUnauthorized {
        /// Whether the key itself was refused (malformed, unknown, revoked,
        /// expired: [`AuthFailure::refuses_key`](agentkeys_core::AuthFailure::refuses_key)).
        /// Only then does the answer spend the address's failure budget
        /// ([`crate::throttle`]); the body is the same either way.
        key_refused: bool,
    },
    /// 403 `FROM_NOT_AUTHORIZED`: a raw message whose `From:` is not exactly the
    /// authenticated inbox, or whose display name shows another address (SMTP
    /// answers `550 5.7.1`).
    FromNotAuthorized,
    /// 403 `FROM_NOT_AUTHORIZED` (field `Sender`): a raw message with a `Sender:`
    /// that is not exactly the authenticated inbox (SMTP answers `550 5.7.1`).
    SenderNotAuthorized,
    /// 403 `SEND_POLICY`: the sending inbox's send allow or block list refuses a
    /// recipient (SMTP answers `550 5.7.1`); nothing was sent.
    SendPolicy {
        /// `send_allow` or `send_block`.
        list: &'static str,
        /// The refused recipient, as given.
        recipient: String,
    },
    /// 403 `POLICY_OWNER_ONLY`: an agent's change of its inbox's policy would
    /// let more through on `list`; only the owner loosens a policy.
    PolicyOwnerOnly {
        /// The first list that would loosen.
        list: &'static str,
    },
    /// 429 `SEND_LIMIT`: one of the agent's send limits (issue 13 §3) refuses
    /// the message (SMTP answers `452 4.7.0`); `field` names the limit and
    /// `Retry-After` says when the same send would fit. Nothing was sent.
    SendLimit {
        /// Which limit, its value, and when to retry.
        refusal: agentkeys_core::send_limits::LimitRefusal,
    },
    /// 409 `ALREADY_DECIDED`: the held message was approved or rejected already.
    AlreadyDecided,
    /// 422 `MESSAGE_INVALID`: the message holds a NUL byte, which mail may not
    /// carry (SMTP answers `550 5.6.0`); `field` names where it was.
    MessageContainsNul {
        /// The request field (`text`, `subject`, …) or `message` for a raw one.
        field: String,
    },
    /// 413 `PAYLOAD_TOO_LARGE` for a message over the SMTP message size limit.
    MessageTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// 415 `UNSUPPORTED_MEDIA_TYPE`: a send body that is neither
    /// `application/json` nor `message/rfc822`.
    UnsupportedSendMediaType,
    /// A refused grant change: 400 `SCOPE_WIDENING` (the new scopes are not within
    /// the grant's), 400 `INVALID_REQUEST` (nothing to change, or an expiry outside
    /// the next 30 days), 409 `GRANT_REVOKED` (revocation is final).
    GrantChange(agentkeys_core::GrantChangeError),
    /// 409 `CONFLICT`: the object changed between reading and writing it; read it
    /// again and retry.
    Conflict,
    /// 409 `ADDRESS_TAKEN`: an inbox with this address exists already.
    AddressTaken,
    /// 409 `TOO_MANY_GRANT_REQUESTS`: the agent has this many requests waiting
    /// for its owner already.
    TooManyGrantRequests {
        /// The limit.
        max: u32,
    },
    /// 403 `DOMAIN_NOT_ASSIGNED`: inboxes may be created under a `create`
    /// grant only on a domain the operator assigned to the grant's owner
    /// ([`agentkeys_core::may_create_on_domain`]).
    DomainNotAssigned {
        /// The domain.
        domain: String,
    },
    /// 400 `INVALID_EXPIRY` (field `expires_in`): an agent asked for an inbox
    /// lifetime that is not positive, ends after the grant that allows it, or
    /// is longer than 30 days. Refused, not clamped.
    InboxExpiry(agentkeys_core::InboxExpiryError),
    /// 409 `IDEMPOTENCY_KEY_REUSED`: the send's `Idempotency-Key` was used (within
    /// 24 h, for this inbox and agent) with another request.
    IdempotencyKeyReused,
    /// 409 `IDEMPOTENCY_KEY_IN_USE`: a send with this `Idempotency-Key` is still
    /// running, or a server failure left its outcome unknown; nothing was sent.
    IdempotencyKeyInUse,
    /// 503 `TOO_MANY_CONNECTIONS`: the HTTP listener has the most connections it
    /// takes, in total or from this address; answered by the listener itself,
    /// before any request is read, with `Retry-After`.
    TooManyConnections,
    /// 429 `RATE_LIMITED`: too many requests (or failed authentications) from this
    /// address; `Retry-After` says when to try again.
    RateLimited {
        /// Seconds until a retry may succeed (at least 1).
        retry_after_secs: u64,
    },
}

/// The problem JSON body (RFC 9457) plus `code`, and `field` for input errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
pub struct Problem {
    /// A URN naming the problem type: `urn:agentkeys:problem:<code>`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Short summary of the problem type.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for a human.
    pub detail: String,
    /// Stable machine-readable code, e.g. `NO_GRANT`.
    pub code: String,
    /// The request field at fault, for 400s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NoGrant | Self::GrantExpired | Self::DomainNotAssigned { .. } => StatusCode::FORBIDDEN,
            Self::InvalidRequest { .. }
            | Self::InvalidTtl { .. }
            | Self::AudienceNotAllowed { .. }
            | Self::InboxExpiry(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::OwnerUnauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::InvalidEnrollmentCode | Self::OwnerObjectNotFound { .. } => StatusCode::NOT_FOUND,
            Self::EnrollmentExpired => StatusCode::GONE,
            Self::Pairing(e) => match e {
                PairingError::NotFound => StatusCode::NOT_FOUND,
                PairingError::AlreadyConsumed => StatusCode::CONFLICT,
                PairingError::Expired => StatusCode::GONE,
                PairingError::Pending => StatusCode::ACCEPTED,
                PairingError::ConfirmationMismatch => StatusCode::BAD_REQUEST,
                PairingError::ConfirmationLocked => StatusCode::CONFLICT,
                PairingError::Denied => StatusCode::FORBIDDEN,
            },
            Self::InvalidCapability => StatusCode::UNAUTHORIZED,
            Self::MailNotFound => StatusCode::NOT_FOUND,
            Self::MessageWithheld => StatusCode::FORBIDDEN,
            Self::TooManyStreams { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::SendUnauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::FromNotAuthorized | Self::SenderNotAuthorized => StatusCode::FORBIDDEN,
            Self::SendPolicy { .. } | Self::PolicyOwnerOnly { .. } => StatusCode::FORBIDDEN,
            Self::SendLimit { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::AlreadyDecided => StatusCode::CONFLICT,
            Self::MessageContainsNul { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::MessageTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedSendMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::AgentExists | Self::Conflict | Self::AddressTaken | Self::TooManyGrantRequests { .. } => StatusCode::CONFLICT,
            Self::IdempotencyKeyReused | Self::IdempotencyKeyInUse => StatusCode::CONFLICT,
            Self::GrantChange(GrantChangeError::Revoked) => StatusCode::CONFLICT,
            Self::GrantChange(_) => StatusCode::BAD_REQUEST,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized => "INVALID_KEY",
            Self::NoGrant => "NO_GRANT",
            Self::GrantExpired => "GRANT_EXPIRED",
            Self::InvalidRequest { .. } => "INVALID_REQUEST",
            Self::InvalidTtl { .. } => "INVALID_TTL",
            Self::AudienceNotAllowed { .. } => "AUDIENCE_NOT_ALLOWED",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            Self::NotFound => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::Unavailable { code } => code,
            Self::Internal => "INTERNAL",
            Self::OwnerUnauthorized { code } => code,
            Self::InvalidEnrollmentCode => "INVALID_ENROLLMENT_CODE",
            Self::EnrollmentExpired => "EXPIRED",
            Self::OwnerObjectNotFound { .. } => "NOT_FOUND",
            Self::Pairing(e) => e.code(),
            Self::AgentExists => "AGENT_EXISTS",
            Self::InvalidCapability => "INVALID_CAPABILITY",
            Self::MailNotFound => "NOT_FOUND",
            Self::MessageWithheld => "MESSAGE_WITHHELD",
            Self::TooManyStreams { .. } => "TOO_MANY_STREAMS",
            Self::SendUnauthorized { .. } => "SEND_NOT_AUTHORIZED",
            Self::FromNotAuthorized | Self::SenderNotAuthorized => "FROM_NOT_AUTHORIZED",
            Self::SendPolicy { .. } => "SEND_POLICY",
            Self::PolicyOwnerOnly { .. } => "POLICY_OWNER_ONLY",
            Self::SendLimit { .. } => "SEND_LIMIT",
            Self::AlreadyDecided => "ALREADY_DECIDED",
            Self::MessageContainsNul { .. } => "MESSAGE_INVALID",
            Self::MessageTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            Self::UnsupportedSendMediaType => "UNSUPPORTED_MEDIA_TYPE",
            Self::GrantChange(GrantChangeError::Widens { .. }) => "SCOPE_WIDENING",
            Self::GrantChange(GrantChangeError::Revoked) => "GRANT_REVOKED",
            Self::GrantChange(_) => "INVALID_REQUEST",
            Self::Conflict => "CONFLICT",
            Self::AddressTaken => "ADDRESS_TAKEN",
            Self::TooManyGrantRequests { .. } => "TOO_MANY_GRANT_REQUESTS",
            Self::DomainNotAssigned { .. } => "DOMAIN_NOT_ASSIGNED",
            Self::InboxExpiry(_) => "INVALID_EXPIRY",
            Self::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Self::IdempotencyKeyInUse => "IDEMPOTENCY_KEY_IN_USE",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::TooManyConnections => "TOO_MANY_CONNECTIONS",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::Unauthorized => "Unauthorized",
            Self::NoGrant => "No grant",
            Self::GrantExpired => "Grant expired",
            Self::InvalidRequest { .. } => "Invalid request",
            Self::InvalidTtl { .. } => "Invalid TTL",
            Self::AudienceNotAllowed { .. } => "Audience not allowed",
            Self::PayloadTooLarge => "Payload too large",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Unavailable { .. } => "Service unavailable",
            Self::Internal => "Internal error",
            Self::OwnerUnauthorized { .. } => "Owner signature refused",
            Self::InvalidEnrollmentCode => "Invalid enrollment code",
            Self::EnrollmentExpired => "Enrollment code expired",
            Self::OwnerObjectNotFound { .. } => "Not found",
            Self::Pairing(PairingError::NotFound) => "Not found",
            Self::Pairing(_) => "Pairing refused",
            Self::AgentExists => "Agent exists",
            Self::InvalidCapability => "Unauthorized",
            Self::MailNotFound => "Not found",
            Self::MessageWithheld => "Withheld by the inbox's policy",
            Self::TooManyStreams { .. } => "Too many streams",
            Self::SendUnauthorized { .. } => "Send not authorized",
            Self::FromNotAuthorized | Self::SenderNotAuthorized => "From not authorized",
            Self::SendPolicy { .. } => "Refused by the inbox's send policy",
            Self::PolicyOwnerOnly { .. } => "Only the owner loosens a policy",
            Self::SendLimit { .. } => "Refused by a send limit",
            Self::AlreadyDecided => "Already decided",
            Self::MessageContainsNul { .. } => "Message invalid",
            Self::MessageTooLarge { .. } => "Payload too large",
            Self::UnsupportedSendMediaType => "Unsupported media type",
            Self::GrantChange(_) => "Grant change refused",
            Self::Conflict => "Conflict",
            Self::AddressTaken => "Address taken",
            Self::TooManyGrantRequests { .. } => "Too many grant requests",
            Self::DomainNotAssigned { .. } => "Domain not assigned",
            Self::InboxExpiry(_) => "Invalid inbox expiry",
            Self::IdempotencyKeyReused => "Idempotency key reused",
            Self::IdempotencyKeyInUse => "Idempotency key in use",
            Self::RateLimited { .. } => "Too many requests",
            Self::TooManyConnections => "Too many connections",
        }
    }

    /// The problem body.
    pub fn problem(&self) -> Problem {
        let (detail, field) = match self {
            Self::Unauthorized => (UNAUTHORIZED_DETAIL.to_owned(), None),
            Self::NoGrant => ("no grant of this agent covers this inbox with this scope".to_owned(), None),
            Self::GrantExpired => ("the grant covering this inbox and scope has expired".to_owned(), None),
            Self::InvalidRequest { field, detail } => (detail.clone(), field.clone()),
            Self::InvalidTtl { requested } => (
                format!("ttl {requested} is not allowed: a TTL is a positive number of seconds"),
                Some("ttl".to_owned()),
            ),
            Self::AudienceNotAllowed { allowed } => {
                (format!("this server issues OIDC tokens only for audience {allowed:?}"), Some("audience".to_owned()))
            }
            Self::PayloadTooLarge => (format!("the body is over {} bytes", crate::MAX_BODY_BYTES), None),
            Self::UnsupportedMediaType => ("send the body as Content-Type: application/json".to_owned(), None),
            Self::NotFound => ("no such route; see /v1/openapi.json".to_owned(), None),
            Self::MethodNotAllowed => ("the route does not take this method; see /v1/openapi.json".to_owned(), None),
            Self::Unavailable { code } if *code == "AUDIT_UNAVAILABLE" => {
                ("the audit log could not record the request, so nothing was issued; retry later".to_owned(), None)
            }
            Self::Unavailable { .. } => ("a backend is unavailable; retry later".to_owned(), None),
            Self::Internal => ("the server failed; the log has the details".to_owned(), None),
            Self::OwnerUnauthorized { code } => (owner_refusal_detail(code).to_owned(), None),
            Self::InvalidEnrollmentCode => (
                "this enrollment code is not valid for this owner (wrong, already used, or never issued)".to_owned(),
                Some("code".to_owned()),
            ),
            Self::EnrollmentExpired => (
                "this enrollment code has expired; ask the operator for a new one (`agentkeys owner enroll-code`)"
                    .to_owned(),
                Some("code".to_owned()),
            ),
            Self::OwnerObjectNotFound { what: "inbox" } => (
                "no inbox with this address among yours: an exact address must be one of your inboxes \
                 (a pattern such as bot-* or *@domain covers only your own inboxes)"
                    .to_owned(),
                Some("inbox".to_owned()),
            ),
            Self::OwnerObjectNotFound { what } => (format!("no {what} with this id among yours"), None),
            Self::Pairing(PairingError::NotFound) => ("no such pairing request".to_owned(), None),
            Self::Pairing(e @ PairingError::ConfirmationMismatch) => (e.to_string(), Some("confirmation_code".to_owned())),
            Self::Pairing(e) => (e.to_string(), None),
            Self::AgentExists => (
                "this device key's agent already belongs to another owner; pair with a new device key".to_owned(),
                None,
            ),
            Self::InvalidCapability => (INVALID_CAPABILITY_DETAIL.to_owned(), None),
            Self::MailNotFound => ("no such inbox or message for this capability".to_owned(), None),
            Self::MessageWithheld => (
                "this message is withheld by the inbox's allow/block policy; its owner sets it (agentkeys inbox policy)".to_owned(),
                None,
            ),
            Self::TooManyStreams { max } => (
                format!("this inbox already has {max} open event streams; close one or retry later"),
                None,
            ),
            Self::SendUnauthorized { .. } => (SEND_UNAUTHORIZED_DETAIL.to_owned(), None),
            Self::FromNotAuthorized => (
                "the From: header must be exactly the inbox you send from: one address, and no other address in its display name"
                    .to_owned(),
                Some("From".to_owned()),
            ),
            Self::SenderNotAuthorized => (
                "the Sender: header must be absent or exactly the inbox you send from".to_owned(),
                Some("Sender".to_owned()),
            ),
            Self::SendPolicy { list, recipient } => (
                match *list {
                    "send_block" => format!(
                        "the inbox's send block list ({list}) refuses the recipient {recipient}; nothing was sent. \
                         Its owner sets the lists (agentkeys inbox policy)"
                    ),
                    _ => format!(
                        "the recipient {recipient} is not on the inbox's send allow list ({list}); nothing was sent. \
                         Its owner sets the lists (agentkeys inbox policy)"
                    ),
                },
                Some("to".to_owned()),
            ),
            Self::PolicyOwnerOnly { list } => (
                format!(
                    "this change would let more through on {list}; an agent may only tighten its inbox's policy \
                     (add to a block list, narrow an allow list, show -> label -> hide). Ask the owner: agentkeys inbox policy"
                ),
                Some((*list).to_owned()),
            ),
            Self::SendLimit { refusal } => (
                format!(
                    "{refusal}; nothing was sent. The agent's owner sets its limits (agentkeys agent limits)"
                ),
                Some(refusal.limit.as_str().to_owned()),
            ),
            Self::AlreadyDecided => (
                "this held message was approved or rejected already (agentkeys review show ID)".to_owned(),
                None,
            ),
            Self::MessageContainsNul { field } => (
                "the message contains a NUL character, which mail cannot carry; send binary content as an attachment"
                    .to_owned(),
                Some(field.clone()),
            ),
            Self::MessageTooLarge { limit } => (format!("the message is over {limit} bytes"), None),
            Self::UnsupportedSendMediaType => (
                "send the body as Content-Type: application/json or message/rfc822".to_owned(),
                None,
            ),
            Self::GrantChange(e) => {
                let field = match e {
                    GrantChangeError::Widens { .. } => Some("scopes".to_owned()),
                    GrantChangeError::Expiry { .. } => Some("ttl".to_owned()),
                    GrantChangeError::Empty | GrantChangeError::Revoked => None,
                };
                (e.to_string(), field)
            }
            Self::Conflict => ("the object changed while this request was applied; read it again and retry".to_owned(), None),
            Self::AddressTaken => {
                ("an inbox with this address exists already; pick another name".to_owned(), Some("address".to_owned()))
            }
            Self::TooManyGrantRequests { max } => (
                format!("this agent has {max} grant requests waiting for its owner already; wait until the owner decides them"),
                None,
            ),
            Self::InboxExpiry(e) => (e.to_string(), Some("expires_in".to_owned())),
            Self::DomainNotAssigned { domain } => (
                format!(
                    "inboxes are created under a create grant only on a domain assigned to the grant's owner, and \
                     {domain} is not assigned to this owner (a shared domain's names would be first come, first \
                     served across owners). Ask the operator: agentkeys domain assign {domain} --owner <owner id>"
                ),
                None,
            ),
            Self::IdempotencyKeyReused => (
                "this Idempotency-Key was used within 24 h with a different message; nothing was sent. Use a new key \
                 for a new message, or resend the first message unchanged to get its answer"
                    .to_owned(),
                Some("Idempotency-Key".to_owned()),
            ),
            Self::IdempotencyKeyInUse => (
                "a send with this Idempotency-Key is still running (or the server failed while sending it); nothing \
                 was sent now. Retry in a few seconds; if it persists, check the sent messages before using a new key"
                    .to_owned(),
                Some("Idempotency-Key".to_owned()),
            ),
            Self::RateLimited { retry_after_secs } => {
                (format!("too many requests from this address; retry after {retry_after_secs} s"), None)
            }
            Self::TooManyConnections => (
                format!(
                    "the server has too many open connections, in total or from your address; close idle ones or retry after {TOO_MANY_CONNECTIONS_RETRY_AFTER_SECS} s"
                ),
                None,
            ),
        };
        let code = self.code();
        Problem {
            type_: format!("urn:agentkeys:problem:{}", code.to_ascii_lowercase().replace('_', "-")),
            title: self.title().to_owned(),
            status: self.status().as_u16(),
            detail,
            code: code.to_owned(),
            field,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // A refused agent key spends the address's failure budget (crate::throttle);
        // a valid key refused for an inbox it does not cover does not.
        if matches!(self, Self::Unauthorized | Self::SendUnauthorized { key_refused: true }) {
            response.extensions_mut().insert(crate::throttle::KeyRefused);
        }
        let headers = response.headers_mut();
        match self {
            Self::Unauthorized | Self::InvalidCapability | Self::SendUnauthorized { .. } => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::TooManyStreams { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
            }
            Self::OwnerUnauthorized { .. } => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("AgentKeys-Owner"));
            }
            Self::Unavailable { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            Self::RateLimited { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1)));
            }
            Self::SendLimit { refusal } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(refusal.retry_after_secs.max(1)));
            }
            Self::TooManyConnections => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(TOO_MANY_CONNECTIONS_RETRY_AFTER_SECS));
            }
            _ => {}
        }
        response
    }
}

/// The `detail` of an owner-signature 401, by code.
fn owner_refusal_detail(code: &str) -> &'static str {
    match code {
        "STALE_TIMESTAMP" => "the signed timestamp is more than 60 s from the server clock; check the clock and sign again",
        "REPLAYED_NONCE" => "this request was already accepted once; sign every request with a new nonce",
        "BAD_AUTH_HEADER" => "send `Authorization: AgentKeys-Owner owner=…, ts=…, nonce=…, sig=…` (see the approval crate docs)",
        _ => "the owner signature does not verify against a registered master key for this owner",
    }
}

impl From<MintError> for ApiError {
    fn from(e: MintError) -> Self {
        match e {
            MintError::InvalidKey(reason) => {
                tracing::info!(reason = reason.as_str(), "agent key refused");
                Self::Unauthorized
            }
            MintError::NoGrant => Self::NoGrant,
            MintError::GrantExpired => Self::GrantExpired,
            MintError::InvalidTtl { requested } => Self::InvalidTtl { requested },
            MintError::Store(_) | MintError::Audit(_) => {
                tracing::error!(error = %e, "credential mint failed");
                Self::Unavailable { code: e.code() }
            }
            MintError::Signing(_) => {
                tracing::error!(error = %e, "credential mint failed");
                Self::Internal
            }
        }
    }
}
