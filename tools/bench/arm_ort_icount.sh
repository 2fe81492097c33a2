#!/usr/bin/env bash
# lookout and onnxruntime side by side on aarch64 under qemu-user: guest
# instructions per inference, 1 thread, same ONNX file, same TCG plugin
# (tools/bench/qemu/insn.c). A count, not a time: see BENCHMARKS.md.
#
#   tools/bench/arm_ort_icount.sh MODEL.onnx [CPU...]     (default: cortex-a72 cortex-a76)
#
# Each runtime runs with 1 and 1+RUNS inferences (RUNS default 2) and the
# difference / RUNS is one inference, so Python start-up, imports, session
# creation (graph optimisation, weight prepacking) and lookout's load all
# cancel out. lookout: `lookout bench --threads 1 --warmup 0` as it ships
# (the binary from cross/build.sh aarch64, LOOKOUT_ARM_BIN to override).
# onnxruntime: tools/bench/ort_runs.py (intra/inter-op threads 1,
# ORT_ENABLE_ALL, a seeded 1x3x224x224 input). PROFILE=1 also prints
# where each runtime's instructions go (tools/bench/arm_lib_profile.py) and
# keeps the block files in target/arm-ort/.
#
# The arm64 Python is set up once, cached under target/ (about 3 min and
# 300 MB, needs root, network and binfmt_misc):
#   apt-get install -y qemu-user-static binfmt-support debootstrap
#   mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc   # if not mounted
#   debootstrap --arch=arm64 --variant=minbase --include=python3 bookworm \
#     target/arm64-root http://deb.debian.org/debian
#   pip download --only-binary=:all: --platform manylinux_2_28_aarch64 \
#     --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
#     --platform any --python-version 3.11 --implementation cp \
#     -d target/arm64-wheels onnxruntime==$ORT_VERSION
#   unzip every wheel into target/arm64-site (on PYTHONPATH)
# This script does the last two steps itself when target/arm64-site is
# missing (ORT_VERSION, default 1.32.0: the newest with a cp311 aarch64
# wheel in 2026-12 and the version on x86 in BENCHMARKS.md).
#
# The CPU onnxruntime sees: qemu 7.2 shows the host's /proc/cpuinfo (x86)
# to the guest, and pytorch cpuinfo's ARM parser (run by onnxruntime's
# CPUIDInfo at import) crashes on it with SIGSEGV. qemu-user looks every
# absolute path up under its -L prefix first, so target/arm64-root-CPU
# (links to target/arm64-root's entries plus its own proc/cpuinfo, written
# here: a Pi 4's Cortex-A72 r0p3 or a Pi 5's Cortex-A76 r4p1 with the
# kernel's Features line for it) is what the guest reads. It matters:
# MLAS takes its dot-product kernels when cpuinfo_has_arm_neon_dot(), which
# cpuinfo also infers from the MIDR, not only from qemu's HWCAP (an A76's
# cpuinfo under -cpu cortex-a72 made onnxruntime pick udot and die with
# SIGILL). The profile's instruction mix shows the kernel each used:
# udot on the A76, smull/smlal/sadalp on the A72.
set -euo pipefail
cd "$(dirname "$0")/../.."
model="${1:?usage: tools/bench/arm_ort_icount.sh MODEL.onnx [CPU...]}"
shift
cpus=("$@")
[ ${#cpus[@]} -gt 0 ] || cpus=(cortex-a72 cortex-a76)
runs="${RUNS:-2}"
runtimes="${RUNTIMES:-lookout ort}"
root=target/arm64-root site=target/arm64-site out=target/arm-ort
bin="${LOOKOUT_ARM_BIN:-target/aarch64-unknown-linux-gnu/release/lookout}"
[ -x "$bin" ] || { echo "arm_ort_icount: no $bin; build it with cross/build.sh aarch64" >&2; exit 1; }
[ -x "$root/usr/bin/python3" ] || { echo "arm_ort_icount: no arm64 Python in $root; see this script's header" >&2; exit 1; }
if [ ! -d "$site/onnxruntime" ]; then
  pip download -q --only-binary=:all: --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
    --platform manylinux_2_17_aarch64 --platform any --python-version 3.11 --implementation cp \
    -d target/arm64-wheels "onnxruntime==${ORT_VERSION:-1.32.0}"
  mkdir -p "$site"
  for w in target/arm64-wheels/*.whl; do python3 -m zipfile -e "$w" "$site"; done
fi
mkdir -p "$out"
plugin="$out/libinsn.so"
gcc -shared -fPIC -O2 -o "$plugin" tools/bench/qemu/insn.c -Wl,--unresolved-symbols=ignore-all

cpu_root() { # cpu: target/arm64-root-CPU, the root's entries as links plus its own /proc/cpuinfo
  local r="$root-$1" e
  mkdir -p "$r/proc"
  for e in "$root"/*; do
    [ "$(basename "$e")" = proc ] || ln -sfn "../$(basename "$root")/$(basename "$e")" "$r/$(basename "$e")"
  done
  fake_cpuinfo "$1" >"$r/proc/cpuinfo"
}

fake_cpuinfo() { # cpu: /proc/cpuinfo of a Pi 4 or Pi 5, 2 processors as /sys shows on this host
  local features variant part rev
  case "$1" in
    cortex-a72) features="fp asimd evtstrm crc32 cpuid" variant=0x0 part=0xd08 rev=3 ;;
    cortex-a76) features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
                variant=0x4 part=0xd0b rev=1 ;;
    *) echo "arm_ort_icount: no /proc/cpuinfo for $1" >&2; exit 1 ;;
  esac
  for i in $(seq 0 $(($(nproc --all) - 1))); do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' \
      "$i" "$features" "$variant" "$part" "$rev"
  done
}

tag() { echo "$out/$1-$(basename "$model" .onnx)-$2-$3"; }

lookout_count() { # cpu runs
  local t; t=$(tag lookout "$1" "$2")
  qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu "$1" -plugin "$plugin,out=$t.tsv" -d plugin \
    "$bin" bench --model "$model" --threads 1 --warmup 0 --runs "$2" 2>&1 | sed -n 's/^guest instructions: //p'
}

ort_count() { # cpu runs
  local t; t=$(tag ort "$1" "$2")
  PYTHONPATH="$PWD/$site" qemu-aarch64 -L "$root-$1" -cpu "$1" -plugin "$plugin,out=$t.tsv" -d plugin \
    "$root-$1/usr/bin/python3" tools/bench/ort_runs.py "$model" "$2" "$t.maps" 2>&1 | sed -n 's/^guest instructions: //p'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2fx", a/b}'; }

echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(basename "$model"), 1 thread, $runs runs, qemu $(qemu-aarch64 --version | head -1 | awk '{print $3}'), onnxruntime $(cat "$site"/onnxruntime-*.dist-info/METADATA | sed -n 's/^Version: //p')"
echo "| model | CPU | lookout G instr | onnxruntime G instr | lookout / onnxruntime |"
echo "|---|---|---|---|---|"
for cpu in "${cpus[@]}"; do
  cpu_root "$cpu"
  l="" o=""
  if [[ " $runtimes " == *" lookout "* ]]; then
    la=$(lookout_count "$cpu" 1); lb=$(lookout_count "$cpu" $((1 + runs))); l=$(( (lb - la) / runs ))
  fi
  if [[ " $runtimes " == *" ort "* ]]; then
    oa=$(ort_count "$cpu" 1); ob=$(ort_count "$cpu" $((1 + runs))); o=$(( (ob - oa) / runs ))
  fi
  printf '| %s | %s | %s | %s | %s |\n' "$(basename "$model" .onnx)" "$cpu" \
    "$(awk -v x="$l" 'BEGIN{if (x != "") printf "%.3f", x/1e9}')" "$(awk -v x="$o" 'BEGIN{if (x != "") printf "%.3f", x/1e9}')" \
    "$( [ -n "$l" ] && [ -n "$o" ] && ratio "$l" "$o")"
  if [ -n "${PROFILE:-}" ] && [ -n "$l" ]; then
    echo; echo "lookout, $cpu:"
    tools/bench/arm_lib_profile.py --top "${TOP:-15}" "$(tag lookout "$cpu" 1).tsv" "@$bin" \
      "$(tag lookout "$cpu" $((1 + runs))).tsv" "@$bin" "$runs"
  fi
  if [ -n "${PROFILE:-}" ] && [ -n "$o" ]; then
    echo; echo "onnxruntime, $cpu:"
    tools/bench/arm_lib_profile.py --top "${TOP:-15}" "$(tag ort "$cpu" 1).tsv" "$(tag ort "$cpu" 1).maps" \
      "$(tag ort "$cpu" $((1 + runs))).tsv" "$(tag ort "$cpu" $((1 + runs))).maps" "$runs"
    echo
  fi
done
