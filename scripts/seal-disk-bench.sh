#!/usr/bin/env bash
# Seal and open a file on disk next to dd's copy of the same file, in one run, with peak RSS.
#   scripts/seal-disk-bench.sh [DIR] [SIZE_MIB] [CHUNK] [WORKERS]
# Builds mspace in release. Needs GNU time (/usr/bin/time, Debian package `time`).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-target/seal-disk-bench}
mib=${2:-4096}
chunk=${3:-8MiB}
workers=${4:-$(nproc)}
command -v /usr/bin/time >/dev/null || { apt-get install -y -qq time >/dev/null; }
cargo build --release -q -p tools --bin mspace
bin=$PWD/target/release/mspace
mkdir -p "$dir" && cd "$dir" && rm -rf sealed opened copy
[ -f input ] && [ "$(stat -c %s input)" = $((mib << 20)) ] || head -c $((mib << 20)) /dev/urandom > input
printf 'disk bench passphrase\n' > pass
sync
secs() { /usr/bin/time -f "%e %M" "$@" 2>&1 >/dev/null | tail -1; }
read -r t_copy _ < <(secs dd if=input of=copy bs=8M conv=fdatasync)
rm -f copy
read -r t_seal rss_seal < <(secs "$bin" seal input --out sealed --chunk-size "$chunk" --workers "$workers" --passphrase-file pass)
sync
read -r t_open rss_open < <(secs "$bin" open sealed --out opened --workers "$workers" --passphrase-file pass)
cmp -s input opened || { echo "opened file differs from the input" >&2; exit 1; }
awk -v mib="$mib" -v c="$t_copy" -v s="$t_seal" -v o="$t_open" -v rs="$rss_seal" -v ro="$rss_open" -v chunk="$chunk" -v w="$workers" 'BEGIN {
  gb = mib * 1048576 / 1e9
  printf "%d MiB, chunk %s, %d workers\n", mib, chunk, w
  printf "%-28s %8s %8s %10s %12s\n", "workload", "secs", "GB/s", "vs dd copy", "peak RSS MiB"
  printf "%-28s %8.2f %8.2f %10s %12s\n", "dd copy (8M, fdatasync)", c, gb / c, "100%", "-"
  printf "%-28s %8.2f %8.2f %9.0f%% %12.1f\n", "mspace seal", s, gb / s, 100 * c / s, rs / 1024
  printf "%-28s %8.2f %8.2f %9.0f%% %12.1f\n", "mspace open", o, gb / o, 100 * c / o, ro / 1024
}'
rm -rf sealed opened
