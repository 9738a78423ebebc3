//! The crate against the committed test vectors (`testdata/vectors.json`), which
//! an independent implementation (`testdata/gen_vectors.py`) produced.
#![allow(clippy::unwrap_used)]

use agentkeys_audit::{AuditRecord, GENESIS_PREV_HASH, hash_address, hash_from_hex, hash_to_hex, verify};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/vectors.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn record_vectors_encode_and_hash_as_published() {
    let v = vectors();
    let rows = v["records"].as_array().unwrap();
    assert!(rows.len() >= 5, "the vector file must not be empty");
    let mut records = Vec::new();
    let mut prev = GENESIS_PREV_HASH;
    for row in rows {
        let record: AuditRecord = serde_json::from_value(row.clone()).unwrap();
        let seq = record.seq;
        assert_eq!(record.prev_hash, prev, "record {seq}: prev_hash is the previous hash");
        assert_eq!(
            hex(&record.canonical_bytes().unwrap()),
            row["canonical"].as_str().unwrap(),
            "record {seq}: canonical encoding"
        );
        assert_eq!(hash_to_hex(&record.compute_hash().unwrap()), row["hash"].as_str().unwrap(), "record {seq}: hash");
        prev = record.hash;
        records.push(record);
    }
    let chain = verify(&records).unwrap();
    assert_eq!(chain.count, rows.len() as u64);
    assert_eq!(Some(chain.head_hash), hash_from_hex(rows.last().unwrap()["hash"].as_str().unwrap()));
}

#[test]
fn address_vectors() {
    let v = vectors();
    let rows = v["addresses"].as_array().unwrap();
    assert!(!rows.is_empty(), "the vector file must not be empty");
    for row in rows {
        let key = hash_from_hex(row["key"].as_str().unwrap()).unwrap();
        assert_eq!(hash_address(&key, row["address"].as_str().unwrap()), row["hash"].as_str().unwrap(), "{row}");
    }
}
