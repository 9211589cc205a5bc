#!/bin/sh
# Install what building and testing libattn needs on Debian or Ubuntu.
# Does nothing when every package is already installed; runs apt-get update
# only when the package lists do not know a missing package. As root it calls
# apt-get directly, otherwise through sudo.
set -eu

# The one list. Add a package here (with why) when a part of the project needs it.
PACKAGES="
  build-essential cmake pkg-config
  libopenblas-dev
  libblis-dev
  libcmocka-dev
  python3-numpy python3-pytest
  python3-torch
  clang-14 libclang-rt-14-dev
  valgrind
  abigail-tools
  doxygen
"
# libopenblas-dev: the BLAS; libblis-dev: the second BLAS CI tests (.ci/run blis);
# libcmocka-dev: unit tests; python3-*: binding tests
# (python3-torch: the binding's second, independent reference; its tests skip without it);
# clang-14 + libclang-rt-14-dev: the clang preset, fuzzing and sanitizers;
# valgrind: memory checks; abigail-tools: abidiff; doxygen: the API reference.

missing=""
for p in $PACKAGES; do
  if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing="$missing $p"
  fi
done

if [ -z "$missing" ]; then
  echo "install-deps: all packages present"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  SUDO="sudo"
else
  echo "install-deps: need root or sudo to install:$missing" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-deps: installing:$missing"

# A fresh machine (or container) often has empty package lists.
needs_update=0
for p in $missing; do
  if ! apt-cache show "$p" >/dev/null 2>&1; then
    needs_update=1
    break
  fi
done
if [ "$needs_update" -eq 1 ]; then
  $SUDO apt-get update -q
fi

# shellcheck disable=SC2086 # word splitting of the list is intended
if ! $SUDO apt-get install -q -y --no-install-recommends $missing; then
  # Lists that know the package but are stale give 404s: refresh once and retry.
  $SUDO apt-get update -q
  # shellcheck disable=SC2086
  $SUDO apt-get install -q -y --no-install-recommends $missing
fi
