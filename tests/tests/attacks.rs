//! Crafted tokens against the API, each with the rejection reason it must get
//! in the problem document, the `WWW-Authenticate` header and the metric.

use http::{Method, StatusCode};
use keygate_auth::SigningKey;
use keygate_tests::{TestServer, ACCOUNT};
use serde_json::{json, Value};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> Value {
    let now = now();
    json!({
        "iss": "keygate", "aud": "keygate", "sub": "attacker", "acct": ACCOUNT,
        "scope": "agents:admin", "exp": now + 300, "iat": now, "nbf": now, "jti": "attack"
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

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_tokens_rejected_with_reason() {
    let server = TestServer::start().await;
    let key = server.server().state().signing.active_key().unwrap();
    let other_key = SigningKey::generate().unwrap();
    let kid = key.kid().to_owned();
    let header = json!({"alg": "EdDSA", "kid": kid, "typ": "JWT"});
    let sign =
        |h: &Value, c: &Value| key.sign_compact(h.to_string().as_bytes(), c.to_string().as_bytes());

    let valid = sign(&header, &claims());
    let tampered = {
        let parts: Vec<&str> = valid.split('.').collect();
        let forged = with(claims(), "acct", json!("globex"));
        format!(
            "{}.{}.{}",
            parts[0],
            b64(forged.to_string().as_bytes()),
            parts[2]
        )
    };
    let hs256 = {
        // The classic confusion attack: HMAC with the public key as the secret.
        let jwks: Value = {
            let (_, _, body) = server
                .api()
                .request(Method::GET, "/.well-known/jwks.json", None, None)
                .await;
            body
        };
        let public = jwks["keys"][0]["x"].as_str().unwrap().to_owned();
        let h = json!({"alg": "HS256", "kid": kid});
        let input = format!(
            "{}.{}",
            b64(h.to_string().as_bytes()),
            b64(claims().to_string().as_bytes())
        );
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, public.as_bytes()),
            input.as_bytes(),
        );
        format!("{input}.{}", b64(mac.as_ref()))
    };
    let alg_none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "kid": kid}).to_string().as_bytes()),
        b64(claims().to_string().as_bytes())
    );
    let now = now();
    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", alg_none, "wrong_algorithm"),
        ("HS256 with the public key", hs256, "wrong_algorithm"),
        (
            "unknown kid",
            sign(
                &with(header.clone(), "kid", json!("no-such-key")),
                &claims(),
            ),
            "unknown_kid",
        ),
        (
            "kid path",
            sign(
                &with(header.clone(), "kid", json!("../../keys/x")),
                &claims(),
            ),
            "invalid_kid",
        ),
        (
            "kid not a string",
            sign(&with(header.clone(), "kid", json!(["a"])), &claims()),
            "invalid_kid",
        ),
        (
            "missing kid",
            sign(&without(header.clone(), "kid"), &claims()),
            "missing_kid",
        ),
        (
            "missing iss",
            sign(&header, &without(claims(), "iss")),
            "missing_claim",
        ),
        (
            "wrong iss",
            sign(&header, &with(claims(), "iss", json!("https://evil.test"))),
            "invalid_issuer",
        ),
        (
            "missing aud",
            sign(&header, &without(claims(), "aud")),
            "missing_claim",
        ),
        (
            "wrong aud",
            sign(&header, &with(claims(), "aud", json!("other"))),
            "invalid_audience",
        ),
        (
            "missing exp",
            sign(&header, &without(claims(), "exp")),
            "missing_claim",
        ),
        (
            "expired",
            sign(
                &header,
                &with(
                    with(claims(), "exp", json!(now - 3600)),
                    "iat",
                    json!(now - 4000),
                ),
            ),
            "expired",
        ),
        (
            "nbf in the future",
            sign(&header, &with(claims(), "nbf", json!(now + 3600))),
            "not_yet_valid",
        ),
        (
            "iat in the future",
            sign(
                &header,
                &with(
                    with(claims(), "iat", json!(now + 3600)),
                    "exp",
                    json!(now + 4000),
                ),
            ),
            "not_yet_valid",
        ),
        (
            "lifetime over the maximum",
            sign(&header, &with(claims(), "exp", json!(now + 30 * 86400))),
            "lifetime_too_long",
        ),
        ("tampered claims", tampered, "invalid_signature"),
        (
            "signed by another key",
            other_key.sign_compact(
                header.to_string().as_bytes(),
                claims().to_string().as_bytes(),
            ),
            "invalid_signature",
        ),
        (
            "bound to a certificate",
            sign(
                &header,
                &with(claims(), "cnf", json!({"x5t#S256": "c3RvbGVu"})),
            ),
            "certificate_mismatch",
        ),
        (
            "not a JWT",
            "definitely-not-a-token".to_owned(),
            "malformed",
        ),
        (
            "header not JSON",
            format!("{}.e30.", b64(b"{nope")),
            "malformed",
        ),
    ];

    let mut expected_counts = std::collections::BTreeMap::new();
    for (name, token, reason) in &cases {
        let (status, headers, body) = server
            .api()
            .request(Method::GET, "/v1/agents", Some(token), None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        assert_eq!(body["reason"], *reason, "{name}: {body}");
        let challenge = headers[http::header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(
            challenge.contains(r#"error="invalid_token""#),
            "{name}: {challenge}"
        );
        assert!(
            challenge.contains("error_description="),
            "{name}: {challenge}"
        );
        *expected_counts.entry(*reason).or_insert(0) += 1;
    }

    let (status, _, body) = server
        .api()
        .request(Method::GET, "/v1/agents", Some(&valid), None)
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "control: the untampered token works: {body}"
    );

    let metrics = server.server().state().metrics.render();
    for (reason, count) in expected_counts {
        let line = format!(r#"keygate_auth_failures_total{{reason="{reason}"}} {count}"#);
        assert!(metrics.contains(&line), "missing {line:?} in\n{metrics}");
    }
}
