#!/usr/bin/env bash
# Installs the Debian packages the build needs, if they are missing:
# a C and C++ compiler for the bundled RocksDB, and libclang for its
# bindings (bindgen). Safe to run again; it installs nothing twice.
set -euo pipefail

missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
# libclang-cpp (a different library, present without libclang) must not match.
compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null \
    || compgen -G "/usr/lib/*/libclang.so*" >/dev/null \
    || compgen -G "/usr/lib/*/libclang-[0-9]*.so*" >/dev/null \
    || missing+=(libclang-dev)

if ((${#missing[@]} == 0)); then
    exit 0
fi

echo "installing build dependencies: ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
