//! Revoking agent credentials: disable, enable and secret rotation with overlap.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use keygate_tests::{agent_token, AgentCredentials, TestServer, ACCOUNT};
use serde_json::json;

/// Waits until the agent has no session (at most `limit`); returns how long it took.
async fn wait_until_disconnected(server: &TestServer, agent_id: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    while server.server().state().sessions.get(agent_id).is_some() {
        assert!(
            started.elapsed() < limit,
            "agent {agent_id} still connected after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

async fn post(server: &TestServer, path: &str) -> (StatusCode, serde_json::Value) {
    let (status, _, body) = server
        .api()
        .request(Method::POST, path, Some(&server.admin_token), None)
        .await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_closes_session_within_a_second() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 2).await;
    let old_token = agent_token(&server, &creds).await;

    let (status, body) = post(&server, &format!("/v1/agents/{}/disable", creds.id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["disabled"], true);
    let took = wait_until_disconnected(&server, &creds.id, Duration::from_secs(1)).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // Neither a new login nor a token issued before the change opens a session.
    let login = keygate_tests::HttpsClient::new(
        server.agent_addr,
        &creds.dir.join("ca.pem"),
        Some(&creds.dir),
    );
    let form = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        creds.id, creds.secret
    );
    let headers = [(
        http::header::CONTENT_TYPE,
        "application/x-www-form-urlencoded".to_owned(),
    )];
    let (status, _, body) = login
        .send(Method::POST, "/oauth/token", &headers, form.clone().into())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("is disabled"),
        "the agent learns why: {problem}"
    );
    assert_eq!(
        open_session_status(&server, &creds, &old_token).await,
        StatusCode::FORBIDDEN
    );
    let (status, body) = server.submit(&creds.id, json!({"kind": "echo"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "urn:keygate:problem:agent-disabled");

    let (status, _) = post(&server, &format!("/v1/agents/{}/enable", creds.id)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = login
        .send(Method::POST, "/oauth/token", &headers, form.into())
        .await;
    assert_eq!(status, StatusCode::OK, "enabled agents log in again");
    let status = open_session_status(&server, &creds, &old_token).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "tokens from before the disable stay revoked"
    );
    agent.stop().await;
}

/// Tries to open a session with `token`; returns the response status.
async fn open_session_status(
    server: &TestServer,
    creds: &AgentCredentials,
    token: &str,
) -> StatusCode {
    let mut sender = keygate_tests::agent_h2::<http_body_util::Full<bytes::Bytes>>(
        server.agent_addr,
        &creds.dir,
    )
    .await
    .unwrap();
    let request = http::Request::post("https://localhost/v1/agent/session")
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    sender.send_request(request).await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_right_after_rotation_is_accepted() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    // Rotation revokes tokens up to the next whole second; a login within
    // that second must still get a token that opens a session.
    for _ in 0..3 {
        let (status, body) = post(&server, &format!("/v1/agents/{}/rotate-secret", creds.id)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let rotated = AgentCredentials {
            secret: body["client_secret"].as_str().unwrap().to_owned(),
            ..creds.clone()
        };
        let token = agent_token(&server, &rotated).await;
        assert_eq!(
            open_session_status(&server, &rotated, &token).await,
            StatusCode::OK
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_running_agent_connected() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 2).await;
    let first_session = server
        .server()
        .state()
        .sessions
        .get(&creds.id)
        .unwrap()
        .session_id
        .clone();
    let old_token = agent_token(&server, &creds).await;

    let (status, body) = post(&server, &format!("/v1/agents/{}/rotate-secret", creds.id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new_secret = body["client_secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, creds.secret);
    assert!(body["previous_secret_valid_until_ms"].as_u64().is_some());

    // The old session closes at once; the agent, still on its old secret, logs in again.
    wait_until_disconnected(&server, &creds.id, Duration::from_secs(1)).await;
    server.wait_for_session(&creds.id).await;
    let second_session = server
        .server()
        .state()
        .sessions
        .get(&creds.id)
        .unwrap()
        .session_id
        .clone();
    assert_ne!(first_session, second_session);
    let (status, body) = server
        .submit(
            &creds.id,
            json!({"kind": "echo", "payload": "after rotation"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    assert_eq!(
        open_session_status(&server, &creds, &old_token).await,
        StatusCode::UNAUTHORIZED,
        "tokens issued before the rotation are revoked"
    );
    let rotated = AgentCredentials {
        secret: new_secret,
        ..creds.clone()
    };
    let fresh = agent_token(&server, &rotated).await;
    assert!(!fresh.is_empty(), "the new secret works");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_without_overlap_rejects_old_secret() {
    let server = TestServer::start_with(|c| c.auth.client_secret_rotation_overlap_secs = 0).await;
    let creds = server.create_agent(ACCOUNT).await;
    let (status, _) = post(&server, &format!("/v1/agents/{}/rotate-secret", creds.id)).await;
    assert_eq!(status, StatusCode::OK);
    let login = keygate_tests::HttpsClient::new(
        server.agent_addr,
        &creds.dir.join("ca.pem"),
        Some(&creds.dir),
    );
    let form = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        creds.id, creds.secret
    );
    let headers = [(
        http::header::CONTENT_TYPE,
        "application/x-www-form-urlencoded".to_owned(),
    )];
    let (status, _, _) = login
        .send(Method::POST, "/oauth/token", &headers, form.into())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_changes_need_same_account() {
    let server = TestServer::start().await;
    let other = server.create_agent("globex").await;
    for action in ["disable", "enable", "rotate-secret"] {
        let (status, body) = post(&server, &format!("/v1/agents/{}/{action}", other.id)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{action}: {body}");
    }
    let (status, _) = post(&server, "/v1/agents/agt_missing/disable").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_rate_limited_per_client() {
    let server = TestServer::start_with(|c| c.auth.token_requests_per_minute = 3).await;
    let creds = server.create_agent(ACCOUNT).await;
    let other = server.create_agent(ACCOUNT).await;
    let headers = [(
        http::header::CONTENT_TYPE,
        "application/x-www-form-urlencoded".to_owned(),
    )];
    let login = |c: &AgentCredentials, secret: &str| {
        let client =
            keygate_tests::HttpsClient::new(server.agent_addr, &c.dir.join("ca.pem"), Some(&c.dir));
        let form = format!(
            "grant_type=client_credentials&client_id={}&client_secret={secret}",
            c.id
        );
        (client, form)
    };
    // Failed logins count too, so guessing secrets is limited.
    let (client, bad) = login(&creds, "kgs_wrong");
    let (status, _, _) = client
        .send(Method::POST, "/oauth/token", &headers, bad.into())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for _ in 0..2 {
        let (client, good) = login(&creds, &creds.secret);
        let (status, _, _) = client
            .send(Method::POST, "/oauth/token", &headers, good.into())
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (client, good) = login(&creds, &creds.secret);
    let (status, response_headers, body) = client
        .send(Method::POST, "/oauth/token", &headers, good.into())
        .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let retry_after: u64 = response_headers[http::header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=21).contains(&retry_after), "Retry-After {retry_after}");

    let (client, good) = login(&other, &other.secret);
    let (status, _, _) = client
        .send(Method::POST, "/oauth/token", &headers, good.into())
        .await;
    assert_eq!(status, StatusCode::OK, "another client has its own limit");
    let metrics = server.server().state().metrics.render();
    assert!(
        metrics.contains(r#"keygate_auth_failures_total{reason="rate_limited"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_charge_the_presented_certificate() {
    let server = TestServer::start_with(|c| c.auth.token_requests_per_minute = 3).await;
    let victim = server.create_agent(ACCOUNT).await;
    let attacker = server.create_agent(ACCOUNT).await;
    let headers = [(
        http::header::CONTENT_TYPE,
        "application/x-www-form-urlencoded".to_owned(),
    )];
    // The attacker's certificate with the victim's id: rejected, and charged to the attacker.
    let with_attacker_cert = keygate_tests::HttpsClient::new(
        server.agent_addr,
        &attacker.dir.join("ca.pem"),
        Some(&attacker.dir),
    );
    let forged = format!(
        "grant_type=client_credentials&client_id={}&client_secret=kgs_guess",
        victim.id
    );
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (status, _, _) = with_attacker_cert
            .send(
                Method::POST,
                "/oauth/token",
                &headers,
                forged.clone().into(),
            )
            .await;
        statuses.push(status);
    }
    assert_eq!(&statuses[..3], &[StatusCode::UNAUTHORIZED; 3]);
    assert_eq!(&statuses[3..], &[StatusCode::TOO_MANY_REQUESTS; 2]);

    let with_victim_cert = keygate_tests::HttpsClient::new(
        server.agent_addr,
        &victim.dir.join("ca.pem"),
        Some(&victim.dir),
    );
    let good = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        victim.id, victim.secret
    );
    let (status, _, _) = with_victim_cert
        .send(Method::POST, "/oauth/token", &headers, good.into())
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the victim's own logins are untouched"
    );
}
