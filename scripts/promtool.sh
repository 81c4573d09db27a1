#!/bin/sh
# Installs promtool (Debian's prometheus package) for the metrics tests; prints its path.
set -eu
if ! command -v promtool >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >&2 ||
            { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >&2; }
    else
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >&2
    fi
fi
command -v promtool
