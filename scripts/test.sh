#!/usr/bin/env bash
# Runs the whole test suite: unit tests of every crate and the end-to-end
# tests, which start the real server and the `keygate` binary on loopback.
# The first run compiles RocksDB's C++ sources (about 15 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-build-deps.sh
scripts/install-test-deps.sh
# The binary tests run target/release/keygate, which `cargo test` does not build.
cargo build --release --locked --bin keygate
cargo test --release --locked --workspace "$@"
