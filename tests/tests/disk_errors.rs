//! A full or read-only file system under the store: writes fail with a 503
//! or 507 problem that names the folder and what to do, the store stays
//! readable, and nothing stored is lost.
//!
//! Every vault access, reads included, first stores an audit record in the
//! same store and is refused with 503 `audit-unavailable` when that record
//! cannot be written. So while the file system is full or read-only, the API
//! refuses value reads too, and the tests check the store's readability
//! through `/readyz`, the read-only `keygate token issue`, and the values
//! read back once the file system is writable again.
//!
//! Each server runs in a private mount namespace (`unshare --mount`) with its
//! `data_dir/db` on a file system of its own. The full-disk case uses a small
//! tmpfs. The read-only case uses an ext4 image on a loop device, which the
//! kernel's ext4 error trigger (`/sys/fs/ext4/DEV/trigger_fs_error`) turns
//! read-only the way a disk error does. Both need root (or the rights to
//! create mount namespaces) and skip with a note where those are missing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use keygate_tests::process::{keygate_bin, DevProcess, H2Client};
use serde_json::{json, Value};

const PROJECT: &str = "disk";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_rejects_writes() {
    let work = tempfile::tempdir().unwrap();
    if !can_mount_tmpfs(work.path()) {
        eprintln!("skipped: cannot mount a tmpfs in a new mount namespace here (needs root or user namespaces, and unshare from util-linux)");
        return;
    }
    let data = work.path().join("data");
    let db = data.join("db");
    std::fs::create_dir_all(&db).unwrap();
    // Small enough that RocksDB's WAL preallocation (about 70 MiB) fails and
    // the log grows page by page, so it meets the full disk on a write.
    let script = r#"mount -t tmpfs -o size=12m,mode=0700 keygate-test "$KEYGATE_TEST_DB" && exec "$KEYGATE_TEST_BIN" "$@""#;
    let server = DevProcess::start_with(
        namespaced(script, &db, None),
        &data,
        &work.path().join("server.log"),
    );
    let token = server.admin_token();
    let client = H2Client::connect(server.api_addr, &server.ca_path())
        .await
        .unwrap();
    put(&client, &token, "before", "value-before-the-disk-filled").await;

    let filler = fill_file_system(server.pid(), &db);

    let mut stored = Vec::new();
    let mut rejection = None;
    for attempt in 0..500 {
        let value = format!("attempt-{attempt}-{}", "x".repeat(2000));
        let (status, body) = try_put(&client, &token, "during", &value).await;
        if status.is_success() {
            stored.push(value);
            continue;
        }
        rejection = Some((status, body));
        break;
    }
    let (status, body) = rejection.expect("a write failed once the disk was full");
    assert_storage_problem(
        status,
        &body,
        StatusCode::INSUFFICIENT_STORAGE,
        "storage-full",
    );
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains(&db.display().to_string()), "{detail}");
    assert!(detail.contains("no space left"), "{detail}");
    assert!(detail.contains("free space"), "{detail}");

    let (status, body) = try_put(&client, &token, "during", "small").await;
    assert_storage_problem(
        status,
        &body,
        StatusCode::INSUFFICIENT_STORAGE,
        "storage-full",
    );

    let (status, body) = read(&client, &token, "before", 1).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a read whose audit record cannot be stored is refused: {body}"
    );
    assert_not_ready(server.ops_addr, &db).await;
    assert_store_readable(server.pid(), &data);

    // RocksDB takes writes again once the free space reaches its write buffer
    // size (64 MiB by default), which it checks about every 5 seconds. The
    // tmpfs is grown to get there, as an operator would add space.
    std::fs::remove_file(&filler).unwrap();
    let grown = Command::new("nsenter")
        .args(["--mount", "--target", &server.pid().to_string()])
        .args(["mount", "-o", "remount,size=160m"])
        .arg(&db)
        .status()
        .unwrap();
    assert!(grown.success(), "growing the tmpfs failed");
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (status, body) = try_put(&client, &token, "after", "space is back").await;
        if status.is_success() {
            break;
        }
        assert_storage_problem(
            status,
            &body,
            StatusCode::INSUFFICIENT_STORAGE,
            "storage-full",
        );
        assert!(
            Instant::now() < deadline,
            "writes did not resume within 40 s of freeing space: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    assert_eq!(
        read(&client, &token, "before", 1).await,
        (StatusCode::OK, json!("value-before-the-disk-filled"))
    );
    for (index, value) in stored.iter().enumerate() {
        let version = index as u32 + 1;
        assert_eq!(
            read(&client, &token, "during", version).await,
            (StatusCode::OK, json!(value)),
            "version {version}, stored before the disk filled"
        );
    }
    let (status, _) = read(&client, &token, "during", stored.len() as u32 + 1).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the rejected writes left nothing"
    );
    assert_eq!(
        read(&client, &token, "after", 1).await,
        (StatusCode::OK, json!("space is back"))
    );
    assert!(server.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_disk_rejects_writes() {
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("db.ext4");
    if !make_ext4_image(&image) || !can_mount_image(work.path(), &image) {
        eprintln!("skipped: cannot mount an ext4 image on a loop device in a new mount namespace here (needs root, /dev/loop-control, mkfs.ext4 from e2fsprogs and unshare from util-linux)");
        return;
    }
    let data = work.path().join("data");
    let db = data.join("db");
    std::fs::create_dir_all(&db).unwrap();
    let log = work.path().join("server.log");
    let script = r#"mount -o loop,errors=remount-ro "$KEYGATE_TEST_IMAGE" "$KEYGATE_TEST_DB" && exec "$KEYGATE_TEST_BIN" "$@""#;
    let server = DevProcess::start_with(namespaced(script, &db, Some(&image)), &data, &log);
    let token = server.admin_token();
    let client = H2Client::connect(server.api_addr, &server.ca_path())
        .await
        .unwrap();
    put(&client, &token, "kept", "value-before-the-error").await;
    put(&client, &token, "kept", "second-value-before-the-error").await;

    let device = mounted_device(server.pid(), &db);
    let trigger = format!("/sys/fs/ext4/{device}/trigger_fs_error");
    std::fs::write(&trigger, b"1").unwrap_or_else(|e| panic!("write {trigger}: {e}"));

    let (status, body) = try_put(&client, &token, "kept", "after-the-error").await;
    assert_storage_problem(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "storage-read-only",
    );
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains(&db.display().to_string()), "{detail}");
    assert!(detail.contains("read-only"), "{detail}");
    assert!(detail.contains("make it writable"), "{detail}");

    let (status, body) = try_put(&client, &token, "new", "another").await;
    assert_storage_problem(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "storage-read-only",
    );
    let (status, body) = read(&client, &token, "kept", 1).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a read whose audit record cannot be stored is refused: {body}"
    );
    assert_not_ready(server.ops_addr, &db).await;
    assert_store_readable(server.pid(), &data);
    server.stop();

    // The file system check replays the journal that the error left behind,
    // which a read-only mount cannot do.
    let check = Command::new("e2fsck")
        .args(["-f", "-y"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        matches!(check.status.code(), Some(0..=1)),
        "e2fsck: {}",
        String::from_utf8_lossy(&check.stdout)
    );

    // A start on the folder, now mounted read-only, fails with the same advice.
    let read_only = r#"mount -o loop,ro "$KEYGATE_TEST_IMAGE" "$KEYGATE_TEST_DB" && exec "$KEYGATE_TEST_BIN" "$@""#;
    let out = namespaced(read_only, &db, Some(&image))
        .args(["dev", "--data-dir"])
        .arg(&data)
        .args([
            "--agent-addr",
            "127.0.0.1:0",
            "--api-addr",
            "127.0.0.1:0",
            "--ops-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("read-only"), "{stderr}");
    assert!(stderr.contains(&db.display().to_string()), "{stderr}");

    // The store stays readable: the token command reads the signing keys from
    // it, opened read-only.
    let out = namespaced(read_only, &db, Some(&image))
        .args(["token", "issue", "--data-dir"])
        .arg(&data)
        .args([
            "--subject",
            "reader",
            "--account",
            "dev",
            "--scope",
            "secrets:read",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token_text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(token_text.trim().split('.').count(), 3, "{token_text}");

    // Once the file system is writable again, every value written before the
    // error reads back and the rejected write left nothing.
    let writable = r#"mount -o loop "$KEYGATE_TEST_IMAGE" "$KEYGATE_TEST_DB" && exec "$KEYGATE_TEST_BIN" "$@""#;
    let server = DevProcess::start_with(namespaced(writable, &db, Some(&image)), &data, &log);
    let token = server.admin_token();
    let client = H2Client::connect(server.api_addr, &server.ca_path())
        .await
        .unwrap();
    assert_eq!(
        read(&client, &token, "kept", 1).await,
        (StatusCode::OK, json!("value-before-the-error"))
    );
    assert_eq!(
        read(&client, &token, "kept", 2).await,
        (StatusCode::OK, json!("second-value-before-the-error"))
    );
    let (status, _) = read(&client, &token, "kept", 3).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the rejected write left nothing"
    );
    put(&client, &token, "kept", "written-after-the-repair").await;
    assert!(server.stop().success());
}

/// Checks a rejected write: `direct` with the store's own problem type, or 503
/// `audit-unavailable` when the audit record written before the change
/// failed first. Both carry the store's message in their detail.
fn assert_storage_problem(status: StatusCode, body: &Value, direct: StatusCode, problem: &str) {
    let audit = status == StatusCode::SERVICE_UNAVAILABLE
        && body["type"] == "urn:keygate:problem:audit-unavailable";
    let store = status == direct && body["type"] == format!("urn:keygate:problem:{problem}");
    assert!(
        audit || store,
        "expected {direct} {problem} or 503 audit-unavailable, got {status}: {body}"
    );
}

/// Builds a command that runs `script` with `sh` in a new private mount
/// namespace. The script finds the database folder, the image and the
/// `keygate` binary in `KEYGATE_TEST_DB`, `KEYGATE_TEST_IMAGE` and
/// `KEYGATE_TEST_BIN`, and the arguments appended to the command in `"$@"`.
fn namespaced(script: &str, db: &Path, image: Option<&Path>) -> Command {
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .arg("keygate-test")
        .env("KEYGATE_TEST_DB", db)
        .env("KEYGATE_TEST_BIN", keygate_bin());
    if let Some(image) = image {
        command.env("KEYGATE_TEST_IMAGE", image);
    }
    command
}

fn can_mount_tmpfs(work: &Path) -> bool {
    let probe = work.join("probe");
    std::fs::create_dir_all(&probe).unwrap();
    quiet_success(
        namespaced(
            r#"mount -t tmpfs -o size=1m probe "$KEYGATE_TEST_DB""#,
            &probe,
            None,
        )
        .stdout(Stdio::null()),
    )
}

fn make_ext4_image(image: &Path) -> bool {
    let file = std::fs::File::create(image).unwrap();
    file.set_len(128 * 1024 * 1024).unwrap();
    quiet_success(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image))
}

fn can_mount_image(work: &Path, image: &Path) -> bool {
    let probe = work.join("probe-image");
    std::fs::create_dir_all(&probe).unwrap();
    quiet_success(&mut namespaced(
        r#"mount -o loop,ro "$KEYGATE_TEST_IMAGE" "$KEYGATE_TEST_DB""#,
        &probe,
        Some(image),
    ))
}

fn quiet_success(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Fills the file system mounted at `db` in the mount namespace of process
/// `pid` with one file until a write fails for lack of space. Returns the
/// file's path as this process reaches it.
fn fill_file_system(pid: u32, db: &Path) -> PathBuf {
    let inside = PathBuf::from(format!("/proc/{pid}/root")).join(db.strip_prefix("/").unwrap());
    let path = inside.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    for chunk in [64 * 1024, 4096, 512] {
        let block = vec![0u8; chunk];
        loop {
            match file.write_all(&block) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    path
}

/// Returns the device name (such as `loop3`) mounted at `mount_point` in the
/// mount namespace of process `pid`.
fn mounted_device(pid: u32, mount_point: &Path) -> String {
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(separator) = fields.iter().position(|field| *field == "-") else {
            continue;
        };
        if fields.get(4) == Some(&mount_point.to_str().unwrap()) {
            let source = fields[separator + 2];
            return source.rsplit('/').next().unwrap().to_owned();
        }
    }
    panic!(
        "{} is not a mount point of process {pid}:\n{mountinfo}",
        mount_point.display()
    );
}

async fn put(client: &H2Client, token: &str, name: &str, value: &str) {
    let (status, body) = try_put(client, token, name, value).await;
    assert!(status.is_success(), "PUT {name}: {status} {body}");
}

async fn try_put(client: &H2Client, token: &str, name: &str, value: &str) -> (StatusCode, Value) {
    client
        .request(
            Method::PUT,
            &format!("/v1/projects/{PROJECT}/secrets/{name}"),
            token,
            Some(&json!({ "value": value })),
        )
        .await
        .unwrap()
}

async fn read(client: &H2Client, token: &str, name: &str, version: u32) -> (StatusCode, Value) {
    let (status, body) = client
        .request(
            Method::GET,
            &format!("/v1/projects/{PROJECT}/secrets/{name}/value?version={version}"),
            token,
            None,
        )
        .await
        .unwrap();
    (status, body["value"].clone())
}

/// Checks that `GET /readyz` reports the server not ready, naming the folder.
async fn assert_not_ready(ops: std::net::SocketAddr, db: &Path) {
    let (status, _, body) = keygate_tests::HttpsClient::plain(ops)
        .request(Method::GET, "/readyz", None, None)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(&db.display().to_string()), "{body}");
}

/// Checks that the store of the server `pid` can be read while the server
/// runs: `keygate token issue`, run in the server's mount namespace, reads
/// the token signing keys from the store, opened read-only.
fn assert_store_readable(pid: u32, data: &Path) {
    let out = Command::new("nsenter")
        .args(["--mount", "--target", &pid.to_string()])
        .arg(keygate_bin())
        .args(["token", "issue", "--data-dir"])
        .arg(data)
        .args([
            "--subject",
            "reader",
            "--account",
            "dev",
            "--scope",
            "secrets:read",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reading the store failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout);
    assert_eq!(token.trim().split('.').count(), 3, "{token}");
}
