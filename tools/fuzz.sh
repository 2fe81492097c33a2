#!/usr/bin/env bash
# Runs lookout's cargo-fuzz targets (fuzz/), one at a time, each for the
# given number of seconds (default 60), on the committed corpora, niced so
# the machine stays usable. Needs the nightly toolchain and cargo-fuzz
# (cargo install cargo-fuzz --locked). Prints each target's executions and
# leaves crashes in fuzz/artifacts/<target>/.
#
#   tools/fuzz.sh 600                  # every target, 10 minutes each
#   tools/fuzz.sh 60 outbox mjpeg      # some targets
#   MINIMISE=1 tools/fuzz.sh 600       # and keep the grown corpora, minimised (cmin)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config manifest mjpeg frame mqtt_payload outbox onnx command)
# Its own build dir (git-ignored): sanitizer builds share nothing with ours.
export CARGO_TARGET_DIR="$PWD/fuzz/target"
mkdir -p fuzz/target/logs
nice -n 10 cargo +nightly fuzz build
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  log="fuzz/target/logs/$t.log"
  # The corpus grows in a scratch copy; cmin brings back only what adds
  # coverage, so the committed corpora stay small.
  scratch=$(mktemp -d)
  cp -r "fuzz/corpus/$t/." "$scratch/"
  status=0
  nice -n 10 cargo +nightly fuzz run "$t" "$scratch" -- \
    -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 >"$log" 2>&1 || status=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  echo "$t: ${secs} s, ${execs} executions, exit ${status} (log: $log)"
  if [ "${MINIMISE:-0}" = 1 ] && [ "$status" = 0 ]; then
    nice -n 10 cargo +nightly fuzz cmin "$t" "$scratch" >>"$log" 2>&1
    rm -rf "fuzz/corpus/$t" && cp -r "$scratch" "fuzz/corpus/$t"
    echo "$t: corpus minimised to $(ls "fuzz/corpus/$t" | wc -l) files, $(du -sh "fuzz/corpus/$t" | cut -f1)"
  fi
  rm -rf "$scratch"
  [ "$status" = 0 ] || { echo "$t found a crash: see $log and fuzz/artifacts/$t/"; exit 1; }
done
