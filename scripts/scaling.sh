#!/usr/bin/env bash
# The 1-to-16-core scaling runs of docs/BENCHMARKS.md ("On 16 cores"), for a machine without
# cargo: build here, carry the binary, run this there.
#
#   cargo build --release -p tools --bin engine-bench
#   scripts/scaling.sh ./target/release/engine-bench OUT_DIR [DATA_DIR]
#
# fio must be on PATH for the store rows (scripts/bench-deps.sh installs it where apt works;
# elsewhere carry /usr/bin/fio with the libraries `ldd` lists and run it through their
# loader). Writes OUT_DIR/codec.json, store-S.json and net-S.json for S in 1 2 4 8 16.
set -euo pipefail
bench=${1:?usage: scripts/scaling.sh ENGINE_BENCH OUT_DIR [DATA_DIR]}
out=${2:?usage: scripts/scaling.sh ENGINE_BENCH OUT_DIR [DATA_DIR]}
data=${3:-/tmp}
mkdir -p "$out"
"$bench" codec --size 1GiB --workers 1,2,4,8,16 --rounds 2 --json > "$out/codec.json"
for s in 1 2 4 8 16; do
  "$bench" --dir "$data/ebench" --size 2GiB --chunk-sizes 64KiB,8MiB --shards "$s" --clients "$s" \
    --random-secs 3 --restart-chunks 0 --json > "$out/store-$s.json"
  "$bench" net --dir "$data/nbench" --size 2GiB --chunk-sizes 1MiB,8MiB --shards "$s" --clients "$s" \
    --json > "$out/net-$s.json"
done
