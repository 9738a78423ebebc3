#![allow(clippy::unwrap_used)]
use proptest::prelude::*;

use super::*;

/// An object as an SES receipt rule's S3 action writes it (fields as in
/// AWS's documented examples), around `original`.
fn ses_object(for_clause: &str, original: &str) -> String {
    format!(
        "Return-Path: <sender@bank.example>\r\n\
         Received: from mail.bank.example (mail.bank.example [203.0.113.1])\r\n by inbound-smtp.us-east-1.amazonaws.com with SMTP id o3vrnil0e2ic28trm7dfhrc2v0cnbeccl4nbp0g1{for_clause};\r\n Mon, 07 Dec 2026 19:00:00 +0000 (UTC)\r\n\
         X-SES-Spam-Verdict: PASS\r\n\
         X-SES-Virus-Verdict: PASS\r\n\
         Received-SPF: pass (spfCheck: domain of bank.example designates 203.0.113.1 as permitted sender) client-ip=203.0.113.1; envelope-from=sender@bank.example; helo=mail.bank.example;\r\n\
         Authentication-Results: amazonses.com;\r\n spf=pass (spfCheck: domain of bank.example designates 203.0.113.1 as permitted sender) client-ip=203.0.113.1; envelope-from=sender@bank.example; helo=mail.bank.example;\r\n dkim=pass header.i=@bank.example;\r\n dmarc=pass header.from=bank.example;\r\n\
         X-SES-RECEIPT: AEFBQUFBQUFBQUFHOThOYXNzWXVaRmZ4\r\n\
         X-SES-DKIM-SIGNATURE: a=rsa-sha256; q=dns/txt; b=abc; c=relaxed/simple; s=6gbrjpgwjskckoa6a5zn6fwqkn67xbtw; d=amazonses.com;\r\n\
         {original}"
    )
}

const ORIGINAL: &str = "From: Bank <sender@bank.example>\r\nTo: victim@agents.test\r\nSubject: code\r\n\r\nYour code is 123456\r\n";

#[test]
fn the_envelope_recipient_is_the_for_clause_of_ses_received_never_to() {
    let r = read_receipt(ses_object(" for bot@agents.test", ORIGINAL).as_bytes());
    assert_eq!(r.recipient.as_deref(), Some("bot@agents.test"), "not the To: header's victim@");
    assert_eq!(r.received_by.as_deref(), Some("inbound-smtp.us-east-1.amazonaws.com"));
    assert_eq!(r.mail_from, "sender@bank.example");
    assert_eq!((r.spam.as_deref(), r.virus.as_deref()), (Some("PASS"), Some("PASS")));
    assert_eq!(
        r.results,
        "\r\n\tspf=pass (Amazon SES, spam verdict PASS, virus verdict PASS);\r\n\tdkim=pass (Amazon SES) header.i=@bank.example;\r\n\tdmarc=pass (Amazon SES) header.from=bank.example"
    );
}

#[test]
fn several_recipients_or_a_foreign_first_received_give_no_recipient() {
    let r = read_receipt(ses_object("", ORIGINAL).as_bytes());
    assert_eq!(r.recipient, None, "SES omits `for` with several recipients");
    assert!(r.received_by.is_some());
    // An object not written by SES: its first Received is someone else's,
    // whatever SES-looking fields follow.
    let forged = format!("Received: from x by mx.evil.example for bot@agents.test; now\r\n{}", ses_object(" for bot@agents.test", ORIGINAL));
    let r = read_receipt(forged.as_bytes());
    assert_eq!((r.recipient, r.received_by, r.spam), (None, None, None));
    assert!(r.results.contains("dkim=none"), "no verdict is carried from a non-SES block");
}

#[test]
fn verdicts_below_ses_block_are_not_believed() {
    // SES did not scan (no verdict fields); the sender wrote its own below.
    let object = "Return-Path: <s@evil.example>\r\n\
        Received: from e by inbound-smtp.eu-west-1.amazonaws.com with SMTP id x for bot@agents.test; now\r\n\
        X-SES-RECEIPT: AAAA\r\n\
        X-SES-DKIM-SIGNATURE: a=rsa-sha256; d=amazonses.com\r\n\
        X-SES-Virus-Verdict: PASS\r\n\
        Authentication-Results: amazonses.com; dkim=pass header.i=@bank.example; dmarc=pass header.from=bank.example\r\n\
        From: bank@bank.example\r\n\r\nbody";
    let r = read_receipt(object.as_bytes());
    assert_eq!(r.recipient.as_deref(), Some("bot@agents.test"));
    assert_eq!(r.virus, None);
    assert!(r.results.contains("dkim=none") && r.results.contains("dmarc=none"), "{}", r.results);
}

#[test]
fn another_authserv_id_or_odd_words_are_not_carried() {
    let r = results_from(Some("mx.evil.example; dkim=pass"), None, None);
    assert!(r.contains("dkim=none"));
    let r = results_from(Some("amazonses.com; spf=GRAY; dkim=Pass header.d=a.example\"x"), Some("FAIL"), Some("PASS\r\nX: y"));
    assert!(r.contains("spf=none (Amazon SES, spam verdict FAIL"), "{r}");
    assert!(r.contains("dkim=pass (Amazon SES);"), "a property with a quote is dropped: {r}");
    assert!(r.contains("spam verdict FAIL, virus verdict PASSXy"), "{r}");
    assert_eq!(r.matches("\r\n\t").count(), 3);
}

#[test]
fn object_ids_are_stable_per_key_and_ordered_by_time() {
    let a = object_id("b", "inbound/k1", 1_000);
    assert_eq!(a, object_id("b", "inbound/k1", 1_000));
    assert_ne!(a, object_id("b", "inbound/k2", 1_000));
    assert_ne!(a, object_id("c", "inbound/k1", 1_000));
    assert!(object_id("b", "zzz", 999) < object_id("b", "aaa", 1_000));
    assert_eq!(a.timestamp_ms(), 1_000);
}

#[test]
fn ses_errors_map_onto_the_queue_states() {
    let refused = |code: &str, status| Err(AwsError::Refused { service: "ses", status, code: code.to_owned(), message: "m".to_owned() });
    assert!(matches!(classify(Ok("id-1".to_owned())), Attempt::Delivered(r) if r.contains("id-1")));
    assert!(matches!(classify(refused("MessageRejected", 400)), Attempt::Permanent(r) if r.starts_with("554 5.7.1")));
    assert!(matches!(classify(refused("Throttling", 400)), Attempt::Temporary(r) if r.starts_with("451 4.4.2")));
    assert!(matches!(classify(refused("ServiceUnavailable", 503)), Attempt::Temporary(_)));
    assert!(matches!(classify(refused("ExpiredToken", 403)), Attempt::Temporary(_)), "a credential problem defers");
    assert!(matches!(
        classify(Err(AwsError::Transport { service: "ses", detail: "refused".to_owned() })),
        Attempt::Temporary(_)
    ));
}

fn settings() -> SesSettings {
    SesSettings {
        bucket: "agentkeys-inbound".to_owned(),
        prefix: "inbound/".to_owned(),
        region: "us-east-1".to_owned(),
        endpoint: None,
        role_arn: Some("arn:aws:iam::123456789012:role/agentkeys-mail".to_owned()),
        poll_seconds: 10,
        queue_url: None,
    }
}

#[test]
fn settings_are_checked_and_round_trip_as_json() {
    let s = settings();
    s.validate(false).unwrap();
    assert_eq!(serde_json::from_str::<SesSettings>(&serde_json::to_string(&s).unwrap()).unwrap(), s);
    assert!(s.validate(true).unwrap_err().contains("not both"));
    assert!(SesSettings { role_arn: None, ..settings() }.validate(false).unwrap_err().contains("--role-arn"));
    SesSettings { role_arn: None, ..settings() }.validate(true).unwrap();
    assert!(SesSettings { bucket: "Bad_Bucket".to_owned(), ..settings() }.validate(false).is_err());
    assert!(SesSettings { region: "us east".to_owned(), ..settings() }.validate(false).is_err());
    assert!(SesSettings { role_arn: Some("arn:aws:iam::1:user/x".to_owned()), ..settings() }.validate(false).is_err());
    assert!(SesSettings { poll_seconds: 0, ..settings() }.validate(false).is_err());
    assert!(SesSettings { queue_url: Some("sqs".to_owned()), ..settings() }.validate(false).unwrap_err().contains("queue URL"));
    let queue = Some("https://sqs.us-east-1.amazonaws.com/123456789012/agentkeys-inbound".to_owned());
    SesSettings { queue_url: queue, ..settings() }.validate(false).unwrap();
    assert!(SesSettings { poll_seconds: *POLL_SECONDS.end() + 1, ..settings() }.validate(false).is_err());
    assert!(SesSettings { endpoint: Some("gopher://x".to_owned()), ..settings() }.validate(false).is_err());
    assert_eq!(settings().location(), "s3://agentkeys-inbound/inbound/");
}

#[test]
fn static_keys_are_id_colon_secret_and_never_print() {
    let keys = static_keys("AKIAEXAMPLE:sec/ret+KEY\n").unwrap();
    assert_eq!((keys.access_key_id.as_str(), keys.secret_access_key.as_str()), ("AKIAEXAMPLE", "sec/ret+KEY"));
    assert!(!format!("{keys:?}").contains("sec/ret"));
    assert!(static_keys("nocolon").is_err());
    assert!(static_keys(":secret").is_err());
}

proptest! {
    /// Whatever follows SES's block, the recipient is SES's `for` clause and
    /// never text from the original message.
    #[test]
    fn the_original_message_never_chooses_the_recipient(original in "[ -~\r\n]{0,400}") {
        let r = read_receipt(ses_object(" for bot@agents.test", &original).as_bytes());
        prop_assert_eq!(r.recipient.as_deref(), Some("bot@agents.test"));
        let r = read_receipt(ses_object("", &original).as_bytes());
        prop_assert_eq!(r.recipient, None);
    }

    /// Our resinfo is three results of known words, on lines of their own, whatever SES wrote.
    #[test]
    fn our_results_are_always_well_formed(ses in "[ -~]{0,200}", spam in "[ -~]{0,20}") {
        let r = results_from(Some(&format!("amazonses.com; {ses}")), Some(&spam), None);
        prop_assert_eq!(r.matches("\r\n\t").count(), 3);
        prop_assert!(!r.contains('\n') || r.split("\r\n\t").skip(1).all(|l| !l.contains('\n') && !l.contains('\r')));
        for (line, method) in r.split("\r\n\t").skip(1).zip(["spf", "dkim", "dmarc"]) {
            let word = line.strip_prefix(&format!("{method}=")).unwrap().split(' ').next().unwrap();
            prop_assert!(["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy"].contains(&word));
        }
    }
}

/// SES's notification of an S3 action, as the SES developer guide shows it.
fn notification(recipients: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "notificationType": "Received",
        "receipt": {
            "timestamp": "2026-12-07T19:00:00.936Z",
            "processingTimeMillis": 222,
            "recipients": recipients,
            "spamVerdict": {"status": "PASS"},
            "virusVerdict": {"status": "PASS"},
            "action": {
                "type": "S3",
                "topicArn": "arn:aws:sns:us-east-1:123456789012:inbound",
                "bucketName": "agentkeys-inbound",
                "objectKeyPrefix": "inbound/",
                "objectKey": "inbound/o3vrnil0e2ic28trm7dfhrc2v0cnbeccl4nbp0g1"
            }
        },
        "mail": {
            "timestamp": "2026-12-07T19:00:00.500Z",
            "source": "sender@bank.example",
            "messageId": "o3vrnil0e2ic28trm7dfhrc2v0cnbeccl4nbp0g1",
            "destination": ["victim@agents.test"]
        }
    })
}

#[test]
fn a_notification_gives_every_envelope_recipient_through_sns_or_raw() {
    let inner = notification(&["a@agents.test", "B@agents.test", "a@agents.test", "c@other.test"]);
    let sns = serde_json::json!({"Type": "Notification", "MessageId": "m", "Message": inner.to_string()});
    for body in [sns.to_string(), inner.to_string()] {
        let n = read_notification(&body).unwrap();
        assert_eq!(n.recipients, ["a@agents.test", "B@agents.test", "c@other.test"], "receipt.recipients, not mail.destination (To:)");
        assert_eq!((n.bucket.as_str(), n.key.as_str()), ("agentkeys-inbound", "inbound/o3vrnil0e2ic28trm7dfhrc2v0cnbeccl4nbp0g1"));
        assert_eq!(n.timestamp_ms, 1_796_670_000_500);
    }
}

#[test]
fn what_is_not_an_s3_action_notification_is_refused() {
    let mut sns_action = notification(&["a@agents.test"]);
    sns_action["receipt"]["action"] = serde_json::json!({"type": "SNS", "topicArn": "arn:aws:sns:us-east-1:1:t"});
    assert!(read_notification(&sns_action.to_string()).unwrap_err().contains("not S3"));
    let mut bounce = notification(&["a@agents.test"]);
    bounce["notificationType"] = "Bounce".into();
    assert!(read_notification(&bounce.to_string()).is_err());
    assert!(read_notification(&notification(&[]).to_string()).is_err(), "no recipient");
    assert!(read_notification(&notification(&["not-an-address"]).to_string()).is_err());
    let confirm = serde_json::json!({"Type": "SubscriptionConfirmation", "Message": "x"});
    assert!(read_notification(&confirm.to_string()).unwrap_err().contains("SubscriptionConfirmation"));
    assert!(read_notification("not json").is_err());
}

#[test]
fn notifications_have_bounds() {
    let many: Vec<String> = (0..=MAX_NOTIFICATION_RECIPIENTS).map(|i| format!("r{i}@agents.test")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert!(read_notification(&notification(&many).to_string()).is_err(), "over MAX_NOTIFICATION_RECIPIENTS");
    assert!(read_notification(&notification(&many[..MAX_NOTIFICATION_RECIPIENTS]).to_string()).is_ok());
    let padded = format!("{}{}", notification(&["a@agents.test"]), " ".repeat(MAX_NOTIFICATION_BYTES));
    assert!(read_notification(&padded).unwrap_err().contains("bytes"), "over MAX_NOTIFICATION_BYTES");
}
