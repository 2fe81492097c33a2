#!/usr/bin/env bash
# The ARM builds and the packages, tested here (issue #9):
#   1. cross/build.sh builds each target once (glibc <= 2.31 checked) and
#      packages it as a .deb;
#   2. tests/it/cross.rs runs the ARM binaries under qemu-user (Cortex-A72 and
#      A76 for aarch64, A15 for armv7) on the digits model against this
#      machine's answers;
#   3. the aarch64 unit tests run under qemu (Cortex-A72, where lookout's
#      plain NEON int8 kernel is picked, and the int8 kernel tests again on
#      a Cortex-A76, where its sdot kernel is), reusing step 1's
#      dependencies;
#   4. every .deb is inspected, and the amd64 one installed and run.
#
#   CROSS_TARGETS   targets to build (default: aarch64 armv7 x86_64)
#   CROSS_PROFILE   Cargo profile (default: release)
# Without x86_64 among the targets, the amd64 package is made from the
# debug build `cargo test` made (target/debug/lookout), which saves CI a
# third full build; it is checked like the others except for its glibc
# floor, which is the build machine's.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${CROSS_PROFILE:-release}"
read -r -a targets <<<"${CROSS_TARGETS:-aarch64 armv7 x86_64}"

need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v arm-linux-gnueabihf-gcc >/dev/null || need+=(gcc-arm-linux-gnueabihf)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*/libclang-[0-9]*.so* >/dev/null 2>&1 || need+=(libclang-dev)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "cross/test.sh: installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
tools=()
command -v cargo-zigbuild >/dev/null || tools+=(cargo-zigbuild)
command -v cargo-deb >/dev/null || tools+=(cargo-deb)
# Debug builds of the tools: they compile in half the time, and their
# speed does not matter.
[ ${#tools[@]} -eq 0 ] || cargo install --locked --debug "${tools[@]}"

cross/build.sh --profile "$profile" --deb "${targets[@]}"

triples=()
for t in "${targets[@]}"; do
  case "$t" in aarch64) triples+=(aarch64-unknown-linux-gnu) ;; armv7) triples+=(armv7-unknown-linux-gnueabihf) ;; esac
done
LOOKOUT_CROSS="${triples[*]}" LOOKOUT_CROSS_PROFILE="$profile" cargo test --locked --test it cross:: -- --nocapture

if [[ " ${triples[*]} " == *" aarch64-unknown-linux-gnu "* ]]; then
  export PATH="$PWD/cross/.venv/bin:$PATH"
  export BINDGEN_EXTRA_CLANG_ARGS="-idirafter /usr/aarch64-linux-gnu/include"
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu cortex-a72 -L /usr/aarch64-linux-gnu"
  LOOKOUT_EXPECT_INT8_KERNEL=lookout_arm64neon_i8i8_2x16 \
    cargo-zigbuild test --locked --profile "$profile" --target aarch64-unknown-linux-gnu.2.17 --lib
  # lookout's sdot kernel needs a CPU with the dot product (Pi 5): its
  # tests against the ONNX definition again on a Cortex-A76.
  LOOKOUT_EXPECT_INT8_KERNEL=lookout_arm64dot_i8i8_6x16 \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu cortex-a76 -L /usr/aarch64-linux-gnu" \
    cargo-zigbuild test --locked --profile "$profile" --target aarch64-unknown-linux-gnu.2.17 --lib model::qgemm -- --nocapture
fi

if [[ " ${targets[*]} " != *" x86_64 "* ]]; then
  [ -x target/debug/lookout ] || cargo build --locked --bin lookout
  # cargo-deb warns that a dev-profile package is not for release: true.
  cargo deb --no-build --profile dev -o target/x86_64-unknown-linux-gnu/debian/
  export CHECK_DEB_HOST_GLIBC=amd64
fi
cross/check-deb.sh
