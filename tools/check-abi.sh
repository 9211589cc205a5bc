#!/bin/sh
# The binary interface of libattn.so against the committed baseline
# abi/libattn.abi (libabigail XML), with abidiff.
#
#   tools/check-abi.sh           build libattn.so, compare; fail on any change
#   tools/check-abi.sh --update  write the baseline from the current sources
#
# Rules (README "Guarantees"):
# - No change: pass.
# - A compatible change (an added function, say): fail until the baseline is
#   regenerated with --update in the same commit, so the baseline always
#   describes the current ABI and each change shows up in review.
# - An incompatible change (a removed function, a changed struct, parameter
#   or enum value): fail. --update refuses it too, unless the major version
#   (ATTN_VERSION_MAJOR in include/attn.h, hence the SONAME libattn.so.N) was
#   bumped and CHANGELOG.md names the new SONAME.
# The library is built from a copy of the sources at a fixed path (the dump
# lists declarations in an order that depends on the build location), with
# gcc, RelWithDebInfo; build paths are stripped from the dump, so running
# --update twice on the same sources gives the same bytes. The baseline is for
# x86-64 Linux; elsewhere the check is skipped.
# Environment: CC (default gcc), ATTN_ABI_WORK (default $TMPDIR/libattn-abi).
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
mode=check
case "${1:-}" in
  "") ;;
  --update) mode=update ;;
  *) echo "usage: tools/check-abi.sh [--update]" >&2; exit 2 ;;
esac
base=$root/abi/libattn.abi
work=${ATTN_ABI_WORK:-${TMPDIR:-/tmp}/libattn-abi}

for tool in abidw abidiff; do
  command -v "$tool" >/dev/null 2>&1 ||
    { echo "check-abi: $tool not found (apt-get install abigail-tools)" >&2; exit 2; }
done
if [ "$(uname -m)" != x86_64 ]; then
  echo "check-abi: the baseline describes x86-64; skipped on $(uname -m)"
  exit 0
fi

rm -rf "$work"
mkdir -p "$work/src"
(cd "$root" && cp -r CMakeLists.txt attn.pc.in cmake include src docs "$work/src/")
CC=${CC:-gcc} cmake -S "$work/src" -B "$work/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DBUILD_SHARED_LIBS=ON -DATTN_BUILD_TESTS=OFF -DATTN_BUILD_TOOLS=OFF -DATTN_BUILD_BENCH=OFF \
  >"$work/configure.log" 2>&1 || { cat "$work/configure.log" >&2; exit 2; }
cmake --build "$work/build" --target attn -j2 >"$work/build.log" 2>&1 ||
  { cat "$work/build.log" >&2; exit 2; }
lib=$(readlink -f "$work/build/src/libattn.so")

# Public types only (declared under include/), no locations or build paths,
# type ids from hashes (stable when unrelated types are added), and no
# DT_NEEDED list (which BLAS is linked is not part of the ABI).
abidw --no-corpus-path --no-comp-dir-path --no-show-locs --no-elf-needed \
  --headers-dir "$work/src/include" --drop-private-types --type-id-style hash \
  --out-file "$work/raw.abi" "$lib"
sed "s|$work/src/||g" "$work/raw.abi" >"$work/new.abi"
soname() { sed -n "s/^<abi-corpus .*soname='\([^']*\)'.*/\1/p" "$1"; }
new_soname=$(soname "$work/new.abi")

if [ ! -f "$base" ]; then
  if [ "$mode" = update ]; then
    mkdir -p "$(dirname "$base")"
    cp "$work/new.abi" "$base"
    echo "check-abi: wrote the first baseline abi/libattn.abi ($new_soname)"
    exit 0
  fi
  echo "check-abi: no baseline abi/libattn.abi: run tools/check-abi.sh --update" >&2
  exit 1
fi
old_soname=$(soname "$base")

set +e
abidiff "$base" "$work/new.abi" >"$work/report.txt" 2>&1
rc=$?
set -e
if [ $((rc & 3)) -ne 0 ]; then
  echo "check-abi: abidiff failed (exit $rc):" >&2
  cat "$work/report.txt" >&2
  exit 2
fi

# A major bump: the SONAME changed and the CHANGELOG says so.
bumped=no
if [ "$new_soname" != "$old_soname" ] && grep -qF "$new_soname" "$root/CHANGELOG.md"; then
  bumped=yes
fi
n_funcs=$(grep -c "<elf-symbol name=" "$work/new.abi" || true)

if [ "$rc" -eq 0 ]; then
  if [ "$mode" = update ] && ! cmp -s "$work/new.abi" "$base"; then
    cp "$work/new.abi" "$base"
    echo "check-abi: no ABI change; abi/libattn.abi rewritten (same ABI, new layout of the dump)"
  else
    echo "check-abi: $new_soname matches abi/libattn.abi ($n_funcs exported functions)"
  fi
  exit 0
fi

# Classify. abidiff flags symbol removals as incompatible (bit 8) but a
# changed struct, parameter or enum only as a change (bit 4), so read the
# report: compatible means only added functions, and fields appended to a
# size-tagged parameter struct (every attn_*_params starts with struct_size;
# at or past its old size: an older caller
# passes its smaller struct_size and tests/test_abi.c checks that it works).
# Every other line makes the change incompatible.
if [ $((rc & 8)) -eq 0 ] && awk '
  function fail() { bad = 1; exit }
  /^ *$/ { next }
  /changes summary:/ {
    for (i = 2; i <= NF; i++) if ($i ~ /^Removed/ && $(i - 1) + 0 > 0) fail()
    next
  }
  /^ *[0-9]+ (Added )?functions?( with some indirect sub-type changes?)?:$/ { next }
  /^ *\[A\] .function / { next }
  /^ *\[C\] .function .* has some indirect sub-type changes:$/ { in_params = 0; next }
  /^ *parameter [0-9]+ of type .* has sub-type changes:$/ { next }
  /^ *in (pointed to|unqualified underlying) type .*:$/ { next }
  /^ *underlying type .struct (attn_[a-z0-9_]+_params|attn_ctx_options). changed:$/ {
    in_params = 1; next
  }
  /^ *type size changed from [0-9]+ to [0-9]+ \(in bits\)$/ {
    if (!in_params) fail()
    old_size = $5 + 0; next
  }
  /^ *[0-9]+ data member insertions?:$/ { if (!in_params) fail(); next }
  /^ *.*, at offset [0-9]+ \(in bits\)$/ {
    if (!in_params || $(NF - 2) + 0 < old_size) fail()
    next
  }
  { fail() }
  END { exit bad }' "$work/report.txt"; then
  rc=4
else
  rc=8
fi
cat "$work/report.txt"
if [ $((rc & 8)) -ne 0 ]; then
  if [ "$bumped" = yes ]; then
    if [ "$mode" = update ]; then
      cp "$work/new.abi" "$base"
      echo "check-abi: incompatible change with the SONAME bumped to $new_soname (CHANGELOG.md" \
        "names it): abi/libattn.abi updated; commit it with the change"
      exit 0
    fi
    echo "check-abi: incompatible change, SONAME bumped to $new_soname with a CHANGELOG entry:" \
      "regenerate the baseline (tools/check-abi.sh --update) in the same commit" >&2
    exit 1
  fi
  echo "check-abi: INCOMPATIBLE ABI change against abi/libattn.abi ($old_soname)." >&2
  echo "  Revert it, or bump ATTN_VERSION_MAJOR in include/attn.h (SONAME libattn.so.N)," >&2
  echo "  add a CHANGELOG.md entry naming the new SONAME, then run tools/check-abi.sh --update." >&2
  exit 1
fi
# Compatible (additions only).
if [ "$mode" = update ]; then
  cp "$work/new.abi" "$base"
  echo "check-abi: compatible change: abi/libattn.abi updated; commit it with the change"
  exit 0
fi
echo "check-abi: compatible ABI change (see above): update the baseline in the same commit" \
  "with tools/check-abi.sh --update" >&2
exit 1
