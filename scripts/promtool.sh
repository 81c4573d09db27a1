#!/bin/sh
# Installs promtool (Debian's prometheus package) for the metrics tests; prints its path.
set -eu
. "$(dirname "$0")/installing.sh"
command -v promtool >/dev/null 2>&1 || apt_install prometheus
command -v promtool
