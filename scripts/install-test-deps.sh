#!/usr/bin/env bash
# Installs what the end-to-end tests need besides the Rust build, if it is
# missing: the tools of the disk-error tests (unshare, nsenter and mount from
# util-linux, mkfs.ext4 and e2fsck from e2fsprogs), and moto's server, a local AWS KMS
# emulator, in a Python virtual environment outside the repository. Safe to
# run again; it installs nothing twice.
#
# The environment goes to $KEYGATE_TEST_DEPS/moto, by default
# ~/.cache/keygate-test-deps/moto; the tests look for moto_server there
# (or at $KEYGATE_MOTO_SERVER).
set -euo pipefail

MOTO_VERSION=5.2.1
root="${KEYGATE_TEST_DEPS:-${XDG_CACHE_HOME:-$HOME/.cache}/keygate-test-deps}"
venv="$root/moto"

# Written last, so an interrupted install is redone on the next run.
marker="$venv/.installed-moto-$MOTO_VERSION"

moto_ready() {
    [ -f "$marker" ] && [ -x "$venv/bin/moto_server" ]
}

missing=()
{ command -v unshare && command -v nsenter; } >/dev/null 2>&1 || missing+=(util-linux)
command -v mount >/dev/null 2>&1 || missing+=(mount)
{ command -v mkfs.ext4 && command -v e2fsck; } >/dev/null 2>&1 || missing+=(e2fsprogs)
if ! moto_ready; then
    if ! command -v python3 >/dev/null 2>&1; then
        missing+=(python3 python3-venv)
    elif ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        missing+=(python3-venv)
    fi
fi
if ((${#missing[@]} > 0)); then
    echo "installing test dependencies: ${missing[*]}"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

if moto_ready; then
    exit 0
fi
echo "installing moto[server]==$MOTO_VERSION into $venv"
mkdir -p "$root"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
touch "$marker"
