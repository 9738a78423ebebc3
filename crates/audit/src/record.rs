//! Records in the chain, sealing a new one onto the head, and the receipt that
//! proves an append.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::canonical::{FORMAT_TAG, canonical_json, push_lp};
use crate::error::AuditError;
use crate::event::{Actor, AuditEvent, Outcome};

/// A SHA-256 value: a record's hash or its link to the previous one.
pub type Hash = [u8; 32];

/// The `prev_hash` of the first record.
pub const GENESIS_PREV_HASH: Hash = [0; 32];

/// Lowercase hex of a hash, the form stored and printed.
pub fn hash_to_hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex digits (either case); `None` otherwise.
pub fn hash_from_hex(s: &str) -> Option<Hash> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The end of a chain: the last record's sequence number and hash. The next
/// record gets `seq + 1` and links to `hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// Sequence number of the last record; 0 for an empty chain.
    pub seq: u64,
    /// Hash of the last record; [`GENESIS_PREV_HASH`] for an empty chain.
    pub hash: Hash,
}

impl ChainHead {
    /// The head of an empty chain.
    pub const GENESIS: Self = Self { seq: 0, hash: GENESIS_PREV_HASH };
}

/// One record of the audit log, as stored.
///
/// Fields are public because a record is data read back from storage; whether
/// it is genuine is what [`verify`](crate::verify) decides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1, without gaps.
    pub seq: u64,
    /// When it was appended, Unix seconds.
    pub ts: i64,
    /// Who did it.
    pub actor: Actor,
    /// What was done.
    pub operation: String,
    /// What it was done to.
    pub subject: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Further facts.
    pub detail: serde_json::Value,
    /// Hash of the previous record ([`GENESIS_PREV_HASH`] for seq 1).
    #[serde(with = "hex_hash")]
    pub prev_hash: Hash,
    /// `SHA-256(prev_hash || canonical(record))`.
    #[serde(with = "hex_hash")]
    pub hash: Hash,
}

impl AuditRecord {
    /// The canonical encoding of the hashed fields (everything but the two
    /// hashes), as documented in [`canonical`](crate::canonical).
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, AuditError> {
        let detail = canonical_json(&self.detail)?;
        let actor = self.actor.to_string();
        let mut out = Vec::with_capacity(64 + actor.len() + self.operation.len() + self.subject.len() + detail.len());
        push_lp(&mut out, FORMAT_TAG)?;
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.ts.to_be_bytes());
        push_lp(&mut out, &actor)?;
        push_lp(&mut out, &self.operation)?;
        push_lp(&mut out, &self.subject)?;
        push_lp(&mut out, self.outcome.as_str())?;
        push_lp(&mut out, &detail)?;
        Ok(out)
    }

    /// Recomputes `SHA-256(prev_hash || canonical(record))` from the fields.
    pub fn compute_hash(&self) -> Result<Hash, AuditError> {
        let mut h = Sha256::new();
        h.update(self.prev_hash);
        h.update(self.canonical_bytes()?);
        Ok(h.finalize().into())
    }

    /// The event this record describes.
    pub fn event(&self) -> AuditEvent {
        AuditEvent {
            actor: self.actor.clone(),
            operation: self.operation.clone(),
            subject: self.subject.clone(),
            outcome: self.outcome,
            detail: self.detail.clone(),
        }
    }

    /// The chain head this record makes.
    pub fn head(&self) -> ChainHead {
        ChainHead { seq: self.seq, hash: self.hash }
    }
}

/// A record sealed onto a chain head but not yet known to be stored.
///
/// Storage writes [`record`](Self::record) in the same transaction as the side
/// effect it describes and, only once that transaction has committed, turns the
/// sealed record into an [`AuditReceipt`]. Dropping it instead (the transaction
/// failed) leaves no receipt, so the side effect cannot go on.
#[derive(Debug)]
#[must_use = "a sealed record proves nothing until it is stored and turned into a receipt"]
pub struct SealedRecord {
    record: AuditRecord,
}

impl SealedRecord {
    /// Seals `event` as the record after `head`, at time `ts`: checks the event's
    /// limits, assigns `head.seq + 1`, links to `head.hash` and computes the hash.
    pub fn seal(head: &ChainHead, ts: i64, event: &AuditEvent) -> Result<Self, AuditError> {
        event.validate()?;
        let seq = head.seq.checked_add(1).ok_or(AuditError::SeqExhausted)?;
        let mut record = AuditRecord {
            seq,
            ts,
            actor: event.actor.clone(),
            operation: event.operation.clone(),
            subject: event.subject.clone(),
            outcome: event.outcome,
            detail: event.detail.clone(),
            prev_hash: head.hash,
            hash: [0; 32],
        };
        record.hash = record.compute_hash()?;
        Ok(Self { record })
    }

    /// The record to store.
    pub fn record(&self) -> &AuditRecord {
        &self.record
    }

    /// Call once the record is durably stored (its transaction committed).
    pub fn into_receipt(self) -> AuditReceipt {
        AuditReceipt { seq: self.record.seq, hash: self.record.hash }
    }
}

/// Proof that an audit record was appended. Only [`SealedRecord::into_receipt`]
/// makes one, so an API that takes a receipt cannot be reached without an
/// append first (STYLE.md: proof values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReceipt {
    seq: u64,
    hash: Hash,
}

impl AuditReceipt {
    /// Sequence number of the appended record.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Hash of the appended record.
    pub fn hash(&self) -> &Hash {
        &self.hash
    }
}

/// Serde helpers: a hash as 64 lowercase hex digits.
mod hex_hash {
    use super::{Deserialize, Deserializer, Hash, Serializer, hash_from_hex, hash_to_hex};

    pub(super) fn serialize<S: Serializer>(hash: &Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hash_to_hex(hash))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let text = String::deserialize(d)?;
        hash_from_hex(&text).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hex_round_trips_and_refuses_junk() {
        let h: Hash = std::array::from_fn(|i| (i * 7) as u8);
        assert_eq!(hash_from_hex(&hash_to_hex(&h)), Some(h));
        assert_eq!(hash_from_hex(&hash_to_hex(&h).to_uppercase()), Some(h));
        assert_eq!(hash_from_hex("00"), None);
        assert_eq!(hash_from_hex(&"g".repeat(64)), None);
        assert_eq!(hash_from_hex(&format!("é{}", "0".repeat(62))), None);
    }

    #[test]
    fn seal_links_to_the_head() {
        let e = AuditEvent::ok(Actor::Operator, "key.create", "key_0123456789abcdef").with_detail(json!({ "n": 1 }));
        let first = SealedRecord::seal(&ChainHead::GENESIS, 10, &e).unwrap();
        assert_eq!(first.record().seq, 1);
        assert_eq!(first.record().prev_hash, GENESIS_PREV_HASH);
        assert_eq!(first.record().compute_hash().unwrap(), first.record().hash);
        let second = SealedRecord::seal(&first.record().head(), 11, &e).unwrap();
        assert_eq!(second.record().seq, 2);
        assert_eq!(second.record().prev_hash, first.record().hash);
        assert_ne!(second.record().hash, first.record().hash);
        let receipt = second.into_receipt();
        assert_eq!(receipt.seq(), 2);
    }

    #[test]
    fn seal_refuses_invalid_events_and_a_full_chain() {
        let bad = AuditEvent::ok(Actor::Operator, "Bad Op", "s");
        assert!(SealedRecord::seal(&ChainHead::GENESIS, 0, &bad).is_err());
        let good = AuditEvent::ok(Actor::Operator, "x.y", "s");
        let full = ChainHead { seq: u64::MAX, hash: [1; 32] };
        assert!(matches!(SealedRecord::seal(&full, 0, &good), Err(AuditError::SeqExhausted)));
    }

    #[test]
    fn json_form_uses_hex_hashes() {
        let e = AuditEvent::ok(Actor::System, "x.y", "s");
        let r = SealedRecord::seal(&ChainHead::GENESIS, 5, &e).unwrap().record().clone();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["prev_hash"], "0".repeat(64));
        assert_eq!(v["hash"], hash_to_hex(&r.hash));
        assert_eq!(v["actor"], "system");
        assert_eq!(v["outcome"], "ok");
        let back: AuditRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
