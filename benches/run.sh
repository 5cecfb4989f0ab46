#!/usr/bin/env bash
# Starts `keygate dev` and the reference agent on loopback, then runs the
# relay and secret-read load generators at each concurrency level.
#
# Usage: benches/run.sh [DURATION_SECS] [CONCURRENCY...]
#   defaults: 10 s at concurrency 1 16 64
# Ports: KEYGATE_BENCH_PORT_BASE (default 17000) + 443 / 1443 / 2464.
# Everything runs on 127.0.0.1 and is stopped by PID when the script exits.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-10}
shift || true
levels=("${@:-1 16 64}")
read -r -a levels <<<"${levels[*]}"
base=${KEYGATE_BENCH_PORT_BASE:-17000}
agent_addr=127.0.0.1:$((base + 443))
api_addr=127.0.0.1:$((base + 1443))
ops_addr=127.0.0.1:$((base + 2464))

scripts/install-build-deps.sh
cargo build --release --locked --bin keygate --bin keygate-bench
target=${CARGO_TARGET_DIR:-target}/release
keygate=$target/keygate
bench=$target/keygate-bench

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

"$keygate" dev --data-dir "$data" --agent-addr "$agent_addr" --api-addr "$api_addr" --ops-addr "$ops_addr" \
    --log-filter warn >"$work/server.out" 2>"$work/server.err" &
pids+=($!)
for _ in $(seq 1 100); do
    curl -sf "http://$ops_addr/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://$ops_addr/readyz" >/dev/null || { cat "$work/server.err"; exit 1; }

admin_file=$data/dev-admin.token
admin=$(cat "$admin_file")
api() {
    curl -sf --cacert "$data/tls/ca.pem" -H "Authorization: Bearer $admin" -H "Content-Type: application/json" "$@"
}
created=$(api -X POST "https://$api_addr/v1/agents" -d '{"name":"bench"}')
agent_id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["client_id"])' <<<"$created")
agent_secret=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])' <<<"$created")
"$keygate" certs agent --data-dir "$data" --agent-id "$agent_id" >/dev/null

KEYGATE_AGENT_CLIENT_SECRET=$agent_secret "$keygate" agent --gateway "$agent_addr" --client-id "$agent_id" \
    --credentials-dir "$data/agents/$agent_id" --capacity 1024 --log-filter warn 2>"$work/agent.err" &
pids+=($!)

api -X PUT "https://$api_addr/v1/projects/bench/secrets/bench-secret" -d '{"value":"0123456789abcdef0123456789abcdef"}' >/dev/null
api -X PUT "https://$api_addr/v1/projects/bench/secret-definitions/bench-secret" \
    -d '{"location":{"type":"hosted","secret":"bench-secret"}}' >/dev/null
"$keygate" token issue --data-dir "$data" --subject bench-runner --account dev --scope secrets:read \
    --project bench --lifetime-secs 3600 >"$work/runner.token"

for _ in $(seq 1 100); do
    status=$(api -o /dev/null -w '%{http_code}' -X POST "https://$api_addr/v1/agents/$agent_id/tasks" -d '{"kind":"echo"}' || true)
    [ "$status" = 200 ] && break
    sleep 0.1
done

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; keygate $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
for c in "${levels[@]}"; do
    "$bench" relay --api "$api_addr" --ca "$data/tls/ca.pem" --token-file "$admin_file" \
        --agent-id "$agent_id" --concurrency "$c" --duration-secs "$duration"
done
for c in "${levels[@]}"; do
    "$bench" secrets --api "$api_addr" --ca "$data/tls/ca.pem" --token-file "$work/runner.token" \
        --concurrency "$c" --duration-secs "$duration"
done
"$bench" verify --duration-secs 5
server_rss=$(awk '/VmRSS/ {print $2 " " $3}' "/proc/${pids[0]}/status")
echo "server RSS after the runs: $server_rss"
