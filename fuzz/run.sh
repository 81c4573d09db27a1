#!/usr/bin/env bash
# Runs one fuzz target with libFuzzer, coverage-guided, on the stable toolchain (no
# cargo-fuzz or nightly needed): the SanitizerCoverage flags below are what cargo-fuzz passes.
#
#   fuzz/run.sh TARGET [SECONDS]      e.g. fuzz/run.sh manifest 60
#   fuzz/run.sh all [SECONDS]         every target in turn
#
# The corpus grows in fuzz/corpus/TARGET (seeded from fuzz/seeds/TARGET); crashes land in
# fuzz/artifacts/TARGET with the command to replay them printed by libFuzzer.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=(manifest share_key sealed_chunk erasure_share tx block ledger segment checkpoint link offer market_msg frame host_state control file_record certificate file_share sealed_to invoice proxy_receipt gateway_record exchange_raft saved_match)
# Built with the `node` feature (malachite, libp2p): minutes more to build, so `all` leaves
# it out; run it by name.
heavy=(consensus_msg)
target=${1:?usage: fuzz/run.sh TARGET|all [SECONDS]; targets: ${targets[*]} ${heavy[*]}}
seconds=${2:-60}
if [ "$target" = all ]; then
  for t in "${targets[@]}"; do "$0" "$t" "$seconds"; done
  exit 0
fi
export CARGO_TARGET_DIR=target/fuzz
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks --cfg fuzzing"
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros, as cargo-fuzz does.
host=$(rustc -vV | sed -n 's/^host: //p')
features=()
[[ " ${heavy[*]} " == *" $target "* ]] && features=(--features node)
cargo build --release -p fuzz --bin "$target" --target "$host" "${features[@]}"
mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
seeds=()
[ -d "fuzz/seeds/$target" ] && seeds=("fuzz/seeds/$target")
exec "$CARGO_TARGET_DIR/$host/release/$target" -max_total_time="$seconds" \
  -artifact_prefix="fuzz/artifacts/$target/" "fuzz/corpus/$target" "${seeds[@]}"
