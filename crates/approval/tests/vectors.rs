//! Committed vectors from an independent implementation (testdata/generate.py:
//! Python `cryptography`, a hand-written HChaCha20). Ed25519 is deterministic, so
//! every byte must match.
#![allow(clippy::unwrap_used)]

use agentkeys_approval::codes::CodeHash;
use agentkeys_approval::device_key::collect_message;
use agentkeys_approval::signed_request::{body_hash_hex, canonical_string};
use agentkeys_approval::{
    ConfirmationCode, DeviceKey, EncryptedKeyFile, KdfParams, MasterKey, Nonce, OwnerSignature, PairCode,
    Passphrase, agent_id_from_device_key, sign_request,
};
use agentkeys_core::OwnerId;
use serde_json::Value;

fn vector(name: &str) -> Value {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} missing"))
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn seed(v: &Value) -> [u8; 32] {
    unhex(s(v, "seed_hex")).try_into().unwrap()
}

#[test]
fn owner_signature_golden_vector() {
    let v = vector("owner_signature_v1.json");
    let key = MasterKey::from_seed(&seed(&v));
    assert_eq!(key.public_key().to_base64(), s(&v, "public_key_b64"));
    let owner: OwnerId = s(&v, "owner").parse().unwrap();
    let nonce: Nonce = s(&v, "nonce").parse().unwrap();
    let body = s(&v, "body").as_bytes();
    let ts = v["ts"].as_i64().unwrap();
    assert_eq!(body_hash_hex(body), s(&v, "body_sha256"));
    let canonical = canonical_string(s(&v, "method"), s(&v, "path"), body, ts, &nonce, &owner).unwrap();
    assert_eq!(canonical, s(&v, "canonical"));
    let sig = sign_request(&key, &owner, s(&v, "method"), s(&v, "path"), body, ts, &nonce).unwrap();
    assert_eq!(hex(&sig.signature().to_bytes()), s(&v, "signature_hex"));
    assert_eq!(sig.header_value(), s(&v, "header"));
    assert_eq!(OwnerSignature::parse(s(&v, "header")).unwrap(), sig);
}

#[test]
fn empty_body_hash_is_the_documented_constant() {
    assert_eq!(body_hash_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

#[test]
fn agent_id_and_pairing_vectors() {
    let v = vector("device_key_v1.json");
    let ids = v["agent_ids"].as_array().unwrap();
    assert!(!ids.is_empty(), "the vector file must not be empty");
    let mut last = None;
    for case in ids {
        let key = DeviceKey::from_seed(&seed(case));
        assert_eq!(hex(&key.public_key().to_bytes()), s(case, "public_key_hex"));
        let pk: [u8; 32] = unhex(s(case, "public_key_hex")).try_into().unwrap();
        assert_eq!(agent_id_from_device_key(&pk).as_str(), s(case, "agent_id"));
        assert_eq!(key.agent_id().as_str(), s(case, "agent_id"));
        last = Some(key);
    }
    let device = last.unwrap();
    let code: PairCode = s(&v, "pair_code").parse().unwrap();
    assert_eq!(code.hash(), CodeHash::from_hex(s(&v, "pair_code_hash_hex")).unwrap());
    assert_eq!(ConfirmationCode::derive(&code, &device.public_key()).to_string(), s(&v, "confirmation_code"));
    assert_eq!(collect_message(&code, &device.agent_id()), s(&v, "collect_message").as_bytes());
    assert_eq!(hex(&device.sign_collect(&code).to_bytes()), s(&v, "collect_signature_hex"));
}

/// Hands out fixed bytes: the vector's salt (0..16) then nonce (0..24).
struct Scripted(std::collections::VecDeque<u8>);

impl rand::RngCore for Scripted {
    fn next_u32(&mut self) -> u32 {
        unreachable!("seal only fills byte buffers")
    }
    fn next_u64(&mut self) -> u64 {
        unreachable!("seal only fills byte buffers")
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest {
            *b = self.0.pop_front().unwrap();
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl rand::CryptoRng for Scripted {}

#[test]
fn key_file_vector_unlocks_and_reseals_identically() {
    let v = vector("owner_key_file_v1.json");
    let file_json = v["file"].to_string();
    let passphrase = Passphrase::new(s(&v, "passphrase").to_owned()).unwrap();
    let file = EncryptedKeyFile::from_json(&file_json).unwrap();
    let key = file.unlock(&passphrase).unwrap();
    assert_eq!(key.public_key(), MasterKey::from_seed(&seed(&v)).public_key());

    // Sealing with the same salt and nonce reproduces the file exactly.
    let owner: OwnerId = v["file"]["owner"].as_str().unwrap().parse().unwrap();
    let params = KdfParams::new(64, 2, 1).unwrap();
    let mut rng = Scripted((0u8..16).chain(0u8..24).collect());
    let sealed = EncryptedKeyFile::seal(&key, &owner, &passphrase, params, &mut rng).unwrap();
    let resealed: Value = serde_json::from_str(&sealed.to_json()).unwrap();
    assert_eq!(resealed, v["file"]);

    let wrong = Passphrase::new("correct horse battery stapler".into()).unwrap();
    assert_eq!(file.unlock(&wrong).unwrap_err().code(), "WRONG_PASSPHRASE");
}
