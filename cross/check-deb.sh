#!/usr/bin/env bash
# Inspects the .debs cross/build.sh --deb made and installs the one for
# this machine: the files land where README.md says, the config is a
# conffile, the unit is installed but not enabled, and the installed
# binary runs and reads the installed config.
#   cross/check-deb.sh
# CHECK_DEB_HOST_GLIBC=ARCH skips the glibc floor for that architecture's
# package (one made from a build linked against this machine's glibc).
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "check-deb: $*" >&2; exit 1; }
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"

found=0
for arch in arm64:aarch64-unknown-linux-gnu armhf:armv7-unknown-linux-gnueabihf amd64:x86_64-unknown-linux-gnu; do
  deb=$(ls target/"${arch#*:}"/debian/lookout_*_"${arch%%:*}".deb 2>/dev/null | tail -n1 || true)
  [ -n "$deb" ] || continue
  found=$((found + 1))
  info=$(dpkg-deb --info "$deb")
  contents=$(dpkg-deb --contents "$deb")
  echo "$info" | grep -q "Architecture: ${arch%%:*}" || fail "$deb: not Architecture: ${arch%%:*}"
  # cross/build.sh links against glibc 2.17, so the dependency must not
  # demand Debian 12's.
  libc=$(echo "$info" | sed -n 's/.*libc6 (>= \([0-9.]*\)).*/\1/p')
  [ -n "$libc" ] || fail "$deb: no libc6 dependency: $(echo "$info" | grep Depends)"
  if [ "${CHECK_DEB_HOST_GLIBC:-}" != "${arch%%:*}" ]; then
    [ "$(printf '%s\n2.31\n' "$libc" | sort -V | tail -n1)" = 2.31 ] || fail "$deb: depends on libc6 >= $libc (> 2.31)"
  fi
  for f in ./usr/bin/lookout ./etc/lookout/lookout.toml ./usr/lib/systemd/system/lookout.service \
    ./usr/share/lookout/imagenet-1k/labels.txt ./usr/share/doc/lookout/README.md \
    ./usr/share/doc/lookout/jetson-argus.conf; do
    echo "$contents" | grep -q " $f\$" || fail "$deb: $f missing"
  done
  dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qx /etc/lookout/lookout.toml \
    || fail "$deb: /etc/lookout/lookout.toml is not a conffile"
  echo "check-deb: $deb ok (libc6 >= $libc, $(echo "$info" | grep -o 'Installed-Size: [0-9]*') kB)"
done

[ $found -gt 0 ] || fail "no packages in target/*/debian/ (cross/build.sh --deb TARGET)"
deb=$(ls target/x86_64-unknown-linux-gnu/debian/lookout_*_amd64.deb 2>/dev/null | tail -n1 || true)
[ -n "$deb" ] || fail "no amd64 package to install (cross/build.sh --deb x86_64)"
$sudo dpkg -i "$deb" >/dev/null
trap '$sudo dpkg --purge lookout >/dev/null' EXIT
/usr/bin/lookout --version
systemctl is-enabled lookout.service 2>/dev/null | grep -q enabled && fail "the package enabled the service before a model is installed"
# As installed the config names a model the user has not copied yet: the
# check says which file is missing, with the config-error exit code.
set +e
out=$(/usr/bin/lookout check-config /etc/lookout/lookout.toml 2>&1); code=$?
set -e
[ $code -eq 78 ] && echo "$out" | grep -q "data2vec-vision-large-ft1k-int8.onnx does not exist" \
  || fail "check-config of the installed config: exit $code: $out"
# What the installed config's comment tells the user to do, the digits
# model standing in for an export (the purge removes the edited config).
trap '$sudo rm -rf /usr/local/share/lookout/models/digits; $sudo dpkg --purge lookout >/dev/null' EXIT
$sudo /usr/bin/lookout model install models/digits --config /etc/lookout/lookout.toml >/dev/null
/usr/bin/lookout check-config /etc/lookout/lookout.toml >/dev/null || fail "check-config failed with the model in place"
echo "check-deb: the amd64 package installs, runs --version, model install and check-config"
