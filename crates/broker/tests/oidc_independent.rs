//! OIDC tokens checked by an independent verifier: Python's PyJWT with the
//! `cryptography` backend (`tests/resources/verify_jwt.py`), over the JWKS exactly
//! as served. `scripts/test.sh` installs the modules.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use agentkeys_broker::{
    AuthorityConfig, Clock, OidcClaims, RetiredOidcKey, SoftwareAuthority, SystemClock,
    TokenAuthority, discovery_document, scope,
};
use agentkeys_core::{AgentId, OwnerId};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use serde_json::{Value, json};

fn verify_with_python(jwks: &Value, token: &str, issuer: &str, audience: &str) -> Value {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/resources/verify_jwt.py");
    let plan = json!({"jwks": jwks, "token": token, "issuer": issuer, "audience": audience});
    let out = Command::new("python3")
        .arg(&script)
        .arg(plan.to_string())
        .output()
        .expect("spawn python3 (run scripts/test.sh to install the test peers)");
    assert!(
        out.status.success(),
        "verify_jwt.py failed (run scripts/test.sh, which installs pyjwt and cryptography):\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A token minted through the whole broker path, at the real current time.
async fn minted_token() -> (World, String) {
    let now = SystemClock.now();
    let w = world_at(now, AuthorityConfig::default());
    w.add_grant(grant(INBOX, "read", now + 86_400));
    let verified = w.broker.authenticate(w.key.expose()).await.unwrap();
    let auth = w
        .broker
        .authorize(&verified, &w.inbox(), scope::Read)
        .await
        .unwrap();
    let token = w.broker.mint_oidc(&auth, None).await.unwrap().token;
    (w, token)
}

#[tokio::test]
async fn pyjwt_verifies_a_minted_token() {
    let (w, token) = minted_token().await;
    let jwks = w.authority.jwks(SystemClock.now()).to_json();
    let r = verify_with_python(&jwks, &token, ISSUER, "sts.amazonaws.com");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["checks"], json!(["header", "jwk", "signature", "claims"]));
    assert_eq!(r["header"]["kid"], w.authority.current_kid());
    assert_eq!(r["claims"]["sub"], format!("agentkeys:agent:{AGENT}"));
    assert_eq!(
        r["claims"]["agentkeys_user_wallet"],
        OWNER.trim_start_matches("0x")
    );
    let e = &w.audit.events.lock().unwrap()[0];
    assert_eq!(r["claims"]["jti"], e.jti.as_str());
}

#[tokio::test]
async fn pyjwt_rejects_tampering_and_wrong_expectations() {
    let (w, token) = minted_token().await;
    let jwks = w.authority.jwks(SystemClock.now()).to_json();
    let parts: Vec<&str> = token.split('.').collect();

    // Claims changed (another owner's wallet) under the original signature.
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["agentkeys_user_wallet"] = json!("00000000000000000000000000000000000000bb");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    let r = verify_with_python(&jwks, &forged, ISSUER, "sts.amazonaws.com");
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("InvalidSignature"),
        "{r}"
    );

    // alg=none downgrade.
    let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let r = verify_with_python(
        &jwks,
        &format!("{none_header}.{}.", parts[1]),
        ISSUER,
        "sts.amazonaws.com",
    );
    assert_eq!(r["ok"], false, "{r}");

    // Another seed's JWKS does not verify it.
    let stranger = SoftwareAuthority::new(
        &agentkeys_core::MasterSeed::from_bytes([99; 32]),
        AuthorityConfig::default(),
    )
    .unwrap();
    let mut other_jwks = stranger.jwks(0).to_json();
    other_jwks["keys"][0]["kid"] = json!(w.authority.current_kid());
    let r = verify_with_python(&other_jwks, &token, ISSUER, "sts.amazonaws.com");
    assert_eq!(r["ok"], false, "{r}");

    // Wrong issuer or audience.
    let r = verify_with_python(
        &jwks,
        &token,
        "https://evil.example.com",
        "sts.amazonaws.com",
    );
    assert_eq!(r["ok"], false, "{r}");
    let r = verify_with_python(&jwks, &token, ISSUER, "other-audience");
    assert_eq!(r["ok"], false, "{r}");
}

#[test]
fn pyjwt_verifies_a_token_of_a_retired_key_through_the_rotated_jwks() {
    let now = SystemClock.now();
    let issuer = ISSUER.parse().unwrap();
    let owner: OwnerId = OWNER.parse().unwrap();
    let agent: AgentId = AGENT.parse().unwrap();
    let claims = OidcClaims::builder(&issuer, &agent, &owner, now, now + 300).build();
    let v1 = SoftwareAuthority::new(&seed(), AuthorityConfig::default()).unwrap();
    let old = v1.sign_oidc(&claims).unwrap();
    let v2 = SoftwareAuthority::new(
        &seed(),
        AuthorityConfig {
            oidc_version: 2,
            previous_oidc_versions: vec![RetiredOidcKey {
                version: 1,
                retired_at: now,
            }],
            ..Default::default()
        },
    )
    .unwrap();
    let jwks = v2.jwks(now).to_json();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    let r = verify_with_python(&jwks, &old, ISSUER, "sts.amazonaws.com");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["header"]["kid"], v1.current_kid());
    let r = verify_with_python(
        &jwks,
        &v2.sign_oidc(&claims).unwrap(),
        ISSUER,
        "sts.amazonaws.com",
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["header"]["kid"], v2.current_kid());
}

/// The claim set and headers of a real token match the issue's layout exactly.
#[tokio::test]
async fn aws_shaped_claims_match_the_issue_layout() {
    let (w, token) = minted_token().await;
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(
        header,
        json!({"alg": "ES256", "typ": "JWT", "kid": w.authority.current_kid()})
    );
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let wallet = OWNER.trim_start_matches("0x");
    let (iat, exp, jti) = (
        claims["iat"].clone(),
        claims["exp"].clone(),
        claims["jti"].clone(),
    );
    assert_eq!(exp.as_i64().unwrap() - iat.as_i64().unwrap(), 300);
    assert_eq!(
        claims,
        json!({
            "iss": ISSUER,
            "sub": format!("agentkeys:agent:{AGENT}"),
            "aud": "sts.amazonaws.com",
            "iat": iat,
            "exp": exp,
            "jti": jti,
            "agentkeys_user_wallet": wallet,
            "https://aws.amazon.com/tags": {
                "principal_tags": {"agentkeys_user_wallet": [wallet]},
                "transitive_tag_keys": ["agentkeys_user_wallet"],
            },
        })
    );
    // Discovery points at the JWKS of the same issuer.
    let d = discovery_document(&ISSUER.parse().unwrap());
    assert_eq!(d["issuer"], claims["iss"]);
    assert_eq!(d["jwks_uri"], format!("{ISSUER}/.well-known/jwks.json"));
}
