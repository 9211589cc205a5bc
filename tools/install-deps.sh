#!/bin/sh
# Install the Debian or Ubuntu packages that a part of libattn needs:
#   tools/install-deps.sh [GROUP...]     (no GROUP: build)
# Does nothing when every package is already installed; runs apt-get update
# only when the package lists do not know a missing package. As root it calls
# apt-get directly, otherwise through sudo.
set -eu

# The groups. Add a package to the group of the part that needs it (with why).
# build: compiler, CMake, pkg-config and the BLAS: building and the demo.
BUILD="build-essential cmake pkg-config libopenblas-dev"
# python: the README's Python steps (a venv that sees Debian's NumPy, and
# pip installing the binding there without fetching setuptools).
PYTHON="$BUILD python3-numpy python3-venv python3-setuptools python3-wheel"
# test: the unit tests (CMocka), the binding's and the CLI's tests (pytest).
TEST="$PYTHON libcmocka-dev python3-pytest"
# torch: the binding's second, independent reference (its tests skip without
# it); large (it pulls in OpenCV, Qt and GDAL), so only where those tests run.
TORCH="python3-torch"
BLIS="libblis-dev"                       # the second BLAS (.ci/run blis)
CLANG="clang-14 libclang-rt-14-dev"      # the clang preset, fuzzing
VALGRIND="valgrind"                      # .ci/run valgrind
ABI="abigail-tools"                      # abidiff (.ci/run abi)
DOCS="doxygen"                           # the API reference (.ci/run docs)
RUST="cargo"                             # Debian's Rust 1.63 (.ci/run rust, if no cargo)

usage() {
  echo "usage: tools/install-deps.sh [GROUP...]" >&2
  echo "groups: build (default), python, test, torch, blis, clang, valgrind, abi, docs, rust, ci (all)" >&2
  exit 1
}

[ $# -gt 0 ] || set -- build
PACKAGES=""
for g in "$@"; do
  case "$g" in
    build) PACKAGES="$PACKAGES $BUILD" ;;
    python) PACKAGES="$PACKAGES $PYTHON" ;;
    test) PACKAGES="$PACKAGES $TEST" ;;
    torch) PACKAGES="$PACKAGES $TORCH" ;;
    blis) PACKAGES="$PACKAGES $BUILD $BLIS" ;;
    clang) PACKAGES="$PACKAGES $BUILD $CLANG" ;;
    valgrind) PACKAGES="$PACKAGES $TEST $VALGRIND" ;;
    abi) PACKAGES="$PACKAGES $BUILD $ABI" ;;
    docs) PACKAGES="$PACKAGES $DOCS" ;;
    rust) PACKAGES="$PACKAGES $BUILD $RUST" ;;
    ci) PACKAGES="$PACKAGES $TEST $TORCH $BLIS $CLANG $VALGRIND $ABI $DOCS $RUST" ;;
    -h | --help) usage ;;
    *) echo "install-deps: unknown group '$g'" >&2; usage ;;
  esac
done

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
