#!/usr/bin/env bash
# The whole test suite, as README.md and .ci/run give it. Installs what the
# tests need when it is missing (Debian/Ubuntu; sudo when not root), then
# runs the Rust tests, where torch is installed the exporter's tests, and
# the tests against a real Home Assistant (tests/ha/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
# tests/it/mqtt.rs makes its TLS certificates with the openssl CLI.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# libfaketime steps lookout's wall clock in tests/it/offline.rs.
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || need+=(libfaketime)
# nokhwa's V4L2 bindings are generated with bindgen, which needs libclang
# itself: libclang-cpp (the C++ library, on many machines) does not do.
ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*/libclang-[0-9]*.so* >/dev/null 2>&1 || need+=(libclang-dev)
# tests/it/systemd.rs checks the unit with systemd-analyze.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# tests/it/cross.rs runs this build as a CPU without AVX-512 (qemu-x86_64 -cpu Haswell).
command -v qemu-x86_64 >/dev/null 2>&1 || need+=(qemu-user)
# tests/it/system.rs boots Debian in systemd-nspawn containers (as root
# only; it says it skipped otherwise) and installs the package there.
if [ "$(id -u)" -eq 0 ]; then
  command -v systemd-nspawn >/dev/null 2>&1 || need+=(systemd-container)
  command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
fi
# Home Assistant (tests/ha/) logs an error at every start without it.
ldconfig -p 2>/dev/null | grep libturbojpeg >/dev/null || need+=(libturbojpeg0)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "tools/test.sh: installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The system test packages the binary it tests with cargo-deb (cross/test.sh
# uses it too); a debug build of the tool compiles in half the time.
if [ "$(id -u)" -eq 0 ] && ! command -v cargo-deb >/dev/null 2>&1; then
  echo "tools/test.sh: installing cargo-deb"
  cargo install --locked --debug cargo-deb
fi

py=python3
[ -x tools/.venv/bin/python ] && py=tools/.venv/bin/python
if $py -c 'import torch, pytest' 2>/dev/null; then
  $py -m pytest -q tools/test_export.py
else
  echo "tools/test.sh: skipping the exporter's Python tests (torch and pytest are not installed; see tools/README.md)"
fi

cargo test --locked "$@"

# lookout against a real Home Assistant, with the binary cargo just built;
# not when the arguments pick some Rust tests.
if [ $# -eq 0 ]; then
  bash tests/ha/run.sh
fi
