use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, Header};
use serde_json::json;

use super::*;
use crate::issuer::{TokenIssuer, TokenRequest};
use crate::keys::SigningKey;
use crate::scope::{Scope, ScopeSet};

const ISS: &str = "https://keygate.test";
const AUD: &str = "keygate";

struct Fixture {
    key: Arc<SigningKey>,
    verifier: TokenVerifier,
}

fn fixture() -> Fixture {
    let key = Arc::new(SigningKey::generate().unwrap());
    let verifier = TokenVerifier::new(
        [key.verifying_key().clone()],
        VerifierSettings {
            issuer: ISS.into(),
            audience: AUD.into(),
            leeway_secs: 60,
            max_lifetime_secs: 3600,
        },
    );
    Fixture { key, verifier }
}

fn base_claims() -> serde_json::Value {
    let now = unix_now();
    json!({
        "iss": ISS, "aud": AUD, "sub": "runner-1", "acct": "acme",
        "scope": "secrets:read", "exp": now + 300, "iat": now, "nbf": now, "jti": "t1"
    })
}

fn sign(f: &Fixture, claims: &serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(f.key.kid().to_owned());
    jsonwebtoken::encode(&header, claims, f.key.encoding_key()).unwrap()
}

fn with_header(header: serde_json::Value, token: &str) -> String {
    let rest = token.split_once('.').unwrap().1;
    format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header.to_string()))
}

fn reason(f: &Fixture, token: &str) -> &'static str {
    f.verifier.verify(token, None).unwrap_err().reason()
}

#[test]
fn issued_token_verifies() {
    let f = fixture();
    let issuer = TokenIssuer::new(f.key.clone(), ISS, AUD);
    let mut scopes = ScopeSet::default();
    scopes.insert(Scope::TasksWrite);
    let (token, claims) = issuer
        .issue(&TokenRequest {
            subject: "scheduler".into(),
            account: "acme".into(),
            scopes,
            projects: Some(vec!["p1".into()]),
            lifetime_secs: 600,
            certificate_thumbprint: None,
        })
        .unwrap();
    let principal = f.verifier.verify(&token, None).unwrap();
    assert_eq!(principal.subject, "scheduler");
    assert_eq!(principal.account, "acme");
    assert!(principal.has_scope(Scope::TasksWrite));
    assert!(!principal.has_scope(Scope::SecretsRead));
    assert!(principal.may_access_project("p1"));
    assert!(!principal.may_access_project("p2"));
    assert_eq!(principal.expires_at, claims.exp);
}

#[test]
fn expired_token_rejected() {
    let f = fixture();
    let mut c = base_claims();
    c["exp"] = json!(unix_now() - 120);
    c["iat"] = json!(unix_now() - 600);
    c["nbf"] = json!(unix_now() - 600);
    assert_eq!(reason(&f, &sign(&f, &c)), "expired");
}

#[test]
fn expiry_within_leeway_accepted() {
    let f = fixture();
    let mut c = base_claims();
    c["exp"] = json!(unix_now() - 30);
    c["iat"] = json!(unix_now() - 600);
    c["nbf"] = json!(unix_now() - 600);
    assert!(f.verifier.verify(&sign(&f, &c), None).is_ok());
}

#[test]
fn future_nbf_rejected() {
    let f = fixture();
    let mut c = base_claims();
    c["nbf"] = json!(unix_now() + 600);
    assert_eq!(reason(&f, &sign(&f, &c)), "not_yet_valid");
}

#[test]
fn future_iat_rejected() {
    let f = fixture();
    let mut c = base_claims();
    c["iat"] = json!(unix_now() + 600);
    c["exp"] = json!(unix_now() + 900);
    assert_eq!(reason(&f, &sign(&f, &c)), "not_yet_valid");
}

#[test]
fn wrong_issuer_and_audience_rejected() {
    let f = fixture();
    let mut c = base_claims();
    c["iss"] = json!("https://evil.test");
    assert_eq!(reason(&f, &sign(&f, &c)), "invalid_issuer");
    let mut c = base_claims();
    c["aud"] = json!("other");
    assert_eq!(reason(&f, &sign(&f, &c)), "invalid_audience");
}

#[test]
fn missing_claims_rejected() {
    let f = fixture();
    for claim in ["exp", "iss", "aud", "sub", "acct", "iat"] {
        let mut c = base_claims();
        c.as_object_mut().unwrap().remove(claim);
        let err = f.verifier.verify(&sign(&f, &c), None).unwrap_err();
        assert_eq!(err, AuthError::MissingClaim(claim.into()), "claim {claim}");
    }
}

#[test]
fn lifetime_over_maximum_rejected() {
    let f = fixture();
    let mut c = base_claims();
    c["exp"] = json!(unix_now() + 7200);
    match f.verifier.verify(&sign(&f, &c), None) {
        Err(AuthError::LifetimeTooLong {
            lifetime_secs,
            max_secs,
        }) => {
            assert_eq!(lifetime_secs, 7200);
            assert_eq!(max_secs, 3600);
        }
        other => panic!("expected LifetimeTooLong, got {other:?}"),
    }
}

#[test]
fn alg_none_rejected() {
    let f = fixture();
    let token = sign(&f, &base_claims());
    let forged = with_header(json!({"alg": "none", "kid": f.key.kid()}), &token);
    let unsigned = format!("{}.", forged.rsplit_once('.').unwrap().0);
    assert_eq!(reason(&f, &unsigned), "wrong_algorithm");
}

#[test]
fn other_algorithm_rejected() {
    let f = fixture();
    let token = sign(&f, &base_claims());
    let forged = with_header(json!({"alg": "HS256", "kid": f.key.kid()}), &token);
    assert_eq!(reason(&f, &forged), "wrong_algorithm");
}

#[test]
fn key_id_problems_rejected() {
    let f = fixture();
    let token = sign(&f, &base_claims());
    let no_kid = with_header(json!({"alg": "EdDSA"}), &token);
    assert_eq!(reason(&f, &no_kid), "missing_kid");
    let unknown = with_header(json!({"alg": "EdDSA", "kid": "nope"}), &token);
    assert_eq!(reason(&f, &unknown), "unknown_kid");
    let path = with_header(json!({"alg": "EdDSA", "kid": "../../etc/passwd"}), &token);
    assert_eq!(reason(&f, &path), "invalid_kid");
    let number = with_header(json!({"alg": "EdDSA", "kid": 7}), &token);
    assert_eq!(reason(&f, &number), "invalid_kid");
}

#[test]
fn tampered_claims_rejected() {
    let f = fixture();
    let token = sign(&f, &base_claims());
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims = base_claims();
    claims["acct"] = json!("other-account");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    assert_eq!(reason(&f, &forged), "invalid_signature");
}

#[test]
fn token_from_other_key_rejected() {
    let f = fixture();
    let other = fixture();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(f.key.kid().to_owned());
    let token = jsonwebtoken::encode(&header, &base_claims(), other.key.encoding_key()).unwrap();
    assert_eq!(reason(&f, &token), "invalid_signature");
}

#[test]
fn garbage_rejected_as_malformed() {
    let f = fixture();
    for token in ["", "abc", "a.b.c", "e30.e30.", "....."] {
        assert_eq!(reason(&f, token), "malformed", "token {token:?}");
    }
}

#[test]
fn certificate_binding_enforced() {
    let f = fixture();
    let mut c = base_claims();
    c["cnf"] = json!({"x5t#S256": "thumb-a"});
    let token = sign(&f, &c);
    assert!(f.verifier.verify(&token, Some("thumb-a")).is_ok());
    assert_eq!(
        f.verifier.verify(&token, Some("thumb-b")).unwrap_err(),
        AuthError::CertificateMismatch { presented: true }
    );
    assert_eq!(
        f.verifier.verify(&token, None).unwrap_err(),
        AuthError::CertificateMismatch { presented: false }
    );
    let principal = f.verifier.verify(&token, Some("thumb-a")).unwrap();
    assert_eq!(principal.certificate_thumbprint.as_deref(), Some("thumb-a"));
}

#[test]
fn replaced_key_set_applies() {
    let f = fixture();
    let token = sign(&f, &base_claims());
    assert!(f.verifier.verify(&token, None).is_ok());
    let other = SigningKey::generate().unwrap();
    f.verifier.set_keys([other.verifying_key().clone()]);
    assert_eq!(
        reason(&f, &token),
        "unknown_kid",
        "a dropped key no longer verifies"
    );
    f.verifier
        .set_keys([f.key.verifying_key().clone(), other.verifying_key().clone()]);
    assert!(f.verifier.verify(&token, None).is_ok());
    assert_eq!(f.verifier.keys().len(), 2);
}
