#!/usr/bin/env python3
"""Golden cases of torch.nn.MultiheadAttention for tests/test_mha_torch.c.

Run with a python3 that has torch (1.13) and numpy:
    python3 tests/reference/gen_mha_torch.py [OUT_DIR]
(or `cmake --build build/default --target regen-mha-golden`). Each case
is one file OUT_DIR/<name>.bin, listed in OUT_DIR/index.txt; seeds are
fixed, so a rerun with the same torch writes the same bytes.

File layout (little-endian): b"ATTNMHA1", int32 count, then `count` arrays,
each: name (32 bytes, NUL-padded), int32 dtype (0 = float32, 1 = uint8, 2 = int64),
int32 ndim, int64 dims[ndim], the elements in C order.

Arrays: "config" (int64: embed_dim, num_heads, kdim, vdim, bias,
batch_first, need_weights, average_attn_weights, is_causal, self_attention),
query, key, value, optional key_padding_mask / attn_mask (uint8 = torch
bool, True = masked), the module's state_dict entries under their own names
(in_proj_weight or q/k/v_proj_weight, in_proj_bias, out_proj.weight,
out_proj.bias), and the expected "out" and optional "out_weights".

torch gives NaN for a query row that sees no key where libattn gives zeros,
so no case masks a whole row: key 0 is never masked.
"""
import os
import struct
import sys

import numpy as np
import torch

MAGIC = b"ATTNMHA1"


def write_case(path, arrays):
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<i", len(arrays)))
        for name, a in arrays:
            a = np.ascontiguousarray(a)
            if a.dtype == np.bool_:
                a = a.astype(np.uint8)
            code = {np.dtype(np.float32): 0, np.dtype(np.uint8): 1, np.dtype(np.int64): 2}[a.dtype]
            f.write(name.encode().ljust(32, b"\0"))
            f.write(struct.pack("<ii", code, a.ndim))
            f.write(struct.pack("<%dq" % a.ndim, *a.shape))
            f.write(a.astype(a.dtype.newbyteorder("<")).tobytes())


def bool_mask(gen, shape, p=0.3):
    """Random True (= masked) entries; the last axis's key 0 never masked."""
    m = torch.rand(shape, generator=gen) < p
    m[..., 0] = False
    return m


# name, dict of options
CASES = [
    ("self_seq_avg", dict(E=16, H=4, B=2, L=5, self_attn=True, need=True)),
    ("self_bf_heads_nobias", dict(E=12, H=3, B=2, L=6, self_attn=True, bias=False,
                                  batch_first=True, need=True, average=False)),
    ("cross_kdim_vdim_kpm_bool", dict(E=8, H=2, B=3, L=4, S=6, kdim=6, vdim=10,
                                      kpm="bool", need=True)),
    ("cross_bf_kdim_am_float2d", dict(E=12, H=4, B=2, L=5, S=7, kdim=12, vdim=5,
                                      batch_first=True, am="float2d", need=True,
                                      average=False)),
    ("cross_am_bool2d_kpm_bool", dict(E=8, H=2, B=2, L=5, S=7, am="bool2d", kpm="bool",
                                      need=True)),
    ("bf_am_float3d_kpm_bool", dict(E=8, H=4, B=2, L=3, S=5, batch_first=True,
                                    am="float3d", kpm="bool", need=True, average=False)),
    ("am_bool3d_kpm_bool_noweights", dict(E=8, H=2, B=3, L=4, S=4, am="bool3d", kpm="bool")),
    ("kpm_float", dict(E=8, H=2, B=2, L=3, S=6, kpm="float", need=True)),
    ("causal_self_kpm", dict(E=16, H=4, B=2, L=6, self_attn=True, causal=True, kpm="bool",
                             need=True, average=False)),
    ("causal_bf_float_mask", dict(E=8, H=2, B=2, L=5, batch_first=True, self_attn=True,
                                  causal=True, am="float2d", need=True)),
    ("bf_self_noweights", dict(E=16, H=2, B=3, L=4, self_attn=True, batch_first=True)),
    ("one_head_single_token", dict(E=4, H=1, B=1, L=1, S=3, need=True)),
]


def make_case(index, name, o):
    gen = torch.Generator().manual_seed(1000 + index)
    torch.manual_seed(2000 + index)
    E, H, B, L = o["E"], o["H"], o["B"], o["L"]
    S = L if o.get("self_attn") else o.get("S", L)
    kdim, vdim = o.get("kdim"), o.get("vdim")
    bias, bf = o.get("bias", True), o.get("batch_first", False)
    need, average, causal = o.get("need", False), o.get("average", True), o.get("causal", False)
    mha = torch.nn.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim, batch_first=bf)
    mha.eval()
    with torch.no_grad():
        for p in mha.parameters():  # torch zero-fills the biases: make every value count
            p.copy_(torch.rand(p.shape, generator=gen) - 0.5)

    def seq(n, feat):
        shape = (B, n, feat) if bf else (n, B, feat)
        return torch.rand(shape, generator=gen) * 2 - 1

    query = seq(L, E)
    if o.get("self_attn"):
        key = value = query
    else:
        key, value = seq(S, kdim or E), seq(S, vdim or E)
    kpm = am = None
    if o.get("kpm") == "bool":
        kpm = bool_mask(gen, (B, S))
    elif o.get("kpm") == "float":
        kpm = torch.rand((B, S), generator=gen) * 2 - 1
    kind = o.get("am")
    if kind:
        shape = (B * H, L, S) if kind.endswith("3d") else (L, S)
        am = bool_mask(gen, shape) if kind.startswith("bool") else \
            torch.rand(shape, generator=gen) * 2 - 1
    # torch 1.13 has no is_causal: give it the causal mask (what libattn's
    # is_causal adds on top of attn_mask).
    am_torch = am
    if causal:
        upper = torch.ones(L, S, dtype=torch.bool).triu(1)
        if am is None:
            am_torch = upper
        elif am.dtype == torch.bool:
            am_torch = am | upper
        else:
            am_torch = am.masked_fill(upper, float("-inf"))
    with torch.no_grad():
        out, w = mha(query, key, value, key_padding_mask=kpm, need_weights=need,
                     attn_mask=am_torch, average_attn_weights=average)
    config = np.array([E, H, kdim or E, vdim or E, int(bias), int(bf), int(need),
                       int(average), int(causal), int(bool(o.get("self_attn")))],
                      dtype=np.int64)
    arrays = [("config", config), ("query", query.numpy()), ("key", key.numpy()),
              ("value", value.numpy())]
    if kpm is not None:
        arrays.append(("key_padding_mask", kpm.numpy()))
    if am is not None:
        arrays.append(("attn_mask", am.numpy()))
    arrays += [(k, v.numpy()) for k, v in mha.state_dict().items()]
    arrays.append(("out", out.numpy()))
    if need:
        arrays.append(("out_weights", w.numpy()))
    return arrays


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "data", "mha_torch")
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(1)
    for i, (name, o) in enumerate(CASES):
        write_case(os.path.join(out_dir, name + ".bin"), make_case(i, name, o))
    with open(os.path.join(out_dir, "index.txt"), "w") as f:
        f.write("".join(name + "\n" for name, _ in CASES))
    print("wrote %d cases to %s (torch %s)" % (len(CASES), out_dir, torch.__version__))


if __name__ == "__main__":
    main()
