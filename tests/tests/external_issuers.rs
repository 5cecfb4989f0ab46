//! Tokens of an external identity provider (a trusted issuer) against the API:
//! a JWK set server on loopback that the test controls, and tokens signed
//! with Ed25519 and ES256 keys made by ring.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use keygate_gateway::config::TrustedIssuerConfig;
use keygate_tests::{JwksServer, TestServer, ACCOUNT};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

const IDP: &str = "https://idp.test";
const AUDIENCE: &str = "keygate-api";
/// The account the identity provider's tokens act for.
const IDP_ACCOUNT: &str = "globex";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key of the identity provider.
enum IdpKey {
    Ed25519(Ed25519KeyPair),
    P256(EcdsaKeyPair),
}

impl IdpKey {
    fn ed25519() -> IdpKey {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        IdpKey::Ed25519(Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap())
    }

    fn p256() -> IdpKey {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        IdpKey::P256(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).unwrap(),
        )
    }

    fn alg(&self) -> &'static str {
        match self {
            IdpKey::Ed25519(_) => "EdDSA",
            IdpKey::P256(_) => "ES256",
        }
    }

    /// Returns the public key as a JWK without `alg`, so the key type implies the algorithm.
    fn jwk(&self, kid: &str) -> Value {
        match self {
            IdpKey::Ed25519(pair) => json!({
                "kty": "OKP", "crv": "Ed25519", "use": "sig", "kid": kid,
                "x": b64(pair.public_key().as_ref()),
            }),
            IdpKey::P256(pair) => {
                let point = pair.public_key().as_ref();
                json!({
                    "kty": "EC", "crv": "P-256", "use": "sig", "kid": kid,
                    "x": b64(&point[1..33]), "y": b64(&point[33..65]),
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
        let signature = match self {
            IdpKey::Ed25519(pair) => pair.sign(input.as_bytes()).as_ref().to_vec(),
            IdpKey::P256(pair) => pair
                .sign(&SystemRandom::new(), input.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
        };
        format!("{input}.{}", b64(&signature))
    }

    /// Signs `claims` under `kid` with this key's algorithm.
    fn token(&self, kid: &str, claims: &Value) -> String {
        self.sign(
            &json!({"alg": self.alg(), "kid": kid, "typ": "JWT"}),
            claims,
        )
    }
}

fn jwk_set(keys: &[Value]) -> Value {
    json!({ "keys": keys })
}

fn claims(scope: &str) -> Value {
    let now = now();
    json!({
        "iss": IDP, "aud": AUDIENCE, "sub": "etl-orchestrator",
        "exp": now + 300, "iat": now, "scope": scope,
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

/// Starts keygate trusting the identity provider whose key set `jwks` serves.
async fn start_keygate(
    jwks: &JwksServer,
    refetch_cooldown_secs: u64,
    allowed_scopes: &[&str],
) -> TestServer {
    let entry = TrustedIssuerConfig {
        issuer: IDP.into(),
        audience: AUDIENCE.into(),
        jwks_url: jwks.url(),
        ca_file: None,
        refetch_cooldown_secs,
        account: IDP_ACCOUNT.into(),
        allowed_scopes: allowed_scopes.iter().map(|s| s.to_string()).collect(),
    };
    TestServer::start_with(|config| {
        config.auth.trusted_issuers.push(entry);
        config.validate().expect("valid test configuration");
    })
    .await
}

async fn list_agents(server: &TestServer, token: &str) -> (StatusCode, Value) {
    let (status, _, body) = server
        .api()
        .request(Method::GET, "/v1/agents", Some(token), None)
        .await;
    (status, body)
}

/// Asserts a 401 whose problem document names `reason`.
async fn assert_rejected(server: &TestServer, case: &str, token: &str, reason: &str) {
    let (status, body) = list_agents(server, token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{case}: {body}");
    assert_eq!(body["reason"], reason, "{case}: {body}");
}

fn agent_ids(body: &Value) -> Vec<String> {
    body["agents"]
        .as_array()
        .expect("agents array")
        .iter()
        .map(|a| a["id"].as_str().expect("agent id").to_owned())
        .collect()
}

fn fetch_metric(server: &TestServer, result: &str) -> String {
    let metrics = server.server().state().metrics.render();
    let prefix = format!(r#"keygate_auth_jwks_fetches_total{{issuer="{IDP}",result="{result}"}} "#);
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in\n{metrics}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_token_acts_for_configured_account() {
    let ed = IdpKey::ed25519();
    let ec = IdpKey::p256();
    let jwks = JwksServer::start(&jwk_set(&[ed.jwk("ed-1"), ec.jwk("ec-1")])).await;
    let server = start_keygate(&jwks, 60, &["agents:admin", "tasks:write"]).await;

    let create = |account: &str| {
        let token = server.token(account, &["agents:admin"], None);
        let api = server.api();
        async move {
            let (status, _, body) = api
                .request(Method::POST, "/v1/agents", Some(&token), Some(json!({})))
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            body["client_id"].as_str().unwrap().to_owned()
        }
    };
    let globex_agent = create(IDP_ACCOUNT).await;
    let acme_agent = create(ACCOUNT).await;

    // An `acct` claim is ignored: the configured account applies.
    let ed_token = ed.token(
        "ed-1",
        &with(claims("agents:admin"), "acct", json!(ACCOUNT)),
    );
    let (status, body) = list_agents(&server, &ed_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(agent_ids(&body), std::slice::from_ref(&globex_agent));

    // ES256, an `aud` array and a `scp` array are accepted too.
    let ec_claims = without(claims(""), "scope");
    let ec_claims = with(ec_claims, "aud", json!(["other-api", AUDIENCE]));
    let ec_token = ec.token("ec-1", &with(ec_claims, "scp", json!(["agents:admin"])));
    let (status, body) = list_agents(&server, &ec_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(agent_ids(&body), std::slice::from_ref(&globex_agent));

    let (status, _, body) = server
        .api()
        .request(Method::POST, "/v1/agents", Some(&ed_token), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["account"], IDP_ACCOUNT, "{body}");

    // keygate's own tokens still go to keygate's verifier.
    let (status, body) = list_agents(&server, &server.admin_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(agent_ids(&body), [acme_agent]);
    assert_eq!(jwks.requests(), 1, "only the fetch at start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_token_claims_checked() {
    let key = IdpKey::ed25519();
    let impostor = IdpKey::ed25519();
    let jwks = JwksServer::start(&jwk_set(&[key.jwk("k1")])).await;
    let server = start_keygate(&jwks, 60, &["agents:admin"]).await;
    let now = now();
    let valid = claims("agents:admin");
    let cases = [
        (
            "wrong audience",
            key.token("k1", &with(valid.clone(), "aud", json!("keygate"))),
            "invalid_audience",
        ),
        (
            "expired",
            key.token(
                "k1",
                &with(
                    with(valid.clone(), "exp", json!(now - 600)),
                    "iat",
                    json!(now - 900),
                ),
            ),
            "expired",
        ),
        (
            "unknown issuer",
            key.token(
                "k1",
                &with(valid.clone(), "iss", json!("https://other-idp.test")),
            ),
            "invalid_issuer",
        ),
        (
            "issuer with a trailing slash",
            key.token("k1", &with(valid.clone(), "iss", json!(format!("{IDP}/")))),
            "invalid_issuer",
        ),
        (
            "lifetime over the maximum",
            key.token("k1", &with(valid.clone(), "exp", json!(now + 30 * 86400))),
            "lifetime_too_long",
        ),
        (
            "iat in the future",
            key.token(
                "k1",
                &with(
                    with(valid.clone(), "iat", json!(now + 3600)),
                    "exp",
                    json!(now + 3900),
                ),
            ),
            "not_yet_valid",
        ),
        (
            "missing sub",
            key.token("k1", &without(valid.clone(), "sub")),
            "missing_claim",
        ),
        (
            "signed by another key under a known kid",
            impostor.token("k1", &valid),
            "invalid_signature",
        ),
        ("kid path", key.token("../k1", &valid), "invalid_kid"),
    ];
    for (case, token, reason) in &cases {
        assert_rejected(&server, case, token, reason).await;
    }
    let (status, body) = list_agents(&server, &key.token("k1", &valid)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "control: the valid token works: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_outside_allowed_dropped() {
    let key = IdpKey::ed25519();
    let jwks = JwksServer::start(&jwk_set(&[key.jwk("k1")])).await;
    let server = start_keygate(&jwks, 60, &["tasks:write"]).await;
    let token = key.token("k1", &claims("agents:admin tasks:write"));

    let (status, headers, body) = server
        .api()
        .request(Method::GET, "/v1/agents", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let challenge = headers[http::header::WWW_AUTHENTICATE].to_str().unwrap();
    assert!(challenge.contains(r#"scope="agents:admin""#), "{challenge}");

    // tasks:write is kept: the lookup passes authentication and finds no task.
    let (status, _, body) = server
        .api()
        .request(Method::GET, "/v1/tasks/no-such-task", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_key_accepted_after_refetch() {
    let old = IdpKey::ed25519();
    let new = IdpKey::p256();
    let jwks = JwksServer::start(&jwk_set(&[old.jwk("2024-01")])).await;
    let server = start_keygate(&jwks, 60, &["agents:admin"]).await;
    assert_eq!(jwks.requests(), 1);

    jwks.set_document(&jwk_set(&[old.jwk("2024-01"), new.jwk("2024-02")]));
    let token = new.token("2024-02", &claims("agents:admin"));
    let (status, body) = list_agents(&server, &token).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the rotated key is accepted: {body}"
    );
    assert_eq!(jwks.requests(), 2, "one refetch for the new kid");

    let (status, body) = list_agents(&server, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = list_agents(&server, &old.token("2024-01", &claims("agents:admin"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(jwks.requests(), 2, "known kids need no fetch");
    assert_eq!(fetch_metric(&server, "success"), "2");
    assert_eq!(fetch_metric(&server, "failure"), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kids_refetch_once_per_cooldown() {
    let key = IdpKey::ed25519();
    let jwks = JwksServer::start(&jwk_set(&[key.jwk("k1")])).await;
    let server = std::sync::Arc::new(start_keygate(&jwks, 3600, &["agents:admin"]).await);
    assert_eq!(jwks.requests(), 1);

    // 50 requests, all at once, each naming a kid that no key set lists.
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..50 {
        let server = server.clone();
        let token = key.token(&format!("random-{i}-{}", now()), &claims("agents:admin"));
        requests.spawn(async move { list_agents(&server, &token).await });
    }
    while let Some(result) = requests.join_next().await {
        let (status, body) = result.expect("request task");
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["reason"], "unknown_kid", "{body}");
    }
    assert_eq!(jwks.requests(), 2, "one refetch beyond the fetch at start");

    // Within the cooldown even a key published since then is not fetched.
    let rotated = IdpKey::ed25519();
    jwks.set_document(&jwk_set(&[key.jwk("k1"), rotated.jwk("k2")]));
    let token = rotated.token("k2", &claims("agents:admin"));
    assert_rejected(
        &server,
        "new kid within the cooldown",
        &token,
        "unknown_kid",
    )
    .await;
    assert_eq!(jwks.requests(), 2);
    let (status, body) = list_agents(&server, &key.token("k1", &claims("agents:admin"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_fetches_keep_old_keys() {
    let key = IdpKey::ed25519();
    let mut jwks = JwksServer::start(&jwk_set(&[key.jwk("k1")])).await;
    let server = start_keygate(&jwks, 1, &["agents:admin"]).await;
    let known = key.token("k1", &claims("agents:admin"));
    let unknown = key.token("k2", &claims("agents:admin"));
    let cooldown = Duration::from_millis(1100);

    let failures = [
        (
            "status 500",
            Some((StatusCode::INTERNAL_SERVER_ERROR, "oops")),
        ),
        (
            "not JSON",
            Some((StatusCode::OK, "<html>maintenance</html>")),
        ),
        ("no usable key", Some((StatusCode::OK, r#"{"keys": []}"#))),
        ("server down", None),
    ];
    for (i, (case, answer)) in failures.into_iter().enumerate() {
        match answer {
            Some((status, body)) => jwks.set_answer(status, Bytes::from_static(body.as_bytes())),
            None => jwks.stop().await,
        }
        tokio::time::sleep(cooldown).await;
        assert_rejected(&server, case, &unknown, "jwks_unavailable").await;
        let (status, body) = list_agents(&server, &known).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{case}: the old key still works: {body}"
        );
        assert_eq!(
            fetch_metric(&server, "failure"),
            (i + 1).to_string(),
            "{case}"
        );
    }
    assert_eq!(fetch_metric(&server, "success"), "1");
    assert_eq!(
        jwks.requests(),
        4,
        "the start and three failed fetches reached the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn algorithm_confusion_rejected() {
    let ed = IdpKey::ed25519();
    let ec = IdpKey::p256();
    let declared_hs256 = with(IdpKey::ed25519().jwk("hs"), "alg", json!("HS256"));
    let jwks = JwksServer::start(&jwk_set(&[ed.jwk("ed"), ec.jwk("ec"), declared_hs256])).await;
    let server = start_keygate(&jwks, 60, &["agents:admin"]).await;
    let valid = claims("agents:admin");

    let hs256 = {
        // HMAC keyed with the public key, as a verifier that trusts the header would check it.
        let public_x = ed.jwk("ed")["x"].as_str().unwrap().to_owned();
        let input = format!(
            "{}.{}",
            b64(json!({"alg": "HS256", "kid": "ed"}).to_string().as_bytes()),
            b64(valid.to_string().as_bytes())
        );
        let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, public_x.as_bytes());
        format!(
            "{input}.{}",
            b64(ring::hmac::sign(&hmac_key, input.as_bytes()).as_ref())
        )
    };
    let alg_none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "kid": "ec"}).to_string().as_bytes()),
        b64(valid.to_string().as_bytes())
    );
    let cases = [
        ("HS256 for an Ed25519 key", hs256, "wrong_algorithm"),
        (
            "RS256 for an EC key",
            ec.sign(&json!({"alg": "RS256", "kid": "ec"}), &valid),
            "wrong_algorithm",
        ),
        (
            "ES256 for an Ed25519 key",
            ed.sign(&json!({"alg": "ES256", "kid": "ed"}), &valid),
            "wrong_algorithm",
        ),
        (
            "EdDSA for an EC key",
            ed.sign(&json!({"alg": "EdDSA", "kid": "ec"}), &valid),
            "wrong_algorithm",
        ),
        ("alg none", alg_none, "wrong_algorithm"),
        (
            "a key whose JWK declares HS256 is not installed",
            ed.sign(&json!({"alg": "HS256", "kid": "hs"}), &valid),
            "unknown_kid",
        ),
    ];
    for (case, token, reason) in &cases {
        assert_rejected(&server, case, token, reason).await;
    }
}
