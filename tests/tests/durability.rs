//! Crash safety: concurrent writers store secret versions while the server is
//! killed with SIGKILL at random moments. After each restart on the same data
//! folder, every acknowledged version reads back with its exact value, and
//! every stored version decrypts.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use keygate_tests::process::{DevProcess, H2Client, TestRng};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::json;

const PROJECT: &str = "crash";
const WRITERS: u64 = 8;
const ROUNDS: u64 = 4;
/// Versions written to one name before a writer moves to the next name. It
/// stays below the vault's default of 10 kept versions, so no acknowledged
/// version is purged by a later write.
const VERSIONS_PER_NAME: u64 = 6;
/// Time between the start of the writers and the kill, in milliseconds.
const KILL_AFTER_MS: (u64, u64) = (150, 1200);

/// Acknowledged versions: secret name, then version, then the value sent.
type Acked = Arc<Mutex<BTreeMap<String, BTreeMap<u32, String>>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let log = work.path().join("server.log");
    let mut rng = TestRng::from_env_or_clock();
    let acked: Acked = Arc::default();
    let problems: Arc<Mutex<Vec<String>>> = Arc::default();

    for round in 0..ROUNDS {
        let server = DevProcess::start(&data, &log);
        let token = server.admin_token();
        if round > 0 {
            verify(&server, &token, &acked).await;
        }

        let before = count(&acked);
        let mut writers = Vec::new();
        for writer in 0..WRITERS {
            let client = H2Client::connect(server.api_addr, &server.ca_path())
                .await
                .unwrap();
            writers.push(tokio::spawn(write_until_cut(
                client,
                token.clone(),
                format!("r{round}-w{writer}"),
                TestRng::new(rng.next_u64()),
                acked.clone(),
                problems.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_millis(
            rng.range(KILL_AFTER_MS.0, KILL_AFTER_MS.1),
        ))
        .await;
        let status = server.kill_hard();
        assert_eq!(status.signal(), Some(9), "round {round}: {status:?}");
        for writer in writers {
            tokio::time::timeout(Duration::from_secs(10), writer)
                .await
                .expect("a writer stops once the server is gone")
                .unwrap();
        }
        let written = count(&acked) - before;
        eprintln!("round {round}: {written} writes acknowledged before the kill");
        assert!(written > 0, "round {round}: no write was acknowledged");
    }

    let server = DevProcess::start(&data, &log);
    verify(&server, &server.admin_token(), &acked).await;
    let problems = problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "writers saw: {problems:#?}");
    assert!(
        count(&acked) >= 100,
        "only {} writes were acknowledged in all rounds; the test proves little",
        count(&acked)
    );
    assert!(server.stop().success(), "the server exits 0 on SIGTERM");
}

/// Stores new versions under names `{prefix}-0`, `{prefix}-1`, ... until the
/// connection breaks, recording each acknowledged version and value.
async fn write_until_cut(
    client: H2Client,
    token: String,
    prefix: String,
    mut rng: TestRng,
    acked: Acked,
    problems: Arc<Mutex<Vec<String>>>,
) {
    for sequence in 0u64.. {
        let name = format!("{prefix}-{}", sequence / VERSIONS_PER_NAME);
        let filler_len = rng.range(0, 4096) as usize;
        let filler: String = (0..filler_len)
            .map(|_| char::from(b'a' + (rng.next_u64() % 26) as u8))
            .collect();
        // The value states its filler's length, so a cut value is detected.
        let value = format!("{name}#{sequence}#{filler_len}#{filler}");
        let path = secret_path(&name, "");
        let body = json!({ "value": value });
        let (status, response) = match client
            .request(Method::PUT, &path, &token, Some(&body))
            .await
        {
            Ok(answer) => answer,
            // The server was killed; this write may or may not be stored.
            Err(_) => return,
        };
        if status != StatusCode::OK && status != StatusCode::CREATED {
            problems
                .lock()
                .unwrap()
                .push(format!("PUT {name} answered {status}: {response}"));
            return;
        }
        let Some(version) = response["version"].as_u64() else {
            problems
                .lock()
                .unwrap()
                .push(format!("PUT {name} answered without a version: {response}"));
            return;
        };
        let mut recorded = acked.lock().unwrap();
        let versions = recorded.entry(name.clone()).or_default();
        let expected = versions.keys().last().map_or(1, |last| last + 1);
        // This writer is the only one writing `name`, and the kill ends the
        // round, so its versions follow each other without gaps.
        if version != u64::from(expected) {
            problems.lock().unwrap().push(format!(
                "PUT {name} stored version {version}, expected {expected}"
            ));
        }
        versions.insert(version as u32, value);
    }
}

/// Checks that every acknowledged version reads back with its exact value,
/// and that every version of every stored secret decrypts.
async fn verify(server: &DevProcess, token: &str, acked: &Acked) {
    let acked = acked.lock().unwrap().clone();
    let client = H2Client::connect(server.api_addr, &server.ca_path())
        .await
        .unwrap();
    let stored = list_secret_names(&client, token).await;
    for name in acked.keys() {
        assert!(
            stored.contains(name),
            "acknowledged secret {name} is missing after the restart"
        );
    }

    let chunks: Vec<Vec<String>> = stored
        .chunks(stored.len().div_ceil(8).max(1))
        .map(<[String]>::to_vec)
        .collect();
    let mut checks = Vec::new();
    for chunk in chunks {
        let client = client.clone();
        let token = token.to_owned();
        let acked = acked.clone();
        checks.push(tokio::spawn(async move {
            let mut unacknowledged = 0;
            for name in chunk {
                unacknowledged += verify_secret(&client, &token, &name, acked.get(&name)).await;
            }
            unacknowledged
        }));
    }
    let mut unacknowledged = 0;
    for check in checks {
        unacknowledged += check.await.expect("a verification task panicked");
    }
    eprintln!(
        "verified {} secrets: {} acknowledged versions, and {unacknowledged} stored versions whose acknowledgement the kill cut off",
        stored.len(),
        acked.values().map(BTreeMap::len).sum::<usize>()
    );
}

/// Checks one secret's versions; returns how many of them were stored but
/// never acknowledged.
async fn verify_secret(
    client: &H2Client,
    token: &str,
    name: &str,
    acked: Option<&BTreeMap<u32, String>>,
) -> usize {
    let (status, metadata) = client
        .request(Method::GET, &secret_path(name, ""), token, None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "metadata of {name}: {metadata}");
    let current = metadata["current_version"]
        .as_u64()
        .unwrap_or_else(|| panic!("metadata of {name} has no current_version: {metadata}"))
        as u32;
    let newest_acked = acked
        .and_then(|versions| versions.keys().last().copied())
        .unwrap_or(0);
    assert!(
        current >= newest_acked,
        "{name}: current version {current} is older than acknowledged version {newest_acked}"
    );

    let mut unacknowledged = 0;
    for version in 1..=current {
        let path = secret_path(name, &format!("/value?version={version}"));
        let (status, body) = client
            .request(Method::GET, &path, token, None)
            .await
            .unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "version {version} of {name} does not read back: {body}"
        );
        assert_eq!(body["version"], json!(version), "{name}: {body}");
        let value = body["value"]
            .as_str()
            .unwrap_or_else(|| panic!("version {version} of {name} has no string value: {body}"));
        if let Some(expected) = acked.and_then(|versions| versions.get(&version)) {
            assert_eq!(
                value, expected,
                "version {version} of {name} reads back a different value"
            );
        } else {
            // A write the kill cut off, stored but never acknowledged: it must
            // still be a whole value this test wrote.
            assert!(
                is_whole_value(name, value),
                "unacknowledged version {version} of {name} holds {value:?}"
            );
            unacknowledged += 1;
        }
    }
    unacknowledged
}

/// Returns whether `value` is `{name}#{sequence}#{length}#{filler}` with a
/// filler of exactly `length` letters, as `write_until_cut` writes them.
fn is_whole_value(name: &str, value: &str) -> bool {
    let Some(rest) = value.strip_prefix(&format!("{name}#")) else {
        return false;
    };
    let mut parts = rest.splitn(3, '#');
    let (Some(sequence), Some(length), Some(filler)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    sequence.parse::<u64>().is_ok()
        && length.parse::<usize>() == Ok(filler.len())
        && filler.bytes().all(|byte| byte.is_ascii_lowercase())
}

async fn list_secret_names(client: &H2Client, token: &str) -> Vec<String> {
    let mut names = Vec::new();
    loop {
        let after = names
            .last()
            .map(|last: &String| format!("&after={}", utf8_percent_encode(last, NON_ALPHANUMERIC)))
            .unwrap_or_default();
        let path = format!("/v1/projects/{PROJECT}/secrets?limit=1000{after}");
        let (status, body) = client
            .request(Method::GET, &path, token, None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "list secrets: {body}");
        let page: Vec<String> = body["secrets"]
            .as_array()
            .unwrap_or_else(|| panic!("list secrets: {body}"))
            .iter()
            .map(|secret| secret["name"].as_str().unwrap().to_owned())
            .collect();
        let done = page.len() < 1000;
        names.extend(page);
        if done {
            return names;
        }
    }
}

fn secret_path(name: &str, suffix: &str) -> String {
    format!(
        "/v1/projects/{PROJECT}/secrets/{}{suffix}",
        utf8_percent_encode(name, NON_ALPHANUMERIC)
    )
}

fn count(acked: &Acked) -> usize {
    acked.lock().unwrap().values().map(BTreeMap::len).sum()
}

#[test]
fn whole_value_check_rejects_cut_values() {
    assert!(is_whole_value("r0-w1-2", "r0-w1-2#14#3#abc"));
    assert!(is_whole_value("r0-w1-2", "r0-w1-2#14#0#"));
    assert!(!is_whole_value("r0-w1-2", "r0-w1-2#14#3#ab"));
    assert!(!is_whole_value("r0-w1-2", "r0-w1-2#14#3"));
    assert!(!is_whole_value("r0-w1-2", "r0-w1-3#14#3#abc"));
}
