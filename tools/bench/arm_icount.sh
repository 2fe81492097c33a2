#!/usr/bin/env bash
# Guest instructions per inference of the aarch64 (or armv7) build under qemu-user,
# for lookout's variants side by side (the only ARM figure a machine
# without a board can give; see tools/bench/qemu/insn.c for what it does
# and does not measure).
#
#   tools/bench/arm_icount.sh MODEL.onnx [CPU] [RUNS]
#
# CPU: qemu's -cpu (default cortex-a72, a Pi 4). Each variant runs
# `lookout bench --threads 1 --warmup 0` twice, with 1 and 1+RUNS runs
# (default 2), and the difference divided by RUNS is one inference: load
# and start-up cancel out. The variants: lookout as it ships, with tract's
# attention ops, with tract's int8 kernels (VARIANTS="--no-passes ..."
# replaces the last two; plain tract is slow under qemu).
#
# Needs qemu-user, gcc and the aarch64 binary from cross/build.sh
# (LOOKOUT_ARM_BIN, default the release profile's: CI's `ci` profile is
# opt-level 1, which leaves lookout's NEON intrinsics unoptimised but not
# tract's assembly kernels). An armv7 binary there runs under qemu-arm
# (CPU default cortex-a15) with TRACT_CPU_ARM32_NEON=true, because qemu 7.2
# shows the host's /proc/cpuinfo, where tract looks for NEON.
# VARIANTS="" counts lookout as it ships only (say, for an f32 model).
# tools/bench/arm_profile.py splits one run's count by function.
set -euo pipefail
cd "$(dirname "$0")/../.."
model="${1:?usage: tools/bench/arm_icount.sh MODEL.onnx [CPU] [RUNS]}"
bin="${LOOKOUT_ARM_BIN:-target/aarch64-unknown-linux-gnu/release/lookout}"
[ -x "$bin" ] || { echo "arm_icount: no $bin; build it with cross/build.sh aarch64" >&2; exit 1; }
if file -b "$bin" | grep -q '^ELF 32-bit.* ARM'; then
  qemu=(env TRACT_CPU_ARM32_NEON=true qemu-arm -L /usr/arm-linux-gnueabihf) default_cpu=cortex-a15
else
  qemu=(qemu-aarch64 -L /usr/aarch64-linux-gnu) default_cpu=cortex-a72
fi
cpu="${2:-$default_cpu}"
runs="${3:-2}"
plugin="$(mktemp -d)/libinsn.so"
gcc -shared -fPIC -O2 -o "$plugin" tools/bench/qemu/insn.c -Wl,--unresolved-symbols=ignore-all

count() { # runs flags...
  local n="$1"; shift
  "${qemu[@]}" -cpu "$cpu" -plugin "$plugin" -d plugin \
    "$bin" bench --model "$model" --threads 1 --warmup 0 --runs "$n" "$@" 2>&1 |
    sed -n 's/^guest instructions: //p'
}

echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(basename "$bin") for $(file -b "$bin" | cut -d, -f2 | xargs), $cpu, $(basename "$model"), 1 thread, $runs runs"
echo "| variant | guest instructions per inference | vs lookout |"
echo "|---|---|---|"
base=""
read -r -a variants <<<"${VARIANTS---tract-attention --tract-int8}"
for flags in "" "${variants[@]}"; do
  a=$(count 1 $flags)
  b=$(count $((1 + runs)) $flags)
  per=$(( (b - a) / runs ))
  base="${base:-$per}"
  printf '| lookout %s | %s | %s |\n' "${flags:-(default)}" "$per" \
    "$(awk -v p="$per" -v b="$base" 'BEGIN{printf "%.2fx", p/b}')"
done
