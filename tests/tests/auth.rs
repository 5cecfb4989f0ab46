//! Authentication end to end: agent login over mTLS, certificate-bound tokens, bearer checks.

use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use keygate_tests::{agent_h2, HttpsClient, TestServer, ACCOUNT};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Logs in at the token endpoint over a connection with the client certificate in `cert_dir`.
async fn login(
    server: &TestServer,
    cert_dir: &std::path::Path,
    basic: Option<(&str, &str)>,
    form: &str,
) -> (StatusCode, http::HeaderMap, Value) {
    let client = HttpsClient::new(server.agent_addr, &cert_dir.join("ca.pem"), Some(cert_dir));
    let mut headers = vec![(
        http::header::CONTENT_TYPE,
        "application/x-www-form-urlencoded".to_owned(),
    )];
    if let Some((id, secret)) = basic {
        headers.push((
            http::header::AUTHORIZATION,
            format!("Basic {}", STANDARD.encode(format!("{id}:{secret}"))),
        ));
    }
    let (status, headers, body) = client
        .send(
            Method::POST,
            "/oauth/token",
            &headers,
            Bytes::from(form.to_owned()),
        )
        .await;
    (
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

fn claims_of(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn header_of(token: &str) -> Value {
    let part = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_login_issues_certificate_bound_token() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let (status, _, body) = login(
        &server,
        &creds.dir,
        Some((&creds.id, &creds.secret)),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "agent:session");
    let token = body["access_token"].as_str().unwrap();

    let claims = claims_of(token);
    assert_eq!(claims["sub"], creds.id.as_str());
    assert_eq!(claims["acct"], ACCOUNT);
    assert_eq!(claims["iss"], "keygate");
    assert_eq!(claims["aud"], "keygate");
    for claim in ["exp", "iat", "nbf"] {
        assert!(
            claims[claim].as_u64().is_some(),
            "claim {claim} in {claims}"
        );
    }
    let cert = CertificateDer::from_pem_file(creds.dir.join("client.pem")).unwrap();
    assert_eq!(
        claims["cnf"]["x5t#S256"],
        keygate_auth::certificate_thumbprint(&cert)
    );

    let header = header_of(token);
    assert_eq!(header["alg"], "EdDSA");
    let (status, _, jwks) = server
        .api()
        .request(Method::GET, "/.well-known/jwks.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(jwks["keys"][0]["kid"], header["kid"]);
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert!(
        jwks["keys"][0].get("d").is_none(),
        "the JWKS must not contain private key material"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_with_secret_in_form_works() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let form = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        creds.id, creds.secret
    );
    let (status, _, body) = login(&server, &creds.dir, None, &form).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_logins_rejected() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let other = server.create_agent(ACCOUNT).await;

    let (status, headers, body) = login(
        &server,
        &creds.dir,
        Some((&creds.id, "kgs_wrong")),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "invalid_client");
    assert!(headers[http::header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .starts_with("Basic"));

    // The certificate of one agent with the credentials of another.
    let (status, _, body) = login(
        &server,
        &other.dir,
        Some((&creds.id, &creds.secret)),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    let (status, _, body) = login(
        &server,
        &creds.dir,
        Some((&creds.id, &creds.secret)),
        "grant_type=password",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "unsupported_grant_type");

    let (status, _, body) = login(&server, &creds.dir, None, "grant_type=client_credentials").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_request");

    let metrics = reqwest_text(&server.ops_url("/metrics")).await;
    assert!(
        metrics.contains(r#"keygate_auth_failures_total{reason="invalid_client"} 2"#),
        "failed logins are counted: {metrics}"
    );
}

/// GET over plain HTTP on loopback, for the ops listener.
async fn reqwest_text(url: &str) -> String {
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let path = format!(
        "/{}",
        url.trim_start_matches("http://").split_once('/').unwrap().1
    );
    let (_, _, body) = HttpsClient::plain(addr)
        .send(Method::GET, &path, &[], Bytes::new())
        .await;
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_copied_to_another_agent_is_useless() {
    let server = TestServer::start().await;
    let victim = server.create_agent(ACCOUNT).await;
    let thief = server.create_agent(ACCOUNT).await;
    let (_, _, body) = login(
        &server,
        &victim.dir,
        Some((&victim.id, &victim.secret)),
        "grant_type=client_credentials",
    )
    .await;
    let token = body["access_token"].as_str().unwrap().to_owned();

    // Presented on the thief's mTLS connection.
    let mut sender = agent_h2(server.agent_addr, &thief.dir).await.unwrap();
    let request = http::Request::post("https://localhost/v1/agent/session")
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["reason"], "certificate_mismatch", "{body}");

    // Presented on the API listener, which has no client certificate.
    let (status, _, body) = server
        .api()
        .request(Method::GET, "/v1/agents", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["reason"], "certificate_mismatch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_token_cannot_open_session() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let mut sender = agent_h2(server.agent_addr, &creds.dir).await.unwrap();
    let request = http::Request::post("https://localhost/v1/agent/session")
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", server.admin_token),
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

/// Completes a TLS handshake to the agent listener and sends a request; returns whether a response came back.
async fn raw_request_succeeds(server: &TestServer, config: rustls::ClientConfig) -> bool {
    let tcp = tokio::net::TcpStream::connect(server.agent_addr)
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let Ok(mut stream) = connector
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
    else {
        return false;
    };
    let request =
        b"GET /.well-known/jwks.json HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    response.starts_with(b"HTTP/1.1 200")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_listener_requires_trusted_client_certificate() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let with_cert = keygate_gateway::tls::client_config(
        &server.ca_path(),
        Some((
            &creds.dir.join("client.pem"),
            &creds.dir.join("client-key.pem"),
        )),
        false,
    )
    .unwrap();
    assert!(
        raw_request_succeeds(&server, with_cert).await,
        "control: a valid certificate is accepted"
    );

    let without_cert = keygate_gateway::tls::client_config(&server.ca_path(), None, false).unwrap();
    assert!(
        !raw_request_succeeds(&server, without_cert).await,
        "no client certificate"
    );

    let foreign = tempfile::tempdir().unwrap();
    let (other_ca, _) = keygate_gateway::pki::DevCa::load_or_create(foreign.path()).unwrap();
    other_ca
        .issue_client_cert(&creds.id)
        .unwrap()
        .write(
            &foreign.path().join("client.pem"),
            &foreign.path().join("client-key.pem"),
        )
        .unwrap();
    let foreign_cert = keygate_gateway::tls::client_config(
        &server.ca_path(),
        Some((
            &foreign.path().join("client.pem"),
            &foreign.path().join("client-key.pem"),
        )),
        false,
    )
    .unwrap();
    assert!(
        !raw_request_succeeds(&server, foreign_cert).await,
        "certificate from another CA"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_problems_answer_401() {
    let server = TestServer::start().await;
    let api = server.api();

    let (status, headers, body) = api.request(Method::GET, "/v1/agents", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(
        headers[http::header::WWW_AUTHENTICATE],
        r#"Bearer realm="keygate""#
    );
    assert_eq!(
        headers[http::header::CONTENT_TYPE],
        "application/problem+json"
    );

    let (status, headers, body) = api
        .request(Method::GET, "/v1/agents", Some("not.a.jwt"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let challenge = headers[http::header::WWW_AUTHENTICATE].to_str().unwrap();
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );

    // Change a character inside the signature: the last one carries padding
    // bits, so changing it can make the base64 invalid instead.
    let mut tampered = server.admin_token.clone().into_bytes();
    let index = tampered.len() - 10;
    tampered[index] = if tampered[index] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let (status, _, body) = api
        .request(Method::GET, "/v1/agents", Some(&tampered), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["reason"], "invalid_signature", "{body}");

    let long_lived = server.token_with_lifetime(ACCOUNT, &["agents:admin"], None, 10 * 86400);
    let (status, _, body) = api
        .request(Method::GET, "/v1/agents", Some(&long_lived), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["reason"], "lifetime_too_long", "{body}");

    let wrong_scope = server.token(ACCOUNT, &["secrets:read"], None);
    let (status, headers, body) = api
        .request(
            Method::POST,
            "/v1/agents",
            Some(&wrong_scope),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(headers[http::header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_listing_is_per_account() {
    let server = TestServer::start().await;
    let mine = server.create_agent(ACCOUNT).await;
    let theirs = server.create_agent("globex").await;
    let (_, _, list) = server
        .api()
        .request(Method::GET, "/v1/agents", Some(&server.admin_token), None)
        .await;
    let ids: Vec<&str> = list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![mine.id.as_str()]);
    let (status, _, _) = server
        .api()
        .request(
            Method::GET,
            &format!("/v1/agents/{}", theirs.id),
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
