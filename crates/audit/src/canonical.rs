//! The canonical encoding that record hashes are computed over.
//!
//! ```text
//! canonical(record) =
//!     lp("agentkeys-audit/v1")          format tag
//!  || u64be(seq)
//!  || i64be(ts)                          two's complement
//!  || lp(actor)                          "operator" | "owner:0x…" | "agent:0x…" | "system"
//!  || lp(operation)
//!  || lp(subject)
//!  || lp(outcome)                        "ok" | "denied" | "failed"
//!  || lp(canonical_json(detail))
//!
//! lp(s)  = u32be(byte length of s) || UTF-8 bytes of s
//! hash   = SHA-256(prev_hash || canonical(record))
//! ```
//!
//! The genesis record (seq 1) has `prev_hash` = 32 zero bytes.
//!
//! `canonical_json` is JSON with object keys sorted by their UTF-8 bytes, no
//! whitespace, strings escaped as `serde_json` escapes them (`\"`, `\\`, `\n`,
//! `\r`, `\t`, `\b`, `\f`, other control characters as `\u00xx`, everything else
//! literal UTF-8), and integer numbers only (a float has no single text form across
//! languages, so it is refused). This is what Python's
//! `json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`
//! prints for the same value; `testdata/gen_vectors.py` relies on that.

use serde_json::Value;

use crate::error::AuditError;

/// The format tag, the first field of every canonical encoding. A new encoding
/// gets a new tag.
pub const FORMAT_TAG: &str = "agentkeys-audit/v1";

/// The canonical JSON text of `value`: sorted keys, no whitespace, integers only.
pub fn canonical_json(value: &Value) -> Result<String, AuditError> {
    let mut out = String::new();
    write_value(&mut out, value)?;
    Ok(out)
}

fn write_value(out: &mut String, value: &Value) -> Result<(), AuditError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                out.push_str(&u.to_string());
            } else {
                return Err(AuditError::NonIntegerNumber);
            }
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Sort here rather than rely on the map's order: serde_json's map keeps
            // insertion order when any crate in the build enables `preserve_order`.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                write_value(out, item)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `u32be(len) || bytes`.
pub(crate) fn push_lp(out: &mut Vec<u8>, s: &str) -> Result<(), AuditError> {
    let len = u32::try_from(s.len()).map_err(|_| AuditError::FieldTooLong { len: s.len() })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_at_every_level_and_no_whitespace() {
        let v = json!({ "b": [ { "z": 1, "a": null } ], "a": { "y": true, "x": false }, "B": -5 });
        assert_eq!(canonical_json(&v).unwrap(), r#"{"B":-5,"a":{"x":false,"y":true},"b":[{"a":null,"z":1}]}"#);
    }

    #[test]
    fn strings_escape_like_serde_json() {
        let s = "quote\" back\\ nl\n cr\r tab\t bs\u{8} ff\u{c} ctl\u{1} del\u{7f} é 😀 /";
        assert_eq!(canonical_json(&json!(s)).unwrap(), serde_json::to_string(s).unwrap());
    }

    #[test]
    fn integers_at_the_edges_floats_refused() {
        assert_eq!(canonical_json(&json!([i64::MIN, u64::MAX, 0])).unwrap(), format!("[{},{},0]", i64::MIN, u64::MAX));
        assert!(matches!(canonical_json(&json!({ "x": [1.5] })), Err(AuditError::NonIntegerNumber)));
    }

    #[test]
    fn same_value_same_text_whatever_the_insertion_order() {
        let a: Value = serde_json::from_str(r#"{"x":1,"y":{"q":2,"p":3}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{ "y": { "p": 3, "q": 2 }, "x": 1 }"#).unwrap();
        assert_eq!(canonical_json(&a).unwrap(), canonical_json(&b).unwrap());
    }
}
