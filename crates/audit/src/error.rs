//! Why an event cannot be recorded or a stored field cannot be read.

/// An event that cannot be appended, or a text form that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The actor text is none of `operator`, `owner:<id>`, `agent:<id>`, `system`.
    #[error("invalid audit actor {0:?}: expected operator, system, owner:0x… or agent:0x…")]
    InvalidActor(String),
    /// The outcome text is none of `ok`, `denied`, `failed`.
    #[error("invalid audit outcome {0:?}: expected ok, denied or failed")]
    InvalidOutcome(String),
    /// The operation name is empty, too long or has characters outside `a-z 0-9 . _ -`.
    #[error("invalid audit operation {0:?}: expected 1-64 characters from a-z 0-9 . _ -")]
    InvalidOperation(String),
    /// The subject is too long or holds control characters.
    #[error("invalid audit subject ({len} bytes): at most 512 bytes, no control characters")]
    InvalidSubject {
        /// Its length in bytes.
        len: usize,
    },
    /// The detail's canonical JSON is longer than [`MAX_DETAIL_LEN`](crate::MAX_DETAIL_LEN).
    #[error("audit detail is {len} bytes of JSON, over the limit of 8192")]
    DetailTooLong {
        /// Its canonical length in bytes.
        len: usize,
    },
    /// The detail holds a number that is not an integer.
    #[error("audit detail holds a non-integer number; record integers or strings")]
    NonIntegerNumber,
    /// A field does not fit the 32-bit length prefix of the canonical encoding.
    #[error("audit field of {len} bytes is too long to encode")]
    FieldTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The chain is full: the head's sequence number is `u64::MAX`.
    #[error("the audit chain cannot grow past sequence number {}", u64::MAX)]
    SeqExhausted,
}
