#!/usr/bin/env bash
# Release binaries for the boards, built here without Docker.
#
#   cross/build.sh [--profile NAME] [--deb] TARGET...
#
# TARGET: aarch64 (Pi 4/5 64-bit, Jetson), armv7 (32-bit Pi OS), x86_64,
# or a full Rust triple. Binaries land in target/<triple>/<profile>/lookout;
# with --deb, .deb packages in target/<triple>/debian/.
#
# Linked with zig (cargo-zigbuild) against glibc 2.17, so one binary runs
# on Pi OS Bullseye/Bookworm, Ubuntu 20.04+ (JetPack 5/6) and Debian 11+;
# a binary linked by Debian 12's own toolchain would need glibc 2.34.
# C code (SQLite, ring) is compiled by zig too; bindgen (nokhwa's V4L2
# bindings) reads the target's kernel headers from Debian's cross
# packages (after zig's). Needs: rustup, Debian's gcc-aarch64-linux-gnu /
# gcc-arm-linux-gnueabihf (headers and the qemu sysroot), libclang-dev,
# python3-venv (zig comes from PyPI into cross/.venv) and cargo-zigbuild
# (+ cargo-deb for --deb); missing Rust targets and zig are installed.
set -euo pipefail
cd "$(dirname "$0")/.."

GLIBC=2.17
profile=release
deb=false
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --deb) deb=true; shift ;;
    aarch64) targets+=(aarch64-unknown-linux-gnu); shift ;;
    armv7) targets+=(armv7-unknown-linux-gnueabihf); shift ;;
    x86_64) targets+=(x86_64-unknown-linux-gnu); shift ;;
    *-*) targets+=("$1"); shift ;;
    *) echo "cross/build.sh: unknown argument '$1' (targets: aarch64 armv7 x86_64)" >&2; exit 2 ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || { echo "usage: cross/build.sh [--profile NAME] [--deb] aarch64|armv7|x86_64..." >&2; exit 2; }

command -v cargo-zigbuild >/dev/null || { echo "cross/build.sh: cargo-zigbuild missing: cargo install --locked cargo-zigbuild" >&2; exit 1; }
if $deb; then
  command -v cargo-deb >/dev/null || { echo "cross/build.sh: cargo-deb missing: cargo install --locked cargo-deb" >&2; exit 1; }
fi
if [ ! -x cross/.venv/bin/python-zig ] && [ ! -x cross/.venv/bin/zig ]; then
  python3 -m venv cross/.venv
  cross/.venv/bin/pip install -q ziglang
fi
# cargo-zigbuild finds zig as `python -m ziglang` when no zig is on PATH.
export PATH="$PWD/cross/.venv/bin:$PATH"

for t in "${targets[@]}"; do
  rustup target list --installed | grep -qx "$t" || rustup target add "$t"
  case "$t" in
    aarch64-*) sysroot=/usr/aarch64-linux-gnu ;;
    armv7-*) sysroot=/usr/arm-linux-gnueabihf ;;
    *) sysroot="" ;;
  esac
  if [ -n "$sysroot" ]; then
    [ -d "$sysroot/include/linux" ] || { echo "cross/build.sh: no kernel headers in $sysroot: apt-get install gcc-${sysroot#/usr/}" >&2; exit 1; }
    # bindgen (nokhwa's V4L2 bindings) runs with zig's libc headers, which
    # lack linux/videodev2.h: Debian's cross headers fill in after them.
    # cargo-zigbuild appends its own flags to this variable.
    export BINDGEN_EXTRA_CLANG_ARGS="-idirafter $sysroot/include"
  fi
  echo "cross/build.sh: $t ($profile, glibc $GLIBC)"
  cargo zigbuild --locked --profile "$profile" --target "$t.$GLIBC" --bin lookout
  bin="target/$t/$profile/lookout"
  # The package declares libc6 (>= 2.17) (Cargo.toml): hold it to that.
  cross/check-glibc.sh "$bin" "$GLIBC"
  if $deb; then
    cargo deb --no-build --target "$t" --profile "$profile" -o "target/$t/debian/"
  fi
done
