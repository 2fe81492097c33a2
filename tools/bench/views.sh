#!/usr/bin/env bash
# Memory of several views on one model: one daemon with N views against N
# daemons of one view each, on the same model, side by side in one run.
# Prints peak RSS (VmHWM) per process, their sum and the inference time the
# daemons logged, with the CPU it ran on.
#
#   tools/bench/views.sh MODEL.onnx [N=4] [SECONDS=60] [LOOKOUT=target/release/lookout]
#
# MODEL needs its manifest (or labels) beside it, as tools/export_model.py
# writes. MQTT is off: this measures the model and the loop, not the broker.
set -euo pipefail
cd "$(dirname "$0")/../.."
model=$(realpath "$1"); n=${2:-4}; secs=${3:-60}; bin=$(realpath "${4:-target/release/lookout}")
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
frames=$PWD/models/digits/samples

config() { # FILE VIEWS...
  local f=$1; shift
  {
    printf '[device]\nid = "bench"\nstate_dir = "%s/state"\n\n' "$work"
    printf '[source]\nkind = "files"\npath = "%s"\nloop = true\nfps = 5\n\n' "$frames"
    printf '[model]\npath = "%s"\nthreads = 0\n\n[mqtt]\nenabled = false\n\n' "$model"
    for v in "$@"; do
      printf '[views.v%s]\nroi = [0.%s, 0.0, 0.5, 1.0]\ninterval = 1.0\n\n' "$v" "$v"
    done
  } >"$f"
}

peak() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

views=$(seq 1 "$n" | tr '\n' ' ')
config "$work/all.toml" $views
"$bin" run --config "$work/all.toml" 2>"$work/all.log" &
one=$!
sleep "$secs"
one_kb=$(peak $one); kill $one; wait $one 2>/dev/null || true

pids=()
for v in $views; do
  config "$work/v$v.toml" "$v"
  "$bin" run --config "$work/v$v.toml" 2>"$work/v$v.log" &
  pids+=($!)
done
sleep "$secs"
sum_kb=0
for p in "${pids[@]}"; do k=$(peak "$p"); sum_kb=$((sum_kb + k)); kill "$p"; done
wait 2>/dev/null || true

median_ms() { grep -ho ' in [0-9.]* ms' "$@" | awk '{print $2}' | sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : "-")}'; }
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
echo "views vs daemons on $(basename "$model"), $n views, ${secs} s each, $(nproc) cores: $cpu"
echo "| | processes | peak RSS (MB) | results | median total ms |"
echo "|---|---|---|---|---|"
printf '| one daemon, %s views | 1 | %.0f | %s | %s |\n' "$n" "$(echo "$one_kb/1024" | bc -l)" "$(grep -c '] result ' "$work/all.log")" "$(median_ms "$work/all.log")"
printf '| %s daemons, 1 view each | %s | %.0f | %s | %s |\n' "$n" "$n" "$(echo "$sum_kb/1024" | bc -l)" "$(cat "$work"/v*.log | grep -c '] result ')" "$(median_ms "$work"/v*.log)"
printf 'ratio (one daemon / %s daemons): %.2f\n' "$n" "$(echo "$one_kb/$sum_kb" | bc -l)"
