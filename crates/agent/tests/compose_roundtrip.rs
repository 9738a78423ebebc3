//! Round trips: build with mail-builder → parse with mail-parser (through
//! `ParsedMessage`) → the fields are the ones we meant.

#![allow(clippy::unwrap_used)]

use agentkeys_agent::compose::{
    self, BccHeader, Compose, ComposeError, FORWARDED_FILENAME, MAX_REFERENCES_OUT,
    OutgoingAttachment, Stamp,
};
use agentkeys_agent::message::{Mailbox, ParsedMessage};

const HOST: &str = "mx.agents.localhost";
const ME: &str = "bot@agents.localhost";
const NOW: i64 = 1_795_251_900; // 2026-11-21T09:05:00Z

fn me() -> Mailbox {
    Mailbox {
        name: Some("Bot".into()),
        address: ME.into(),
    }
}

fn parse(bytes: &[u8]) -> ParsedMessage {
    ParsedMessage::parse("01JDROUNDTRIP0000000000000", bytes, HOST).unwrap()
}

fn header_names(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    head.lines()
        .filter(|l| !l.starts_with([' ', '\t']))
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_ascii_lowercase()))
        .collect()
}

#[test]
fn send_round_trip() {
    let mut c = Compose::new(me());
    c.to = vec![Mailbox {
        name: Some("Ann Müller".into()),
        address: "ann@example.com".into(),
    }];
    c.cc = vec![Mailbox::new("carl@example.org")];
    c.bcc = vec![Mailbox::new("audit@example.net")];
    c.subject = "Grüße – your report 📎".into();
    c.text = Some("Hello Ann,\nthe report is attached.\n".into());
    c.html = Some("<p>Hello Ann,</p><p>the report is <b>attached</b>.</p>".into());
    let pdf: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    c.attachments = vec![OutgoingAttachment {
        filename: "report.pdf".into(),
        content_type: "application/pdf".into(),
        bytes: pdf.clone(),
    }];
    let stamp = Stamp::new("agents.localhost", NOW, 0x1234_5678_9abc_def0);
    let built = c.build(&stamp, BccHeader::Omit).unwrap();

    assert_eq!(
        built.envelope_recipients,
        ["ann@example.com", "carl@example.org", "audit@example.net"]
    );
    assert!(
        !header_names(&built.bytes).contains(&"bcc".to_owned()),
        "Bcc must not be in the header"
    );
    assert!(
        built
            .bytes
            .windows(2)
            .all(|w| w[1] != b'\n' || w[0] == b'\r'),
        "CRLF only"
    );

    let m = parse(&built.bytes);
    assert_eq!(
        m.rfc5322_message_id.as_deref(),
        Some(stamp.message_id.as_str())
    );
    assert!(stamp.message_id.ends_with("@agents.localhost>"));
    assert_eq!(m.date_unix, Some(NOW));
    assert_eq!(m.from, Some(me()));
    assert_eq!(m.to, c.to);
    assert_eq!(m.cc, c.cc);
    assert_eq!(m.subject.as_deref(), Some("Grüße – your report 📎"));
    assert_eq!(
        m.text.as_deref().map(|t| t.replace("\r\n", "\n")),
        Some("Hello Ann,\nthe report is attached.\n".into())
    );
    assert_eq!(
        m.html_text.as_deref(),
        Some("Hello Ann,\nthe report is attached.")
    );
    assert_eq!(m.attachments.len(), 1);
    assert_eq!(m.attachments[0].filename.as_deref(), Some("report.pdf"));
    assert_eq!(m.attachments[0].content_type, "application/pdf");
    assert_eq!(m.attachment(0).unwrap().bytes, pdf);
    assert_eq!(m.in_reply_to, None);
    assert!(m.references.is_empty());

    let with_bcc = c.build(&stamp, BccHeader::Include).unwrap();
    assert!(header_names(&with_bcc.bytes).contains(&"bcc".to_owned()));
}

#[test]
fn subject_and_names_cannot_inject_headers() {
    let mut c = Compose::new(me());
    c.to = vec![Mailbox {
        name: Some("Eve\r\nBcc: victim@example.com".into()),
        address: "eve@example.com".into(),
    }];
    c.subject = "Hi\r\nBcc: victim@example.com".into();
    c.text = Some("x".into());
    let built = c
        .build(&Stamp::new("agents.localhost", NOW, 1), BccHeader::Omit)
        .unwrap();
    assert!(!header_names(&built.bytes).contains(&"bcc".to_owned()));
    let m = parse(&built.bytes);
    assert_eq!(m.to.len(), 1);
    assert_eq!(m.to[0].address, "eve@example.com");
    assert!(m.subject.unwrap().starts_with("Hi"));

    c.to = vec![Mailbox::new("eve@example.com>\r\nBcc: victim@example.com")];
    assert!(matches!(
        c.build(&Stamp::new("x", NOW, 1), BccHeader::Omit),
        Err(ComposeError::InvalidAddress(_))
    ));
}

const ORIGINAL: &str = concat!(
    "Authentication-Results: mx.agents.localhost; dmarc=pass header.from=shop.example\r\n",
    "From: Shop <team@shop.example>\r\n",
    "Reply-To: Help Desk <help@shop.example>\r\n",
    "To: bot@agents.localhost, Dana <dana@corp.example>\r\n",
    "Cc: BOT@Agents.Localhost, carl@example.org, DANA@corp.example\r\n",
    "Subject: AW: Re: Your question\r\n",
    "Date: Sat, 21 Nov 2026 08:00:00 +0000\r\n",
    "Message-ID: <orig-3@shop.example>\r\n",
    "In-Reply-To: <orig-2@agents.localhost>\r\n",
    "References: <orig-1@shop.example> <orig-2@agents.localhost>\r\n",
    "\r\n",
    "Here is the answer.\r\n",
);

#[test]
fn reply_round_trip() {
    let original = parse(ORIGINAL.as_bytes());
    let r = compose::reply(&original, &me(), Some("Thanks!".into()), None, false).unwrap();
    assert_eq!(
        r.to,
        vec![Mailbox {
            name: Some("Help Desk".into()),
            address: "help@shop.example".into()
        }]
    );
    assert!(r.cc.is_empty());
    let stamp = Stamp::new("agents.localhost", NOW, 9);
    let m = parse(&r.build(&stamp, BccHeader::Omit).unwrap().bytes);
    assert_eq!(m.subject.as_deref(), Some("Re: Your question"));
    assert_eq!(m.in_reply_to.as_deref(), Some("<orig-3@shop.example>"));
    assert_eq!(
        m.references,
        [
            "<orig-1@shop.example>",
            "<orig-2@agents.localhost>",
            "<orig-3@shop.example>"
        ]
    );
    assert_eq!(m.to, r.to);
    assert_eq!(
        m.rfc5322_message_id.as_deref(),
        Some(stamp.message_id.as_str())
    );
    assert_ne!(m.rfc5322_message_id, original.rfc5322_message_id);
}

#[test]
fn reply_all_adds_to_and_cc_minus_ourselves_deduplicated() {
    let original = parse(ORIGINAL.as_bytes());
    let r = compose::reply(&original, &me(), Some("All: thanks".into()), None, true).unwrap();
    let cc: Vec<&str> = r.cc.iter().map(|m| m.address.as_str()).collect();
    assert_eq!(cc, ["dana@corp.example", "carl@example.org"]);
    let m = parse(
        &r.build(&Stamp::new("agents.localhost", NOW, 3), BccHeader::Omit)
            .unwrap()
            .bytes,
    );
    assert_eq!(m.cc.len(), 2);
    assert_eq!(m.to[0].address, "help@shop.example");
}

#[test]
fn reply_without_reply_to_goes_to_from_and_starts_references() {
    let raw = "From: Ann <ann@example.com>\r\nTo: bot@agents.localhost\r\nSubject: Hello\r\nMessage-ID: <a1@example.com>\r\n\r\nhi\r\n";
    let original = parse(raw.as_bytes());
    let r = compose::reply(&original, &me(), Some("hi back".into()), None, true).unwrap();
    assert_eq!(
        r.to,
        vec![Mailbox {
            name: Some("Ann".into()),
            address: "ann@example.com".into()
        }]
    );
    assert!(r.cc.is_empty());
    let m = parse(
        &r.build(&Stamp::new("agents.localhost", NOW, 4), BccHeader::Omit)
            .unwrap()
            .bytes,
    );
    assert_eq!(m.subject.as_deref(), Some("Re: Hello"));
    assert_eq!(m.references, ["<a1@example.com>"]);
}

#[test]
fn reply_to_our_own_message_goes_to_its_recipients() {
    let raw = "From: bot@agents.localhost\r\nTo: ann@example.com\r\nSubject: Q\r\nMessage-ID: <s1@agents.localhost>\r\n\r\nq\r\n";
    let r = compose::reply(
        &parse(raw.as_bytes()),
        &me(),
        Some("again".into()),
        None,
        false,
    )
    .unwrap();
    assert_eq!(r.to, vec![Mailbox::new("ann@example.com")]);
    let nobody = "Subject: Q\r\nMessage-ID: <s2@x>\r\n\r\nq\r\n";
    assert_eq!(
        compose::reply(&parse(nobody.as_bytes()), &me(), None, None, false),
        Err(ComposeError::NoReplyAddress)
    );
    // A note to itself: the error says so instead of blaming a missing From:.
    let own = format!("From: {0}\r\nTo: {0}\r\nSubject: note\r\nMessage-ID: <s3@x>\r\n\r\nn\r\n", me().address);
    let err = compose::reply(&parse(own.as_bytes()), &me(), None, None, false).unwrap_err();
    assert_eq!(err, ComposeError::OnlyOurselves(me().address.clone()));
    assert!(err.to_string().contains("mail send --to"), "{err}");
}

#[test]
fn long_threads_keep_root_and_newest_references() {
    let refs: String = (0..40).map(|i| format!(" <r{i}@x.example>")).collect();
    let raw = format!(
        "From: a@x.example\r\nSubject: t\r\nMessage-ID: <r40@x.example>\r\nReferences:{refs}\r\n\r\nx\r\n"
    );
    let r = compose::reply(&parse(raw.as_bytes()), &me(), Some("x".into()), None, false).unwrap();
    let m = parse(
        &r.build(&Stamp::new("agents.localhost", NOW, 5), BccHeader::Omit)
            .unwrap()
            .bytes,
    );
    assert_eq!(m.references.len(), MAX_REFERENCES_OUT);
    assert_eq!(m.references[0], "<r0@x.example>");
    assert_eq!(m.references.last().unwrap(), "<r40@x.example>");
}

#[test]
fn forward_attaches_the_original_as_message_rfc822() {
    let original = parse(ORIGINAL.as_bytes());
    let f = compose::forward(
        &original,
        &me(),
        vec![Mailbox::new("ops@example.com")],
        Some("FYI".into()),
        None,
    );
    assert_eq!(f.subject, "Fwd: AW: Re: Your question");
    let built = f
        .build(&Stamp::new("agents.localhost", NOW, 6), BccHeader::Omit)
        .unwrap();
    let m = parse(&built.bytes);
    assert_eq!(m.subject.as_deref(), Some("Fwd: AW: Re: Your question"));
    assert_eq!(m.in_reply_to, None);
    assert_eq!(m.text.as_deref().map(str::trim), Some("FYI"));
    assert_eq!(m.attachments.len(), 1);
    assert_eq!(m.attachments[0].content_type, "message/rfc822");
    assert_eq!(
        m.attachments[0].filename.as_deref(),
        Some(FORWARDED_FILENAME)
    );
    let inner = parse(&m.attachment(0).unwrap().bytes);
    assert_eq!(
        inner.rfc5322_message_id.as_deref(),
        Some("<orig-3@shop.example>")
    );
    assert_eq!(inner.subject.as_deref(), Some("AW: Re: Your question"));
    assert_eq!(
        inner.text.as_deref().map(str::trim),
        Some("Here is the answer.")
    );
    // Sent 8bit, not base64 (RFC 2046 §5.2.1).
    assert!(String::from_utf8_lossy(&built.bytes).contains("Content-Transfer-Encoding: 8bit"));
}

#[test]
fn forwarding_a_message_with_overlong_lines_falls_back_to_base64() {
    let raw = format!(
        "From: a@x.example\r\nSubject: wide\r\n\r\n{}\r\n",
        "y".repeat(2000)
    );
    let original = parse(raw.as_bytes());
    let f = compose::forward(
        &original,
        &me(),
        vec![Mailbox::new("ops@example.com")],
        None,
        None,
    );
    let built = f
        .build(&Stamp::new("agents.localhost", NOW, 7), BccHeader::Omit)
        .unwrap();
    assert!(built.bytes.split(|b| *b == b'\n').all(|l| l.len() <= 1000));
    let m = parse(&built.bytes);
    assert_eq!(m.attachments[0].content_type, "application/octet-stream");
    assert_eq!(m.attachment(0).unwrap().bytes, raw.as_bytes());
}
