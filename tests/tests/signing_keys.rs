//! Token signing key rotation: publish before signing, keep old keys, survive restarts.

use std::time::Duration;

use http::{Method, StatusCode};
use keygate_gateway::server::Server;
use keygate_tests::{agent_token, TestServer, ACCOUNT};
use serde_json::Value;

fn kid_of(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    serde_json::from_slice::<Value>(&bytes).unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn jwks_kids(server: &TestServer) -> Vec<String> {
    let (_, _, body) = server
        .api()
        .request(Method::GET, "/.well-known/jwks.json", None, None)
        .await;
    body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_publishes_then_signs() {
    let server = TestServer::start_with(|c| c.auth.signing_key_publish_delay_secs = 2).await;
    let operator = server.token(ACCOUNT, &["keys:admin"], None);
    let creds = server.create_agent(ACCOUNT).await;
    let before = agent_token(&server, &creds).await;
    let old_kid = kid_of(&before);
    assert_eq!(jwks_kids(&server).await, vec![old_kid.clone()]);

    let (status, _, body) = server
        .api()
        .request(
            Method::POST,
            "/v1/admin/signing-keys/rotate",
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new_kid = body["rotated"]["kid"].as_str().unwrap().to_owned();
    assert_eq!(body["rotated"]["state"], "pending");
    let mut published = jwks_kids(&server).await;
    published.sort();
    let mut expected = vec![old_kid.clone(), new_kid.clone()];
    expected.sort();
    assert_eq!(
        published, expected,
        "the next key is published before it signs"
    );
    assert_eq!(
        kid_of(&agent_token(&server, &creds).await),
        old_kid,
        "the old key still signs"
    );

    let (status, _, body) = server
        .api()
        .request(
            Method::POST,
            "/v1/admin/signing-keys/rotate",
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a second rotation waits: {body}"
    );

    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        kid_of(&agent_token(&server, &creds).await),
        new_kid,
        "the new key signs after the delay"
    );
    let (status, _, body) = server
        .api()
        .request(Method::GET, "/v1/agents", Some(&server.admin_token), None)
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "tokens of the old key still verify: {body}"
    );

    let (_, _, status_body) = server
        .api()
        .request(Method::GET, "/v1/admin/signing-keys", Some(&operator), None)
        .await;
    let states: Vec<&str> = status_body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["retired", "active"]);
    assert!(status_body["keys"][0]["unpublish_at"].as_u64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_needs_keys_admin() {
    let server = TestServer::start().await;
    let (status, _, _) = server
        .api()
        .request(
            Method::POST,
            "/v1/admin/signing-keys/rotate",
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = server
        .api()
        .request(
            Method::GET,
            "/v1/admin/signing-keys",
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_survive_restart_sealed() {
    let mut server = TestServer::start_with(|c| c.auth.signing_key_publish_delay_secs = 0).await;
    let operator = server.token(ACCOUNT, &["keys:admin"], None);
    let (status, _, _) = server
        .api()
        .request(
            Method::POST,
            "/v1/admin/signing-keys/rotate",
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut before = jwks_kids(&server).await;
    before.sort();
    let active = server
        .server()
        .state()
        .signing
        .active_key()
        .unwrap()
        .kid()
        .to_owned();
    server.shutdown().await;
    assert!(
        !server.config.signing_key_path().exists(),
        "no plain key file"
    );

    let restarted = Server::start(server.config.clone()).await.unwrap();
    let mut after: Vec<String> = restarted
        .state()
        .signing
        .verifying_keys()
        .into_iter()
        .map(|k| k.kid)
        .collect();
    after.sort();
    assert_eq!(before, after);
    assert_eq!(
        restarted.state().signing.active_key().unwrap().kid(),
        active
    );
    restarted.shutdown().await;
}
