#!/bin/sh
# The exported interface of libattn.so, checked three ways:
#  - the SONAME is libattn.so.<major>;
#  - `nm -D --defined-only` shows only attn_* functions (plus the version
#    nodes ATTN_<major> and ATTN_<major>.<minor>), each bound to one of them;
#    a function kept in an older version for older programs (src/compat.c)
#    also has a default version;
#  - the exported functions are exactly those declared ATTN_API in attn.h.
# usage: check_symbols.sh LIBRARY HEADER MAJOR
set -eu

lib=$1 header=$2 major=$3
node="ATTN_$major"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
problem() {
  echo "check_symbols: $*" >&2
  fail=1
}

soname=$(readelf -d "$lib" | sed -n 's/.*(SONAME).*\[\(.*\)\]$/\1/p')
[ "$soname" = "libattn.so.$major" ] || problem "SONAME is '$soname', expected libattn.so.$major"

# Lines look like "000123 T attn_sdpa@@ATTN_0", "000456 T attn_x@ATTN_0" (an
# older version kept for older programs) or "0000 A ATTN_0" (a version node).
nm -D --defined-only "$lib" | awk '{print $3}' | sort -u >"$tmp/all"
nodes="ATTN_$major(\.[0-9]+)?"
grep -vxE "$nodes" "$tmp/all" >"$tmp/exported" || true
grep -qxF "$node" "$tmp/all" || problem "version node $node is missing"
while read -r sym; do
  case "$sym" in
    attn_*@@*) echo "${sym#*@@}" | grep -qxE "$nodes" || problem "$sym is not bound to a version node $node[.minor]" ;;
    attn_*@*)
      echo "${sym#*@}" | grep -qxE "$nodes" || problem "$sym is not bound to a version node $node[.minor]"
      grep -q "^${sym%%@*}@@" "$tmp/exported" || problem "$sym has no default version" ;;
    attn_*) problem "$sym has no version" ;;
    *) problem "exports $sym, which is not an attn_* symbol" ;;
  esac
done <"$tmp/exported"
sed 's/@.*//' "$tmp/exported" | sort -u >"$tmp/lib"

# Declarations read "ATTN_API <return type> <name>(...": take the name before "(".
sed -n 's/^ATTN_API[^(]*[^A-Za-z0-9_(]\([A-Za-z_][A-Za-z0-9_]*\)(.*/\1/p' "$header" |
  sort -u >"$tmp/header"
[ -s "$tmp/header" ] || problem "found no ATTN_API declaration in $header"

for sym in $(comm -23 "$tmp/header" "$tmp/lib"); do
  problem "$sym is declared ATTN_API in attn.h but not exported"
done
for sym in $(comm -13 "$tmp/header" "$tmp/lib"); do
  problem "$sym is exported but not declared ATTN_API in attn.h"
done

if [ "$fail" -eq 0 ]; then
  echo "check_symbols: $soname exports the $(wc -l <"$tmp/lib") ATTN_API functions of attn.h, nothing else"
fi
exit "$fail"
