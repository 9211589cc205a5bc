#!/bin/sh
# Run blas_threads under each installed OpenBLAS variant (Debian's pthread,
# OpenMP and serial builds) and OPENBLAS_NUM_THREADS / OMP_NUM_THREADS of 1
# and 2, without touching the system alternative: LD_LIBRARY_PATH picks the
# variant's libopenblas.so.0 ahead of the build's RUNPATH.
#   bench/blas_threads.sh BUILD_DIR [blas_threads args...]
# Install the variants with: apt-get install libopenblas0-openmp libopenblas0-serial
set -eu
build=${1:?usage: blas_threads.sh BUILD_DIR [args]}
shift
[ $# -gt 0 ] || set -- big concurrent
libdir=/usr/lib/x86_64-linux-gnu
for variant in pthread openmp serial; do
  dir=$libdir/openblas-$variant
  if [ ! -e "$dir/libopenblas.so.0" ]; then
    echo "## $variant: not installed ($dir)"
    continue
  fi
  for n in 1 2; do
    echo "## variant $variant, OPENBLAS_NUM_THREADS=$n OMP_NUM_THREADS=$n"
    LD_LIBRARY_PATH=$dir OPENBLAS_NUM_THREADS=$n OMP_NUM_THREADS=$n \
      "$build/bench/blas_threads" "$@"
    [ "$variant" != serial ] || break   # the serial build ignores both
  done
done
