//! `keygate serve --config FILE` as a child process with an environment of
//! the test's choosing, and other `keygate` commands run the same way.
//!
//! The child's environment holds only the variables the test passes, so
//! neither the test runner's environment nor another test's variables reach it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::process::keygate_bin;

/// A running `keygate serve`, killed when dropped.
pub struct ServeProcess {
    child: Child,
    pub agent_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    /// File that receives the process's log (stderr), JSON lines.
    pub log_path: PathBuf,
}

impl ServeProcess {
    /// Starts `keygate serve --config CONFIG` with exactly the variables in
    /// `env`, and waits up to 30 s for its "keygate started" log line.
    pub fn start(config: &Path, env: &[(String, String)], log_path: &Path) -> ServeProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .expect("open the server log");
        let mut child = Command::new(keygate_bin())
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--log-format", "json", "--log-filter", "info"])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn keygate serve");

        let deadline = Instant::now() + Duration::from_secs(30);
        let started = loop {
            if let Some(line) = find_log_line(log_path, "keygate started") {
                break line;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                panic!("keygate serve exited with {status} before it started; its log:\n{log}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                panic!("keygate serve did not start within 30 s; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let address = |field: &str| -> SocketAddr {
            started[field]
                .as_str()
                .and_then(|text| text.parse().ok())
                .unwrap_or_else(|| panic!("the start line has no {field}: {started}"))
        };
        ServeProcess {
            agent_addr: address("agent_addr"),
            api_addr: address("api_addr"),
            ops_addr: address("ops_addr"),
            child,
            log_path: log_path.to_owned(),
        }
    }

    pub fn ops_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ops_addr)
    }

    /// Returns the log written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to 20 s for the process to exit.
    pub fn stop(mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {} failed", self.child.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the server") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "process {} did not exit within 20 s of SIGTERM",
                    self.child.id()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        // A test that panics leaves no server behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Returns the first JSON log line in `path` whose message is `message`.
pub fn find_log_line(path: &Path, message: &str) -> Option<Value> {
    let file = std::fs::File::open(path).ok()?;
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
        .find(|line| line["message"] == message)
}

/// Runs `keygate ARGS` with exactly the variables in `env` and returns its output.
pub fn run_keygate(args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(keygate_bin())
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .expect("run keygate")
}
