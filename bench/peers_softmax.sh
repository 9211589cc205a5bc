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
# --masks: also the same shapes with a key mask (one row of N broadcast
# over the rows: every 7th column hidden, 0.5 added to the others, as
# attn-bench's softmax rows), additive and bool, by bench/peers_softmax_mask.c:
# libattn's attn_softmax with params.mask / params.bool_mask against ONNX
# Runtime running the same masked softmax as ONNX writes it (Softmax-13 has
# no mask input): Add(X, M) -> Softmax and Where(K, X, -inf) -> Softmax
# (graphs: bench/softmax_mask_models.py, needs /usr/bin/python3 with onnx).
# Those rows also give ORT's unmasked Softmax-13 time and its ratio.
#
# Per cell: the lowest of the rounds' medians (each a driver's median over
# --budget seconds) and of their minima; ratio = ORT / libattn (above 1:
# libattn is faster). Run on a quiet machine: other processes show in the
# drivers' "other_load".
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] || { sed -n 2,27p "$0" >&2; exit 2; }
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
if [ "$masks" = 1 ]; then
  # the ONNX Runtime library ort_peer was linked with (run.sh's path)
  ortlib=$work/node_modules/onnxruntime-node/bin/napi-v6/linux/x64
  [ -f "$ortlib/libonnxruntime.so.1" ] || { echo "peers_softmax: no $ortlib/libonnxruntime.so.1" >&2; exit 2; }
  gcc -O3 -std=gnu11 -I"$root/include" -I"$src" -I"$src/include" "$root/bench/peers_softmax_mask.c" \
    "$ortlib/libonnxruntime.so.1" -Wl,-rpath,"$ortlib" -L"$bd/src" -Wl,-rpath,"$bd/src" -lattn -lm \
    -o "$tmp/mask_peer"
  mkdir "$tmp/models"
  /usr/bin/python3 "$root/bench/softmax_mask_models.py" "$tmp/models"
  export ORT_MASK_MODELS="$tmp/models"
fi

export OPENBLAS_NUM_THREADS=1 OPENBLAS_CORETYPE="${OPENBLAS_CORETYPE:-SkylakeX}"
mask_kinds=
[ "$masks" = 1 ] && mask_kinds="add bool"
echo "== $(lscpu | sed -n 's/^Model name: *//p'); libattn: $bd; ORT: $ort"
for t in $threads; do
  for shape in "4096 4096" "64 65536" "65536 64"; do
    r=1
    while [ "$r" -le "$rounds" ]; do
      # shellcheck disable=SC2086
      "$ort" softmax $shape "$t" --budget "$budget" >>"$tmp/lines"
      # shellcheck disable=SC2086
      "$tmp/libattn_peer" softmax $shape "$t" --budget "$budget" >>"$tmp/lines"
      for m in $mask_kinds; do
        # shellcheck disable=SC2086
        "$tmp/mask_peer" softmax $shape "$t" --budget "$budget" --impl "ort-$m" >>"$tmp/lines"
        # shellcheck disable=SC2086
        "$tmp/mask_peer" softmax $shape "$t" --budget "$budget" --impl "libattn-$m" >>"$tmp/lines"
      done
      r=$((r + 1))
    done
  done
done
python3 - "$tmp/lines" <<'EOF'
import json, sys
cells = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    impl = r["impl"]
    mask = impl.split("-", 1)[1] if "-" in impl else "none"
    k = (r["threads"], r["R"], r["N"], mask, impl.startswith("libattn"))
    c = cells.setdefault(k, {"ms": 1e30, "min": 1e30, "load": 0.0})
    c["ms"] = min(c["ms"], r["ms"])
    c["min"] = min(c["min"], r["min_ms"])
    c["load"] = max(c["load"], r.get("other_load", 0.0))
names = {"none": "none", "add": "additive", "bool": "bool"}
ops = {"none": "Softmax-13", "add": "Add -> Softmax-13", "bool": "Where -> Softmax-13"}
print("\n| shape | threads | mask | ORT, the same work: ms (min) | libattn ms (min) | ORT / libattn "
      "| ORT Softmax-13 unmasked / libattn | other load |")
print("|---|---:|---|---|---:|---:|---:|---:|")
for mask in ("none", "add", "bool"):
    for (t, R, N, m, lib) in sorted(k for k in cells if k[4] and k[3] == mask):
        a, o = cells[(t, R, N, m, True)], cells.get((t, R, N, m, False))
        u = cells.get((t, R, N, "none", False))
        if not o or not u:
            continue
        print(f"| [{R}, {N}] | {t} | {names[m]} | {ops[m]} {o['ms']:.3f} ({o['min']:.3f}) "
              f"| {a['ms']:.3f} ({a['min']:.3f}) | {o['ms'] / a['ms']:.2f} "
              f"| {u['ms'] / a['ms']:.2f} | {max(a['load'], o['load']):.2f} |")
EOF
