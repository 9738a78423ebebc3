//! Every reply the server sends, in one table.
//!
//! A session decides *which* [`Reply`] applies; [`Reply::parts`] alone decides the
//! code, the enhanced status code (RFC 3463) and the text. No other place in the
//! crate writes SMTP reply text.

use std::borrow::Cow;

use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, EXT_8BIT_MIME, EXT_AUTH, EXT_CHUNKING, EXT_ENHANCED_STATUS_CODES,
    EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS, EhloResponse, Response,
};
use ulid::Ulid;

use agentkeys_submission::MessageRefusal;

use crate::acceptance::DeliveryError;

/// One SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `220` greeting on connect.
    Greeting,
    /// The multi-line `250` answer to `EHLO`.
    Ehlo {
        /// Advertise `STARTTLS`.
        starttls: bool,
        /// Advertise `AUTH PLAIN LOGIN`.
        auth: bool,
        /// The `SIZE` value.
        max_size: usize,
    },
    /// `250` answer to `HELO`.
    Helo,
    /// `250 2.0.0` (RSET, NOOP).
    Ok,
    /// `250 2.1.0` to `MAIL`.
    SenderOk,
    /// `250 2.1.5` to `RCPT`.
    RecipientOk,
    /// `354` to `DATA`.
    StartData,
    /// `250 2.0.0` once a message is durably stored.
    MessageAccepted(Ulid),
    /// `250 2.0.0` once a submitted message is durably held for its owner's
    /// review (issue 13 §3): accepted, not yet sent.
    MessageHeld(Ulid),
    /// `452 4.7.0`: one of the agent's send limits refuses the message; the
    /// text names the limit and when to try again.
    SendLimit(agentkeys_core::send_limits::LimitRefusal),
    /// `250 2.0.0` to a non-final `BDAT` chunk.
    ChunkAccepted(usize),
    /// `221 2.0.0` to `QUIT`.
    Bye,
    /// `220 2.0.0` to `STARTTLS`.
    ReadyToStartTls,
    /// `235 2.7.0`.
    AuthSucceeded,
    /// `334` SASL challenge (already base64).
    AuthChallenge(&'static str),
    /// `252 2.5.2` to `VRFY`.
    CannotVerify,
    /// `214 2.0.0` to `HELP`.
    Help,

    /// `500 5.5.1`: unknown command.
    UnknownCommand,
    /// `500 5.5.6`: line over [`crate::MAX_LINE_LENGTH`].
    LineTooLong,
    /// `501 5.5.2`: syntax error, with the expected syntax.
    Syntax(&'static str),
    /// `501 5.1.7`: unparsable reverse path.
    BadSenderSyntax,
    /// `501 5.1.3`: unparsable forward path.
    BadRecipientSyntax,
    /// `501 5.5.4`: malformed parameter value.
    BadParameter(&'static str),
    /// `555 5.5.4`: unknown `MAIL`/`RCPT` parameter.
    UnsupportedParameter,
    /// `502 5.5.1`: command not offered here.
    NotImplemented,
    /// `503 5.5.1`: command out of order, with what was expected.
    BadSequence(&'static str),
    /// `504 5.5.4`: SASL mechanism other than PLAIN or LOGIN.
    MechanismUnsupported,
    /// `501 5.0.0`: the client cancelled AUTH with `*`.
    AuthCancelled,
    /// `501 5.5.2`: a SASL response that is not base64.
    AuthBadBase64,
    /// `530 5.7.0`: `MAIL` on submission before `AUTH`.
    AuthRequired,
    /// `538 5.7.11`: `AUTH` before TLS.
    EncryptionRequired,
    /// `535 5.7.8`: every credential failure, whatever the step.
    AuthFailed,
    /// `454 4.7.0`: the metadata store failed during AUTH.
    AuthUnavailable,
    /// `454 4.7.0`: too many failures from this address recently.
    AuthThrottled,
    /// `421 4.7.0`: too many failed AUTHs on this connection; closing.
    TooManyAuthFailures,
    /// `421 4.7.0`: too many bad commands; closing.
    TooManyErrors,
    /// `421 4.7.0`: connection cap reached; closing.
    TooManyConnections,
    /// `421 4.4.2`: idle too long; closing.
    IdleTimeout,
    /// `421 4.4.2`: session too long; closing.
    SessionTimeout,
    /// `451 4.4.2`: data arrived too slowly; closing.
    DataTooSlow,
    /// `421 4.3.2`: the server is shutting down; closing.
    ShuttingDown,
    /// `550 5.1.1`: no such hosted inbox.
    UnknownRecipient,
    /// `550 5.2.1`: the inbox is disabled or suspended.
    InactiveRecipient,
    /// `550 5.7.1`: recipient domain not hosted here, and no relaying.
    RelayDenied,
    /// `550 5.7.1`: the sending inbox's send allow/block list refuses this
    /// recipient (submission); the text names the list (`send_allow`, `send_block`).
    SendPolicy(&'static str),
    /// `550 5.7.1`: every recipient inbox's receive allow/block list refuses
    /// the sender (MX). The text does not say which list.
    ReceivePolicy,
    /// `550 5.7.1`: `MAIL FROM` is not the authenticated inbox.
    SenderNotAuthorized,
    /// `550 5.7.1`: the `From:` header is not exactly the authenticated inbox, or
    /// its display name shows another address.
    FromHeaderNotAuthorized,
    /// `550 5.7.1`: a `Sender:` header that is not exactly the authenticated inbox.
    SenderHeaderNotAuthorized,
    /// `550 5.6.0`: a NUL byte in the message (every listener).
    NulInMessage,
    /// `452 4.5.3`: over [`crate::MAX_RECIPIENTS`].
    TooManyRecipients,
    /// `552 5.3.4`: over the message size limit.
    MessageTooBig,
    /// `451 4.3.0`: a recipient lookup failed in the metadata store.
    LookupFailed,
    /// `452 4.3.1`: blob storage is full.
    StorageFull,
    /// `451 4.3.0`: storing the message failed.
    StorageFailed,
}

impl Reply {
    /// Code, enhanced status code (none for greeting, EHLO/HELO, 334 and 354) and text.
    pub fn parts(&self) -> (u16, Option<[u8; 3]>, Cow<'static, str>) {
        let (code, esc, text): (u16, Option<[u8; 3]>, Cow<'static, str>) = match self {
            Self::Greeting => (220, None, "ESMTP AgentKeys Mail".into()),
            Self::Ehlo { .. } => (250, None, "".into()),
            Self::Helo => (250, None, "Hello".into()),
            Self::Ok => (250, Some([2, 0, 0]), "OK".into()),
            Self::SenderOk => (250, Some([2, 1, 0]), "Sender OK".into()),
            Self::RecipientOk => (250, Some([2, 1, 5]), "Recipient OK".into()),
            Self::StartData => (354, None, "Start mail input; end with <CRLF>.<CRLF>".into()),
            Self::MessageAccepted(id) => (
                250,
                Some([2, 0, 0]),
                format!("Message accepted as {id}").into(),
            ),
            Self::MessageHeld(id) => (250, Some([2, 0, 0]), format!("Message {id} held for review by the inbox's owner").into()),
            Self::SendLimit(refusal) => (
                452,
                Some([4, 7, 0]),
                format!("Send limit: {refusal} ({})", refusal.limit.as_str()).into(),
            ),
            Self::ChunkAccepted(n) => (250, Some([2, 0, 0]), format!("{n} bytes received").into()),
            Self::Bye => (221, Some([2, 0, 0]), "Bye".into()),
            Self::ReadyToStartTls => (220, Some([2, 0, 0]), "Ready to start TLS".into()),
            Self::AuthSucceeded => (235, Some([2, 7, 0]), "Authentication successful".into()),
            Self::AuthChallenge(c) => (334, None, (*c).into()),
            Self::CannotVerify => (
                252,
                Some([2, 5, 2]),
                "Cannot VRFY user, but will accept message".into(),
            ),
            Self::Help => (214, Some([2, 0, 0]), "See RFC 5321".into()),

            Self::UnknownCommand => (500, Some([5, 5, 1]), "Command not recognized".into()),
            Self::LineTooLong => (500, Some([5, 5, 6]), "Line too long".into()),
            Self::Syntax(syntax) => (501, Some([5, 5, 2]), format!("Syntax: {syntax}").into()),
            Self::BadSenderSyntax => (501, Some([5, 1, 7]), "Bad sender address syntax".into()),
            Self::BadRecipientSyntax => {
                (501, Some([5, 1, 3]), "Bad recipient address syntax".into())
            }
            Self::BadParameter(p) => (
                501,
                Some([5, 5, 4]),
                format!("Invalid value of parameter {p}").into(),
            ),
            Self::UnsupportedParameter => (555, Some([5, 5, 4]), "Unsupported parameter".into()),
            Self::NotImplemented => (502, Some([5, 5, 1]), "Command not implemented".into()),
            Self::BadSequence(why) => (
                503,
                Some([5, 5, 1]),
                format!("Bad sequence of commands: {why}").into(),
            ),
            Self::MechanismUnsupported => (
                504,
                Some([5, 5, 4]),
                "Unrecognized authentication type".into(),
            ),
            Self::AuthCancelled => (501, Some([5, 0, 0]), "Authentication cancelled".into()),
            Self::AuthBadBase64 => (501, Some([5, 5, 2]), "Invalid base64 data".into()),
            Self::AuthRequired => (530, Some([5, 7, 0]), "Authentication required".into()),
            Self::EncryptionRequired => (
                538,
                Some([5, 7, 11]),
                "Encryption required for requested authentication mechanism".into(),
            ),
            Self::AuthFailed => (
                535,
                Some([5, 7, 8]),
                "Authentication credentials invalid".into(),
            ),
            Self::AuthUnavailable => (
                454,
                Some([4, 7, 0]),
                "Temporary authentication failure, try again later".into(),
            ),
            Self::AuthThrottled => (
                454,
                Some([4, 7, 0]),
                "Too many authentication failures from your address, try again later".into(),
            ),
            Self::TooManyAuthFailures => (
                421,
                Some([4, 7, 0]),
                "Too many authentication failures, closing".into(),
            ),
            Self::TooManyErrors => (421, Some([4, 7, 0]), "Too many errors, closing".into()),
            Self::TooManyConnections => (
                421,
                Some([4, 7, 0]),
                "Too many connections, try again later".into(),
            ),
            Self::IdleTimeout => (421, Some([4, 4, 2]), "Idle timeout, closing".into()),
            Self::SessionTimeout => (
                421,
                Some([4, 4, 2]),
                "Session time limit reached, closing".into(),
            ),
            Self::DataTooSlow => (451, Some([4, 4, 2]), "Data rate too low, closing".into()),
            Self::ShuttingDown => (
                421,
                Some([4, 3, 2]),
                "Server shutting down, try again later".into(),
            ),
            Self::UnknownRecipient => (550, Some([5, 1, 1]), "Mailbox unknown".into()),
            Self::InactiveRecipient => (550, Some([5, 2, 1]), "Mailbox disabled".into()),
            Self::RelayDenied => (550, Some([5, 7, 1]), "Relay access denied".into()),
            Self::SendPolicy(list) => (
                550,
                Some([5, 7, 1]),
                format!("Recipient refused by the inbox's send policy ({list})").into(),
            ),
            Self::ReceivePolicy => (550, Some([5, 7, 1]), "Refused by the recipient's sender policy".into()),
            Self::SenderNotAuthorized => (
                550,
                Some([5, 7, 1]),
                "Sender address must be the authenticated inbox".into(),
            ),
            Self::FromHeaderNotAuthorized => (
                550,
                Some([5, 7, 1]),
                "From: header must hold exactly the authenticated inbox".into(),
            ),
            Self::SenderHeaderNotAuthorized => (
                550,
                Some([5, 7, 1]),
                "Sender: header must be absent or exactly the authenticated inbox".into(),
            ),
            Self::NulInMessage => (
                550,
                Some([5, 6, 0]),
                "NUL characters are not allowed in messages".into(),
            ),
            Self::TooManyRecipients => (452, Some([4, 5, 3]), "Too many recipients".into()),
            Self::MessageTooBig => (552, Some([5, 3, 4]), "Message too big".into()),
            Self::LookupFailed => (
                451,
                Some([4, 3, 0]),
                "Temporary lookup failure, try again later".into(),
            ),
            Self::StorageFull => (452, Some([4, 3, 1]), "Insufficient system storage".into()),
            Self::StorageFailed => (
                451,
                Some([4, 3, 0]),
                "Temporary local error, try again later".into(),
            ),
        };
        (code, esc, text)
    }

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.parts().0
    }

    /// Whether the reply ends the connection.
    pub fn closes(&self) -> bool {
        matches!(
            self,
            Self::Bye
                | Self::TooManyAuthFailures
                | Self::TooManyErrors
                | Self::TooManyConnections
                | Self::IdleTimeout
                | Self::SessionTimeout
                | Self::DataTooSlow
                | Self::ShuttingDown
        )
    }

    /// Appends the wire form (CRLF-terminated lines) to `out`. `hostname` is the
    /// server's name, used by the greeting, `EHLO` and `HELO`.
    pub fn write(&self, hostname: &str, out: &mut Vec<u8>) {
        let (code, esc, text) = self.parts();
        // Writing into a Vec cannot fail.
        let _ = match (self, esc) {
            (
                Self::Ehlo {
                    starttls,
                    auth,
                    max_size,
                },
                _,
            ) => {
                let mut ehlo = EhloResponse::new(hostname);
                ehlo.capabilities = EXT_PIPELINING
                    | EXT_SIZE
                    | EXT_8BIT_MIME
                    | EXT_SMTP_UTF8
                    | EXT_ENHANCED_STATUS_CODES
                    | EXT_CHUNKING;
                ehlo.size = *max_size;
                if *starttls {
                    ehlo.capabilities |= EXT_START_TLS;
                }
                if *auth {
                    ehlo.capabilities |= EXT_AUTH;
                    ehlo.auth_mechanisms = AUTH_PLAIN | AUTH_LOGIN;
                }
                ehlo.write(out)
            }
            (Self::Greeting | Self::Helo, _) => {
                out.extend_from_slice(format!("{code} {hostname} {text}\r\n").as_bytes());
                Ok(())
            }
            (_, Some([a, b, c])) => Response::new(code, a, b, c, text).write(out),
            (_, None) => {
                out.extend_from_slice(format!("{code} {text}\r\n").as_bytes());
                Ok(())
            }
        };
    }

    /// The wire form as a string, for logs and tests.
    pub fn to_wire(&self, hostname: &str) -> String {
        let mut out = Vec::new();
        self.write(hostname, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl From<&DeliveryError> for Reply {
    fn from(err: &DeliveryError) -> Self {
        match err {
            DeliveryError::Blob(agentkeys_store::BlobError::StorageFull(_)) => Self::StorageFull,
            DeliveryError::Blob(_) | DeliveryError::Queue(_) | DeliveryError::Sign(_) => {
                Self::StorageFailed
            }
            DeliveryError::RefusedByPolicy => Self::ReceivePolicy,
            DeliveryError::SendLimit(refusal) => Self::SendLimit(*refusal),
        }
    }
}

impl From<MessageRefusal> for Reply {
    fn from(refusal: MessageRefusal) -> Self {
        match refusal {
            MessageRefusal::Nul => Self::NulInMessage,
            MessageRefusal::From => Self::FromHeaderNotAuthorized,
            MessageRefusal::Sender => Self::SenderHeaderNotAuthorized,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms() {
        assert_eq!(
            Reply::Greeting.to_wire("mx.test"),
            "220 mx.test ESMTP AgentKeys Mail\r\n"
        );
        assert_eq!(
            Reply::AuthFailed.to_wire("mx.test"),
            "535 5.7.8 Authentication credentials invalid\r\n"
        );
        assert_eq!(
            Reply::EncryptionRequired.to_wire("mx.test"),
            "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
        );
        assert_eq!(Reply::AuthChallenge("").to_wire("mx.test"), "334 \r\n");
        let ehlo = Reply::Ehlo {
            starttls: true,
            auth: false,
            max_size: 1000,
        }
        .to_wire("mx.test");
        assert!(ehlo.starts_with("250-mx.test"));
        for cap in [
            "PIPELINING",
            "SIZE 1000",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "STARTTLS",
        ] {
            assert!(
                ehlo.contains(&format!("250-{cap}\r\n"))
                    || ehlo.contains(&format!("250 {cap}\r\n")),
                "{cap}"
            );
        }
        assert!(!ehlo.contains("AUTH"));
        let ehlo = Reply::Ehlo {
            starttls: false,
            auth: true,
            max_size: 1000,
        }
        .to_wire("mx.test");
        assert!(
            ehlo.contains("AUTH LOGIN PLAIN\r\n") || ehlo.contains("AUTH PLAIN LOGIN\r\n"),
            "{ehlo}"
        );
        assert!(!ehlo.contains("STARTTLS"));
    }

    #[test]
    fn closing_replies_are_4xx_or_221() {
        for r in [
            Reply::TooManyAuthFailures,
            Reply::TooManyErrors,
            Reply::TooManyConnections,
            Reply::IdleTimeout,
            Reply::SessionTimeout,
            Reply::DataTooSlow,
            Reply::ShuttingDown,
            Reply::Bye,
        ] {
            assert!(r.closes());
            assert!(matches!(r.code(), 221 | 421 | 451), "{r:?}");
        }
    }
}
