#!/usr/bin/env bash
# Fuzzes keygate's HTTP API against docs/openapi.json with schemathesis.
#
# Starts `keygate dev` on a fresh temporary data folder with loopback ports
# that the system picks, then runs schemathesis twice: on the API listener
# (with the development admin token, which carries every platform scope) and
# on the ops listener. A run fails on any 5xx response except those that
# scripts/api-fuzz.toml allows, and on any response whose status code,
# content type, headers or body the document does not describe. The server
# is stopped by its PID on exit.
#
# schemathesis (pinned below) is installed into a Python virtual environment
# at $KEYGATE_TEST_DEPS/schemathesis, by default
# ~/.cache/keygate-test-deps/schemathesis; it is installed once.
#
# Environment:
#   KEYGATE_FUZZ_EXAMPLES  test cases per operation and phase (default 100)
#   KEYGATE_FUZZ_SEED      seed of the test-case generator (default: random;
#                          each run prints the seed it used)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

SCHEMATHESIS_VERSION=4.32.5
examples="${KEYGATE_FUZZ_EXAMPLES:-100}"
# Hard limit of each schemathesis run, in seconds. With 100 examples the API run
# took about 40 s on a 2-core machine.
run_timeout=900

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/keygate-target}"
keygate="$CARGO_TARGET_DIR/release/keygate"

# --- schemathesis ---------------------------------------------------------
root="${KEYGATE_TEST_DEPS:-${XDG_CACHE_HOME:-$HOME/.cache}/keygate-test-deps}"
venv="$root/schemathesis"
# Written last, so an interrupted install is redone on the next run.
marker="$venv/.installed-schemathesis-$SCHEMATHESIS_VERSION"
if [ ! -f "$marker" ] || [ ! -x "$venv/bin/schemathesis" ]; then
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        echo "installing python3 and python3-venv"
        sudo=""
        if [ "$(id -u)" -ne 0 ]; then
            sudo="sudo"
        fi
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3 python3-venv
    fi
    echo "installing schemathesis==$SCHEMATHESIS_VERSION into $venv"
    mkdir -p "$root"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "schemathesis==$SCHEMATHESIS_VERSION"
    touch "$marker"
fi

# --- keygate dev ----------------------------------------------------------
scripts/install-build-deps.sh
cargo build --release --locked --bin keygate

work=$(mktemp -d "${TMPDIR:-/tmp}/keygate-api-fuzz.XXXXXX")
server_pid=""
stop_server() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid"
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap stop_server EXIT
trap 'exit 130' INT TERM

"$keygate" dev --data-dir "$work/data" \
    --agent-addr 127.0.0.1:0 --api-addr 127.0.0.1:0 --ops-addr 127.0.0.1:0 \
    >"$work/stdout.log" 2>"$work/server.log" &
server_pid=$!

# `keygate dev` prints the bound addresses once every listener is up.
api_url=""
ops_url=""
for _ in $(seq 1 600); do
    api_url=$(sed -n 's/^ *API listener *\(https:\/\/[0-9.:]*\).*/\1/p' "$work/stdout.log")
    ops_url=$(sed -n 's/^ *ops listener *\(http:\/\/[0-9.:]*\).*/\1/p' "$work/stdout.log")
    if [ -n "$api_url" ] && [ -n "$ops_url" ]; then
        break
    fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "keygate dev exited before it listened; its log:" >&2
        cat "$work/server.log" >&2
        exit 1
    fi
    sleep 0.1
done
if [ -z "$api_url" ] || [ -z "$ops_url" ]; then
    echo "keygate dev did not print its listener addresses within 60 s; its log:" >&2
    cat "$work/server.log" >&2
    exit 1
fi

# /readyz answers 200 once the vault is unsealed, the audit log writes and the
# store is readable.
ready=""
for _ in $(seq 1 300); do
    if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
        "$ops_url/readyz" 2>/dev/null; then
        ready=yes
        break
    fi
    sleep 0.1
done
if [ -z "$ready" ]; then
    echo "keygate dev at $ops_url did not become ready within 30 s; its log:" >&2
    cat "$work/server.log" >&2
    exit 1
fi
echo "keygate dev is ready: API $api_url, ops $ops_url (pid $server_pid)"

# --- schemathesis runs ----------------------------------------------------
checks=not_a_server_error,status_code_conformance,content_type_conformance
checks=$checks,response_headers_conformance,response_schema_conformance
common=(
    --checks "$checks"
    --max-examples "$examples"
    --workers 1
    --request-timeout 30
    --generation-database none
    --no-color
)
if [ -n "${KEYGATE_FUZZ_SEED:-}" ]; then
    common+=(--seed "$KEYGATE_FUZZ_SEED")
fi
st() {
    # From the work folder, so nothing schemathesis writes lands in the repository.
    (cd "$work" && timeout "$run_timeout" "$venv/bin/schemathesis" \
        --config-file "$repo/scripts/api-fuzz.toml" run "$@")
}

# Three checks: the run on each listener, then the server's health after them.
passed=0
failed=0
record() {
    if [ "$1" -eq 0 ]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
    fi
}

api_run() {
    st "$api_url/openapi.json" --url "$api_url" --tls-verify "$work/data/tls/ca.pem" \
        --header "Authorization: Bearer $(cat "$work/data/dev-admin.token")" \
        --exclude-tag ops --exclude-tag agent-listener "${common[@]}" 2>&1 | tee "$work/api-run.log"
}

echo "== schemathesis: API listener"
result=0
api_run || result=1
# Schemathesis sometimes fails inside its own case generator (a "Runtime
# Error" from Hypothesis) while every request passes. Such a run is repeated
# once; a run with a failed check is never repeated. The errors seen were
# raised where Hypothesis parses lambda sources with Python's `ast` module
# ("AST constructor recursion depth mismatch", a KeyError in its source
# cache). Both look like two worker threads parsing at once, which is an
# inference, not a confirmed cause, so the runs use one worker.
if [ "$result" -ne 0 ] && grep -q "Runtime Error" "$work/api-run.log" \
    && ! grep -q "= FAILURES =" "$work/api-run.log"; then
    echo "schemathesis reported only errors of its own; running the API listener once more" >&2
    result=0
    api_run || result=1
fi
record "$result"

# No link of the document joins two ops routes, so there is no stateful phase here.
echo "== schemathesis: ops listener"
result=0
st "$api_url/openapi.json" --url "$ops_url" --tls-verify "$work/data/tls/ca.pem" \
    --include-tag ops --phases examples,coverage,fuzzing "${common[@]}" || result=1
record "$result"

result=0
if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "keygate dev exited during the fuzz run; its log:" >&2
    tail -n 50 "$work/server.log" >&2
    result=1
elif grep -q 'panicked' "$work/server.log"; then
    echo "keygate dev panicked during the fuzz run:" >&2
    grep 'panicked' "$work/server.log" | head -n 20 >&2
    result=1
fi
record "$result"

if [ "$failed" -ne 0 ]; then
    echo "The seed of each run is printed above; rerun with KEYGATE_FUZZ_SEED=SEED." >&2
fi
echo "api-fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
