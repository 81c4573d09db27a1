#!/bin/sh
# Installs the S3 clients the gateway's tests drive: boto3 and the AWS CLI (PyPI) in a
# virtual environment, and rclone (Debian). Prints the environment's python.
# Usage: scripts/s3-clients.sh [VENV]   (default: target/s3-clients)
set -eu
. "$(dirname "$0")/installing.sh"
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$here/target/s3-clients}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import boto3' 2>/dev/null || [ ! -x "$venv/bin/aws" ]; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'boto3>=1.34,<2' 'awscli>=1.32,<2' >&2
fi
command -v rclone >/dev/null 2>&1 || apt_install rclone
echo "$venv/bin/python"
