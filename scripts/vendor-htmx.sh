#!/bin/sh
# Vendors htmx (the host dashboard's live updates) from its npm package into
# net/assets/htmx.min.js, which `mspace host` embeds. Run it to change the version; the
# file is committed, so building needs neither npm nor the network.
set -eu
version=${1:-2.0.11}
here=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "htmx.org@$version" >/dev/null && tar xzf htmx.org-*.tgz)
cp "$tmp/package/dist/htmx.min.js" "$here/net/assets/htmx.min.js"
cp "$tmp/package/LICENSE" "$here/net/assets/htmx.LICENSE"
echo "htmx.org $version: $(sha256sum "$here/net/assets/htmx.min.js" | cut -d' ' -f1)"
