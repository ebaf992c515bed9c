#!/usr/bin/env bash
# Installs the Debian 12 packages ppgate builds and tests with; does nothing when they are there.
# Chromium is for the stats page's browser test, openssl and iproute2 for the peer tests (TLS
# certificates, network namespaces), slurm-wlm and munge for the Slurm test (a one-host cluster it
# starts itself), systemd for checking the unit file, clang and its runtime libraries for the
# libFuzzer targets;
# Node.js and npm (for Playwright) come from Debian only when the machine has none.
set -eu
packages=(g++ meson ninja-build pkg-config python3 python3-dev libboost1.81-dev libsimdjson-dev
          libssl-dev catch2 curl ca-certificates chromium openssl iproute2
          python3-numpy python3-dill python3-yaml python3-jsonschema mypy clang libclang-rt-14-dev
          python3-prometheus-client libsqlite3-dev slurm-wlm munge systemd)
command -v node >/dev/null && command -v npm >/dev/null || packages+=(nodejs npm)
if dpkg -s "${packages[@]}" >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${packages[@]}"
