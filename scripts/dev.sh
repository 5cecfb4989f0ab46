#!/usr/bin/env bash
# Builds keygate and starts it on development defaults: data, keys and a
# development CA in ./keygate-data, listeners on 127.0.0.1 (7443, 8443, 9464).
# Extra arguments go to `keygate dev`, e.g. `scripts/dev.sh --data-dir /tmp/kg`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-build-deps.sh
exec cargo run --release --locked --bin keygate -- dev "$@"
