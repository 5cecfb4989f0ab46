#!/usr/bin/env bash
# Measures runners' resolution of an external (hybrid) definition: cached,
# then uncached. The upstream is `keygate-bench kv-server`, a fixed HashiCorp
# Vault KV v2 endpoint on loopback. The cached run uses `keygate dev` with the
# default cache; the uncached run restarts the same data folder with
# `keygate serve` and `external.cache_ttl_ms = 0`, so every lookup calls the
# upstream, over connections keygate keeps open. Each worker
# resolves its own definition (`external-N`), so no two lookups in flight
# share one upstream call.
#
# Usage: benches/external.sh [DURATION_SECS] [CONCURRENCY...]
#   defaults: 10 s at concurrency 1 16 64
# Ports: KEYGATE_BENCH_PORT_BASE (default 17000) + 443 / 1443 / 2464, and + 4200 for the kv-server.
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
kv_addr=127.0.0.1:$((base + 4200))
kv_token=bench-vault-token

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

wait_ready() {
    for _ in $(seq 1 100); do
        curl -sf "http://$ops_addr/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    cat "$work/server.err" >&2
    exit 1
}
stop_server() {
    kill -TERM "$server_pid"
    wait "$server_pid" 2>/dev/null || true
}
run_level() {
    "$bench" secrets --api "$api_addr" --ca "$data/tls/ca.pem" --token-file "$work/runner.token" \
        --project bench --definition 'external-{worker}' --concurrency "$1" --duration-secs "$duration"
}
upstream_reads() {
    curl -sf "http://$ops_addr/metrics" \
        | awk '$1 == "keygate_external_upstream_duration_seconds_count{provider=\"hashicorp_vault\"}" {print $2}'
}

"$bench" kv-server --addr "$kv_addr" --token "$kv_token" --duration-secs 3600 >"$work/kv.out" 2>&1 &
pids+=($!)

"$keygate" dev --data-dir "$data" --agent-addr "$agent_addr" --api-addr "$api_addr" --ops-addr "$ops_addr" \
    --log-filter warn >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
pids+=("$server_pid")
wait_ready

admin=$(cat "$data/dev-admin.token")
api() {
    curl -sf --cacert "$data/tls/ca.pem" -H "Authorization: Bearer $admin" -H "Content-Type: application/json" "$@"
}
api -X PUT "https://$api_addr/v1/projects/ops/secrets/vault-token" -d "{\"value\":\"$kv_token\"}" >/dev/null
api -X PUT "https://$api_addr/v1/connections/bench-vault" -d "{\"connection\":{\"type\":\"hashicorp_vault\",\
\"address\":\"http://$kv_addr\",\"auth\":{\"method\":\"token\",\"token\":{\"project\":\"ops\",\"secret\":\"vault-token\"}}}}" >/dev/null
max_level=$(printf '%s\n' "${levels[@]}" | sort -n | tail -1)
for i in $(seq 0 $((max_level - 1))); do
    api -X PUT "https://$api_addr/v1/projects/bench/secret-definitions/external-$i" -d "{\"location\":{\"type\":\"hashicorp_vault\",
\"mount\":\"secret\",\"path\":\"bench/db-$i\",\"key\":\"password\",\"connection\":\"bench-vault\"}}" >/dev/null
done
"$keygate" token issue --data-dir "$data" --subject bench-runner --account dev --scope secrets:read \
    --project bench --lifetime-secs 3600 >"$work/runner.token"
first=$(curl -s --cacert "$data/tls/ca.pem" -H "Authorization: Bearer $(cat "$work/runner.token")" \
    "https://$api_addr/v1/projects/bench/secret-definitions/external-0/value")
grep -q '"value":"0123456789abcdef' <<<"$first" || { echo "the external definition does not resolve: $first" >&2; exit 1; }

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; keygate $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine lowers every figure)"
echo "== cached (external.cache_ttl_ms = 300000)"
for c in "${levels[@]}"; do
    before=$(upstream_reads)
    run_level "$c"
    echo "upstream calls during the run, warm-up included: $(( $(upstream_reads) - before ))"
done
stop_server

cat >"$work/uncached.toml" <<TOML
data_dir = "$data"
[listen]
agent = "$agent_addr"
api = "$api_addr"
ops = "$ops_addr"
[external]
cache_ttl_ms = 0
cache_refresh_ahead_ms = 0
loopback_only = true
TOML
"$keygate" serve --config "$work/uncached.toml" --log-filter warn >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
pids+=("$server_pid")
wait_ready
echo "== uncached (external.cache_ttl_ms = 0: every lookup calls the kv-server)"
for c in "${levels[@]}"; do
    before=$(upstream_reads)
    run_level "$c"
    echo "upstream calls during the run, warm-up included: $(( $(upstream_reads) - before ))"
done
echo "load average after the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
