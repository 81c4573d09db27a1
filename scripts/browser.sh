#!/bin/sh
# Installs what the dashboard's browser test drives: Debian's Chromium and ChromeDriver,
# and selenium (PyPI) in a virtual environment. Prints the environment's python.
# Usage: scripts/browser.sh [VENV]   (default: target/browser)
set -eu
. "$(dirname "$0")/installing.sh"
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$here/target/browser}
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    apt_install chromium chromium-driver
fi
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import selenium' 2>/dev/null; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'selenium>=4.20,<5' >&2
fi
echo "$venv/bin/python"
