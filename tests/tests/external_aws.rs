//! Hybrid definitions in AWS Secrets Manager, resolved through the server's
//! API against moto's server over real HTTP with SigV4-signed requests.

use std::time::Duration;

use http::{Method, StatusCode};
use keygate_gateway::external::aws::send_signed;
use keygate_gateway::external::http::{ClientSettings, HttpClient};
use keygate_gateway::external::tokens::TokenCache;
use keygate_gateway::external::ProviderContext;
use keygate_gateway::master_key::sigv4::Credentials;
use keygate_tests::moto::{self, Moto, Relay, REGION};
use keygate_tests::{HttpsClient, TestServer, ACCOUNT};
use serde_json::{json, Value};

const CANNOT_ACCESS: &str = "The agent can't access the customer's secret manager";

fn context() -> ProviderContext {
    let settings = ClientSettings {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(30),
        loopback_only: true,
    };
    ProviderContext {
        http: HttpClient::new(settings, None).unwrap(),
        tokens: TokenCache::default(),
        aws_metadata: None,
    }
}

/// Calls a Secrets Manager operation on `endpoint` and returns its JSON response.
async fn secrets_manager(
    endpoint: &str,
    credentials: &Credentials,
    operation: &str,
    body: Value,
) -> Value {
    let target = format!("secretsmanager.{operation}");
    let response = send_signed(
        &context(),
        credentials,
        endpoint,
        REGION,
        "secretsmanager",
        "application/x-amz-json-1.1",
        Some(&target),
        body.to_string().into_bytes(),
    )
    .await
    .unwrap_or_else(|e| panic!("{operation}: {e}"));
    let text = String::from_utf8_lossy(&response.body).into_owned();
    assert!(
        response.status.is_success(),
        "{operation}: {} {text}",
        response.status
    );
    serde_json::from_str(&text).unwrap()
}

/// Calls an IAM query action and returns the XML response.
async fn iam(endpoint: &str, params: &[(&str, &str)]) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("Version", "2010-05-08");
    for (key, value) in params {
        form.append_pair(key, value);
    }
    let body = form.finish();
    let response = send_signed(
        &context(),
        &moto::credentials(),
        endpoint,
        REGION,
        "iam",
        "application/x-www-form-urlencoded; charset=utf-8",
        None,
        body.into_bytes(),
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&response.body).into_owned();
    assert!(response.status.is_success(), "IAM {params:?}: {text}");
    text
}

fn xml(text: &str, name: &str) -> String {
    let start = text.find(&format!("<{name}>")).unwrap() + name.len() + 2;
    let end = start + text[start..].find(&format!("</{name}>")).unwrap();
    text[start..end].to_owned()
}

struct Setup {
    server: TestServer,
    api: HttpsClient,
    runner: String,
}

/// Starts a server with a connection `aws` to `endpoint`, whose credentials
/// are stored as the hosted secret `aws-keys` of project `ops`.
async fn setup(
    endpoint: &str,
    key_id: &str,
    secret_key: &str,
    adjust: impl FnOnce(&mut keygate_gateway::config::Config),
) -> Setup {
    let server = TestServer::start_with(adjust).await;
    let api = server.api();
    let admin = server.admin_token.clone();
    let (status, _, body) = api
        .request(
            Method::PUT,
            "/v1/projects/ops/secrets/aws-keys",
            Some(&admin),
            Some(json!({"value": json!({"access_key_id": key_id, "secret_access_key": secret_key}).to_string()})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    put_connection(
        &api,
        &admin,
        "aws",
        json!({
            "type": "aws_secrets_manager", "region": REGION, "endpoint": endpoint,
            "credentials": {"project": "ops", "secret": "aws-keys"}
        }),
    )
    .await;
    let runner = server.token(ACCOUNT, &["secrets:read"], Some(&["etl"]));
    Setup {
        server,
        api,
        runner,
    }
}

async fn put_connection(api: &HttpsClient, admin: &str, name: &str, connection: Value) {
    let (status, _, body) = api
        .request(
            Method::PUT,
            &format!("/v1/connections/{name}"),
            Some(admin),
            Some(json!({"connection": connection})),
        )
        .await;
    assert!(
        status == StatusCode::CREATED || status == StatusCode::OK,
        "{status} {body}"
    );
}

async fn define(setup: &Setup, name: &str, location: Value) {
    let (status, _, body) = setup
        .api
        .request(
            Method::PUT,
            &format!("/v1/projects/etl/secret-definitions/{name}"),
            Some(&setup.server.admin_token),
            Some(json!({"location": location})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn resolve(setup: &Setup, name: &str) -> (StatusCode, Value) {
    let (status, headers, body) = setup
        .api
        .request(
            Method::GET,
            &format!("/v1/projects/etl/secret-definitions/{name}/value"),
            Some(&setup.runner),
            None,
        )
        .await;
    if status == StatusCode::OK {
        assert_eq!(headers[http::header::CACHE_CONTROL], "no-store");
    }
    (status, body)
}

fn aws_location(secret_id: &str) -> Value {
    json!({"type": "aws_secrets_manager", "secret_id": secret_id, "connection": "aws"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_json_keys_versions_and_stages() {
    let moto = Moto::start();
    let endpoint = moto.endpoint();
    let creds = moto::credentials();
    let setup = setup(
        &endpoint,
        moto::ACCESS_KEY_ID,
        moto::SECRET_ACCESS_KEY,
        |_| {},
    )
    .await;

    let odd_name = "app/db_user+1=x.y@corp-";
    let suffixed = "billing-db-AbC123";
    secrets_manager(
        &endpoint,
        &creds,
        "CreateSecret",
        json!({"Name": odd_name, "SecretString": "odd-value"}),
    )
    .await;
    secrets_manager(
        &endpoint,
        &creds,
        "CreateSecret",
        json!({"Name": suffixed, "SecretString": "suffixed-value"}),
    )
    .await;
    secrets_manager(
        &endpoint,
        &creds,
        "CreateSecret",
        json!({"Name": "json-creds", "SecretString": "{\"user\":\"etl\",\"password\":\"pw-1\"}"}),
    )
    .await;
    let first = secrets_manager(
        &endpoint,
        &creds,
        "CreateSecret",
        json!({"Name": "rotating", "SecretString": "v1"}),
    )
    .await;
    let first_version = first["VersionId"].as_str().unwrap().to_owned();
    secrets_manager(
        &endpoint,
        &creds,
        "PutSecretValue",
        json!({"SecretId": "rotating", "SecretString": "v2"}),
    )
    .await;
    let arn = first["ARN"].as_str().unwrap().to_owned();

    define(&setup, "odd", aws_location(odd_name)).await;
    define(&setup, "suffixed", aws_location(suffixed)).await;
    define(&setup, "by-arn", aws_location(&arn)).await;
    define(&setup, "password", json!({"type": "aws_secrets_manager", "secret_id": "json-creds", "json_key": "password", "connection": "aws"})).await;
    define(&setup, "current", aws_location("rotating")).await;
    define(&setup, "previous", json!({"type": "aws_secrets_manager", "secret_id": "rotating", "version_stage": "AWSPREVIOUS", "connection": "aws"})).await;
    define(&setup, "first", json!({"type": "aws_secrets_manager", "secret_id": "rotating", "version_id": first_version, "connection": "aws"})).await;

    for (definition, expected) in [
        ("odd", "odd-value"),
        ("suffixed", "suffixed-value"),
        ("by-arn", "v2"),
        ("password", "pw-1"),
        ("current", "v2"),
        ("previous", "v1"),
        ("first", "v1"),
    ] {
        let (status, body) = resolve(&setup, definition).await;
        assert_eq!(status, StatusCode::OK, "{definition}: {body}");
        assert_eq!(body["value"], expected, "{definition}");
        assert_eq!(body["provider"], "aws_secrets_manager");
        assert!(body["provider_version"].is_string(), "{body}");
    }
    let (_, body) = resolve(&setup, "first").await;
    assert_eq!(body["provider_version"], first_version.as_str());

    // Each definition is its own cache entry, so a version is never served
    // for another version's request.
    let (_, latest) = resolve(&setup, "current").await;
    let (_, pinned) = resolve(&setup, "first").await;
    assert_ne!(latest["provider_version"], pinned["provider_version"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secrets_keys_and_connections_are_clear_errors() {
    let moto = Moto::start();
    let endpoint = moto.endpoint();
    let setup = setup(
        &endpoint,
        moto::ACCESS_KEY_ID,
        moto::SECRET_ACCESS_KEY,
        |_| {},
    )
    .await;
    secrets_manager(
        &endpoint,
        &moto::credentials(),
        "CreateSecret",
        json!({"Name": "plain", "SecretString": "not json"}),
    )
    .await;

    define(&setup, "missing", aws_location("no-such-secret")).await;
    let (status, body) = resolve(&setup, "missing").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        body["type"],
        "urn:keygate:problem:external-secret-not-found"
    );
    assert_eq!(body["reason"], "not_found");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("aws_secrets_manager")
            && detail.contains("\"missing\"")
            && detail.contains("ResourceNotFoundException"),
        "{detail}"
    );

    define(&setup, "not-json", json!({"type": "aws_secrets_manager", "secret_id": "plain", "json_key": "password", "connection": "aws"})).await;
    let (status, body) = resolve(&setup, "not-json").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("not a JSON object"),
        "{body}"
    );

    let (status, _, body) = setup
        .api
        .request(
            Method::PUT,
            "/v1/projects/etl/secret-definitions/no-connection",
            Some(&setup.server.admin_token),
            Some(json!({"location": {"type": "aws_secrets_manager", "secret_id": "plain", "connection": "nope"}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("PUT /v1/connections/nope"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_checked_when_written_and_used() {
    let moto = Moto::start();
    let endpoint = moto.endpoint();
    let setup = setup(
        &endpoint,
        moto::ACCESS_KEY_ID,
        moto::SECRET_ACCESS_KEY,
        |_| {},
    )
    .await;
    secrets_manager(
        &endpoint,
        &moto::credentials(),
        "CreateSecret",
        json!({"Name": "team-db", "SecretString": "team"}),
    )
    .await;
    let admin = setup.server.admin_token.clone();
    let put = |name: &'static str, body: Value| {
        let (api, admin) = (&setup.api, admin.clone());
        async move {
            let (status, _, body) = api
                .request(
                    Method::PUT,
                    &format!("/v1/connections/{name}"),
                    Some(&admin),
                    Some(body),
                )
                .await;
            (status, body)
        }
    };

    // Under loopback_only, a public default endpoint or address is refused at once.
    let (status, body) = put(
        "public",
        json!({"connection": {"type": "aws_secrets_manager", "region": REGION}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("endpoint is unset"),
        "{body}"
    );
    let (status, body) = put(
        "remote",
        json!({"connection": {"type": "hashicorp_vault", "address": "https://vault.example.com",
                              "auth": {"method": "token", "token": {"project": "ops", "secret": "t"}}}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("not a loopback address"),
        "{body}"
    );
    let (status, body) = put("ghost-agent", json!({"connection": {"type": "agent", "agent_id": "agt_000000000000000000000000", "connection": "x"}})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("GET /v1/agents"),
        "{body}"
    );

    // A connection limited to project `team` serves only that project.
    let (status, body) = put(
        "team-only",
        json!({"projects": ["team"], "connection": {"type": "aws_secrets_manager", "region": REGION, "endpoint": endpoint,
               "credentials": {"project": "ops", "secret": "aws-keys"}}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["projects"], json!(["team"]));
    let location =
        json!({"type": "aws_secrets_manager", "secret_id": "team-db", "connection": "team-only"});
    let (status, _, body) = setup
        .api
        .request(
            Method::PUT,
            "/v1/projects/etl/secret-definitions/team-db",
            Some(&admin),
            Some(json!({"location": location})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("[\"team\"] only"),
        "{body}"
    );

    // A token restricted to projects may use only connections restricted to them:
    // the shared `aws` connection could read secrets that token may not.
    let etl_admin = setup
        .server
        .token(ACCOUNT, &["secrets:admin"], Some(&["etl"]));
    let shared =
        json!({"type": "aws_secrets_manager", "secret_id": "team-db", "connection": "aws"});
    let (status, _, body) = setup
        .api
        .request(
            Method::PUT,
            "/v1/projects/etl/secret-definitions/borrowed",
            Some(&etl_admin),
            Some(json!({"location": shared})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let team_admin = setup
        .server
        .token(ACCOUNT, &["secrets:admin"], Some(&["team"]));
    let (status, _, body) = setup
        .api
        .request(
            Method::PUT,
            "/v1/projects/team/secret-definitions/team-db",
            Some(&team_admin),
            Some(json!({"location": location})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let team_runner = setup
        .server
        .token(ACCOUNT, &["secrets:read"], Some(&["team"]));
    let (status, _, body) = setup
        .api
        .request(
            Method::GET,
            "/v1/projects/team/secret-definitions/team-db/value",
            Some(&team_runner),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"], "team");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_and_an_unreachable_endpoint_say_the_manager_cannot_be_accessed() {
    // moto checks IAM permissions once its first three (unchecked) actions
    // have created a secret, a user and that user's key.
    let moto = Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "3")]);
    let endpoint = moto.endpoint();
    secrets_manager(
        &endpoint,
        &moto::credentials(),
        "CreateSecret",
        json!({"Name": "guarded", "SecretString": "x"}),
    )
    .await;
    iam(
        &endpoint,
        &[("Action", "CreateUser"), ("UserName", "runner")],
    )
    .await;
    let key = iam(
        &endpoint,
        &[("Action", "CreateAccessKey"), ("UserName", "runner")],
    )
    .await;
    let (key_id, secret_key) = (xml(&key, "AccessKeyId"), xml(&key, "SecretAccessKey"));

    let setup = setup(&endpoint, &key_id, &secret_key, |_| {}).await;
    define(&setup, "guarded", aws_location("guarded")).await;
    let (status, body) = resolve(&setup, "guarded").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["reason"], "access_denied");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.starts_with(CANNOT_ACCESS), "{detail}");
    assert!(detail.contains("AccessDenied"), "{detail}");
    assert!(!detail.contains(&secret_key), "the credential never shows");

    // The same server, with the endpoint closed.
    let relay = Relay::start(moto.addr).await;
    relay.set_open(false);
    put_connection(
        &setup.api,
        &setup.server.admin_token,
        "down",
        json!({
            "type": "aws_secrets_manager", "region": REGION, "endpoint": relay.endpoint(),
            "credentials": {"project": "ops", "secret": "aws-keys"}
        }),
    )
    .await;
    define(
        &setup,
        "down",
        json!({"type": "aws_secrets_manager", "secret_id": "guarded", "connection": "down"}),
    )
    .await;
    let (status, body) = resolve(&setup, "down").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["reason"], "unreachable");
    assert!(
        body["detail"].as_str().unwrap().starts_with(CANNOT_ACCESS),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assume_role_then_read() {
    let moto = Moto::start();
    let endpoint = moto.endpoint();
    let setup = setup(
        &endpoint,
        moto::ACCESS_KEY_ID,
        moto::SECRET_ACCESS_KEY,
        |_| {},
    )
    .await;
    secrets_manager(
        &endpoint,
        &moto::credentials(),
        "CreateSecret",
        json!({"Name": "cross-account", "SecretString": "role-value"}),
    )
    .await;
    put_connection(&setup.api, &setup.server.admin_token, "role", json!({
        "type": "aws_secrets_manager", "region": REGION, "endpoint": endpoint, "sts_endpoint": endpoint,
        "credentials": {"project": "ops", "secret": "aws-keys"},
        "role_arn": "arn:aws:iam::123456789012:role/keygate-reader", "external_id": "acme-7"
    }))
    .await;
    define(
        &setup,
        "cross",
        json!({"type": "aws_secrets_manager", "secret_id": "cross-account", "connection": "role"}),
    )
    .await;
    let (status, body) = resolve(&setup, "cross").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"], "role-value");
}

/// Reads one sample of the server's metrics.
async fn metric(server: &TestServer, line_start: &str) -> f64 {
    let client = HttpsClient::plain(server.ops_addr);
    let (_, _, body) = client
        .send(Method::GET, "/metrics", &[], bytes::Bytes::new())
        .await;
    let text = String::from_utf8_lossy(&body).into_owned();
    text.lines()
        .find(|line| line.starts_with(line_start))
        .and_then(|line| line.rsplit(' ').next())
        .map_or(0.0, |value| value.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_lookups_make_one_call_and_rotation_shows_after_invalidation_or_ttl() {
    let moto = Moto::start();
    let relay = Relay::start(moto.addr).await;
    let endpoint = relay.endpoint();
    let setup = setup(
        &endpoint,
        moto::ACCESS_KEY_ID,
        moto::SECRET_ACCESS_KEY,
        |config| {
            config.external.cache_ttl_ms = 1500;
            config.external.cache_refresh_ahead_ms = 0;
        },
    )
    .await;
    secrets_manager(
        &moto.endpoint(),
        &moto::credentials(),
        "CreateSecret",
        json!({"Name": "hot", "SecretString": "one"}),
    )
    .await;
    define(&setup, "hot", aws_location("hot")).await;

    let before = relay.relayed();
    let mut lookups = Vec::new();
    for _ in 0..100 {
        let api = setup.server.api();
        let runner = setup.runner.clone();
        lookups.push(tokio::spawn(async move {
            api.request(
                Method::GET,
                "/v1/projects/etl/secret-definitions/hot/value",
                Some(&runner),
                None,
            )
            .await
        }));
    }
    for lookup in lookups {
        let (status, _, body) = lookup.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["value"], "one");
    }
    assert_eq!(
        relay.relayed() - before,
        1,
        "100 concurrent cold lookups made one upstream call"
    );
    assert_eq!(
        metric(
            &setup.server,
            "keygate_external_cache_lookups_total{result=\"miss\"}"
        )
        .await,
        1.0
    );

    // Rotated upstream: the cache serves the old value until it is invalidated.
    secrets_manager(
        &moto.endpoint(),
        &moto::credentials(),
        "PutSecretValue",
        json!({"SecretId": "hot", "SecretString": "two"}),
    )
    .await;
    assert_eq!(resolve(&setup, "hot").await.1["value"], "one");
    let (status, _, body) = setup
        .api
        .request(
            Method::DELETE,
            "/v1/projects/etl/secret-definitions/hot/cache",
            Some(&setup.server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["dropped_entries"], 1);
    assert_eq!(resolve(&setup, "hot").await.1["value"], "two");

    // Rotated again: seen once the 1.5 s life has passed.
    secrets_manager(
        &moto.endpoint(),
        &moto::credentials(),
        "PutSecretValue",
        json!({"SecretId": "hot", "SecretString": "three"}),
    )
    .await;
    assert_eq!(resolve(&setup, "hot").await.1["value"], "two");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(resolve(&setup, "hot").await.1["value"], "three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_resolution_answers_each_name() {
    let moto = Moto::start();
    let endpoint = moto.endpoint();
    let setup = setup(
        &endpoint,
        moto::ACCESS_KEY_ID,
        moto::SECRET_ACCESS_KEY,
        |_| {},
    )
    .await;
    secrets_manager(
        &endpoint,
        &moto::credentials(),
        "CreateSecret",
        json!({"Name": "a", "SecretString": "value-a"}),
    )
    .await;
    let admin = setup.server.admin_token.clone();
    setup
        .api
        .request(
            Method::PUT,
            "/v1/projects/etl/secrets/hosted-b",
            Some(&admin),
            Some(json!({"value": "value-b"})),
        )
        .await;
    define(&setup, "a", aws_location("a")).await;
    define(&setup, "b", json!({"type": "hosted", "secret": "hosted-b"})).await;
    define(&setup, "gone", aws_location("gone")).await;

    let (status, _, body) = setup
        .api
        .request(
            Method::POST,
            "/v1/projects/etl/resolve",
            Some(&setup.runner),
            Some(json!({"names": ["a", "b", "gone", "undefined"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["value"], "value-a");
    assert_eq!(results[1]["value"], "value-b");
    assert_eq!(results[1]["source_version"], 1);
    assert_eq!(results[2]["name"], "gone");
    assert_eq!(results[2]["error"]["reason"], "not_found");
    assert_eq!(results[2]["error"]["status"], 404);
    assert_eq!(results[3]["error"]["status"], 404);

    let (status, _, body) = setup
        .api
        .request(
            Method::POST,
            "/v1/projects/etl/resolve",
            Some(&setup.runner),
            Some(json!({"names": []})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, _) = setup
        .api
        .request(
            Method::POST,
            "/v1/projects/billing/resolve",
            Some(&setup.runner),
            Some(json!({"names": ["a"]})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the runner token is restricted to etl"
    );
}

/// A local EC2 instance-metadata service (IMDSv2) that hands out moto's
/// dummy credentials for one role; returns its URL and a request counter.
async fn start_imds() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counter = counter.clone();
            let service = hyper::service::service_fn(
                move |request: http::Request<hyper::body::Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let token_ok = request
                        .headers()
                        .get("x-aws-ec2-metadata-token")
                        .is_some_and(|t| t == "imds-session");
                    let (status, body) = match (request.method().as_str(), request.uri().path()) {
                    ("PUT", "/latest/api/token")
                        if request.headers().contains_key("x-aws-ec2-metadata-token-ttl-seconds") =>
                    {
                        (200, "imds-session".to_owned())
                    }
                    ("GET", "/latest/meta-data/iam/security-credentials/") if token_ok => {
                        (200, "keygate-role\n".to_owned())
                    }
                    ("GET", "/latest/meta-data/iam/security-credentials/keygate-role") if token_ok => (
                        200,
                        json!({"Code": "Success", "AccessKeyId": "ASIAIMDSTEST", "SecretAccessKey": "imds-secret",
                               "Token": "imds-session-token", "Expiration": "2099-01-01T00:00:00Z"})
                        .to_string(),
                    ),
                    _ => (401, String::new()),
                };
                    async move {
                        let mut response = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(body),
                        ));
                        *response.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    }
                },
            );
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_metadata_credentials_when_configured() {
    let moto = Moto::start();
    let endpoint = moto.endpoint();
    let (imds, imds_requests) = start_imds().await;
    secrets_manager(
        &endpoint,
        &moto::credentials(),
        "CreateSecret",
        json!({"Name": "from-role", "SecretString": "role-creds"}),
    )
    .await;
    let setup = setup(
        &endpoint,
        moto::ACCESS_KEY_ID,
        moto::SECRET_ACCESS_KEY,
        |config| {
            config.external.aws_metadata_endpoint = imds.clone();
        },
    )
    .await;
    // No credentials in the connection: the environment of this test has
    // none, so the metadata service is asked.
    put_connection(
        &setup.api,
        &setup.server.admin_token,
        "instance-role",
        json!({"type": "aws_secrets_manager", "region": REGION, "endpoint": endpoint}),
    )
    .await;
    define(&setup, "from-role", json!({"type": "aws_secrets_manager", "secret_id": "from-role", "connection": "instance-role"})).await;
    let (status, body) = resolve(&setup, "from-role").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"], "role-creds");
    assert_eq!(
        imds_requests.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "token, role name, credentials"
    );

    // The credentials are kept: another lookup does not ask again.
    setup
        .api
        .request(
            Method::DELETE,
            "/v1/projects/etl/secret-definitions/from-role/cache",
            Some(&setup.server.admin_token),
            None,
        )
        .await;
    let (status, _) = resolve(&setup, "from-role").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(imds_requests.load(std::sync::atomic::Ordering::SeqCst), 3);
}
