//! RFC 3464 delivery status notifications for bounced recipients.

use agentkeys_core::Address;
use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::mime::MimePart;

/// How much of the original message a DSN carries back (its headers only, as
/// `text/rfc822-headers`), at most this many bytes.
pub const DSN_MAX_ORIGINAL_HEADERS: usize = 16 * 1024;

/// What a DSN reports.
#[derive(Debug, Clone)]
pub struct Bounce<'a> {
    /// This server's name (`Reporting-MTA`, the `From:` domain).
    pub reporting_mta: &'a str,
    /// The inbox that sent the message; the DSN goes to it.
    pub sender: &'a Address,
    /// The recipient that failed.
    pub recipient: &'a str,
    /// The remote reply or local reason, e.g. `550 5.1.1 no such user`.
    pub diagnostic: &'a str,
    /// The queued message id.
    pub message_id: &'a str,
    /// The original message (only its header block is included).
    pub original: &'a [u8],
    /// When the DSN is made (Unix seconds).
    pub now: i64,
}

fn status_code(diagnostic: &str) -> String {
    // An enhanced status code in the reply (`5.1.1`) wins; otherwise generic.
    diagnostic
        .split_whitespace()
        .nth(1)
        .filter(|t| {
            t.len() >= 5
                && t.starts_with(['4', '5'])
                && t.chars().all(|c| c.is_ascii_digit() || c == '.')
        })
        .map_or_else(
            || "5.0.0".to_owned(),
            |t| {
                if t.starts_with('4') {
                    "5.0.0".to_owned()
                } else {
                    t.to_owned()
                }
            },
        )
}

fn header_block(original: &[u8]) -> &[u8] {
    let end = memchr_crlfcrlf(original)
        .unwrap_or(original.len())
        .min(DSN_MAX_ORIGINAL_HEADERS);
    &original[..end]
}

fn memchr_crlfcrlf(data: &[u8]) -> Option<usize> {
    data.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
}

/// One line of a header field value: no CR/LF can get into the report.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Builds the DSN as a complete message (CRLF line ends): `multipart/report;
/// report-type=delivery-status` with a human-readable part, the
/// `message/delivery-status` part and the original's headers.
pub fn build_dsn(bounce: &Bounce<'_>) -> Vec<u8> {
    let diagnostic = one_line(bounce.diagnostic);
    let recipient = one_line(bounce.recipient);
    let status = status_code(&diagnostic);
    let text = format!(
        "This is the mail system at {mta}.\r\n\r\nYour message {id} could not be delivered to {recipient}.\r\n\
         The remote server or this server said:\r\n\r\n    {diagnostic}\r\n\r\nThe message will not be retried.\r\n",
        mta = bounce.reporting_mta,
        id = bounce.message_id,
    );
    let status_part = format!(
        "Reporting-MTA: dns; {mta}\r\nX-AgentKeys-Queue-Id: {id}\r\nArrival-Date: {date}\r\n\r\n\
         Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: {status}\r\n\
         Diagnostic-Code: smtp; {diagnostic}\r\nLast-Attempt-Date: {date}\r\n",
        mta = bounce.reporting_mta,
        id = bounce.message_id,
        date = mail_builder::headers::date::Date::new(bounce.now).to_rfc822(),
    );
    let headers = String::from_utf8_lossy(header_block(bounce.original)).into_owned();
    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        vec![
            MimePart::new(
                ContentType::new("text/plain").attribute("charset", "utf-8"),
                text,
            ),
            MimePart::new(ContentType::new("message/delivery-status"), status_part),
            MimePart::new(ContentType::new("text/rfc822-headers"), headers),
        ],
    );
    MessageBuilder::new()
        .from((
            "Mail Delivery System".to_owned(),
            format!("mailer-daemon@{}", bounce.reporting_mta),
        ))
        .to(bounce.sender.as_str())
        .subject(format!("Undelivered Mail Returned to Sender: {recipient}"))
        .date(bounce.now)
        .body(report)
        .write_to_vec()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_is_a_delivery_status_report() {
        let sender: Address = "bot@agents.localhost".parse().unwrap();
        let original = b"From: bot@agents.localhost\r\nSubject: hi\r\n\r\nsecret body\r\n";
        let dsn = build_dsn(&Bounce {
            reporting_mta: "mx.agents.localhost",
            sender: &sender,
            recipient: "nobody@example.com",
            diagnostic: "550 5.1.1 no such user\r\nInjected: header",
            message_id: "01HQ",
            original,
            now: 1_700_000_000,
        });
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("multipart/report"), "{text}");
        assert!(
            text.contains("report-type=\"delivery-status\"")
                || text.contains("report-type=delivery-status"),
            "{text}"
        );
        assert!(
            text.contains("Content-Type: message/delivery-status"),
            "{text}"
        );
        assert!(text.contains("Status: 5.1.1"), "{text}");
        assert!(
            text.contains("Final-Recipient: rfc822; nobody@example.com"),
            "{text}"
        );
        assert!(text.contains("Subject: hi"), "{text}");
        assert!(!text.contains("secret body"), "only the headers come back");
        assert!(
            !text.contains("\r\nInjected: header"),
            "diagnostic is one line"
        );
        assert!(
            text.contains("To: <bot@agents.localhost>")
                || text.contains("To: bot@agents.localhost"),
            "{text}"
        );
    }
}
