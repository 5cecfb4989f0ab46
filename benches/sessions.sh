#!/usr/bin/env bash
# Holds many idle agent sessions open against `keygate dev` on loopback,
# prints the gateway's resident memory per session, then drops all sessions
# at once and measures how long they take to reconnect (a reconnect storm).
#
# Usage: benches/sessions.sh [SESSIONS]
#   default: 19000. The gateway and this client each need one open file per
#   session, so SESSIONS must stay below the open-file limit (`ulimit -n`)
#   with room for the gateway's own files.
# Ports: KEYGATE_BENCH_PORT_BASE (default 17000) + 443 / 1443 / 2464.
# KEYGATE_BENCH_SESSION_TRANSPORT: `upgrade` (default; HTTP/1.1 upgraded to
#   bare frames, as the reference agent connects) or `http2`.
# Everything runs on 127.0.0.1 and is stopped by PID when the script exits.
set -euo pipefail
cd "$(dirname "$0")/.."

sessions=${1:-19000}
limit=$(ulimit -n)
if [ "$sessions" -gt $((limit - 200)) ]; then
    echo "SESSIONS $sessions needs more open files than ulimit -n ($limit) leaves; pass at most $((limit - 200))" >&2
    exit 64
fi
base=${KEYGATE_BENCH_PORT_BASE:-17000}
agent_addr=127.0.0.1:$((base + 443))
api_addr=127.0.0.1:$((base + 1443))
ops_addr=127.0.0.1:$((base + 2464))

scripts/install-build-deps.sh
cargo build --release --locked --bin keygate --bin keygate-bench
target=${CARGO_TARGET_DIR:-target}/release

work=$(mktemp -d)
data=$work/data
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

"$target/keygate" dev --data-dir "$data" --agent-addr "$agent_addr" --api-addr "$api_addr" \
    --ops-addr "$ops_addr" --log-filter warn >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
pids+=("$server_pid")
for _ in $(seq 1 100); do
    curl -sf "http://$ops_addr/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://$ops_addr/readyz" >/dev/null || { cat "$work/server.err"; exit 1; }

admin=$(cat "$data/dev-admin.token")
created=$(curl -sf --cacert "$data/tls/ca.pem" -H "Authorization: Bearer $admin" \
    -H "Content-Type: application/json" -X POST "https://$api_addr/v1/agents" -d '{"name":"sessions"}')
agent_id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["client_id"])' <<<"$created")
python3 -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])' <<<"$created" >"$work/secret"
"$target/keygate" certs agent --data-dir "$data" --agent-id "$agent_id" >/dev/null

"$target/keygate-bench" sessions --agent "$agent_addr" --creds-dir "$data/agents/$agent_id" \
    --client-id "$agent_id" --client-secret-file "$work/secret" --count "$sessions" \
    --server-pid "$server_pid" --transport "${KEYGATE_BENCH_SESSION_TRANSPORT:-upgrade}" --storm
echo "shed handshakes: $(curl -sf "http://$ops_addr/metrics" | awk '$1 == "keygate_listener_handshakes_shed_total{listener=\"agent\"}" {print $2}')"
