#!/bin/sh
# deps.sh - install the Debian 12 packages the build and the tests need.
# Usage: scripts/deps.sh [build|check]
#   build: compiler, cmake, liburcu (what `make demo` needs)
#   check: also clang's sanitizer/fuzzer runtime, valgrind, the aarch64
#          cross compiler (what `make check` needs)
# Installs only what is missing.  Without root it prints the exact apt-get
# line and fails.
set -eu
want="gcc make cmake pkg-config liburcu-dev"
if [ "${1:-build}" = check ]; then
	want="$want clang libclang-rt-14-dev valgrind gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
fi
missing=""
for p in $want; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "libpcpu: missing Debian packages:$missing" >&2
	echo "run as root:  apt-get update && apt-get install -y$missing" >&2
	exit 1
fi
echo "libpcpu: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
