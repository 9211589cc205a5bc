#!/bin/sh
# libattn's softmax next to ONNX Runtime's Softmax-13 at the shapes of the
# softmax target (issue 13): [4096, 4096], long rows [64, 65536] and short
# rows [65536, 64], 1 and 2 threads, through the drivers of ../shared/peers
# (README there), the two implementations alternating, several rounds.
#
#   bench/peers_softmax.sh BUILD_DIR [--threads "1 2"] [--rounds 3] [--budget 0.5] [--masks]
#
# BUILD_DIR: a Release build of libattn (its src/libattn.so is linked). The
# ONNX Runtime driver must have been built by ../shared/peers/run.sh (once):
# $PEERS_WORK/build/ort_peer, PEERS_WORK defaulting to
# ${XDG_CACHE_HOME:-$HOME/.cache}/libattn-peers as there. The libattn driver
# is compiled from ../shared/peers/libattn_peer.c (PEERS_SRC) into a
# temporary directory, removed afterwards; nothing is written elsewhere.
# --masks: also BUILD_DIR/bench/attn-bench --only softmax (its additive and
# bool key-mask rows; ONNX Runtime's Softmax-13 has no mask, so those rows
# stand against its unmasked time).
#
# Per cell: the lowest of the rounds' medians (each a driver's median over
# --budget seconds) and of their minima; ratio = ORT / libattn (above 1:
# libattn is faster). Run on a quiet machine: other processes show in the
# drivers' "other_load".
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] || { sed -n 2,21p "$0" >&2; exit 2; }
bd=$(cd "$1" && pwd)
shift
threads="1 2" rounds=3 budget=0.5 masks=0
while [ $# -gt 0 ]; do
  case $1 in
  --threads) threads=$2; shift 2 ;;
  --rounds) rounds=$2; shift 2 ;;
  --budget) budget=$2; shift 2 ;;
  --masks) masks=1; shift ;;
  *) echo "peers_softmax: unknown option $1" >&2; exit 2 ;;
  esac
done
work=${PEERS_WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/libattn-peers}
# ../shared/peers beside the checkout (or beside a worktree's parent)
src=${PEERS_SRC:-$root/../shared/peers}
[ -n "${PEERS_SRC:-}" ] || [ -d "$src" ] || src=$root/../../shared/peers
ort=$work/build/ort_peer
[ -x "$ort" ] || { echo "peers_softmax: $ort missing: run $src/run.sh once" >&2; exit 2; }
[ -f "$src/libattn_peer.c" ] || { echo "peers_softmax: no $src/libattn_peer.c (set PEERS_SRC)" >&2; exit 2; }
[ -f "$bd/src/libattn.so" ] || { echo "peers_softmax: no $bd/src/libattn.so" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# shellcheck disable=SC2046
gcc -O3 -std=gnu11 -I"$root/include" $(pkg-config --cflags openblas) "$src/libattn_peer.c" \
  -L"$bd/src" -Wl,-rpath,"$bd/src" -lattn $(pkg-config --libs openblas) -lpthread -lm \
  -o "$tmp/libattn_peer"

export OPENBLAS_NUM_THREADS=1 OPENBLAS_CORETYPE="${OPENBLAS_CORETYPE:-SkylakeX}"
echo "== $(lscpu | sed -n 's/^Model name: *//p'); libattn: $bd; ORT: $ort"
for t in $threads; do
  for shape in "4096 4096" "64 65536" "65536 64"; do
    r=1
    while [ "$r" -le "$rounds" ]; do
      # shellcheck disable=SC2086
      "$ort" softmax $shape "$t" --budget "$budget" >>"$tmp/lines"
      # shellcheck disable=SC2086
      "$tmp/libattn_peer" softmax $shape "$t" --budget "$budget" >>"$tmp/lines"
      r=$((r + 1))
    done
  done
done
if [ "$masks" = 1 ]; then
  "$bd/bench/attn-bench" --only softmax --json >"$tmp/bench"
else
  : >"$tmp/bench"
fi

python3 - "$tmp/lines" "$tmp/bench" <<'EOF'
import json, sys
cells = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    k = (r["threads"], r["R"], r["N"], r["impl"] == "libattn")
    c = cells.setdefault(k, {"ms": 1e30, "min": 1e30, "load": 0.0})
    c["ms"] = min(c["ms"], r["ms"])
    c["min"] = min(c["min"], r["min_ms"])
    c["load"] = max(c["load"], r.get("other_load", 0.0))
print("\n| shape | threads | mask | ORT Softmax-13 ms (min) | libattn ms (min) | ORT / libattn | other load |")
print("|---|---:|---|---:|---:|---:|---:|")
for (t, R, N, lib) in sorted(k for k in cells if k[3]):
    a, o = cells[(t, R, N, True)], cells.get((t, R, N, False))
    if o:
        print(f"| [{R}, {N}] | {t} | none | {o['ms']:.3f} ({o['min']:.3f}) | {a['ms']:.3f} ({a['min']:.3f}) "
              f"| {o['ms'] / a['ms']:.2f} | {max(a['load'], o['load']):.2f} |")
for line in open(sys.argv[2]):
    r = json.loads(line)
    if r.get("op") != "softmax" or r.get("mask", "none") == "none":
        continue
    o = cells.get((r["threads"], r["rows"], r["cols"], False))
    ms = r["seconds"] * 1e3
    ref = f"{o['ms']:.3f} ({o['min']:.3f})" if o else "-"
    ratio = f"{o['ms'] / ms:.2f}" if o else "-"
    print(f"| [{r['rows']}, {r['cols']}] | {r['threads']} | {r['mask']} (attn-bench) | {ref} | {ms:.3f} "
          f"| {ratio} | {r.get('other_load', 0):.2f} |")
EOF
