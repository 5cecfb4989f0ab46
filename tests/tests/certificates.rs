//! Client certificate checks of the agent listener's TLS handshake, ALPN,
//! and the reference agent's back-off when its certificate is rejected.

mod tls_support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keygate_gateway::agent::{AgentOptions, TaskHandlers};
use keygate_gateway::pki::{ClientCertParams, DevCa, KeyPurpose};
use keygate_tests::{TestServer, ACCOUNT};
use rustls::AlertDescription;
use tls_support::{
    client_config, dev_ca, present_certificate, tls_connect, write_client_cert, Verdict,
    TLS_VERSIONS,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const DAY: Duration = Duration::from_secs(86_400);
const REVOKED_SERIAL: u64 = 0x5EED_0001;
const GOOD_SERIAL: u64 = 0x5EED_0002;

/// Starts a server whose `tls.client_crl` lists `REVOKED_SERIAL`, in the PEM or DER encoding.
async fn server_with_crl(der: bool) -> TestServer {
    TestServer::start_with(|config| {
        let crl = dev_ca(config).issue_crl(&[REVOKED_SERIAL]).expect("CRL");
        let path = config.data_dir.join("tls/agents.crl");
        if der {
            std::fs::write(&path, &crl.der).expect("write CRL");
        } else {
            std::fs::write(&path, &crl.pem).expect("write CRL");
        }
        config.tls.client_crl = Some(path);
    })
    .await
}

fn server_ca(server: &TestServer) -> DevCa {
    dev_ca(&server.config)
}

/// Issues a certificate with `adjust` applied to the default client parameters, into a new folder under the server's.
fn issue(
    server: &TestServer,
    name: &str,
    adjust: impl FnOnce(&mut ClientCertParams),
) -> std::path::PathBuf {
    let mut params = ClientCertParams::new("agt_certificate_test");
    adjust(&mut params);
    let dir = server.dir.path().join("client-certs").join(name);
    write_client_cert(&server_ca(server), &params, &dir);
    dir
}

async fn verdicts(server: &TestServer, client_dir: &Path) -> Vec<(&'static str, Verdict)> {
    let mut results = Vec::new();
    for (name, version) in TLS_VERSIONS {
        let verdict =
            present_certificate(server.agent_addr, &server.ca_path(), client_dir, version).await;
        results.push((name, verdict));
    }
    results
}

async fn assert_verdict(server: &TestServer, client_dir: &Path, expected: Verdict, case: &str) {
    for (version, verdict) in verdicts(server, client_dir).await {
        assert_eq!(verdict, expected, "{case} over {version}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_certificate_accepted() {
    let server = server_with_crl(false).await;
    let good = issue(&server, "good", |p| p.serial = Some(GOOD_SERIAL));
    assert_verdict(
        &server,
        &good,
        Verdict::Accepted,
        "a valid certificate the CRL does not list",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_auth_only_certificate_rejected() {
    let server = TestServer::start().await;
    let dir = issue(&server, "server-auth", |p| {
        p.purpose = KeyPurpose::ServerAuth
    });
    assert_verdict(
        &server,
        &dir,
        Verdict::Rejected(AlertDescription::UnsupportedCertificate),
        "a certificate without the clientAuth extended key usage",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_rejected() {
    let server = TestServer::start().await;
    let now = SystemTime::now();
    let dir = issue(&server, "expired", |p| {
        p.not_before = now - 10 * DAY;
        p.not_after = now - DAY;
    });
    assert_verdict(
        &server,
        &dir,
        Verdict::Rejected(AlertDescription::CertificateExpired),
        "an expired certificate",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_yet_valid_certificate_rejected() {
    let server = TestServer::start().await;
    let now = SystemTime::now();
    let dir = issue(&server, "not-yet-valid", |p| {
        p.not_before = now + DAY;
        p.not_after = now + 10 * DAY;
    });
    // RFC 8446 uses certificate_expired for any certificate outside its validity period.
    assert_verdict(
        &server,
        &dir,
        Verdict::Rejected(AlertDescription::CertificateExpired),
        "a certificate that is not valid yet",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_certificate_rejected() {
    for der in [false, true] {
        let encoding = if der { "DER" } else { "PEM" };
        let server = server_with_crl(der).await;
        let revoked = issue(&server, "revoked", |p| p.serial = Some(REVOKED_SERIAL));
        assert_verdict(
            &server,
            &revoked,
            Verdict::Rejected(AlertDescription::CertificateRevoked),
            &format!("a certificate a {encoding} CRL lists"),
        )
        .await;
        let good = issue(&server, "good", |p| p.serial = Some(GOOD_SERIAL));
        assert_verdict(
            &server,
            &good,
            Verdict::Accepted,
            &format!("a certificate a {encoding} CRL does not list"),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_other_ca_rejected() {
    let server = TestServer::start().await;
    let other_ca = DevCa::generate("another CA").unwrap();
    let dir = server.dir.path().join("client-certs/other-ca");
    write_client_cert(&other_ca, &ClientCertParams::new("agt_other"), &dir);
    assert_verdict(
        &server,
        &dir,
        Verdict::Rejected(AlertDescription::UnknownCA),
        "a certificate signed by another CA",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_same_named_ca_rejected() {
    let server = TestServer::start().await;
    let other = tempfile::tempdir().unwrap();
    let (impostor_ca, _) = DevCa::load_or_create(other.path()).unwrap();
    let dir = server.dir.path().join("client-certs/same-named-ca");
    write_client_cert(&impostor_ca, &ClientCertParams::new("agt_other"), &dir);
    // Every development CA has the same name, so the chain reaches the
    // trusted CA by name and its signature check fails, which rustls reports
    // as decrypt_error.
    assert_verdict(
        &server,
        &dir,
        Verdict::Rejected(AlertDescription::DecryptError),
        "a certificate signed by another CA with the same name",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_prefers_h2() {
    let server = TestServer::start().await;
    let dir = issue(&server, "alpn", |_| {});
    let offers: [(&[&[u8]], &[u8]); 3] = [
        (&[b"h2", b"http/1.1"], b"h2"),
        (&[b"http/1.1", b"h2"], b"h2"),
        (&[b"http/1.1"], b"http/1.1"),
    ];
    for (offered, expected) in offers {
        let config = client_config(
            &server.ca_path(),
            Some(&dir),
            &rustls::version::TLS13,
            offered,
        );
        let stream = tls_connect(server.agent_addr, config)
            .await
            .expect("handshake");
        assert_eq!(
            stream.get_ref().1.alpn_protocol(),
            Some(expected),
            "client offering {offered:?}"
        );
    }
}

/// Forwards loopback connections to `target` and counts them, so a test can see how often an agent connects.
async fn counting_forwarder(target: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        // Bounded: a test never needs more, and the task ends with the test's runtime.
        for _ in 0..100 {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_backs_off_when_certificate_revoked() {
    let server = server_with_crl(false).await;
    let creds = server.create_agent(ACCOUNT).await;
    let mut params = ClientCertParams::new(&creds.id);
    params.serial = Some(REVOKED_SERIAL);
    write_client_cert(&server_ca(&server), &params, &creds.dir);

    let (forwarder, connections) = counting_forwarder(server.agent_addr).await;
    let options = AgentOptions {
        gateway: forwarder.to_string(),
        server_name: "localhost".into(),
        ca_cert: creds.dir.join("ca.pem"),
        client_cert: creds.dir.join("client.pem"),
        client_key: creds.dir.join("client-key.pem"),
        client_id: creds.id.clone(),
        client_secret: creds.secret.clone().into(),
        capacity: 1,
        instance_id: "revoked-instance".into(),
    };
    let (stop, stop_rx) = watch::channel(false);
    let agent = tokio::spawn(keygate_gateway::agent::run(
        options,
        TaskHandlers::builtin(),
        stop_rx,
    ));

    // A network error would be retried after at most 0.4, 0.8 and 1.6 s,
    // but a rejected certificate waits 60 s before the next attempt.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "the agent retried quickly after its certificate was rejected"
    );
    assert!(!agent.is_finished(), "the agent keeps running and waits");
    assert!(server.server().state().sessions.get(&creds.id).is_none());

    let _ = stop.send(true);
    let result = tokio::time::timeout(Duration::from_secs(5), agent)
        .await
        .expect("the agent stops within 5 s");
    assert!(matches!(result, Ok(Ok(()))), "agent result: {result:?}");
}
