//! Reloading TLS material without a restart: on request, on a file change
//! and on SIGHUP to the binary, keeping open agent sessions; failed reloads
//! keep the previous configuration.

mod tls_support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;
use keygate_gateway::devinit::DEV_SERVER_NAMES;
use keygate_gateway::pki::ClientCertParams;
use keygate_gateway::tls::TlsError;
use keygate_tests::{TestServer, ACCOUNT};
use rustls::AlertDescription;
use serde_json::{json, Value};
use tls_support::{
    der_of, dev_ca, eventually, metric_value, metrics_text, present_certificate,
    served_certificate, write_client_cert, Verdict,
};

const SUCCESSES: &str = r#"keygate_tls_reloads_total{result="success"}"#;
const FAILURES: &str = r#"keygate_tls_reloads_total{result="failure"}"#;

/// Issues a new server certificate from the development CA and writes it
/// over the configured files; returns the new certificate's PEM.
fn replace_server_cert(server: &TestServer) -> String {
    let issued = dev_ca(&server.config)
        .issue_server_cert(&DEV_SERVER_NAMES)
        .expect("server certificate");
    issued
        .write(
            &server.config.server_cert_path(),
            &server.config.server_key_path(),
        )
        .expect("write server certificate");
    issued.cert_pem
}

fn session_id(server: &TestServer, agent_id: &str) -> String {
    server
        .server()
        .state()
        .sessions
        .get(agent_id)
        .expect("a session")
        .session_id
        .clone()
}

async fn assert_echo_succeeds(server: &TestServer, agent_id: &str) {
    let (status, body) = server
        .submit(agent_id, json!({"kind": "echo", "payload": {"n": 1}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "succeeded", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_reload_keeps_sessions() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 2).await;
    let session_before = session_id(&server, &creds.id);
    let old_cert = served_certificate(server.api_addr, &server.ca_path(), None).await;

    let new_pem = replace_server_cert(&server);
    server.server().reload_tls().expect("reload");

    let new_cert = der_of(&new_pem);
    assert_ne!(new_cert, old_cert);
    assert_eq!(
        served_certificate(server.api_addr, &server.ca_path(), None).await,
        new_cert,
        "API listener"
    );
    assert_eq!(
        served_certificate(server.agent_addr, &server.ca_path(), Some(&creds.dir)).await,
        new_cert,
        "agent listener"
    );
    assert_eq!(
        session_id(&server, &creds.id),
        session_before,
        "the agent session opened before the reload stays connected"
    );
    assert_echo_succeeds(&server, &creds.id).await;

    let metrics = metrics_text(&server).await;
    assert_eq!(metric_value(&metrics, SUCCESSES), Some(1.0), "{metrics}");
    assert_eq!(metric_value(&metrics, FAILURES), Some(0.0), "{metrics}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expiry_exported() {
    let server = TestServer::start().await;
    let metrics = metrics_text(&server).await;
    let day = 86_400.0;
    let server_expiry = metric_value(
        &metrics,
        r#"keygate_tls_certificate_expiry_seconds{certificate="server"}"#,
    )
    .expect("server certificate expiry");
    let ca_expiry = metric_value(
        &metrics,
        r#"keygate_tls_certificate_expiry_seconds{certificate="client_ca"}"#,
    )
    .expect("client CA expiry");
    // The development CA issues server certificates for 365 days and itself for 3650.
    assert!(
        (364.0 * day..=365.0 * day).contains(&server_expiry),
        "{server_expiry}"
    );
    assert!(
        (3649.0 * day..=3650.0 * day).contains(&ca_expiry),
        "{ca_expiry}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_reloads_keep_old_configuration() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    // The clients trust a copy of the CA, because one case breaks the server's CA bundle.
    let trusted_ca = server.dir.path().join("trusted-ca.pem");
    std::fs::copy(server.ca_path(), &trusted_ca).unwrap();
    let served = served_certificate(server.api_addr, &trusted_ca, None).await;
    let config = &server.config;
    let original_key = std::fs::read_to_string(config.server_key_path()).unwrap();

    // A key that belongs to another certificate.
    let other = dev_ca(config)
        .issue_server_cert(&DEV_SERVER_NAMES)
        .expect("server certificate");
    std::fs::write(config.server_key_path(), other.key_pem.as_bytes()).unwrap();
    match server.server().reload_tls() {
        Err(TlsError::KeyMismatch { key, .. }) => {
            assert_eq!(PathBuf::from(key), config.server_key_path())
        }
        other => panic!("mismatched key: expected KeyMismatch, got {other:?}"),
    }
    assert_eq!(
        served_certificate(server.api_addr, &trusted_ca, None).await,
        served,
        "the old certificate is still served after a mismatched key"
    );
    assert_eq!(
        present_certificate(
            server.agent_addr,
            &trusted_ca,
            &creds.dir,
            &rustls::version::TLS13
        )
        .await,
        Verdict::Accepted,
        "the agent listener still accepts agents after a mismatched key"
    );

    std::fs::write(config.server_key_path(), original_key.as_bytes()).unwrap();
    let cases: [(&str, PathBuf, &[u8]); 3] = [
        (
            "server certificate without PEM",
            config.server_cert_path(),
            b"not a certificate",
        ),
        (
            "server key without PEM",
            config.server_key_path(),
            b"not a key",
        ),
        (
            "CA bundle without certificates",
            config.client_ca_path(),
            b"# empty bundle\n",
        ),
    ];
    for (case, path, contents) in cases {
        let original = std::fs::read(&path).unwrap();
        std::fs::write(&path, contents).unwrap();
        let message = match server.server().reload_tls() {
            Err(e) => e.to_string(),
            Ok(()) => panic!("{case}: the reload succeeded"),
        };
        assert!(
            message.contains(&path.display().to_string()),
            "{case}: the error names the file: {message}"
        );
        assert_eq!(
            served_certificate(server.api_addr, &trusted_ca, None).await,
            served,
            "{case}: the old certificate is still served"
        );
        std::fs::write(&path, original).unwrap();
    }

    let metrics = metrics_text(&server).await;
    assert_eq!(metric_value(&metrics, SUCCESSES), Some(0.0), "{metrics}");
    assert_eq!(metric_value(&metrics, FAILURES), Some(4.0), "{metrics}");

    // With every file valid again, a reload succeeds.
    server
        .server()
        .reload_tls()
        .expect("reload of the restored files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_reload_rejects_next_connection() {
    const AGENT_SERIAL: u64 = 0x0A6E_0001;
    let server = TestServer::start_with(|config| {
        let crl = dev_ca(config).issue_crl(&[]).expect("CRL");
        let path = config.data_dir.join("tls/agents.crl");
        std::fs::write(&path, crl.pem).expect("write CRL");
        config.tls.client_crl = Some(path);
    })
    .await;
    let crl_path = server.config.tls.client_crl.clone().unwrap();
    let creds = server.create_agent(ACCOUNT).await;
    let mut params = ClientCertParams::new(&creds.id);
    params.serial = Some(AGENT_SERIAL);
    write_client_cert(&dev_ca(&server.config), &params, &creds.dir);
    let agent = server.start_agent(&creds, 2).await;
    let session_before = session_id(&server, &creds.id);

    std::fs::write(&crl_path, b"\x30\x03\x02\x01").unwrap();
    let error = server
        .server()
        .reload_tls()
        .expect_err("an unparsable CRL is rejected");
    assert!(
        matches!(error, TlsError::Crl { ref path, .. } if std::path::Path::new(path) == crl_path),
        "{error}"
    );

    let crl = dev_ca(&server.config)
        .issue_crl(&[AGENT_SERIAL])
        .expect("CRL");
    std::fs::write(&crl_path, &crl.der).unwrap();
    server.server().reload_tls().expect("reload with a DER CRL");

    assert_eq!(
        present_certificate(
            server.agent_addr,
            &server.ca_path(),
            &creds.dir,
            &rustls::version::TLS13
        )
        .await,
        Verdict::Rejected(AlertDescription::CertificateRevoked),
        "a new connection with the revoked certificate"
    );
    assert_eq!(
        session_id(&server, &creds.id),
        session_before,
        "the session opened before the CRL stays connected"
    );
    assert_echo_succeeds(&server, &creds.id).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_files_reload_by_polling() {
    let server = TestServer::start_with(|config| config.tls.reload_check_interval_ms = 200).await;
    let old_cert = served_certificate(server.api_addr, &server.ca_path(), None).await;

    let started = Instant::now();
    let new_cert = der_of(&replace_server_cert(&server));
    assert_ne!(new_cert, old_cert);
    let reloaded = eventually(Duration::from_secs(5), || async {
        served_certificate(server.api_addr, &server.ca_path(), None).await == new_cert
    })
    .await;
    assert!(reloaded, "the new certificate was not served within 5 s");
    // A change is reloaded once it has stayed the same for one 200 ms interval.
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "reloaded after {:?}",
        started.elapsed()
    );

    // An unchanged file is not reloaded again.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let metrics = metrics_text(&server).await;
    assert_eq!(metric_value(&metrics, SUCCESSES), Some(1.0), "{metrics}");
}

/// Returns the `keygate` binary next to this test's deps folder, or `KEYGATE_BIN`.
fn keygate_bin() -> PathBuf {
    if let Ok(path) = std::env::var("KEYGATE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("keygate");
    assert!(
        bin.exists(),
        "{} is missing; build it with `cargo build --release --bin keygate` (scripts/test.sh does) or set KEYGATE_BIN",
        bin.display()
    );
    bin
}

/// Reads JSON log lines from `lines` until one has the message `expected_message`; returns it.
fn wait_for_log(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    expected_message: &str,
) -> Value {
    for line in lines {
        let line = line.expect("log line");
        if let Ok(entry) = serde_json::from_str::<Value>(&line) {
            if entry["message"] == expected_message {
                return entry;
            }
        }
    }
    panic!("the log ended before a line with message {expected_message:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_binary() {
    let work = tempfile::tempdir().unwrap();
    let mut config = keygate_tests::loopback_config(&work.path().join("data"));
    // Long enough that only SIGHUP can cause the reload within the test.
    config.tls.reload_check_interval_ms = 600_000;
    keygate_gateway::devinit::ensure_material(&config).expect("dev material");
    let config_path = work.path().join("keygate.toml");
    std::fs::write(
        &config_path,
        format!(
            "data_dir = {:?}\n[listen]\nagent = \"127.0.0.1:0\"\napi = \"127.0.0.1:0\"\nops = \"127.0.0.1:0\"\n[tls]\nreload_check_interval_ms = 600000\n",
            config.data_dir.display().to_string()
        ),
    )
    .unwrap();

    let mut child = Command::new(keygate_bin())
        .args(["serve", "--config"])
        .arg(&config_path)
        .args(["--log-format", "json", "--log-filter", "info"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let started = wait_for_log(&mut lines, "keygate started");
    let api_addr: SocketAddr = started["api_addr"]
        .as_str()
        .expect("api_addr in the start line")
        .parse()
        .unwrap();
    let ca = config.data_dir.join("tls/ca.pem");
    let old_cert = served_certificate(api_addr, &ca, None).await;

    let issued = dev_ca(&config)
        .issue_server_cert(&DEV_SERVER_NAMES)
        .expect("server certificate");
    issued
        .write(&config.server_cert_path(), &config.server_key_path())
        .unwrap();
    let hangup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hangup.success());
    let reloaded = wait_for_log(&mut lines, "TLS configuration reloaded");
    assert_eq!(reloaded["trigger"], "SIGHUP", "{reloaded}");

    let new_cert = served_certificate(api_addr, &ca, None).await;
    assert_ne!(new_cert, old_cert);
    assert_eq!(new_cert, der_of(&issued.cert_pem));

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    std::thread::spawn(move || for _ in lines {});
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("keygate did not exit within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}
