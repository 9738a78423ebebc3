//! Passkeys (WebAuthn) as the owner's approval gate in the web console
//! (issue 12): registration, sign-in, and the **per-action assertion** that
//! gated console actions require.
//!
//! The ceremonies are `webauthn-rs`'s (a maintained relying-party library: no
//! CBOR or COSE of ours), always with user verification required. What this
//! module adds is the binding: every challenge is issued for one purpose and
//! bound to 32 bytes the caller must present again to finish it: for a gated
//! action the [`ActionHash`], the canonical hash of that exact action request
//! (its kind, the owner and every parameter). An assertion made for one action
//! therefore cannot approve another, and the caller's store hands a challenge
//! out once ([`Console::take_challenge`](https://docs.rs/agentkeys-store)), so
//! it cannot be replayed either.
//!
//! Only [`PasskeyGate::finish_action`] makes a [`PasskeyVerified`], the proof a
//! console handler needs to act; [`OwnerGate`] is what both gates (this and the
//! master key's [`OwnerVerified`](crate::OwnerVerified)) prove: which owner
//! passed, and how.

use std::collections::BTreeMap;

use agentkeys_core::OwnerId;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use webauthn_rs::prelude::{
    CreationChallengeResponse, Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, RequestChallengeResponse, Url, Uuid, Webauthn, WebauthnBuilder,
};

/// How the owner approved an action, as audit records name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// A request signed with the owner's master key (CLI).
    MasterKey,
    /// A WebAuthn assertion bound to the action (console).
    Passkey,
    /// A single-use code (or its scanner-safe link) mailed to the owner's
    /// address for the action (console fallback).
    EmailCode,
}

impl Gate {
    /// `master_key`, `passkey` or `email_code`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MasterKey => "master_key",
            Self::Passkey => "passkey",
            Self::EmailCode => "email_code",
        }
    }
}

/// What an approval gate proves: this owner passed it, this way.
pub trait OwnerGate {
    /// The owner who passed the gate.
    fn owner(&self) -> &OwnerId;
    /// Which gate.
    fn gate(&self) -> Gate;
}

impl OwnerGate for crate::OwnerVerified {
    fn owner(&self) -> &OwnerId {
        crate::OwnerVerified::owner(self)
    }

    fn gate(&self) -> Gate {
        Gate::MasterKey
    }
}

/// The canonical hash of one gated action: SHA-256 over a versioned prefix and
/// the JSON of `{ "kind", "owner", "params" }` with `params` sorted by name
/// (a `BTreeMap`), so the same action always hashes the same and any change of
/// kind, owner or parameter changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionHash(pub [u8; 32]);

/// Prefix of the action hash's input (domain separation).
const ACTION_PREFIX: &[u8] = b"agentkeys-console-action-v1\n";

impl ActionHash {
    /// The hash of action `kind` by `owner` with `params`.
    pub fn of(kind: &str, owner: &OwnerId, params: &BTreeMap<String, String>) -> Self {
        let canonical = serde_json::json!({ "kind": kind, "owner": owner.as_str(), "params": params });
        let mut hasher = Sha256::new();
        hasher.update(ACTION_PREFIX);
        hasher.update(canonical.to_string().as_bytes());
        Self(hasher.finalize().into())
    }
}

/// Why a passkey ceremony failed. Callers answer every variant the same way to
/// the browser ("the passkey check failed"); the variant is for the log.
#[derive(Debug, thiserror::Error)]
pub enum PasskeyError {
    /// The relying party's settings are unusable (origin, RP id).
    #[error("passkey settings: {0}")]
    Config(String),
    /// The challenge was issued for something else (another action, another
    /// purpose, another owner).
    #[error("the challenge was issued for another request")]
    WrongBinding,
    /// The owner has no passkey to ask.
    #[error("no passkey is registered for this owner")]
    NoPasskey,
    /// The browser's answer does not verify (signature, origin, user
    /// verification, counter, unknown credential) or a stored state does not decode.
    #[error("the passkey check failed: {0}")]
    Ceremony(String),
}

fn ceremony(e: impl std::fmt::Display) -> PasskeyError {
    PasskeyError::Ceremony(e.to_string())
}

/// A challenge to store (single use) until the browser answers.
#[derive(Debug, Clone)]
pub struct PendingChallenge {
    /// `register`, `sign-in` or `action`.
    pub purpose: &'static str,
    /// What finishing must present again.
    pub bound_to: [u8; 32],
    /// The ceremony state (JSON), opaque to the store.
    pub state: String,
}

/// A newly registered passkey, to store for its owner.
#[derive(Debug, Clone)]
pub struct NewPasskey {
    /// base64url credential id.
    pub credential_id: String,
    /// The serialized passkey (JSON).
    pub passkey: String,
}

/// A passkey as stored: its id and serialized form.
#[derive(Debug, Clone)]
pub struct StoredPasskey {
    /// base64url credential id.
    pub credential_id: String,
    /// The serialized passkey (JSON).
    pub passkey: String,
}

/// Proof that the owner answered a challenge bound to one exact action with a
/// user-verified assertion of one of their passkeys. Made only by
/// [`PasskeyGate::finish_action`] (and, for sign-in, [`PasskeyGate::finish_sign_in`]).
#[derive(Debug)]
#[must_use = "act with it, then store the passkey's new state"]
pub struct PasskeyVerified {
    owner: OwnerId,
    action: ActionHash,
    credential_id: String,
    updated: Option<String>,
}

impl PasskeyVerified {
    /// The action it approves.
    pub fn action(&self) -> &ActionHash {
        &self.action
    }

    /// The credential that signed.
    pub fn credential_id(&self) -> &str {
        &self.credential_id
    }

    /// The passkey's new serialized state (its counter moved), to store.
    pub fn updated_passkey(&self) -> Option<&str> {
        self.updated.as_deref()
    }
}

impl OwnerGate for PasskeyVerified {
    fn owner(&self) -> &OwnerId {
        &self.owner
    }

    fn gate(&self) -> Gate {
        Gate::Passkey
    }
}

/// The relying party: one per server, for its public origin.
#[derive(Debug)]
pub struct PasskeyGate {
    webauthn: Webauthn,
}

/// The action hash a sign-in challenge is bound to (a sign-in approves no action).
fn sign_in_binding(owner: &OwnerId) -> [u8; 32] {
    ActionHash::of("sign-in", owner, &BTreeMap::new()).0
}

/// The WebAuthn user handle of an owner: a UUID derived from the owner id
/// (stable, so one authenticator does not register the owner twice).
fn user_handle(owner: &OwnerId) -> Uuid {
    let digest = Sha256::digest(owner.as_str().as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

fn decode_passkeys(stored: &[StoredPasskey]) -> Result<Vec<Passkey>, PasskeyError> {
    stored.iter().map(|p| serde_json::from_str::<Passkey>(&p.passkey).map_err(ceremony)).collect()
}

/// base64url (no padding) of a credential id.
pub fn credential_id_text(id: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
}

impl PasskeyGate {
    /// The relying party for `origin` (the server's public URL): the RP id is
    /// its host. `https://`, or `http://localhost` for development and tests
    /// (browsers allow WebAuthn nowhere else).
    pub fn new(origin: &str, rp_name: &str) -> Result<Self, PasskeyError> {
        let url = Url::parse(origin).map_err(|e| PasskeyError::Config(format!("{origin}: {e}")))?;
        let host = url.host_str().ok_or_else(|| PasskeyError::Config(format!("{origin} has no host")))?.to_owned();
        let webauthn = WebauthnBuilder::new(&host, &url)
            .map_err(|e| PasskeyError::Config(e.to_string()))?
            .rp_name(rp_name)
            .build()
            .map_err(|e| PasskeyError::Config(e.to_string()))?;
        Ok(Self { webauthn })
    }

    /// Starts registering a passkey for `owner`, bound to the registration
    /// link's token hash. `existing`: the owner's passkeys (excluded, so an
    /// authenticator is registered once).
    pub fn begin_registration(
        &self,
        owner: &OwnerId,
        link: &[u8; 32],
        existing: &[StoredPasskey],
    ) -> Result<(CreationChallengeResponse, PendingChallenge), PasskeyError> {
        let exclude = decode_passkeys(existing)?.iter().map(|p| p.cred_id().clone()).collect::<Vec<_>>();
        let (options, state) = self
            .webauthn
            .start_passkey_registration(user_handle(owner), owner.as_str(), owner.as_str(), Some(exclude))
            .map_err(ceremony)?;
        let state = serde_json::to_string(&state).map_err(ceremony)?;
        Ok((options, PendingChallenge { purpose: "register", bound_to: *link, state }))
    }

    /// Finishes a registration: the challenge must have been issued for this
    /// link (`bound_to`), and the attestation must verify (user verified).
    pub fn finish_registration(
        &self,
        stored: &PendingChallenge,
        link: &[u8; 32],
        answer: &RegisterPublicKeyCredential,
    ) -> Result<NewPasskey, PasskeyError> {
        if stored.purpose != "register" || !bool::from(stored.bound_to.ct_eq(link)) {
            return Err(PasskeyError::WrongBinding);
        }
        let state: PasskeyRegistration = serde_json::from_str(&stored.state).map_err(ceremony)?;
        let passkey = self.webauthn.finish_passkey_registration(answer, &state).map_err(ceremony)?;
        Ok(NewPasskey {
            credential_id: credential_id_text(passkey.cred_id().as_ref()),
            passkey: serde_json::to_string(&passkey).map_err(ceremony)?,
        })
    }

    fn begin_assertion(
        &self,
        purpose: &'static str,
        bound_to: [u8; 32],
        passkeys: &[StoredPasskey],
    ) -> Result<(RequestChallengeResponse, PendingChallenge), PasskeyError> {
        if passkeys.is_empty() {
            return Err(PasskeyError::NoPasskey);
        }
        let (options, state) = self.webauthn.start_passkey_authentication(&decode_passkeys(passkeys)?).map_err(ceremony)?;
        let state = serde_json::to_string(&state).map_err(ceremony)?;
        Ok((options, PendingChallenge { purpose, bound_to, state }))
    }

    fn finish_assertion(
        &self,
        stored: &PendingChallenge,
        purpose: &str,
        owner: &OwnerId,
        action: ActionHash,
        answer: &PublicKeyCredential,
        passkeys: &[StoredPasskey],
    ) -> Result<PasskeyVerified, PasskeyError> {
        // The challenge must have been issued for this purpose and bound to this action.
        if stored.purpose != purpose || !bool::from(stored.bound_to.ct_eq(&action.0)) {
            return Err(PasskeyError::WrongBinding);
        }
        let state: PasskeyAuthentication = serde_json::from_str(&stored.state).map_err(ceremony)?;
        let result = self.webauthn.finish_passkey_authentication(answer, &state).map_err(ceremony)?;
        if !result.user_verified() {
            return Err(PasskeyError::Ceremony("the authenticator did not verify the user".to_owned()));
        }
        let credential_id = credential_id_text(result.cred_id().as_ref());
        let found = passkeys
            .iter()
            .find(|p| p.credential_id == credential_id)
            .ok_or_else(|| PasskeyError::Ceremony("the credential is not one of the owner's passkeys".to_owned()))?;
        let mut passkey: Passkey = serde_json::from_str(&found.passkey).map_err(ceremony)?;
        let updated = match passkey.update_credential(&result) {
            Some(true) => Some(serde_json::to_string(&passkey).map_err(ceremony)?),
            _ => None,
        };
        Ok(PasskeyVerified { owner: owner.clone(), action, credential_id, updated })
    }

    /// Starts a sign-in of `owner` with any of their passkeys.
    pub fn begin_sign_in(
        &self,
        owner: &OwnerId,
        passkeys: &[StoredPasskey],
    ) -> Result<(RequestChallengeResponse, PendingChallenge), PasskeyError> {
        self.begin_assertion("sign-in", sign_in_binding(owner), passkeys)
    }

    /// Finishes a sign-in of `owner` (the challenge must be a sign-in of theirs).
    pub fn finish_sign_in(
        &self,
        stored: &PendingChallenge,
        owner: &OwnerId,
        answer: &PublicKeyCredential,
        passkeys: &[StoredPasskey],
    ) -> Result<PasskeyVerified, PasskeyError> {
        let binding = sign_in_binding(owner);
        self.finish_assertion(stored, "sign-in", owner, ActionHash(binding), answer, passkeys)
    }

    /// Starts the assertion that approves one action.
    pub fn begin_action(
        &self,
        action: &ActionHash,
        passkeys: &[StoredPasskey],
    ) -> Result<(RequestChallengeResponse, PendingChallenge), PasskeyError> {
        self.begin_assertion("action", action.0, passkeys)
    }

    /// Finishes the assertion for `action` by `owner`: refused unless the
    /// challenge was issued for exactly this action.
    pub fn finish_action(
        &self,
        stored: &PendingChallenge,
        owner: &OwnerId,
        action: &ActionHash,
        answer: &PublicKeyCredential,
        passkeys: &[StoredPasskey],
    ) -> Result<PasskeyVerified, PasskeyError> {
        self.finish_assertion(stored, "action", owner, *action, answer, passkeys)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn owner(n: u8) -> OwnerId {
        format!("0x{:040x}", n).parse().unwrap()
    }

    #[test]
    fn gate_names_are_the_audit_words() {
        assert_eq!(Gate::MasterKey.as_str(), "master_key");
        assert_eq!(Gate::Passkey.as_str(), "passkey");
        assert_eq!(Gate::EmailCode.as_str(), "email_code");
    }

    #[test]
    fn origins_must_be_https_or_localhost() {
        assert!(PasskeyGate::new("https://mail.example.com", "AgentKeys").is_ok());
        assert!(PasskeyGate::new("http://localhost:8787", "AgentKeys").is_ok());
        assert!(PasskeyGate::new("not a url", "AgentKeys").is_err());
    }

    #[test]
    fn an_assertion_for_one_action_cannot_finish_another() {
        let gate = PasskeyGate::new("http://localhost:8787", "AgentKeys").unwrap();
        let a = ActionHash::of("revoke-grant", &owner(1), &BTreeMap::from([("grant".to_owned(), "gr_1".to_owned())]));
        let b = ActionHash::of("revoke-grant", &owner(1), &BTreeMap::from([("grant".to_owned(), "gr_2".to_owned())]));
        let pending = PendingChallenge { purpose: "action", bound_to: a.0, state: "{}".to_owned() };
        let answer: PublicKeyCredential = serde_json::from_value(serde_json::json!({
            "id": "AAAA", "rawId": "AAAA", "type": "public-key",
            "response": { "authenticatorData": "AAAA", "clientDataJSON": "AAAA", "signature": "AAAA", "userHandle": null },
            "extensions": {}
        }))
        .unwrap();
        let refused = gate.finish_action(&pending, &owner(1), &b, &answer, &[]).unwrap_err();
        assert!(matches!(refused, PasskeyError::WrongBinding), "{refused:?}");
        let sign_in = PendingChallenge { purpose: "sign-in", ..pending.clone() };
        assert!(matches!(gate.finish_action(&sign_in, &owner(1), &a, &answer, &[]), Err(PasskeyError::WrongBinding)));
        // The right binding gets as far as the ceremony (and fails there on this junk).
        assert!(matches!(gate.finish_action(&pending, &owner(1), &a, &answer, &[]), Err(PasskeyError::Ceremony(_))));
    }

    proptest! {
        /// Any change of kind, owner, or a parameter's name or value changes the hash;
        /// the parameters' insertion order does not.
        #[test]
        fn the_action_hash_names_the_whole_action(
            kind in "[a-z-]{1,12}", other_kind in "[a-z-]{1,12}",
            o in 1u8..5, other_o in 1u8..5,
            params in prop::collection::btree_map("[a-z]{1,6}", "[ -~]{0,12}", 0..4),
            extra in ("[a-z]{1,6}", "[ -~]{0,12}"),
        ) {
            let base = ActionHash::of(&kind, &owner(o), &params);
            let reordered: BTreeMap<String, String> = params.iter().rev().map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert_eq!(base, ActionHash::of(&kind, &owner(o), &reordered));
            prop_assert_eq!(base == ActionHash::of(&other_kind, &owner(o), &params), kind == other_kind);
            prop_assert_eq!(base == ActionHash::of(&kind, &owner(other_o), &params), o == other_o);
            let mut changed = params.clone();
            let before = changed.insert(extra.0.clone(), extra.1.clone());
            prop_assert_eq!(base == ActionHash::of(&kind, &owner(o), &changed), before.as_deref() == Some(extra.1.as_str()));
        }
    }
}
