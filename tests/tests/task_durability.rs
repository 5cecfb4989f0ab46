//! Crash safety of tasks: callers submit tasks with idempotency keys while
//! the server is killed with SIGKILL. After a restart on the same data
//! folder, callers retry every key; each key maps to one task, and every
//! task completes once.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use keygate_tests::keygate_gateway::agent::{AgentOptions, TaskHandlers};
use keygate_tests::process::{keygate_bin, DevProcess, H2Client, TestRng};
use serde_json::{json, Value};
use tokio::sync::watch;

const SUBMITTERS: u64 = 6;
/// Time between the start of the submitters and the kill, in milliseconds.
const KILL_AFTER_MS: (u64, u64) = (200, 900);

/// The task ids returned for each key's submissions; several ids for one
/// key would mean a repeat created a second task.
type Answers = Arc<Mutex<BTreeMap<String, Vec<String>>>>;

struct Agent {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), keygate_tests::keygate_gateway::agent::AgentError>>,
}

fn start_agent(server: &DevProcess, id: &str, secret: &str) -> Agent {
    let dir = server.data_dir.join("agents").join(id);
    let options = AgentOptions {
        gateway: server.agent_addr.to_string(),
        server_name: "localhost".into(),
        ca_cert: dir.join("ca.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client-key.pem"),
        client_id: id.to_owned(),
        client_secret: secret.to_owned().into(),
        capacity: 16,
        instance_id: "crash-test".into(),
    };
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(keygate_tests::keygate_gateway::agent::run(
        options,
        TaskHandlers::builtin(),
        stop_rx,
    ));
    Agent { stop, task }
}

impl Agent {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

fn issue_agent_cert(data: &Path, id: &str) {
    let out = Command::new(keygate_bin())
        .args(["certs", "agent", "--data-dir"])
        .arg(data)
        .args(["--agent-id", id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every task sleeps this long on the agent, so some run when the kill comes.
const TASK_MS: u64 = 50;

fn task_body(key: &str) -> Value {
    let _ = key;
    json!({"kind": "sleep", "payload": {"ms": TASK_MS}, "wait_ms": 0, "timeout_ms": 120_000})
}

/// Submits tasks with fresh keys until the connection breaks.
async fn submit_until_cut(
    client: H2Client,
    token: String,
    agent_id: String,
    prefix: String,
    answers: Answers,
) {
    let path = format!("/v1/agents/{agent_id}/tasks");
    let mut n = 0;
    loop {
        let key = format!("{prefix}-{n}");
        answers.lock().unwrap().entry(key.clone()).or_default();
        let sent = client
            .request_with(
                Method::POST,
                &path,
                &token,
                &[("idempotency-key", &key)],
                Some(&task_body(&key)),
            )
            .await;
        match sent {
            Ok((status, body)) if status.is_success() => {
                let id = body["id"].as_str().unwrap().to_owned();
                answers.lock().unwrap().get_mut(&key).unwrap().push(id);
                n += 1;
            }
            Ok((StatusCode::TOO_MANY_REQUESTS, _)) => {
                // The agent's queue is full: the same key is retried.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok((status, body)) => panic!("submission {key} got {status}: {body}"),
            Err(_) => return,
        }
    }
}

/// Polls a task until it is final; returns its view.
async fn wait_final(client: &H2Client, token: &str, task_id: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..1200 {
        let (_, body) = client
            .request(Method::GET, &format!("/v1/tasks/{task_id}"), token, None)
            .await
            .unwrap();
        if !matches!(
            body["status"].as_str(),
            Some("queued" | "dispatched" | "running")
        ) {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {task_id} did not finish within 60 s: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accepted_tasks_complete_once_after_kill_9() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let log = work.path().join("server.log");
    let mut rng = TestRng::from_env_or_clock();
    let answers: Answers = Arc::default();

    let server = DevProcess::start(&data, &log);
    let token = server.admin_token();
    let client = H2Client::connect(server.api_addr, &server.ca_path())
        .await
        .unwrap();
    let (status, created) = client
        .request(
            Method::POST,
            "/v1/agents",
            &token,
            Some(&json!({"name": "crash"})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let agent_id = created["client_id"].as_str().unwrap().to_owned();
    let secret = created["client_secret"].as_str().unwrap().to_owned();
    issue_agent_cert(&data, &agent_id);
    let agent = start_agent(&server, &agent_id, &secret);
    for _ in 0..200 {
        let (_, shown) = client
            .request(Method::GET, &format!("/v1/agents/{agent_id}"), &token, None)
            .await
            .unwrap();
        if shown["connected"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut submitters = Vec::new();
    for s in 0..SUBMITTERS {
        let client = H2Client::connect(server.api_addr, &server.ca_path())
            .await
            .unwrap();
        submitters.push(tokio::spawn(submit_until_cut(
            client,
            token.clone(),
            agent_id.clone(),
            format!("s{s}"),
            answers.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(
        rng.range(KILL_AFTER_MS.0, KILL_AFTER_MS.1),
    ))
    .await;
    let status = server.kill_hard();
    assert_eq!(status.signal(), Some(9), "{status:?}");
    for submitter in submitters {
        tokio::time::timeout(Duration::from_secs(10), submitter)
            .await
            .expect("a submitter stops once the server is gone")
            .unwrap();
    }
    agent.stop().await;
    let accepted = answers
        .lock()
        .unwrap()
        .values()
        .filter(|ids| !ids.is_empty())
        .count();
    eprintln!("{accepted} tasks accepted before the kill");
    assert!(accepted > 0, "no task was accepted before the kill");

    // The callers retry every key, including those whose response the kill cut off.
    let server = DevProcess::start(&data, &log);
    let client = H2Client::connect(server.api_addr, &server.ca_path())
        .await
        .unwrap();
    let agent = start_agent(&server, &agent_id, &secret);
    let keys: Vec<String> = answers.lock().unwrap().keys().cloned().collect();
    for key in &keys {
        let (status, body) = loop {
            let (status, body) = client
                .request_with(
                    Method::POST,
                    &format!("/v1/agents/{agent_id}/tasks"),
                    &token,
                    &[("idempotency-key", key)],
                    Some(&task_body(key)),
                )
                .await
                .unwrap();
            if status != StatusCode::TOO_MANY_REQUESTS {
                break (status, body);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.is_success(), "retry of {key}: {status} {body}");
        let id = body["id"].as_str().unwrap().to_owned();
        answers.lock().unwrap().get_mut(key).unwrap().push(id);
    }

    let answers = answers.lock().unwrap().clone();
    for (key, ids) in &answers {
        let first = &ids[0];
        assert!(
            ids.iter().all(|id| id == first),
            "key {key} maps to several tasks: {ids:?}"
        );
        let task = wait_final(&client, &token, first).await;
        assert_eq!(task["status"], "succeeded", "key {key}: {task}");
        assert_eq!(task["result"], json!({"slept_ms": TASK_MS}), "key {key}");
    }
    agent.stop().await;
    assert!(server.stop().success());
}
