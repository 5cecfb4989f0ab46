use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
    RSA_PKCS1_SHA256,
};
use serde_json::{json, Value};

use super::*;

/// A 2048-bit RSA key made for these tests only, with
/// `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`; ring cannot generate RSA keys.
const RSA_TEST_KEY: &str = include_str!("../testdata/rsa-2048-test.pem");

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "keygate-api";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A private key of each supported type, to sign test tokens.
enum TestKey {
    Ed25519(Ed25519KeyPair),
    P256(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl TestKey {
    fn ed25519() -> TestKey {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        TestKey::Ed25519(Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap())
    }

    fn p256() -> TestKey {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        TestKey::P256(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).unwrap(),
        )
    }

    fn rsa() -> TestKey {
        let der = crate::pem::decode("PRIVATE KEY", RSA_TEST_KEY).unwrap();
        TestKey::Rsa(RsaKeyPair::from_pkcs8(&der).unwrap())
    }

    fn alg(&self) -> &'static str {
        match self {
            TestKey::Ed25519(_) => "EdDSA",
            TestKey::P256(_) => "ES256",
            TestKey::Rsa(_) => "RS256",
        }
    }

    /// Returns the public key as a JWK without `alg`.
    fn jwk(&self, kid: &str) -> Value {
        match self {
            TestKey::Ed25519(pair) => json!({
                "kty": "OKP", "crv": "Ed25519", "kid": kid,
                "x": b64(pair.public_key().as_ref()),
            }),
            TestKey::P256(pair) => {
                let point = pair.public_key().as_ref();
                json!({
                    "kty": "EC", "crv": "P-256", "kid": kid,
                    "x": b64(&point[1..33]), "y": b64(&point[33..65]),
                })
            }
            TestKey::Rsa(pair) => {
                let components = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
                json!({
                    "kty": "RSA", "kid": kid,
                    "n": b64(&components.n), "e": b64(&components.e),
                })
            }
        }
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let signature = match self {
            TestKey::Ed25519(pair) => pair.sign(input.as_bytes()).as_ref().to_vec(),
            TestKey::P256(pair) => pair.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            TestKey::Rsa(pair) => {
                let mut out = vec![0u8; pair.public().modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut out)
                    .unwrap();
                out
            }
        };
        format!("{input}.{}", b64(&signature))
    }

    /// Signs `claims` with this key's own algorithm under `kid`.
    fn token(&self, kid: &str, claims: &Value) -> String {
        self.sign(
            &json!({"alg": self.alg(), "kid": kid, "typ": "JWT"}),
            claims,
        )
    }
}

fn claims() -> Value {
    let now = unix_now();
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "etl-service",
        "exp": now + 300, "iat": now, "nbf": now, "scope": "agents:admin tasks:write",
    })
}

fn with(mut value: Value, key: &str, replacement: Value) -> Value {
    value[key] = replacement;
    value
}

fn without(mut value: Value, key: &str) -> Value {
    value.as_object_mut().unwrap().remove(key);
    value
}

fn settings() -> ExternalIssuerSettings {
    let mut allowed_scopes = ScopeSet::default();
    allowed_scopes.insert(Scope::AgentsAdmin);
    allowed_scopes.insert(Scope::SecretsRead);
    ExternalIssuerSettings {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        account: "globex".into(),
        allowed_scopes,
        leeway_secs: 0,
        max_lifetime_secs: 3600,
        refetch_cooldown: Duration::from_secs(60),
    }
}

fn jwks(keys: &[Value]) -> Vec<u8> {
    json!({ "keys": keys }).to_string().into_bytes()
}

/// Builds a verifier with `keys` installed, each under its own kid.
fn verifier_with(keys: &[(&TestKey, &str)]) -> ExternalVerifier {
    let verifier = ExternalVerifier::new(settings());
    let jwks_doc: Vec<Value> = keys.iter().map(|(k, kid)| k.jwk(kid)).collect();
    verifier.install(ExternalKeySet::parse(&jwks(&jwks_doc)).unwrap());
    verifier
}

#[test]
fn key_types_imply_algorithm() {
    let set = ExternalKeySet::parse(&jwks(&[
        TestKey::ed25519().jwk("ed"),
        TestKey::p256().jwk("ec"),
        TestKey::rsa().jwk("rsa"),
    ]))
    .unwrap();
    assert_eq!(set.key_ids(), ["ec", "ed", "rsa"]);
    assert!(set.skipped().is_empty(), "{:?}", set.skipped());
    assert_eq!(set.keys["ed"].algorithm, Algorithm::EdDSA);
    assert_eq!(set.keys["ec"].algorithm, Algorithm::ES256);
    assert_eq!(set.keys["rsa"].algorithm, Algorithm::RS256);
}

#[test]
fn declared_algorithm_must_fit_key_type() {
    let set = ExternalKeySet::parse(&jwks(&[
        with(TestKey::ed25519().jwk("ed-ok"), "alg", json!("EdDSA")),
        with(TestKey::ed25519().jwk("ed-es256"), "alg", json!("ES256")),
        with(TestKey::p256().jwk("ec-rs256"), "alg", json!("RS256")),
        with(TestKey::p256().jwk("ec-hs256"), "alg", json!("HS256")),
        with(TestKey::rsa().jwk("rsa-rs384"), "alg", json!("RS384")),
        with(TestKey::rsa().jwk("rsa-ok"), "alg", json!("RS256")),
    ]))
    .unwrap();
    assert_eq!(set.key_ids(), ["ed-ok", "rsa-ok"]);
    let skipped: Vec<&str> = set
        .skipped()
        .iter()
        .map(|s| s.kid.as_deref().unwrap())
        .collect();
    assert_eq!(skipped, ["ed-es256", "ec-rs256", "ec-hs256", "rsa-rs384"]);
    assert!(
        set.skipped()[0].reason.contains("\"ES256\""),
        "{}",
        set.skipped()[0]
    );
}

#[test]
fn unusable_keys_skipped_with_reason() {
    let good = TestKey::ed25519().jwk("good");
    let short_rsa = json!({"kty": "RSA", "kid": "rsa-1024", "n": b64(&[0xc5; 128]), "e": "AQAB"});
    let cases = [
        (
            with(TestKey::ed25519().jwk("enc-key"), "use", json!("enc")),
            "`use`",
        ),
        (without(TestKey::ed25519().jwk("x"), "kid"), "no `kid`"),
        (TestKey::ed25519().jwk("../etc/passwd"), "`kid`"),
        (TestKey::ed25519().jwk("good"), "repeats"),
        (short_rsa, "1024 bits"),
        (
            with(TestKey::p256().jwk("ec-short"), "x", json!(b64(&[1; 31]))),
            "31 bytes",
        ),
        (
            with(TestKey::p256().jwk("ec-no-y"), "y", Value::Null),
            "no `y`",
        ),
        (
            json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}),
            "not supported",
        ),
        (
            json!({"kty": "EC", "crv": "P-384", "kid": "p384"}),
            "not supported",
        ),
        (json!({"kid": "no-kty"}), "not a valid JWK"),
        (
            with(TestKey::ed25519().jwk("bad-x"), "x", json!("not base64!")),
            "base64url",
        ),
    ];
    let mut document = vec![good];
    document.extend(cases.iter().map(|(jwk, _)| jwk.clone()));
    let set = ExternalKeySet::parse(&jwks(&document)).unwrap();
    assert_eq!(set.key_ids(), ["good"]);
    assert_eq!(set.skipped().len(), cases.len());
    for ((jwk, expected), skipped) in cases.iter().zip(set.skipped()) {
        assert!(
            skipped.reason.contains(expected),
            "JWK {jwk}: expected a reason containing {expected:?}, got {skipped}"
        );
    }
}

#[test]
fn invalid_documents_rejected() {
    assert!(matches!(
        ExternalKeySet::parse(b"<html>"),
        Err(JwksError::NotJwkSet(_))
    ));
    assert!(matches!(
        ExternalKeySet::parse(br#"{"keys": {}}"#),
        Err(JwksError::NotJwkSet(_))
    ));
    assert_eq!(
        ExternalKeySet::parse(br#"{"keys": []}"#).unwrap_err(),
        JwksError::NoUsableKey { skipped: vec![] }
    );
    let only_bad = jwks(&[with(TestKey::ed25519().jwk("k"), "use", json!("enc"))]);
    let err = ExternalKeySet::parse(&only_bad).unwrap_err();
    assert!(err.to_string().contains("key \"k\""), "{err}");
    let many: Vec<Value> = (0..=MAX_KEYS_PER_SET)
        .map(|i| TestKey::ed25519().jwk(&format!("k{i}")))
        .collect();
    assert_eq!(
        ExternalKeySet::parse(&jwks(&many)).unwrap_err(),
        JwksError::TooManyKeys {
            count: MAX_KEYS_PER_SET + 1
        }
    );
}

#[test]
fn each_algorithm_verifies() {
    let keys = [
        (TestKey::ed25519(), "ed"),
        (TestKey::p256(), "ec"),
        (TestKey::rsa(), "rsa"),
    ];
    let refs: Vec<(&TestKey, &str)> = keys.iter().map(|(k, kid)| (k, *kid)).collect();
    let verifier = verifier_with(&refs);
    for (key, kid) in &keys {
        let principal = verifier.verify(&key.token(kid, &claims()), None);
        let principal = principal.unwrap_or_else(|e| panic!("{kid}: {e}"));
        assert_eq!(principal.subject, "etl-service", "{kid}");
        assert_eq!(principal.account, "globex", "{kid}");
        assert_eq!(principal.projects, None, "{kid}");
    }
}

#[test]
fn principal_takes_configured_account() {
    let key = TestKey::ed25519();
    let verifier = verifier_with(&[(&key, "k1")]);
    let forged_account = with(claims(), "acct", json!("acme"));
    let principal = verifier
        .verify(&key.token("k1", &forged_account), None)
        .unwrap();
    assert_eq!(principal.account, "globex");
}

#[test]
fn scopes_outside_allowed_dropped() {
    let key = TestKey::ed25519();
    let mut settings = settings();
    settings.allowed_scopes.insert(Scope::AgentSession);
    let verifier = ExternalVerifier::new(settings);
    verifier.install(ExternalKeySet::parse(&jwks(&[key.jwk("k1")])).unwrap());

    let cases = [
        (json!({"scope": "agents:admin tasks:write"}), "agents:admin"),
        (
            json!({"scp": ["secrets:read", "secrets:admin"]}),
            "secrets:read",
        ),
        (json!({"scp": "secrets:read unknown:thing"}), "secrets:read"),
        (
            json!({"scope": "agents:admin", "scp": ["secrets:read"]}),
            "agents:admin secrets:read",
        ),
        (json!({"scope": "agent:session tasks:write"}), ""),
        (json!({}), ""),
    ];
    for (scope_claims, expected) in cases {
        let mut token_claims = without(claims(), "scope");
        for (name, value) in scope_claims.as_object().unwrap() {
            token_claims[name] = value.clone();
        }
        let principal = verifier
            .verify(&key.token("k1", &token_claims), None)
            .unwrap();
        assert_eq!(
            principal.scopes.to_claim(),
            expected,
            "claims {scope_claims}"
        );
    }
}

#[test]
fn audience_string_or_array() {
    let key = TestKey::ed25519();
    let verifier = verifier_with(&[(&key, "k1")]);
    let listed = with(claims(), "aud", json!(["other-api", AUDIENCE]));
    assert!(verifier.verify(&key.token("k1", &listed), None).is_ok());
    let unlisted = with(claims(), "aud", json!(["other-api"]));
    assert_eq!(
        verifier
            .verify(&key.token("k1", &unlisted), None)
            .unwrap_err(),
        AuthError::InvalidAudience
    );
}

#[test]
fn claims_checked() {
    let key = TestKey::ed25519();
    let verifier = verifier_with(&[(&key, "k1")]);
    let now = unix_now();
    let cases = [
        (
            "wrong audience",
            with(claims(), "aud", json!("other")),
            AuthError::InvalidAudience,
        ),
        (
            "wrong issuer",
            with(claims(), "iss", json!("https://evil.test")),
            AuthError::InvalidIssuer,
        ),
        (
            "missing sub",
            without(claims(), "sub"),
            AuthError::MissingClaim("sub".into()),
        ),
        (
            "missing exp",
            without(claims(), "exp"),
            AuthError::MissingClaim("exp".into()),
        ),
        (
            "missing aud",
            without(claims(), "aud"),
            AuthError::MissingClaim("aud".into()),
        ),
        (
            "expired",
            with(
                with(claims(), "exp", json!(now - 60)),
                "iat",
                json!(now - 120),
            ),
            AuthError::Expired,
        ),
        (
            "nbf in the future",
            with(claims(), "nbf", json!(now + 600)),
            AuthError::NotYetValid,
        ),
        (
            "iat in the future",
            with(
                with(claims(), "iat", json!(now + 600)),
                "exp",
                json!(now + 900),
            ),
            AuthError::NotYetValid,
        ),
        (
            "lifetime too long",
            with(claims(), "exp", json!(now + 7200)),
            AuthError::LifetimeTooLong {
                lifetime_secs: 7200,
                max_secs: 3600,
            },
        ),
        (
            "bound to another certificate",
            with(claims(), "cnf", json!({"x5t#S256": "c3RvbGVu"})),
            AuthError::CertificateMismatch { presented: false },
        ),
    ];
    for (name, token_claims, expected) in cases {
        let result = verifier.verify(&key.token("k1", &token_claims), None);
        assert_eq!(result.unwrap_err(), expected, "{name}");
    }
}

#[test]
fn optional_claims_may_be_absent() {
    let key = TestKey::ed25519();
    let verifier = verifier_with(&[(&key, "k1")]);
    let now = unix_now();
    // Without `iat` the lifetime cannot be known, so it is not checked.
    let long_without_iat = with(
        without(without(claims(), "iat"), "nbf"),
        "exp",
        json!(now + 7200),
    );
    let principal = verifier
        .verify(&key.token("k1", &long_without_iat), None)
        .unwrap();
    assert_eq!(principal.issued_at, 0);
    let fractional_exp = with(claims(), "exp", json!(now as f64 + 300.5));
    assert!(verifier
        .verify(&key.token("k1", &fractional_exp), None)
        .is_ok());
}

#[test]
fn certificate_binding_enforced() {
    let key = TestKey::ed25519();
    let verifier = verifier_with(&[(&key, "k1")]);
    let bound = key.token("k1", &with(claims(), "cnf", json!({"x5t#S256": "thumb-a"})));
    let principal = verifier.verify(&bound, Some("thumb-a")).unwrap();
    assert_eq!(principal.certificate_thumbprint.as_deref(), Some("thumb-a"));
    assert_eq!(
        verifier.verify(&bound, Some("thumb-b")).unwrap_err(),
        AuthError::CertificateMismatch { presented: true }
    );
}

#[test]
fn header_algorithm_must_match_key() {
    let ed = TestKey::ed25519();
    let ec = TestKey::p256();
    let verifier = verifier_with(&[(&ed, "ed"), (&ec, "ec")]);
    let public_x = ed.jwk("ed")["x"].as_str().unwrap().to_owned();
    let hs256 = {
        let header = json!({"alg": "HS256", "kid": "ed"});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims().to_string().as_bytes())
        );
        let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, public_x.as_bytes());
        let mac = ring::hmac::sign(&hmac_key, input.as_bytes());
        format!("{input}.{}", b64(mac.as_ref()))
    };
    let cases = [
        ("HS256 keyed with the public key", hs256, "HS256"),
        (
            "RS256 for an EC key",
            ec.sign(&json!({"alg": "RS256", "kid": "ec"}), &claims()),
            "RS256",
        ),
        (
            "ES256 for an Ed25519 key",
            ed.sign(&json!({"alg": "ES256", "kid": "ed"}), &claims()),
            "ES256",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(json!({"alg": "none", "kid": "ed"}).to_string().as_bytes()),
                b64(claims().to_string().as_bytes())
            ),
            "none",
        ),
    ];
    for (name, token, found) in cases {
        match verifier.verify(&token, None) {
            Err(AuthError::WrongAlgorithm { found: f, .. }) => assert_eq!(f, found, "{name}"),
            other => panic!("{name}: expected WrongAlgorithm, got {other:?}"),
        }
    }
}

#[test]
fn header_kid_checked() {
    let key = TestKey::ed25519();
    let verifier = verifier_with(&[(&key, "k1")]);
    let cases = [
        (json!({"alg": "EdDSA"}), AuthError::MissingKeyId),
        (
            json!({"alg": "EdDSA", "kid": "../k1"}),
            AuthError::InvalidKeyId("../k1".into()),
        ),
        (
            json!({"alg": "EdDSA", "kid": 7}),
            AuthError::InvalidKeyId("7".into()),
        ),
        (
            json!({"alg": "EdDSA", "kid": "k2"}),
            AuthError::UnknownKeyId("k2".into()),
        ),
    ];
    for (header, expected) in cases {
        let token = key.sign(&header, &claims());
        assert_eq!(
            verifier.verify(&token, None).unwrap_err(),
            expected,
            "{header}"
        );
    }
    assert!(matches!(
        verifier.verify("not-a-token", None),
        Err(AuthError::Malformed(_))
    ));
}

#[test]
fn failed_fetch_keeps_keys_and_reports_unavailable() {
    let key = TestKey::ed25519();
    let unavailable = AuthError::JwksUnavailable {
        issuer: ISSUER.into(),
    };
    let verifier = ExternalVerifier::new(settings());
    assert_eq!(
        verifier
            .verify(&key.token("k1", &claims()), None)
            .unwrap_err(),
        unavailable,
        "no key set installed yet"
    );

    verifier.install(ExternalKeySet::parse(&jwks(&[key.jwk("k1")])).unwrap());
    verifier.record_fetch_failure();
    assert!(verifier.verify(&key.token("k1", &claims()), None).is_ok());
    assert_eq!(
        verifier
            .verify(&key.token("k2", &claims()), None)
            .unwrap_err(),
        unavailable
    );

    let rotated = TestKey::ed25519();
    verifier.install(ExternalKeySet::parse(&jwks(&[key.jwk("k1"), rotated.jwk("k2")])).unwrap());
    assert!(verifier
        .verify(&rotated.token("k2", &claims()), None)
        .is_ok());
    assert_eq!(
        verifier
            .verify(&key.token("k3", &claims()), None)
            .unwrap_err(),
        AuthError::UnknownKeyId("k3".into())
    );
    assert_eq!(verifier.key_ids(), ["k1", "k2"]);
}

#[test]
fn refetch_cooldown() {
    let verifier = ExternalVerifier::new(settings());
    let start = Instant::now();
    let at = |secs: u64| start + Duration::from_secs(secs);
    assert!(
        verifier.try_begin_refetch(at(0)),
        "the first refetch is allowed"
    );
    assert!(!verifier.try_begin_refetch(at(1)));
    assert!(!verifier.try_begin_refetch(at(59)));
    assert!(verifier.try_begin_refetch(at(60)));
    // A slow refetch restarts the cooldown when it ends.
    verifier.end_refetch(at(65));
    assert!(!verifier.try_begin_refetch(at(121)));
    assert!(verifier.try_begin_refetch(at(125)));
}

#[test]
fn issuer_read_without_verification() {
    let key = TestKey::ed25519();
    assert_eq!(
        unverified_issuer(&key.token("k1", &claims())).as_deref(),
        Some(ISSUER)
    );
    assert_eq!(
        unverified_issuer(&key.token("k1", &without(claims(), "iss"))),
        None
    );
    assert_eq!(
        unverified_issuer(&key.token("k1", &with(claims(), "iss", json!(["a"])))),
        None
    );
    assert_eq!(unverified_issuer("a.%%%.c"), None);
    assert_eq!(unverified_issuer("no-dots"), None);
}
