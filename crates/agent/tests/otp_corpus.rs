//! The OTP corpus (`tests/resources/otp/` at the repository root): every
//! `positive/*.eml` must give what its `*.expected.json` says, every
//! `negative/*.eml` must give no candidate at all. Adding a file adds a case;
//! a failure names the file. Each message is checked as stored (CRLF) and with
//! LF line ends.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use agentkeys_agent::message::ParsedMessage;
use agentkeys_agent::otp::{self, OtpKind};
use serde_json::Value;

const OUR_MX: &str = "mx.agents.localhost";

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/resources/otp")
}

fn emls(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(corpus().join(dir))
        .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    v.sort();
    v
}

fn variants(raw: &[u8]) -> [(&'static str, Vec<u8>); 2] {
    let lf: Vec<u8> = String::from_utf8_lossy(raw)
        .replace("\r\n", "\n")
        .into_bytes();
    let lf = if std::str::from_utf8(raw).is_ok() {
        lf
    } else {
        raw.iter().copied().filter(|b| *b != b'\r').collect()
    };
    [("crlf", raw.to_vec()), ("lf", lf)]
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn kind_str(k: OtpKind) -> &'static str {
    match k {
        OtpKind::NumericCode => "numeric_code",
        OtpKind::AlphanumericCode => "alphanumeric_code",
        OtpKind::MagicLink => "magic_link",
    }
}

/// Checks one positive message; returns what is wrong.
fn check_positive(raw: &[u8], expected: &Value) -> Result<(), String> {
    let m = ParsedMessage::parse("01JDCORPUS0000000000000000", raw, OUR_MX)
        .map_err(|e| format!("parse: {e}"))?;
    let otp = otp::extract(&m).ok_or("no candidate")?;
    let mut errors = Vec::new();
    let want_kind = expected["kind"].as_str().unwrap_or_default();
    if kind_str(otp.kind) != want_kind {
        errors.push(format!("kind {} != {want_kind}", kind_str(otp.kind)));
    }
    if let Some(code) = expected.get("code").and_then(Value::as_str)
        && otp.code.as_deref() != Some(code)
    {
        errors.push(format!("code {:?} != {code:?}", otp.code));
    }
    if let Some(link) = expected.get("link").and_then(Value::as_str)
        && otp.link.as_deref() != Some(link)
    {
        errors.push(format!("link {:?} != {link:?}", otp.link));
    }
    let ambiguous = expected["ambiguous"].as_bool().unwrap_or(false);
    if otp.ambiguous != ambiguous {
        errors.push(format!("ambiguous {} != {ambiguous}", otp.ambiguous));
    }
    if let Some(a) = expected.get("authenticated").and_then(Value::as_bool)
        && otp.authenticated != a
    {
        errors.push(format!(
            "authenticated {} != {a} ({})",
            otp.authenticated, m.authentication.basis
        ));
    }
    if let Some(want) = expected.get("candidates").and_then(Value::as_array) {
        let mut want: Vec<&str> = want.iter().filter_map(Value::as_str).collect();
        let mut got: Vec<&str> = otp.candidates.iter().map(|c| c.value()).collect();
        want.sort();
        got.sort();
        if want != got {
            errors.push(format!("candidates {got:?} != {want:?}"));
        }
    }
    if let Some(want) = expected.get("sources").and_then(Value::as_array) {
        let mut want: Vec<String> = want
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        let mut got: Vec<String> = otp.candidates[0]
            .sources
            .iter()
            .map(|s| {
                serde_json::to_value(s)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        want.sort();
        got.sort();
        if want != got {
            errors.push(format!("sources {got:?} != {want:?}"));
        }
    }
    let min = expected
        .get("min_confidence")
        .and_then(Value::as_f64)
        .unwrap_or(if ambiguous { 0.0 } else { 0.6 });
    if otp.confidence < min {
        errors.push(format!("confidence {} < {min}", otp.confidence));
    }
    if ambiguous && otp.confidence > otp::AMBIGUOUS_CONFIDENCE_CAP {
        errors.push(format!("ambiguous but confidence {}", otp.confidence));
    }
    if !(0.0..=1.0).contains(&otp.confidence) {
        errors.push(format!("confidence {} out of 0..1", otp.confidence));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} (candidates: {:?})",
            errors.join("; "),
            otp.candidates
        ))
    }
}

#[test]
fn positive_corpus() {
    let mut failures = Vec::new();
    for path in emls("positive") {
        let expected_path = path.with_extension("expected.json");
        let expected: Value = match std::fs::read_to_string(&expected_path) {
            Ok(s) => {
                serde_json::from_str(&s).unwrap_or_else(|e| panic!("{}: {e}", name(&expected_path)))
            }
            Err(_) => {
                failures.push(format!("{}: missing {}", name(&path), name(&expected_path)));
                continue;
            }
        };
        let raw = std::fs::read(&path).unwrap();
        for (variant, bytes) in variants(&raw) {
            if let Err(e) = check_positive(&bytes, &expected) {
                failures.push(format!("{} [{variant}]: {e}", name(&path)));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn negative_corpus() {
    let mut failures = Vec::new();
    for path in emls("negative") {
        let raw = std::fs::read(&path).unwrap();
        for (variant, bytes) in variants(&raw) {
            match ParsedMessage::parse("01JDCORPUS0000000000000000", &bytes, OUR_MX) {
                Err(e) => failures.push(format!("{} [{variant}]: parse: {e}", name(&path))),
                Ok(m) => {
                    let c = otp::candidates(&m);
                    if !c.is_empty() {
                        failures.push(format!(
                            "{} [{variant}]: expected nothing, got {c:?}",
                            name(&path)
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The corpus is not trivially small and covers what the issue names.
#[test]
fn corpus_is_non_trivial() {
    let positives = emls("positive");
    let negatives = emls("negative");
    assert!(
        positives.len() >= 30,
        "only {} positive mails",
        positives.len()
    );
    assert!(
        negatives.len() >= 15,
        "only {} negative mails",
        negatives.len()
    );

    let expected: Vec<Value> = positives
        .iter()
        .map(|p| {
            serde_json::from_str(
                &std::fs::read_to_string(p.with_extension("expected.json")).unwrap(),
            )
            .unwrap()
        })
        .collect();
    let count = |f: &dyn Fn(&Value) -> bool| expected.iter().filter(|e| f(e)).count();
    assert!(count(&|e| e["kind"] == "magic_link") >= 3, "magic links");
    assert!(
        count(&|e| e["kind"] == "alphanumeric_code") >= 2,
        "alphanumeric codes"
    );
    assert!(count(&|e| e["ambiguous"] == true) >= 1, "an ambiguous case");
    assert!(
        count(&|e| e["authenticated"] == true) >= 2,
        "authenticated cases"
    );

    let raws: Vec<String> = positives
        .iter()
        .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).to_lowercase())
        .collect();
    let has = |needle: &str| raws.iter().filter(|r| r.contains(needle)).count();
    assert!(has("quoted-printable") >= 3, "quoted-printable mails");
    assert!(
        has("content-transfer-encoding: base64") >= 3,
        "base64 mails"
    );
    assert!(
        has("multipart/alternative") >= 3,
        "multipart/alternative mails"
    );
    assert!(
        has("content-disposition: attachment") >= 1,
        "a mail with an attachment"
    );
    assert!(has("<td") >= 1, "an HTML table");
    for charset in ["iso-2022-jp", "gb2312", "iso-8859-1"] {
        assert!(has(charset) >= 1, "a {charset} mail");
    }
    // Non-English: German, French, Spanish, Japanese, Chinese at least.
    let parsed: Vec<ParsedMessage> = positives
        .iter()
        .map(|p| ParsedMessage::parse("x", &std::fs::read(p).unwrap(), OUR_MX).unwrap())
        .collect();
    for word in [
        "Bestätigungscode",
        "code de vérification",
        "código de verificación",
        "認証コード",
        "验证码",
    ] {
        assert!(
            parsed
                .iter()
                .any(|m| m.text.as_deref().unwrap_or_default().contains(word)
                    || m.html_text.as_deref().unwrap_or_default().contains(word)
                    || m.subject.as_deref().unwrap_or_default().contains(word)),
            "no mail with {word:?}"
        );
    }
}
