//! Writes the seed corpus of the `frame_decoder` fuzz target.
//!
//! Run with `cargo run --release -p keygate-protocol --example write_fuzz_seeds`.
//! Each seed file is one byte that picks where the fuzz target splits the
//! stream, followed by valid encoded frames. Existing seeds are overwritten,
//! and other corpus files are left alone.

use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use keygate_protocol::{Frame, GoAwayReason, TaskOutcome, PROTOCOL_VERSION};

fn main() -> std::io::Result<()> {
    let corpus_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/frame_decoder");
    std::fs::create_dir_all(&corpus_dir)?;

    for (name, split_seed, frames) in seeds() {
        let mut contents = BytesMut::from(&[split_seed][..]);
        for frame in &frames {
            frame.encode(&mut contents);
        }
        let path = corpus_dir.join(format!("seed-{name}"));
        std::fs::write(&path, &contents)?;
        println!("wrote {} ({} bytes)", path.display(), contents.len());
    }
    Ok(())
}

/// Seeds as (file name suffix, split byte, frames).
fn seeds() -> Vec<(&'static str, u8, Vec<Frame>)> {
    let hello = Frame::Hello {
        protocol_version: PROTOCOL_VERSION,
        max_concurrent_tasks: 4,
        agent_version: "agent 1.0".to_owned(),
        instance_id: "host-a".to_owned(),
    };
    let welcome = Frame::Welcome {
        protocol_version: PROTOCOL_VERSION,
        session_id: "s-1".to_owned(),
        heartbeat_interval_ms: 10_000,
    };
    let task = Frame::Task {
        task_id: "t-1".to_owned(),
        kind: "echo".to_owned(),
        timeout_ms: 5_000,
        traceparent: None,
        payload: Bytes::from_static(b"{\"n\":1}"),
    };
    let task_result = Frame::TaskResult {
        task_id: "t-1".to_owned(),
        outcome: TaskOutcome::Failed,
        traceparent: None,
        payload: Bytes::from_static(b"exit 1"),
    };
    let ping = Frame::Ping { nonce: 1 };
    let pong = Frame::Pong { nonce: 1 };
    let go_away = Frame::GoAway {
        reason: GoAwayReason::HeartbeatTimeout,
        reconnect_after_ms: 1_000,
        message: "no ping for 30 s".to_owned(),
    };

    vec![
        ("hello", 10, vec![hello.clone()]),
        ("welcome", 3, vec![welcome.clone()]),
        ("task", 20, vec![task.clone()]),
        ("task-result", 0, vec![task_result.clone()]),
        ("ping-pong", 13, vec![ping.clone(), pong.clone()]),
        ("go-away", 255, vec![go_away.clone()]),
        (
            "session",
            77,
            vec![hello, welcome, task, ping, pong, task_result, go_away],
        ),
    ]
}
