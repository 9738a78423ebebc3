//! The mint path over in-memory fakes: key checks, grant selection and its
//! errors, TTL clamping, capability scope, fail-closed audit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;

use agentkeys_broker::{KeyRejection, MintError, TokenAuthority, TokenKind, scope};
use agentkeys_core::{Address, AgentKey};
use common::*;

async fn read(
    w: &World,
    inbox: &str,
    ttl: Option<i64>,
) -> Result<agentkeys_broker::Minted, MintError> {
    let verified = w.broker.authenticate(w.key.expose()).await?;
    let auth = w
        .broker
        .authorize(&verified, &inbox.parse::<Address>().unwrap(), scope::Read)
        .await?;
    w.broker.mint_read(&auth, ttl).await
}

fn code(r: Result<agentkeys_broker::Minted, MintError>) -> &'static str {
    r.map(|_| "OK").unwrap_or_else(|e| e.code())
}

#[tokio::test]
async fn read_capability_happy_path() {
    let w = world();
    let g = grant(INBOX, "read", NOW + 86_400);
    let grant_id = g.id.clone();
    w.add_grant(g);
    let m = read(&w, INBOX, None).await.unwrap();
    assert_eq!(
        (m.ttl, m.expires_at, m.clamped, m.kind),
        (300, NOW + 300, false, TokenKind::ReadCapability)
    );
    assert_eq!(m.receipt().seq(), 1);

    let cap = w.authority.verify_capability(&m.token, NOW).unwrap();
    assert_eq!(cap.prefix(), format!("{OWNER}/{INBOX}/"));
    assert_eq!(cap.jti(), m.jti);
    assert!(cap.allows(&format!("{OWNER}/{INBOX}/01J.eml")));
    assert!(!cap.allows(&format!("{OTHER_OWNER}/{FOREIGN_INBOX}/01J.eml")));

    let events = w.audit.events.lock().unwrap();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        (e.kind, e.ttl, e.clamped, e.requested_ttl),
        (TokenKind::ReadCapability, 300, false, None)
    );
    assert_eq!(
        (e.grant_id.clone(), e.jti.as_str(), e.inbox.as_str()),
        (grant_id, m.jti.as_str(), INBOX)
    );
    assert_eq!(
        (e.issued_at, e.expires_at, e.audience.as_deref()),
        (NOW, NOW + 300, None)
    );
    // The audit record never carries the token.
    assert!(!serde_json::to_string(e).unwrap().contains(&m.token));
    // The response shape is exactly {token, expires_at, ttl, clamped}.
    let json = serde_json::to_value(&m).unwrap();
    let mut fields: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
    fields.sort();
    assert_eq!(fields, ["clamped", "expires_at", "token", "ttl"]);
    assert!(!format!("{m:?}").contains(&m.token));
}

#[tokio::test]
async fn clamping_is_reported_not_refused() {
    let w = world();
    w.add_grant(grant(INBOX, "read", NOW + 86_400));
    let m = read(&w, INBOX, Some(86_400)).await.unwrap();
    assert_eq!((m.ttl, m.clamped), (1_800, true));
    let m = read(&w, INBOX, Some(5)).await.unwrap();
    assert_eq!((m.ttl, m.clamped), (60, true));
    let m = read(&w, INBOX, Some(600)).await.unwrap();
    assert_eq!((m.ttl, m.clamped), (600, false));
    assert_eq!(code(read(&w, INBOX, Some(0)).await), "INVALID_TTL");
    let events = w.audit.events.lock().unwrap();
    assert_eq!(
        events.iter().map(|e| e.requested_ttl).collect::<Vec<_>>(),
        [Some(86_400), Some(5), Some(600)]
    );
}

#[tokio::test]
async fn grant_remaining_bounds_the_token() {
    let w = world();
    w.add_grant(grant(INBOX, "read", NOW + 45));
    let m = read(&w, INBOX, None).await.unwrap();
    assert_eq!((m.ttl, m.expires_at, m.clamped), (45, NOW + 45, true));
    assert!(w.authority.verify_capability(&m.token, NOW + 44).is_ok());
    assert!(w.authority.verify_capability(&m.token, NOW + 45).is_err());
}

#[tokio::test]
async fn longest_active_grant_is_used() {
    let w = world();
    w.add_grant(grant(INBOX, "read", NOW + 30));
    let long = grant("*@agents.localhost", "read,send", NOW + 86_400);
    let long_id = long.id.clone();
    w.add_grant(long);
    let m = read(&w, INBOX, None).await.unwrap();
    assert_eq!((m.ttl, m.clamped), (300, false));
    assert_eq!(w.audit.events.lock().unwrap()[0].grant_id, long_id);
}

#[tokio::test]
async fn no_grant_and_grant_expired() {
    let w = world();
    assert_eq!(code(read(&w, INBOX, None).await), "NO_GRANT");

    // A send-only grant does not cover reading.
    w.add_grant(grant(INBOX, "send", NOW + 86_400));
    assert_eq!(code(read(&w, INBOX, None).await), "NO_GRANT");

    // A grant for another inbox of the same owner does not cover this one.
    w.add_grant(grant("other@agents.localhost", "read", NOW + 86_400));
    assert_eq!(code(read(&w, INBOX, None).await), "NO_GRANT");

    // An expired covering grant: GRANT_EXPIRED, at and after the expiry second.
    w.add_grant(grant(INBOX, "read", NOW));
    assert_eq!(code(read(&w, INBOX, None).await), "GRANT_EXPIRED");
    w.add_grant(grant("bot-*", "read", NOW - 1_000));
    assert_eq!(code(read(&w, INBOX, None).await), "GRANT_EXPIRED");

    // A revoked grant is not "expired": it is gone.
    let w = world();
    let mut revoked = grant(INBOX, "read", NOW + 86_400);
    revoked.revoked_at = Some(NOW - 1);
    w.add_grant(revoked);
    assert_eq!(code(read(&w, INBOX, None).await), "NO_GRANT");

    // One expired and one active: the active one wins.
    let w = world();
    w.add_grant(grant(INBOX, "read", NOW - 1));
    w.add_grant(grant(INBOX, "read", NOW + 100));
    assert_eq!(read(&w, INBOX, None).await.unwrap().ttl, 100);

    // The grant expires between authorize and mint: the clamp refuses.
    let w = world();
    w.add_grant(grant(INBOX, "read", NOW + 10));
    let verified = w.broker.authenticate(w.key.expose()).await.unwrap();
    let auth = w
        .broker
        .authorize(&verified, &w.inbox(), scope::Read)
        .await
        .unwrap();
    w.set_now(NOW + 10);
    assert_eq!(
        w.broker.mint_read(&auth, None).await.unwrap_err().code(),
        "GRANT_EXPIRED"
    );
    assert!(w.audit.events.lock().unwrap().is_empty());
}

#[tokio::test]
async fn foreign_and_unknown_inboxes_answer_like_no_grant() {
    let w = world();
    // Even a domain-wide grant (active or expired) does not reach another owner's inbox.
    w.add_grant(grant("*@agents.localhost", "read", NOW + 86_400));
    w.add_grant(grant(FOREIGN_INBOX, "read", NOW - 1));
    let foreign = read(&w, FOREIGN_INBOX, None).await.unwrap_err();
    let unknown = read(&w, "nobody@agents.localhost", None).await.unwrap_err();
    assert_eq!(foreign.code(), "NO_GRANT");
    assert_eq!(foreign.to_string(), unknown.to_string());
    assert_eq!(foreign.code(), unknown.code());

    // A grant recorded with another owner (corrupt data) is ignored too.
    let w = world();
    let mut g = grant(INBOX, "read", NOW + 86_400);
    g.owner = OTHER_OWNER.parse().unwrap();
    w.add_grant(g);
    assert_eq!(code(read(&w, INBOX, None).await), "NO_GRANT");
}

#[tokio::test]
async fn key_checks() {
    let w = world();
    w.add_grant(grant(INBOX, "read", NOW + 86_400));
    let cases: [(&str, KeyRejection); 3] = [
        ("", KeyRejection::Malformed),
        ("ak_short", KeyRejection::Malformed),
        (
            "ak_0000000000000000000000000000000000000000000",
            KeyRejection::NotFound,
        ),
    ];
    for (key, why) in cases {
        match w.broker.authenticate(key).await {
            Err(MintError::InvalidKey(r)) => assert_eq!(r, why, "{key:?}"),
            other => panic!("{key:?}: {other:?}"),
        }
    }
    // Another seed's hash of the same key does not match.
    let stranger = AgentKey::generate(&mut rand::thread_rng());
    assert!(matches!(
        w.broker.authenticate(stranger.expose()).await,
        Err(MintError::InvalidKey(KeyRejection::NotFound))
    ));

    w.store.keys.lock().unwrap()[0].revoked_at = Some(NOW - 1);
    assert!(matches!(
        w.broker.authenticate(w.key.expose()).await,
        Err(MintError::InvalidKey(KeyRejection::Revoked))
    ));
    w.store.keys.lock().unwrap()[0].revoked_at = None;

    let expires = w.store.keys.lock().unwrap()[0].expires_at;
    w.set_now(expires);
    assert!(matches!(
        w.broker.authenticate(w.key.expose()).await,
        Err(MintError::InvalidKey(KeyRejection::Expired))
    ));
    // Every refusal has one code and one text.
    let e = w.broker.authenticate(w.key.expose()).await.unwrap_err();
    assert_eq!(
        (e.code(), e.to_string()),
        (
            "INVALID_KEY",
            MintError::InvalidKey(KeyRejection::NotFound).to_string()
        )
    );
}

#[tokio::test]
async fn key_expiry_bounds_the_token_and_is_rechecked() {
    let w = world();
    w.add_grant(grant(INBOX, "read", NOW + 86_400));
    w.store.keys.lock().unwrap()[0].expires_at = NOW + 90;
    let m = read(&w, INBOX, Some(1_000)).await.unwrap();
    assert_eq!((m.ttl, m.clamped), (90, true));

    let verified = w.broker.authenticate(w.key.expose()).await.unwrap();
    w.set_now(NOW + 90);
    let e = w
        .broker
        .authorize(&verified, &w.inbox(), scope::Read)
        .await
        .unwrap_err();
    assert!(matches!(e, MintError::InvalidKey(KeyRejection::Expired)));
}

#[tokio::test]
async fn audit_failure_means_no_token() {
    let w = world();
    w.add_grant(grant(INBOX, "read", NOW + 86_400));
    w.audit.fail.store(true, Ordering::SeqCst);
    assert_eq!(code(read(&w, INBOX, None).await), "AUDIT_UNAVAILABLE");
    let verified = w.broker.authenticate(w.key.expose()).await.unwrap();
    let auth = w
        .broker
        .authorize(&verified, &w.inbox(), scope::Read)
        .await
        .unwrap();
    assert_eq!(
        w.broker.mint_oidc(&auth, None).await.unwrap_err().code(),
        "AUDIT_UNAVAILABLE"
    );
    assert!(w.audit.events.lock().unwrap().is_empty());
    w.audit.fail.store(false, Ordering::SeqCst);
    assert_eq!(read(&w, INBOX, None).await.unwrap().receipt().seq(), 1);
}

#[tokio::test]
async fn store_failure_is_backend_unavailable() {
    let w = world();
    w.add_grant(grant(INBOX, "read", NOW + 86_400));
    let verified = w.broker.authenticate(w.key.expose()).await.unwrap();
    w.store.fail.store(true, Ordering::SeqCst);
    assert_eq!(
        w.broker
            .authenticate(w.key.expose())
            .await
            .unwrap_err()
            .code(),
        "BACKEND_UNAVAILABLE"
    );
    let e = w
        .broker
        .authorize(&verified, &w.inbox(), scope::Read)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "BACKEND_UNAVAILABLE");
}

#[tokio::test]
async fn scope_markers_select_the_grant_scope() {
    let w = world();
    w.add_grant(grant(INBOX, "send", NOW + 86_400));
    let verified = w.broker.authenticate(w.key.expose()).await.unwrap();
    let send = w
        .broker
        .authorize(&verified, &w.inbox(), scope::Send)
        .await
        .unwrap();
    assert_eq!(send.scope(), agentkeys_core::Scope::Send);
    assert_eq!(send.inbox().as_str(), INBOX);
    assert_eq!(
        w.broker
            .authorize(&verified, &w.inbox(), scope::Admin)
            .await
            .unwrap_err()
            .code(),
        "NO_GRANT"
    );
    assert_eq!(
        w.broker
            .authorize(&verified, &w.inbox(), scope::Read)
            .await
            .unwrap_err()
            .code(),
        "NO_GRANT"
    );
}

#[tokio::test]
async fn oidc_token_via_broker() {
    let w = world();
    w.add_grant(grant(INBOX, "read", NOW + 86_400));
    let verified = w.broker.authenticate(w.key.expose()).await.unwrap();
    let auth = w
        .broker
        .authorize(&verified, &w.inbox(), scope::Read)
        .await
        .unwrap();
    let m = w.broker.mint_oidc(&auth, Some(7_200)).await.unwrap();
    assert_eq!((m.ttl, m.clamped, m.kind), (3_600, true, TokenKind::Oidc));
    let claims: serde_json::Value =
        serde_json::from_slice(&base64_decode(m.token.split('.').nth(1).unwrap())).unwrap();
    assert_eq!(claims["sub"], format!("agentkeys:agent:{AGENT}"));
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["aud"], "sts.amazonaws.com");
    assert_eq!(
        (claims["iat"].as_i64(), claims["exp"].as_i64()),
        (Some(NOW), Some(NOW + 3_600))
    );
    assert_eq!(claims["jti"], m.jti.as_str());
    assert_eq!(
        claims["agentkeys_user_wallet"],
        OWNER.trim_start_matches("0x")
    );
    let e = &w.audit.events.lock().unwrap()[0];
    assert_eq!(
        (e.kind, e.audience.as_deref(), e.jti.as_str()),
        (TokenKind::Oidc, Some("sts.amazonaws.com"), m.jti.as_str())
    );
}

#[tokio::test]
async fn authority_max_lowers_the_ceiling() {
    let w = world_with(agentkeys_broker::AuthorityConfig {
        read_capability_max_ttl: 120,
        oidc_max_ttl: 600,
        ..Default::default()
    });
    w.add_grant(grant(INBOX, "read", NOW + 86_400));
    let m = read(&w, INBOX, None).await.unwrap();
    assert_eq!((m.ttl, m.clamped), (120, true));
    let verified = w.broker.authenticate(w.key.expose()).await.unwrap();
    let auth = w
        .broker
        .authorize(&verified, &w.inbox(), scope::Read)
        .await
        .unwrap();
    assert_eq!(
        w.broker.mint_oidc(&auth, Some(3_600)).await.unwrap().ttl,
        600
    );
    assert_eq!(w.authority.max_token_ttl(TokenKind::Oidc), 600);
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

async fn create(w: &World, address: &str) -> Result<agentkeys_broker::Authorized<scope::Create>, MintError> {
    let verified = w.broker.authenticate(w.key.expose()).await?;
    w.broker.authorize_create(&verified, &address.parse::<Address>().unwrap()).await
}

#[tokio::test]
async fn creating_an_inbox_needs_an_active_create_grant_covering_it() {
    let w = world();
    let code_of = |r: Result<agentkeys_broker::Authorized<scope::Create>, MintError>| r.map(|_| "OK").unwrap_or_else(|e| e.code());
    assert_eq!(code_of(create(&w, "signup-gh@agents.localhost").await), "NO_GRANT");
    // Every other scope, even all of them on the pattern, does not allow creating.
    w.add_grant(grant("signup-*@agents.localhost", "read,send,admin", NOW + 86_400));
    assert_eq!(code_of(create(&w, "signup-gh@agents.localhost").await), "NO_GRANT");
    // An expired create grant: GRANT_EXPIRED.
    w.add_grant(grant("signup-*@agents.localhost", "read,create", NOW));
    assert_eq!(code_of(create(&w, "signup-gh@agents.localhost").await), "GRANT_EXPIRED");
    // An active one covers its pattern only; the proof carries the grant's expiry.
    let active = grant("signup-*@agents.localhost", "read,create", NOW + 600);
    let active_id = active.id.clone();
    w.add_grant(active);
    let auth = create(&w, "signup-gh@agents.localhost").await.unwrap();
    assert_eq!(auth.scope(), agentkeys_core::Scope::Create);
    assert_eq!((auth.grant_id(), auth.grant_expires_at()), (&active_id, NOW + 600));
    assert_eq!(auth.owner().as_str(), OWNER, "the new inbox is the agent's owner's");
    for outside in ["login-gh@agents.localhost", "signup-gh@else.test"] {
        assert_eq!(code_of(create(&w, outside).await), "NO_GRANT", "{outside}");
    }
    // A grant recorded under another owner (corrupt data) never lets the agent create.
    let w = world();
    let mut foreign = grant("*@agents.localhost", "create", NOW + 86_400);
    foreign.owner = OTHER_OWNER.parse().unwrap();
    w.add_grant(foreign);
    assert_eq!(code_of(create(&w, "signup-gh@agents.localhost").await), "NO_GRANT");
    // Every refusal was recorded with the create scope before it was answered.
    let refusals = w.audit.refusals.lock().unwrap();
    assert_eq!(refusals.len(), 1);
    assert_eq!((refusals[0].reason, refusals[0].scope), ("NO_GRANT", Some(agentkeys_core::Scope::Create)));
}

/// `authenticate_for` (one store read, the mint route's path) decides and
/// records exactly what `authenticate` then `authorize` do, case by case: the
/// same answer and the same refusal records.
#[tokio::test]
async fn authenticate_for_is_authenticate_then_authorize() {
    type Setup = fn(&World);
    let cases: [(&str, &str, &str, Setup); 8] = [
        ("granted", "KEY", INBOX, |w| w.add_grant(grant(INBOX, "read", NOW + 86_400))),
        ("no grant", "KEY", INBOX, |_| {}),
        ("expired grant", "KEY", INBOX, |w| w.add_grant(grant(INBOX, "read", NOW))),
        ("foreign inbox", "KEY", FOREIGN_INBOX, |w| w.add_grant(grant("*@agents.localhost", "read", NOW + 86_400))),
        ("unknown inbox", "KEY", "nobody@agents.localhost", |w| w.add_grant(grant("*@agents.localhost", "read", NOW + 86_400))),
        ("malformed key", "ak_short", INBOX, |w| w.add_grant(grant(INBOX, "read", NOW + 86_400))),
        ("unknown key", "ak_0000000000000000000000000000000000000000000", INBOX, |_| {}),
        ("revoked key", "KEY", INBOX, |w| {
            w.add_grant(grant(INBOX, "read", NOW + 86_400));
            w.store.keys.lock().unwrap()[0].revoked_at = Some(NOW - 1);
        }),
    ];
    for (name, key, inbox, setup) in cases {
        let inbox: Address = inbox.parse().unwrap();
        let (two, one) = (world(), world());
        setup(&two);
        setup(&one);
        let key_of = |w: &World| if key == "KEY" { w.key.expose().to_owned() } else { key.to_owned() };
        let stepwise = async {
            let verified = two.broker.authenticate(&key_of(&two)).await?;
            two.broker.authorize(&verified, &inbox, scope::Read).await
        }
        .await;
        let combined = one.broker.authenticate_for(&key_of(&one), &inbox, scope::Read).await;
        let outcome = |r: &Result<agentkeys_broker::Authorized<scope::Read>, MintError>| match r {
            Ok(a) => format!("OK {} {}", a.inbox(), a.expires_at()),
            Err(e) => format!("{} {e}", e.code()),
        };
        assert_eq!(outcome(&combined), outcome(&stepwise), "{name}");
        let reasons = |w: &World| -> Vec<_> {
            w.audit.refusals.lock().unwrap().iter().map(|r| (r.reason, r.key_id.is_some(), r.inbox.clone())).collect()
        };
        assert_eq!(reasons(&one), reasons(&two), "{name}: the same refusal records");
    }
}
