//! The pairing state machine as the server drives it: a store lookup, a transition,
//! the next state stored. Who sees which answer is the point of these tests.
#![allow(clippy::unwrap_used)]

use agentkeys_approval::pairing::{self, PairingError, PairingState};
use agentkeys_approval::{
    ConfirmationCode, DeviceKey, MasterKey, MemoryReplayGuard, Nonce, OwnerVerified, PAIRING_TTL, PairCode,
    sign_request, verify_request,
};
use agentkeys_core::{OwnerId, UnixTime};
use rand::SeedableRng;

const T0: UnixTime = 1_767_225_600;

fn owner_id(n: u8) -> OwnerId {
    format!("0x{n:040x}").parse().unwrap()
}

/// A real proof for owner `n`, made the only way there is: by verifying a signed request.
fn proof(n: u8, now: UnixTime) -> OwnerVerified {
    let key = MasterKey::from_seed(&[n; 32]);
    let nonce = Nonce::generate(&mut rand::rngs::OsRng);
    let header = sign_request(&key, &owner_id(n), "POST", "/v1/pairings/approve", b"", now, &nonce)
        .unwrap()
        .header_value();
    let guard = MemoryReplayGuard::new();
    verify_request(&header, "POST", "/v1/pairings/approve", b"", now, |_| Some(key.public_key()), &guard)
        .unwrap()
}

struct Opened {
    device: DeviceKey,
    code: PairCode,
    confirmation: ConfirmationCode,
    state: PairingState,
}

fn open() -> Opened {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let device = DeviceKey::generate(&mut rng);
    let (code, confirmation, state) = PairingState::open(&mut rng, device.public_key(), T0);
    Opened { device, code, confirmation, state }
}

#[test]
fn happy_path_delivers_once() {
    let o = open();
    assert_eq!(o.state.status(), "pending");
    assert_eq!(o.state.request().code_hash(), &o.code.hash());
    assert_eq!(o.state.request().agent_id(), &o.device.agent_id());
    assert_eq!(o.state.request().expires_at(), T0 + PAIRING_TTL);
    // The agent computes the same 6 digits from its own key.
    assert_eq!(o.confirmation, ConfirmationCode::derive(&o.code, &o.device.public_key()));

    // The owner looks, then approves with the digits the agent shows.
    let owner = proof(1, T0 + 10);
    let view = pairing::view(Some(&o.state), &o.code, &owner, T0 + 10).unwrap();
    assert_eq!(view.agent_id, o.device.agent_id());
    assert_eq!(view.confirmation_code, o.confirmation);
    assert_eq!(view.expires_at, T0 + PAIRING_TTL);

    // Before approval the agent's poll says PENDING.
    let sig = o.device.sign_collect(&o.code);
    let err = pairing::collect(Some(o.state.clone()), &o.code, &sig, T0 + 11).unwrap_err();
    assert_eq!((err.clone(), err.code()), (PairingError::Pending, "PENDING"));

    let approved = pairing::approve(Some(o.state), &o.code, &o.confirmation, &owner, T0 + 12).unwrap();
    assert_eq!(approved.status(), "approved");

    // The agent collects: the proof names the agent and its owner.
    let (collected, consumed) = pairing::collect(Some(approved.clone()), &o.code, &sig, T0 + 13).unwrap();
    assert_eq!(collected.agent_id(), &o.device.agent_id());
    assert_eq!(collected.owner(), &owner_id(1));
    assert_eq!(collected.device_key(), &o.device.public_key());
    assert_eq!(consumed.status(), "consumed");

    // Second collection: ALREADY_CONSUMED for the device.
    let err = pairing::collect(Some(consumed.clone()), &o.code, &sig, T0 + 14).unwrap_err();
    assert_eq!(err.code(), "ALREADY_CONSUMED");
    // Second approve by the same owner: ALREADY_CONSUMED, before and after collection.
    let again = proof(1, T0 + 14);
    for state in [approved, consumed] {
        let err = pairing::approve(Some(state), &o.code, &o.confirmation, &again, T0 + 14).unwrap_err();
        assert_eq!(err.code(), "ALREADY_CONSUMED");
    }
}

#[test]
fn unknown_and_consumed_look_the_same_to_everyone_else() {
    let o = open();
    let owner = proof(1, T0);
    let approved = o.state.clone().approve(&o.code, &o.confirmation, &owner, T0).unwrap();
    let sig = o.device.sign_collect(&o.code);
    let (_, consumed) = approved.clone().collect(&o.code, &sig, T0 + 1).unwrap();

    // Another owner probing: unknown, approved-by-someone-else and consumed are all NOT_FOUND.
    let stranger = proof(2, T0 + 2);
    let unknown = pairing::approve(None, &o.code, &o.confirmation, &stranger, T0 + 2).unwrap_err();
    for state in [approved.clone(), consumed.clone()] {
        let err =
            pairing::approve(Some(state.clone()), &o.code, &o.confirmation, &stranger, T0 + 2).unwrap_err();
        assert_eq!(err, unknown);
        assert_eq!(pairing::view(Some(&state), &o.code, &stranger, T0 + 2).unwrap_err(), unknown);
        // Even once it has expired.
        let expired = state.expire_if_due(T0 + 10 * PAIRING_TTL);
        let err = pairing::approve(Some(expired), &o.code, &o.confirmation, &stranger, T0 + 10 * PAIRING_TTL);
        assert_eq!(err.unwrap_err(), unknown);
    }
    assert_eq!(unknown.code(), "NOT_FOUND");

    // A poller without the device key: NOT_FOUND whatever the state.
    let thief = DeviceKey::from_seed(&[99; 32]);
    let forged = thief.sign_collect(&o.code);
    for state in [o.state.clone(), approved, consumed] {
        let err = pairing::collect(Some(state), &o.code, &forged, T0 + 3).unwrap_err();
        assert_eq!(err, PairingError::NotFound);
    }
    assert_eq!(pairing::collect(None, &o.code, &sig, T0 + 3).unwrap_err(), PairingError::NotFound);
}

#[test]
fn expiry_after_the_pairing_ttl() {
    let o = open();
    let owner = proof(1, T0 + PAIRING_TTL);
    // One second before PAIRING_TTL it can be approved; at PAIRING_TTL it is EXPIRED.
    assert!(o.state.clone().approve(&o.code, &o.confirmation, &owner, T0 + PAIRING_TTL - 1).is_ok());
    let err = o.state.clone().approve(&o.code, &o.confirmation, &owner, T0 + PAIRING_TTL).unwrap_err();
    assert_eq!((err.clone(), err.code()), (PairingError::Expired, "EXPIRED"));
    assert_eq!(o.state.view(&o.code, &owner, T0 + PAIRING_TTL).unwrap_err(), PairingError::Expired);
    let sig = o.device.sign_collect(&o.code);
    assert_eq!(o.state.clone().collect(&o.code, &sig, T0 + PAIRING_TTL).unwrap_err(), PairingError::Expired);

    // Approved at T0 + 30: the agent has until T0 + 30 + PAIRING_TTL to collect.
    let approved = o.state.clone().approve(&o.code, &o.confirmation, &owner, T0 + 30).unwrap();
    let end = T0 + 30 + PAIRING_TTL;
    assert_eq!(approved.deadline(), Some(end));
    assert!(approved.clone().collect(&o.code, &sig, end - 1).is_ok());
    assert_eq!(approved.clone().collect(&o.code, &sig, end).unwrap_err(), PairingError::Expired);
    // The approving owner sees EXPIRED for their own stale approval.
    let expired = approved.expire_if_due(end);
    assert_eq!(expired.status(), "expired");
    assert_eq!(expired.deadline(), None);
    let err = expired.approve(&o.code, &o.confirmation, &proof(1, end), end).unwrap_err();
    assert_eq!(err, PairingError::Expired);

    // Terminal states do not expire further.
    let state = o.state.expire_if_due(T0 + PAIRING_TTL);
    assert_eq!(state.status(), "expired");
    assert_eq!(state.clone().expire_if_due(T0 + 1_000), state);
}

#[test]
fn approval_needs_the_agents_digits() {
    let o = open();
    let owner = proof(1, T0);
    let wrong = ConfirmationCode::derive(&o.code, &DeviceKey::from_seed(&[3; 32]).public_key());
    assert_ne!(wrong, o.confirmation);
    let err = o.state.clone().approve(&o.code, &wrong, &owner, T0).unwrap_err();
    assert_eq!((err.clone(), err.code()), (PairingError::ConfirmationMismatch, "CONFIRMATION_MISMATCH"));
    // Still pending afterwards: the stored state did not change.
    assert!(o.state.approve(&o.code, &o.confirmation, &owner, T0).is_ok());
}

#[test]
fn a_state_found_under_another_code_is_not_found() {
    let o = open();
    let other: PairCode =
        if o.code.as_str() == "ABCD-EFGH" { "ABCD-EFGJ" } else { "ABCD-EFGH" }.parse().unwrap();
    let owner = proof(1, T0);
    let sig = o.device.sign_collect(&other);
    assert_eq!(o.state.view(&other, &owner, T0).unwrap_err(), PairingError::NotFound);
    assert_eq!(
        o.state.clone().approve(&other, &o.confirmation, &owner, T0).unwrap_err(),
        PairingError::NotFound
    );
    assert_eq!(o.state.collect(&other, &sig, T0).unwrap_err(), PairingError::NotFound);
}

#[test]
fn a_restored_request_is_the_same_request() {
    let o = open();
    let r = o.state.request();
    let restored =
        agentkeys_approval::PairingRequest::restore(*r.code_hash(), *r.device_key(), r.opened_at());
    assert_eq!(&restored, r);
}

/// `agent pair --owner`: a request addressed to one owner is that owner's
/// alone. Any other owner who types its pair code and digits gets the same
/// `NOT_FOUND` as for an unknown code, and an address no owner has (the
/// server keeps the address then) can be approved by nobody.
#[test]
fn an_addressed_request_is_its_owners_alone() {
    let o = open();
    let (mine, other) = (proof(1, T0 + 5), proof(2, T0 + 5));
    let addressed = o.state.clone().with_addressee(Some(owner_id(1).as_str().to_owned()));
    assert_eq!(addressed.request().addressed_to(), Some(owner_id(1).as_str()));
    assert_eq!(pairing::view(Some(&addressed), &o.code, &other, T0 + 5).unwrap_err(), PairingError::NotFound);
    let refused = pairing::approve(Some(addressed.clone()), &o.code, &o.confirmation, &other, T0 + 5).unwrap_err();
    assert_eq!(refused, PairingError::NotFound);
    // Not even a mismatch of the digits is revealed.
    let wrong = ConfirmationCode::derive(&PairCode::generate(&mut rand::rngs::OsRng), &o.device.public_key());
    assert_eq!(pairing::approve(Some(addressed.clone()), &o.code, &wrong, &other, T0 + 5).unwrap_err(), PairingError::NotFound);
    assert!(pairing::view(Some(&addressed), &o.code, &mine, T0 + 5).is_ok());
    let approved = pairing::approve(Some(addressed), &o.code, &o.confirmation, &mine, T0 + 6).unwrap();
    assert_eq!(approved.status(), "approved");

    let nobodys = o.state.with_addressee(Some("nobody@example.com".to_owned()));
    for who in [&mine, &other] {
        let refused = pairing::approve(Some(nobodys.clone()), &o.code, &o.confirmation, who, T0 + 5).unwrap_err();
        assert_eq!(refused, PairingError::NotFound);
    }
}

/// Deny: the owner refuses a request outright. It is terminal: the agent's
/// poll answers `DENIED` (so it stops at once), and no owner can view,
/// approve or deny it again (`NOT_FOUND`, the denier included). Another
/// owner cannot deny a request addressed to someone else, nor one that is
/// already approved or expired.
#[test]
fn a_denied_request_is_dead_for_everyone() {
    let o = open();
    let (mine, other) = (proof(1, T0 + 5), proof(2, T0 + 5));
    let addressed = o.state.clone().with_addressee(Some(owner_id(1).as_str().to_owned()));
    assert_eq!(addressed.clone().deny(&o.code.hash(), &other, T0 + 5).unwrap_err(), PairingError::NotFound);
    let wrong = PairCode::generate(&mut rand::rngs::OsRng).hash();
    assert_eq!(addressed.clone().deny(&wrong, &mine, T0 + 5).unwrap_err(), PairingError::NotFound);
    assert_eq!(pairing::deny(None, &o.code.hash(), &mine, T0 + 5).unwrap_err(), PairingError::NotFound);

    let denied = pairing::deny(Some(addressed), &o.code.hash(), &mine, T0 + 5).unwrap();
    assert_eq!(denied.status(), "denied");
    assert_eq!(denied.deadline(), None);
    assert!(matches!(&denied, PairingState::Denied { owner, .. } if owner == mine.owner()));

    let sig = o.device.sign_collect(&o.code);
    let err = pairing::collect(Some(denied.clone()), &o.code, &sig, T0 + 6).unwrap_err();
    assert_eq!((err.clone(), err.code()), (PairingError::Denied, "DENIED"));
    assert_eq!(err.to_string(), "the owner denied this pairing");
    // Long after: still denied, not expired.
    let late = T0 + 3 * PAIRING_TTL;
    assert_eq!(pairing::collect(Some(denied.clone()), &o.code, &sig, late).unwrap_err(), PairingError::Denied);
    assert_eq!(pairing::view(Some(&denied), &o.code, &mine, T0 + 6).unwrap_err(), PairingError::NotFound);
    let again = pairing::approve(Some(denied.clone()), &o.code, &o.confirmation, &mine, T0 + 6).unwrap_err();
    assert_eq!(again, PairingError::NotFound);
    assert_eq!(denied.deny(&o.code.hash(), &mine, T0 + 6).unwrap_err(), PairingError::NotFound);

    // Only a pending request can be denied.
    let approved = pairing::approve(Some(o.state.clone()), &o.code, &o.confirmation, &mine, T0 + 5).unwrap();
    assert_eq!(approved.deny(&o.code.hash(), &mine, T0 + 6).unwrap_err(), PairingError::AlreadyConsumed);
    assert_eq!(o.state.deny(&o.code.hash(), &mine, T0 + PAIRING_TTL).unwrap_err(), PairingError::Expired);
}
