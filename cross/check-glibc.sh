#!/usr/bin/env bash
# Fails when BINARY needs a newer glibc than MAX (default 2.31: Pi OS
# Bullseye, Ubuntu 20.04 / JetPack 5). readelf reads any architecture.
#   cross/check-glibc.sh BINARY [MAX]
set -euo pipefail
bin="$1"; max="${2:-2.31}"
need=$(readelf --dyn-syms --wide "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)
[ -n "$need" ] || { echo "check-glibc: $bin: no GLIBC symbol versions (not a dynamic glibc binary?)" >&2; exit 1; }
if [ "$(printf '%s\n%s\n' "$need" "$max" | sort -V | tail -n1)" != "$max" ]; then
  echo "check-glibc: $bin needs glibc $need, newer than $max: build it with cross/build.sh" >&2
  exit 1
fi
echo "check-glibc: $bin needs glibc $need (<= $max)"
