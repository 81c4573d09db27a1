#!/usr/bin/env bash
# Installs fio, which engine-bench runs for its raw-disk baselines. Idempotent: does
# nothing when fio is already on PATH. Needs root (apt-get) to install.
set -euo pipefail
if command -v fio >/dev/null 2>&1; then
  echo "bench-deps: fio present: $(command -v fio) ($(fio --version))"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "bench-deps: fio is missing; install it as root: apt-get install fio (Debian/Ubuntu), dnf install fio (Fedora)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "bench-deps: fio is missing and apt-get is not available; install fio with your package manager" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null
command -v fio >/dev/null 2>&1 || { echo "bench-deps: fio still missing after apt-get install" >&2; exit 1; }
echo "bench-deps: installed fio: $(command -v fio) ($(fio --version))"
