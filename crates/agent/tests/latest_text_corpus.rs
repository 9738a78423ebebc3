//! `latest_text` over a corpus of replies from common clients (Gmail, Outlook,
//! Apple Mail, Thunderbird; English, German, French, Spanish, Japanese):
//! each file of `tests/corpus/latest/` is the text of a reply, a line
//! `===== latest_text =====`, and the expected new part. Checked with LF and
//! CRLF line endings; the corpus must not be empty.
#![allow(clippy::unwrap_used, clippy::panic)]

use agentkeys_agent::latest::latest_text;

const SPLIT: &str = "\n===== latest_text =====\n";

#[test]
fn every_reply_in_the_corpus_gives_its_expected_latest_text() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/latest");
    let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    let mut failures = Vec::new();
    for path in &names {
        let file = std::fs::read_to_string(path).unwrap();
        let (input, expected) = file.split_once(SPLIT).unwrap_or_else(|| panic!("{}: no separator", path.display()));
        let expected = expected.trim_end_matches('\n');
        for (ending, text) in [("LF", input.to_owned()), ("CRLF", input.replace('\n', "\r\n"))] {
            let got = latest_text(&text);
            if got != expected {
                failures.push(format!("{} ({ending}):\n--- got\n{got}\n--- expected\n{expected}", path.display()));
            }
        }
    }
    assert!(names.len() >= 20, "the corpus has only {} replies", names.len());
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), names.len() * 2, failures.join("\n\n"));
}
