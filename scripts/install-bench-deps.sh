#!/usr/bin/env bash
# Installs the Debian packages that benches/run.sh needs beyond the build, if
# they are missing: nginx (the static HTTPS baseline), nats-server (the TLS
# request/reply baseline), curl and python3.
# Package installs must not start nginx's own service (it would listen on
# port 80 of every interface), so a policy-rc.d that forbids service starts is
# put in place for the install when the machine has none. Safe to run again.
set -euo pipefail

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)

if ((${#missing[@]} == 0)); then
    exit 0
fi

echo "installing benchmark dependencies: ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    # invoke-rc.d reads exit code 101 as "starting services is not allowed".
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    trap '$sudo rm -f "$policy"' EXIT
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
