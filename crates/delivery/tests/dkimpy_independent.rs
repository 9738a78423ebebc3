//! Both DKIM signatures checked by an independent verifier: Python `dkimpy`
//! (`tests/resources/verify_dkim.py`), with the public keys taken from the TXT
//! values we tell operators to publish. `scripts/test.sh` installs dkimpy and
//! PyNaCl (for Ed25519).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use agentkeys_core::{Domain, MasterSeed};
use agentkeys_delivery::{DomainKeys, Selectors};
use serde_json::json;

/// A varied corpus: plain and multipart, attachments, 8-bit and UTF-8 bodies and
/// headers, long lines, leading dots, bare LF and bare CR line endings, folded
/// headers, trailing whitespace and blank lines.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let from = "From: Bot <bot@example.test>\r\n";
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, msg: Vec<u8>| out.push((name.to_owned(), msg));

    add("plain", format!("{from}To: a@remote.test\r\nSubject: hi\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\nhello\r\n").into_bytes());
    add("no-trailing-newline", format!("{from}Subject: x\r\n\r\nno newline at end").into_bytes());
    add("empty-body", format!("{from}Subject: empty\r\n\r\n").into_bytes());
    add("headers-only", format!("{from}Subject: none").into_bytes());
    add("bare-lf", b"From: bot@example.test\nTo: a@remote.test\nSubject: lf\n\nline 1\nline 2\n".to_vec());
    add("bare-cr", b"From: bot@example.test\rSubject: cr\r\rline 1\rline 2\r".to_vec());
    add("mixed-endings", b"From: bot@example.test\r\nSubject: mixed\n\r\na\rb\nc\r\n".to_vec());
    add("dot-lines", format!("{from}Subject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\n...\r\nend\r\n").into_bytes());
    add("smuggling-lf-dot-lf", format!("{from}Subject: smuggle\r\n\r\nbefore\n.\nMAIL FROM:<x@evil.test>\r\nafter\r\n").into_bytes());
    add("smuggling-cr-dot-cr", format!("{from}Subject: smuggle cr\r\n\r\nbefore\r.\rRCPT TO:<y@evil.test>\r\n").into_bytes());
    add("long-line-998", format!("{from}Subject: long\r\n\r\n{}\r\n", "x".repeat(998)).into_bytes());
    add("long-line-5000", format!("{from}Subject: very long\r\n\r\n{}\r\n", "word ".repeat(1000)).into_bytes());
    add("trailing-whitespace", format!("{from}Subject: ws   \r\n\r\nline with trailing   \r\n\ttabbed\t\r\n  \r\n").into_bytes());
    add("trailing-blank-lines", format!("{from}Subject: blanks\r\n\r\nbody\r\n\r\n\r\n\r\n").into_bytes());
    add("folded-subject", format!("{from}Subject: a folded\r\n  subject line\r\n\tcontinued\r\n\r\nbody\r\n").into_bytes());
    add("utf8-subject-raw", format!("{from}Subject: Grüße aus Köln — 日本語\r\n\r\nbody\r\n").into_bytes());
    add("utf8-subject-encoded", format!("{from}Subject: =?UTF-8?B?R3LDvMOfZQ==?=\r\n\r\nbody\r\n").into_bytes());
    add("utf8-from-name", "From: Zoë Ünïcode <bot@example.test>\r\nSubject: name\r\n\r\nbody\r\n".as_bytes().to_vec());
    let mut latin1 = format!("{from}Subject: 8bit\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n").into_bytes();
    latin1.extend_from_slice(b"caf\xe9 na\xefve \xff\xfe\r\n");
    add("8bit-latin1", latin1);
    add("utf8-body", format!("{from}Subject: utf8\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nПривет, мир! 🚀\r\n").into_bytes());
    add("qp-body", format!("{from}Subject: qp\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe soft=\r\nbreak\r\n").into_bytes());
    add("multipart-alternative", format!(
        "{from}Subject: alt\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain part\r\n\
         --b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>html part</p>\r\n--b1--\r\n")
        .into_bytes());
    let attachment: String = (0..40).map(|i| format!("{}\r\n", "QUJD".repeat(19) + &format!("{i:04}"))).collect();
    add("multipart-attachment", format!(
        "{from}To: a@remote.test, b@remote.test\r\nCc: c@remote.test\r\nSubject: report\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\npreamble\r\n\
         --outer\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
         --outer\r\nContent-Type: application/octet-stream; name=\"data.bin\"\r\n\
         Content-Disposition: attachment; filename=\"data.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{attachment}\
         --outer--\r\nepilogue\r\n")
        .into_bytes());
    add("nested-multipart", format!(
        "{from}Subject: nested\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"o\"\r\n\r\n\
         --o\r\nContent-Type: multipart/alternative; boundary=\"i\"\r\n\r\n\
         --i\r\nContent-Type: text/plain\r\n\r\n.dot start in part\r\n--i--\r\n\
         --o\r\nContent-Type: message/rfc822\r\n\r\nFrom: x@y.test\r\nSubject: inner\r\n\r\ninner body\r\n--o--\r\n")
        .into_bytes());
    add("reply-headers", format!("{from}To: a@remote.test\r\nSubject: Re: thread\r\nIn-Reply-To: <p@remote.test>\r\nReferences: <o@remote.test> <p@remote.test>\r\n\r\nreply\r\n").into_bytes());
    add("many-to", format!("{from}To: {}\r\nSubject: many\r\n\r\nbody\r\n", (0..60).map(|i| format!("user{i}@remote.test")).collect::<Vec<_>>().join(",\r\n ")).into_bytes());
    add("received-first", format!("Received: from client by mx.example.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n{from}Subject: trace\r\n\r\nbody\r\n").into_bytes());
    add("lowercase-header-names", b"from: bot@example.test\r\nsubject: lower\r\nmime-version: 1.0\r\n\r\nbody\r\n".to_vec());
    add("duplicate-headers", format!("{from}Subject: one\r\nX-Tag: a\r\nX-Tag: b\r\n\r\nbody\r\n").into_bytes());
    add("binary-ish", {
        let mut m = format!("{from}Subject: bytes\r\n\r\n").into_bytes();
        m.extend((1u8..=255).filter(|b| *b != b'\r' && *b != b'\n'));
        m.extend_from_slice(b"\r\n");
        m
    });
    add("tabs-and-spaces", format!("{from}Subject:\t tabbed   subject\t\r\n\r\n\t a \t b \r\n").into_bytes());
    add("big", format!("{from}Subject: big\r\n\r\n{}", "The quick brown fox jumps over the lazy dog.\r\n".repeat(5000)).into_bytes());
    out
}

#[test]
fn dkimpy_verifies_both_signatures_over_the_corpus() {
    let seed = MasterSeed::from_bytes([42; 32]);
    let domain: Domain = "example.test".parse().unwrap();
    let record = DomainKeys::generate_record(&seed, &domain, 1, &Selectors::default(), 0).unwrap();
    let keys = DomainKeys::open(&seed, &record).unwrap();
    let signer = keys.signer().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus();
    assert!(corpus.len() >= 30, "corpus has only {} messages", corpus.len());
    let mut paths = Vec::new();
    for (name, message) in &corpus {
        let signed = signer.sign(message).unwrap();
        // Nothing but CRLF line endings in what we would relay.
        for (i, &b) in signed.iter().enumerate() {
            assert!(b != b'\n' || (i > 0 && signed[i - 1] == b'\r'), "{name}: bare LF at {i}");
            assert!(b != b'\r' || signed.get(i + 1) == Some(&b'\n'), "{name}: bare CR at {i}");
        }
        let path = dir.path().join(format!("{name}.eml"));
        std::fs::write(&path, &signed).unwrap();
        paths.push(path.display().to_string());
    }
    let plan = json!({
        "dns": {
            "ed1._domainkey.example.test.": keys.ed25519_txt(),
            "rsa1._domainkey.example.test.": keys.rsa_txt(),
        },
        "messages": paths,
    });
    let plan_path = dir.path().join("plan.json");
    std::fs::write(&plan_path, plan.to_string()).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/resources/verify_dkim.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&plan_path)
        .output()
        .expect("spawn python3 (run scripts/test.sh to install the test peers)");
    assert!(
        out.status.success(),
        "verify_dkim.py failed (run scripts/test.sh, which installs dkimpy and pynacl):\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok")).count(), corpus.len(), "{stdout}");
}
