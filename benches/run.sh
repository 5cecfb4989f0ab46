#!/usr/bin/env bash
# Starts `keygate dev`, the reference agent, nginx and nats-server on
# loopback. Then runs the relay, secret-resolution, hosted-secret read and
# write load generators at each concurrency level. The relay load also runs
# as TLS request/reply through nats-server, with a responder process in the
# agent's place, and against nginx's static file. The read load also runs
# against nginx serving the same response body as a static file. The script
# prints the ratios for each level.
#
# Usage: benches/run.sh [DURATION_SECS] [CONCURRENCY...]
#   defaults: 10 s at concurrency 1 16 64
# Ports: KEYGATE_BENCH_PORT_BASE (default 17000) + 443 / 1443 / 2464 / 3443 (nginx) / 4222 (nats-server).
# The comparison table is also written to KEYGATE_BENCH_RESULTS (default
# $CARGO_TARGET_DIR/release/bench-results.md).
# KEYGATE_BENCH_SCENARIOS picks scenarios (default: relay secrets read write verify;
# `floor` adds keygate's unauthenticated key set against nginx serving the same bytes).
# KEYGATE_BENCH_SERVER_ENV: NAME=VALUE pairs added to the server's environment,
# such as TOKIO_WORKER_THREADS=1.
# Everything runs on 127.0.0.1 and is stopped by PID when the script exits.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-10}
shift || true
levels=("${@:-1 16 64}")
read -r -a levels <<<"${levels[*]}"
base=${KEYGATE_BENCH_PORT_BASE:-17000}
scenarios=" ${KEYGATE_BENCH_SCENARIOS:-relay secrets read write verify} "
wanted() { [[ "$scenarios" == *" $1 "* ]]; }
agent_addr=127.0.0.1:$((base + 443))
api_addr=127.0.0.1:$((base + 1443))
ops_addr=127.0.0.1:$((base + 2464))
nginx_addr=127.0.0.1:$((base + 3443))
nats_addr=127.0.0.1:$((base + 4222))

scripts/install-build-deps.sh
scripts/install-bench-deps.sh
cargo build --release --locked --bin keygate --bin keygate-bench
target=${CARGO_TARGET_DIR:-target}/release
keygate=$target/keygate
bench=$target/keygate-bench
results=${KEYGATE_BENCH_RESULTS:-$target/bench-results.md}
nginx=$(command -v nginx || echo /usr/sbin/nginx)

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

env ${KEYGATE_BENCH_SERVER_ENV:-} "$keygate" dev --data-dir "$data" --agent-addr "$agent_addr" --api-addr "$api_addr" --ops-addr "$ops_addr" \
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

# The hosted-secret read that both servers are compared on: keygate's response
# body is saved and nginx serves the same bytes as a static file.
mkdir -p "$work/www"
read_status=$(curl -s --cacert "$data/tls/ca.pem" -H "Authorization: Bearer $(cat "$work/runner.token")" \
    -o "$work/www/secret.json" -w '%{http_code}' "https://$api_addr/v1/projects/bench/secrets/bench-secret/value")
if [ "$read_status" != 200 ]; then
    echo "GET .../secrets/bench-secret/value returned $read_status: $(cat "$work/www/secret.json")" >&2
    exit 1
fi
body_bytes=$(wc -c <"$work/www/secret.json")
# nginx workers drop root privileges, so they need to read the file's folders.
chmod 755 "$work" "$work/www"
chmod 644 "$work/www/secret.json"

mkdir -p "$work/nginx"
cat >"$work/nginx.conf" <<NGINX
worker_processes $(nproc);
daemon off;
# Used only when nginx starts as root; www-data is Debian's account for it.
user www-data;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/nginx/client_body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    server {
        listen $nginx_addr ssl http2;
        ssl_certificate $data/tls/server.pem;
        ssl_certificate_key $data/tls/server-key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        root $work/www;
        location = /secret.json { default_type application/json; }
    }
}
NGINX
"$nginx" -e "$work/nginx/error.log" -c "$work/nginx.conf" &
pids+=($!)
for _ in $(seq 1 100); do
    curl -sf --cacert "$data/tls/ca.pem" -o /dev/null "https://$nginx_addr/secret.json" && break
    sleep 0.1
done
curl -sf --cacert "$data/tls/ca.pem" -o /dev/null "https://$nginx_addr/secret.json" \
    || { echo "nginx did not start:" >&2; cat "$work/nginx/error.log" >&2; exit 1; }

if wanted relay; then
    cat >"$work/nats.conf" <<NATS
listen: $nats_addr
tls {
    cert_file: "$data/tls/server.pem"
    key_file: "$data/tls/server-key.pem"
}
NATS
    # Waits up to 10 s for PATTERN in FILE; exits with the file shown otherwise.
    wait_for_line() {
        for _ in $(seq 1 100); do
            grep -q "$2" "$1" && return 0
            sleep 0.1
        done
        echo "$3 did not start:" >&2
        cat "$1" >&2
        exit 1
    }
    nats-server -c "$work/nats.conf" >"$work/nats.log" 2>&1 &
    pids+=($!)
    wait_for_line "$work/nats.log" "Server is ready" nats-server
    "$bench" nats-responder --nats "$nats_addr" --ca "$data/tls/ca.pem" --duration-secs 3600 >"$work/responder.out" 2>&1 &
    pids+=($!)
    wait_for_line "$work/responder.out" "subscribed" "the NATS responder"
fi

audit_records() {
    curl -sf "http://$ops_addr/metrics" | awk '$1 == "keygate_audit_records_total" {print $2}'
}
rate_of() {
    sed -n 's/.*: \([0-9]*\) req\/s.*/\1/p' <<<"$1"
}
errors_of() {
    sed -n 's/.* \([0-9]*\) errors$/\1/p' <<<"$1" | head -1
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; keygate $(git rev-parse --short HEAD 2>/dev/null || echo unknown); $("$nginx" -v 2>&1); nats-server $(nats-server --version 2>&1 | awk '{print $NF}')"
echo "hosted secret read: $body_bytes-byte response body; nginx serves the same bytes"
echo "load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine lowers every figure)"
ratio() {
    python3 -c "import sys; k, n = int(sys.argv[1] or 0), int(sys.argv[2] or 0); print(f'{k / n:.3f}' if n else 'n/a')" "$1" "$2"
}
p99_of() {
    sed -n 's/.*p99 \([0-9.]*\) ms.*/\1 ms/p' <<<"$1"
}
relay_table="| concurrency | keygate relay/s | p99 | nats-server req/reply/s | p99 | nginx static/s | p99 | relay/nats | relay/nginx | errors (keygate, nats, nginx) |
|---|---|---|---|---|---|---|---|---|---|"
wanted relay && for c in "${levels[@]}"; do
    kg=$("$bench" relay --api "$api_addr" --ca "$data/tls/ca.pem" --token-file "$admin_file" \
        --agent-id "$agent_id" --concurrency "$c" --duration-secs "$duration")
    echo "$kg"
    nt=$("$bench" nats-request --nats "$nats_addr" --ca "$data/tls/ca.pem" --concurrency "$c" --duration-secs "$duration")
    echo "$nt"
    ng=$("$bench" static --api "$nginx_addr" --ca "$data/tls/ca.pem" --token-file "$admin_file" \
        --path /secret.json --concurrency "$c" --duration-secs "$duration")
    echo "$ng"
    relay_table+="
| $c | $(rate_of "$kg") | $(p99_of "$kg") | $(rate_of "$nt") | $(p99_of "$nt") | $(rate_of "$ng") | $(p99_of "$ng") | $(ratio "$(rate_of "$kg")" "$(rate_of "$nt")") | $(ratio "$(rate_of "$kg")" "$(rate_of "$ng")") | $(errors_of "$kg"), $(errors_of "$nt"), $(errors_of "$ng") |"
done
wanted secrets && for c in "${levels[@]}"; do
    "$bench" secrets --api "$api_addr" --ca "$data/tls/ca.pem" --token-file "$work/runner.token" \
        --concurrency "$c" --duration-secs "$duration"
done

table="| concurrency | connections | keygate reads/s | keygate p99 | nginx static/s | nginx p99 | keygate/nginx | errors (keygate, nginx) |
|---|---|---|---|---|---|---|---|"
wanted read && for c in "${levels[@]}"; do
    records_before=$(audit_records)
    kg=$("$bench" read --api "$api_addr" --ca "$data/tls/ca.pem" --token-file "$work/runner.token" \
        --concurrency "$c" --duration-secs "$duration")
    echo "$kg"
    records_after=$(audit_records)
    ng=$("$bench" static --api "$nginx_addr" --ca "$data/tls/ca.pem" --token-file "$work/runner.token" \
        --path /secret.json --concurrency "$c" --duration-secs "$duration")
    echo "$ng"
    kg_rate=$(rate_of "$kg")
    ng_rate=$(rate_of "$ng")
    ratio=$(python3 -c "import sys; k, n = int(sys.argv[1] or 0), int(sys.argv[2] or 0); print(f'{k / n:.2f}' if n else 'n/a')" "$kg_rate" "$ng_rate")
    connections=$(sed -n 's/.* connections \([0-9]*\) .*/\1/p' <<<"$kg")
    kg_p99=$(sed -n 's/.*p99 \([0-9.]*\) ms.*/\1 ms/p' <<<"$kg")
    ng_p99=$(sed -n 's/.*p99 \([0-9.]*\) ms.*/\1 ms/p' <<<"$ng")
    echo "read at concurrency $c: keygate/nginx = $ratio; audit records written during the keygate run: $((records_after - records_before))"
    table+="
| $c | $connections | $kg_rate | $kg_p99 | $ng_rate | $ng_p99 | $ratio | $(errors_of "$kg"), $(errors_of "$ng") |"
done
# The floor of the HTTP stack: keygate's key set, which needs no token and
# no store, against nginx serving the same bytes. The gap between this ratio
# and the read's is the cost of a read's own work.
floor_table="| concurrency | connections | keygate key set/s | keygate p99 | nginx static/s | nginx p99 | keygate/nginx | errors (keygate, nginx) |
|---|---|---|---|---|---|---|---|"
if wanted floor; then
    curl -sf --cacert "$data/tls/ca.pem" -o "$work/www/jwks.json" "https://$api_addr/.well-known/jwks.json"
    chmod 644 "$work/www/jwks.json"
    echo "key set: $(wc -c <"$work/www/jwks.json")-byte response body; nginx serves the same bytes"
fi
wanted floor && for c in "${levels[@]}"; do
    kg=$("$bench" static --api "$api_addr" --ca "$data/tls/ca.pem" --token-file "$work/runner.token" \
        --path /.well-known/jwks.json --concurrency "$c" --duration-secs "$duration")
    echo "$kg"
    ng=$("$bench" static --api "$nginx_addr" --ca "$data/tls/ca.pem" --token-file "$work/runner.token" \
        --path /jwks.json --concurrency "$c" --duration-secs "$duration")
    echo "$ng"
    floor_table+="
| $c | $(sed -n 's/.* connections \([0-9]*\) .*/\1/p' <<<"$kg") | $(rate_of "$kg") | $(p99_of "$kg") | $(rate_of "$ng") | $(p99_of "$ng") | $(ratio "$(rate_of "$kg")" "$(rate_of "$ng")") | $(errors_of "$kg"), $(errors_of "$ng") |"
done
wanted write && for c in "${levels[@]}"; do
    "$bench" write --api "$api_addr" --ca "$data/tls/ca.pem" --token-file "$admin_file" \
        --concurrency "$c" --duration-secs "$duration"
done
if wanted verify; then "$bench" verify --duration-secs 5; fi
echo "load average after the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
{
    if wanted relay; then echo "$relay_table"; echo; fi
    if wanted read; then echo "$table"; echo; fi
    if wanted floor; then echo "$floor_table"; fi
} | tee "$results"
echo "(table written to $results)"
server_rss=$(awk '/VmRSS/ {print $2 " " $3}' "/proc/${pids[0]}/status")
echo "server RSS after the runs: $server_rss"
