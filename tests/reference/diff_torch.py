"""Randomized differential test of libattn against float64 references.

Each case draws a random combination of features (for SDPA: causal in both
alignments, windows, ALiBi, soft-cap, sinks, kv_lens, q_offsets, GQA/MQA,
additive and boolean masks with broadcast shapes, Lq != Lk, empty dims,
F32/F16/BF16 operands in any mix, scale, lse / weights / logits outputs) and
random memory layouts for every tensor (padded and permuted strides, zero
strides on inputs, arbitrary strides on dims of 1, tight size_bytes), calls
the library through ctypes and compares with a float64 reference written
from attn.h's formulas (numpy for the forwards, torch autograd for the
gradients). It also checks that the library writes nothing outside an
output's elements: gaps between a view's elements hold NaN on entry (an
input gap that is read shows up as NaN) and must be unchanged after.

Hidden keys, dropped tokens and masked entries hold NaN or inf in about half
of the cases (attn.h: they never reach a result).

Ops (--ops, round robin): sdpa, varlen, sdpa_bwd, varlen_bwd (torch), softmax
(+ log, backward, axis, in place), pool (+ backward), rope (+ backward, cache
fill with every scaling against Hugging Face's formulas, rope_cached), kv
(appends with RoPE, truncate, read, attn_kv_attend on contiguous and paged
caches of each dtype), kv_edit (random appends, truncates, resets, copies
with shared blocks and copy on write, and refused calls, against a model of
the cache; a refused call must leave it exactly as it was), pool_attention
(+ backward), sinusoidal (+ add), copy (dtype conversions), bad_sdpa
(documented errors: status, message, nothing written), mha_torch
(attn_mha_torch_forward against torch.nn.MultiheadAttention, torch), mha (the
decoder layer: a prompt then chunked steps with per-sequence counts into a
contiguous or paged cache of each dtype, GQA, biases, RoPE, soft-cap, window,
with the long-context scalings linear, NTK, YaRN and Llama 3, against a float64
model of the layer and its cache).

Usage (from the repository root, after a build; /usr/bin/python3 has numpy
and torch):
  ATTN_LIBRARY=build/default/src/libattn.so.0 ATTN_KERNELS=sse2 \\
    /usr/bin/python3 tests/reference/diff_torch.py --seed 1 --count 2000 \\
    [--ops sdpa,varlen,...] [--threads N] [--verbose]
Run it once per kernel set (ATTN_KERNELS=sse2 | avx2 | avx512 | unset): the
set is chosen once per process. Exit status 1 when a case fails; each
failure prints the seed and case number, which --seed S --first N --count 1
with the same --ops reproduces. 1000 cases take about 10 s of CPU time."""
import argparse
import ctypes as C
import math
import os
import sys
import traceback

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "bindings", "python"))
from attn import _lib  # noqa: E402

try:
    import torch  # every tensor made here is float64 (the default dtype is left alone)
except ImportError:
    torch = None

LIB, _ = _lib.load()
F32, U8, F16, BF16 = 0, 1, 2, 3
EPS = 2.0 ** -24  # float32 unit roundoff
HALF_U = {F32: 0.0, F16: 2.0 ** -11, BF16: 2.0 ** -8}
NAN_BITS = {F32: np.float32(np.nan), F16: np.float16(np.nan), BF16: np.uint16(0x7fc0),
            U8: np.uint8(0xA5)}
# Elements after each wrapped buffer's extent; 0 under an ASan build of the
# library (LD_PRELOAD=libasan), so that a read past size_bytes hits a redzone.
TAIL = int(os.environ.get("DIFF_TAIL_GUARD", "8"))
STORE = {F32: np.float32, F16: np.float16, BF16: np.uint16, U8: np.uint8}


class Fail(Exception):
    pass


def quantize(x, dt):
    """x (float64) rounded to dt; returns (stored array, its exact float64 value)."""
    if dt == F32:
        s = x.astype(np.float32)
        return s, s.astype(np.float64)
    if dt == F16:
        s = x.astype(np.float16)
        return s, s.astype(np.float64)
    if dt == BF16:
        s = (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        return s, widen(s, BF16)
    s = x.astype(np.uint8)
    return s, s


def widen(s, dt):
    if dt == BF16:
        return (s.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    if dt == U8:
        return s.copy()
    return s.astype(np.float64)


def round_to(x, dt):
    """float64 -> the value dt stores (nearest even), as float64."""
    if dt == F32:
        return x.astype(np.float32).astype(np.float64)
    if dt == F16:
        return x.astype(np.float32).astype(np.float16).astype(np.float64)
    b = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    b = (b + 0x7fff + ((b >> 16) & 1)) >> 16
    return widen(b.astype(np.uint16), BF16)


class Ctx:
    def __init__(self, threads):
        opts = _lib.CtxOptions(num_threads=threads)
        h = C.c_void_p()
        st = LIB.attn_ctx_create(C.byref(h), C.byref(opts))
        assert st == 0, st
        self.h = h
        self.keep = []
        self.handles = []
        self.outs = []
        self.inputs = []

    def err(self):
        return LIB.attn_ctx_last_error(self.h).decode()

    def close(self):
        LIB.attn_ctx_destroy(self.h)

    def reset(self):
        for t in self.handles:
            LIB.attn_tensor_free(self.h, t)
        self.handles, self.keep, self.outs, self.inputs = [], [], [], []

    def tensor(self, rng, vals, dt, out=False, bcast=True, layout=True, name="?"):
        """Wrap a random layout holding vals (already representable in dt:
        float64 values or uint8). Returns (handle, view). For an input, axes
        picked for broadcast must hold equal values along them; the caller
        passes bcast_axes through vals being constant there (see bcast_vals)."""
        shape = vals.shape
        nd = len(shape)
        order = list(range(nd - 1))
        if layout and nd > 2 and rng.random() < 0.3:
            rng.shuffle(order)
        order.append(nd - 1)
        strides = [0] * nd
        acc = 1
        zero_axes = getattr(vals, "_zero_axes", ()) if bcast else ()
        for ax in reversed(order):
            d = shape[ax]
            if d == 1 and layout and rng.random() < 0.5:
                strides[ax] = int(rng.integers(0, 1000))
                continue
            if ax in zero_axes:
                strides[ax] = 0
                continue
            pad = int(rng.integers(1, 4)) if (layout and ax != nd - 1 and rng.random() < 0.3) else 0
            strides[ax] = acc
            acc = acc * max(d, 1) + pad
        if nd and shape[-1] > 1:
            strides[-1] = 1
        empty = any(d == 0 for d in shape)
        extent = 0 if empty else sum((d - 1) * s for d, s in zip(shape, strides)) + 1
        guard = 8
        base = np.empty(extent + guard + TAIL, STORE[dt])
        base[...] = NAN_BITS[dt]
        itemsize = base.itemsize
        view = np.lib.stride_tricks.as_strided(
            base[guard:], shape=shape, strides=[s * itemsize for s in strides], writeable=True)
        if not out and not empty:
            st, _ = quantize(np.asarray(vals), dt) if dt != U8 else (vals.astype(np.uint8), None)
            # zero-stride axes: every index writes the same element with the same value
            view[...] = st
        before = base.copy()
        dims = (C.c_int64 * max(nd, 1))(*shape)
        sts = (C.c_int64 * max(nd, 1))(*strides)
        h = C.c_void_p()
        ptr = base.ctypes.data + guard * itemsize
        stt = LIB.attn_tensor_wrap(self.h, dt, nd, dims, sts, C.c_void_p(ptr), extent * itemsize,
                                   C.byref(h))
        if stt:
            raise Fail("wrap %s %s %s dt%d: %s" % (name, shape, strides, dt, self.err()))
        self.handles.append(h)
        self.keep.append(base)
        rec = (name, base, before, view, strides, dt)
        (self.outs if out else self.inputs).append(rec)
        return h, view

    def check_memory(self, written=True):
        """Inputs unchanged; outputs changed only at their elements (and not
        at all when written is False: a failed call)."""
        for name, base, before, view, strides, dt in self.inputs:
            if not np.array_equal(base.view(np.uint8), before.view(np.uint8)):
                raise Fail("input %s was modified" % name)
        for name, base, before, view, strides, dt in self.outs:
            mask = np.ones(base.shape, bool)
            if written and view.size:
                idx = np.zeros(view.shape, np.int64) + 8
                for ax, s in enumerate(strides):
                    sh = [1] * view.ndim
                    sh[ax] = view.shape[ax]
                    idx = idx + np.arange(view.shape[ax]).reshape(sh) * s
                mask[idx.ravel()] = False
            a, b = base.view(np.uint8 if dt == U8 else np.uint16 if dt != F32 else np.uint32), \
                before.view(np.uint8 if dt == U8 else np.uint16 if dt != F32 else np.uint32)
            if not np.array_equal(a[mask], b[mask]):
                bad = np.nonzero((a != b) & mask)[0]
                raise Fail("output %s: %d bytes outside its elements changed (first at %d)"
                           % (name, len(bad), bad[0] - 8))


def bcast_vals(rng, vals, allow, p=0.15):
    """Make vals constant along some axes of size > 1 (those get stride 0)."""
    if not allow:
        return vals
    axes = [ax for ax in range(vals.ndim - 1) if vals.shape[ax] > 1 and rng.random() < p]
    if not axes:
        return vals
    sl = tuple(slice(0, 1) if ax in axes else slice(None) for ax in range(vals.ndim))
    v = np.ascontiguousarray(np.broadcast_to(vals[sl], vals.shape)).view(ZArr)
    v._zero_axes = tuple(axes)
    return v


class ZArr(np.ndarray):
    pass


def data(rng, shape, dt, span=1.0, allow_bcast=True):
    x = rng.uniform(-span, span, shape)
    _, w = quantize(x, dt)
    return bcast_vals(rng, w, allow_bcast)


def pick_dt(rng, half_p=0.4):
    if rng.random() >= half_p:
        return F32
    return F16 if rng.random() < 0.5 else BF16


def small_dim(rng, choices=(0, 1, 1, 2, 3, 5, 7, 8, 13, 16, 17, 31, 33, 64, 65, 100), big=None):
    if big and rng.random() < 0.1:
        return int(rng.integers(big[0], big[1]))
    return int(rng.choice(choices))


def get(view, dt):
    return widen(np.ascontiguousarray(view), dt)


def compare(name, got, want, tol, exact_nonfinite=True):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise Fail("%s: shape %s vs %s" % (name, got.shape, want.shape))
    if got.size == 0:
        return 0.0
    tol = np.broadcast_to(tol, want.shape)
    fin = np.isfinite(want)
    if exact_nonfinite:
        nf = ~fin
        if np.any(nf & ~((got == want) | (np.isnan(got) & np.isnan(want)))):
            i = np.argwhere(nf & ~((got == want) | (np.isnan(got) & np.isnan(want))))[0]
            raise Fail("%s: at %s got %r want %r" % (name, tuple(i), got[tuple(i)],
                                                     want[tuple(i)]))
    with np.errstate(invalid="ignore"):
        err = np.where(fin, np.abs(got - want), 0.0)
        bad = fin & ~(err <= tol)
    if np.any(bad):
        i = tuple(np.argwhere(bad)[0])
        raise Fail("%s: at %s got %r want %r (tol %.3g, %d bad of %d, max err %.3g)"
                   % (name, i, got[i], want[i], tol[i], int(bad.sum()), got.size,
                      float(np.nanmax(np.where(fin, err, 0)))))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(fin & (tol > 0), err / np.where(tol > 0, tol, 1), 0.0)
    return float(r.max()) if r.size else 0.0


def i64(a):
    a = np.ascontiguousarray(a, np.int64)
    return a, a.ctypes.data_as(C.POINTER(C.c_int64))


def f32p(a):
    a = np.ascontiguousarray(a, np.float32)
    return a, a.ctypes.data_as(C.POINTER(C.c_float))


# ---------------------------------------------------------------- SDPA --

def sdpa_positions(cfg, B, Lq, Lk):
    """i' of every query row, [B, 1, Lq, 1] float64."""
    i = np.arange(Lq)[None, :]
    if cfg["q_offsets"] is not None:
        ip = cfg["q_offsets"][:, None] + i
    elif cfg["align"] == 1:
        n = cfg["kv_lens"] if cfg["kv_lens"] is not None else np.full(B, Lk)
        ip = n[:, None] + i - Lq
    else:
        ip = np.broadcast_to(i, (B, Lq))
    return ip.astype(np.float64)[:, None, :, None]


def sdpa_hidden(cfg, full, mask, bmask):
    """The keys attn.h hides, [B, Hq, Lq, Lk] bool."""
    B, Hq, Lq, Lk = full
    if cfg.get("huge"):
        # positions and extents near the int64 limits: exact Python integers
        ip = (np.asarray(cfg["q_offsets"], object)[:, None] + np.arange(Lq).astype(object)[None, :]
              )[:, None, :, None]
        j = np.arange(Lk).astype(object)[None, None, None, :]
        wl, wr = int(cfg["wl"]), int(cfg["wr"])
        hidden = np.zeros(full, bool)
        if cfg["causal"]:
            hidden |= (j > ip).astype(bool)
        if cfg["window"]:
            hidden |= ((j < ip - wl) | (j > ip + wr)).astype(bool)
        if cfg["kv_lens"] is not None:
            hidden |= np.arange(Lk)[None, None, None, :] >= cfg["kv_lens"][:, None, None, None]
        if bmask is not None:
            hidden |= bmask == 0
        if mask is not None:
            hidden |= mask == -np.inf
        return hidden
    ip = sdpa_positions(cfg, B, Lq, Lk)
    j = np.arange(Lk, dtype=np.float64)[None, None, None, :]
    hidden = np.zeros(full, bool)
    if cfg["causal"]:
        hidden |= j > ip
    if cfg["window"]:
        hidden |= (j < ip - cfg["wl"]) | (j > ip + cfg["wr"])
    if cfg["kv_lens"] is not None:
        hidden |= j >= cfg["kv_lens"][:, None, None, None]
    if bmask is not None:
        hidden |= bmask == 0
    if mask is not None:
        hidden |= mask == -np.inf
    return hidden


def poison_hidden(x, hidden, Hkv):
    """NaN into the k / v rows [B, Hkv, Lk, :] no query of any head of the
    group sees: attn.h says such a NaN never reaches a result."""
    B, Hq, Lq, Lk = hidden.shape
    if x.size == 0 or Hkv == 0:
        return x
    h = hidden.all(axis=2).reshape(B, Hkv, Hq // Hkv, Lk).all(axis=2)
    x = x.copy()
    x[h] = np.nan
    return x


def sdpa_ref(q, k, v, cfg, mask, bmask):
    """float64 attention per attn.h. q [B,Hq,Lq,D] etc. (float64 arrays);
    mask / bmask already broadcast to [B,Hq,Lq,Lk] or None. Returns dict with
    out, lse, weights, logits (all stages), tolS, hidden."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk, Dv = k.shape[1], k.shape[2], v.shape[3]
    g = Hq // Hkv if Hkv else 1
    kk = np.repeat(k, g, axis=1) if Hkv else np.zeros((B, Hq, Lk, D))
    vv = np.repeat(v, g, axis=1) if Hkv else np.zeros((B, Hq, Lk, Dv))
    scale = cfg["scale"] if cfg["scale"] != 0 else (1.0 / math.sqrt(D) if D else 1.0)
    scale = float(np.float32(scale))
    raw = scale * np.einsum("bhid,bhjd->bhij", q, kk)
    rawabs = abs(scale) * np.einsum("bhid,bhjd->bhij", np.abs(q), np.abs(kk))
    s1 = raw
    if cfg["softcap"] > 0:
        sc = float(np.float32(cfg["softcap"]))
        s1 = sc * np.tanh(raw / sc)
    ip = sdpa_positions(cfg, B, Lq, Lk)
    j = np.arange(Lk, dtype=np.float64)[None, None, None, :]
    s = s1.copy()
    bias = np.zeros_like(s)
    if cfg["alibi"] is not None:
        sl = cfg["alibi"].astype(np.float64)[None, :, None, None]
        bias = sl * (j - ip)
        s = s + bias
    if mask is not None:
        with np.errstate(invalid="ignore"):
            s = s + mask
    hidden = sdpa_hidden(cfg, (B, Hq, Lq, Lk), mask, bmask)
    sm = np.where(hidden, -np.inf, s)
    m = sm.max(axis=-1, initial=-np.inf)
    if cfg["sinks"] is not None:
        sk = cfg["sinks"].astype(np.float64)[None, :, None]
        m = np.maximum(m, sk)
    mfin = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(sm - mfin[..., None])
    den = e.sum(-1)
    if cfg["sinks"] is not None:
        den = den + np.exp(sk - mfin)
    with np.errstate(divide="ignore", invalid="ignore"):
        live = (den > 0) | np.isnan(den)  # a NaN logit makes a NaN row
        w = np.where(live[..., None] & ~hidden, e / np.where(live, den, 1)[..., None], 0.0)
        lse = np.where(live, np.log(np.where(live, den, 1)) + mfin, -np.inf)
    # a NaN in v reaches only the rows that give its key a nonzero weight
    vnan = np.isnan(vv)
    vv = np.where(vnan, 0.0, vv)
    out = np.einsum("bhij,bhjd->bhid", w, vv)
    reach = np.einsum("bhij,bhjd->bhid", (w != 0).astype(np.float64), vnan.astype(np.float64))
    out = np.where(reach > 0, np.nan, out)
    absm = np.abs(mask) if mask is not None else 0.0
    with np.errstate(invalid="ignore"):
        tolS = 6 * EPS * (rawabs + np.abs(bias) + np.where(np.isfinite(absm), absm, 0)
                          + np.abs(s)) + 1e-30
    tolS_all = 6 * EPS * (rawabs + np.abs(bias)) + 1e-30
    tolS = np.where(hidden, 0, tolS)
    return dict(out=out, lse=lse, w=w, raw=raw, capped=s1, masked=sm, tolS=tolS, vv=vv,
                tolS_all=tolS_all,
                hidden=hidden, scale=scale)


def sdpa_tols(r, out_dt, D):
    """Tolerances from the logit error bound: a weight moves by at most
    w * 2 tolS_row; the output by that times max |v|, plus its own rounding."""
    tS = np.nan_to_num(r["tolS"], nan=0.0).max(axis=-1, initial=0.0)  # [B,Hq,Lq]
    vmax = np.nan_to_num(np.abs(r["vv"]), nan=0.0).max(axis=(-2, -1), initial=0.0)[..., None]
    dvac = r["vv"].shape[-1]
    k = 4 * (tS + 4 * EPS) + 1e-7
    tol_out = (k * (vmax + 1e-30) + 4 * EPS * np.sqrt(r["vv"].shape[2] + 1) * vmax)[..., None] \
        + HALF_U[out_dt] * np.abs(r["out"]) + 1e-7
    tol_lse = 2 * tS + 8 * EPS * np.abs(r["lse"]) + 1e-6
    tol_w = r["w"] * 4 * (tS[..., None] + 4 * EPS) + 1e-7
    return tol_out, tol_lse, tol_w, dvac


def rand_mask_shape(rng, full):
    nd = int(rng.integers(1, 5))
    tail = list(full[4 - nd:])
    return tuple(d if (d == 1 or rng.random() < 0.6) else 1 for d in tail)


def rand_sdpa_cfg(rng, varlen=False):
    cfg = {}
    Hkv = int(rng.choice([1, 1, 2, 3]))
    g = int(rng.choice([1, 1, 2, 3, 4]))
    if rng.random() < 0.02:
        Hkv, g = 0, 1
    cfg["Hkv"], cfg["Hq"] = Hkv, Hkv * g
    cfg["B"] = int(rng.choice([0, 1, 1, 2, 3])) if not varlen else 0
    cfg["D"] = small_dim(rng, (0, 1, 2, 3, 4, 7, 8, 16, 17, 32, 40, 64, 80, 128), None)
    cfg["Dv"] = cfg["D"] if rng.random() < 0.6 else small_dim(rng, (0, 1, 3, 8, 16, 33, 64))
    if rng.random() < 0.15:
        cfg["Lq"] = int(rng.integers(0, 130))
        cfg["Lk"] = int(rng.integers(0, 300))
    else:
        cfg["Lq"] = int(rng.choice([0, 1, 1, 1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33]))
        cfg["Lk"] = int(rng.choice([0, 1, 2, 3, 5, 8, 9, 16, 17, 31, 33, 64, 65, 70]))
    if cfg["D"] * cfg["Lk"] * cfg["Lq"] > 400000:
        cfg["D"] = min(cfg["D"], 16)
    cfg["dts"] = [pick_dt(rng) for _ in range(4)]
    cfg["scale"] = 0.0 if rng.random() < 0.5 else float(rng.uniform(-0.5, 1.5))
    cfg["softcap"] = 0.0 if rng.random() < 0.7 else float(rng.uniform(0.5, 30))
    cfg["causal"] = int(rng.random() < 0.5)
    cfg["align"] = int(rng.random() < 0.5)
    cfg["window"] = int(rng.random() < 0.35)
    big = 2 ** 40
    cfg["wl"] = int(rng.choice([0, 1, 2, 3, 5, 8, 17, big])) if cfg["window"] else 0
    cfg["wr"] = int(rng.choice([0, 0, 1, 2, 4, 9, big])) if cfg["window"] else 0
    cfg["alibi_p"] = rng.random() < 0.25
    cfg["sinks_p"] = rng.random() < 0.25
    cfg["kv_lens_p"] = (not varlen) and rng.random() < 0.3
    cfg["qoff_p"] = rng.random() < 0.2
    if cfg["qoff_p"]:
        cfg["align"] = 0
    cfg["mask_p"] = (not varlen) and rng.random() < 0.3
    cfg["bmask_p"] = (not varlen) and rng.random() < 0.3
    cfg["lse_p"] = rng.random() < 0.5
    cfg["w_p"] = (not varlen) and rng.random() < 0.3
    cfg["logits_p"] = (not varlen) and rng.random() < 0.25
    cfg["stage"] = int(rng.integers(0, 3))
    cfg["span"] = float(rng.choice([1.0, 1.0, 3.0, 0.1]))
    return cfg


def fill_params(ctx, rng, cfg, B, Lk, p, keep):
    Hq = cfg["Hq"]
    cfg["kv_lens"] = cfg["alibi"] = cfg["sinks"] = cfg["q_offsets"] = None
    p.scale = cfg["scale"]
    p.softcap = cfg["softcap"]
    p.causal = cfg["causal"]
    p.align = cfg["align"]
    p.window = cfg["window"]
    p.window_left = cfg["wl"]
    p.window_right = cfg["wr"]
    if cfg["kv_lens_p"]:
        a, ptr = i64(rng.integers(0, Lk + 1, B))
        keep.append(a)
        cfg["kv_lens"] = a
        p.kv_lens = ptr
    if cfg["alibi_p"]:
        a, ptr = f32p(rng.uniform(0, 1, Hq) * (rng.random() < 0.8))
        keep.append(a)
        cfg["alibi"] = a
        p.alibi_slopes = ptr
    if cfg["sinks_p"]:
        a, ptr = f32p(rng.uniform(-3, 3, Hq))
        keep.append(a)
        cfg["sinks"] = a
        p.sinks = ptr
    if cfg.get("huge"):
        big = [-2 ** 60, 2 ** 60, -2 ** 40, 2 ** 40, 2 ** 60 - 3, -2 ** 60 + 5]
        a, ptr = i64([int(rng.choice(big)) for _ in range(B)])
        keep.append(a)
        cfg["q_offsets"] = a
        p.q_offsets = ptr
        top = 2 ** 63 - 1
        for side in ("wl", "wr"):
            cfg[side] = int(rng.choice([0, 3, 2 ** 62, top, 2 ** 60 + 2, 2 ** 60 - 3, 2 ** 61]))
        p.window_left, p.window_right = cfg["wl"], cfg["wr"]
        p.alibi_slopes = None
        cfg["alibi"] = None
    elif cfg["qoff_p"]:
        a, ptr = i64(rng.integers(-4, Lk + 5, B))
        keep.append(a)
        cfg["q_offsets"] = a
        p.q_offsets = ptr


def run_sdpa(ctx, rng, case):
    cfg = rand_sdpa_cfg(rng)
    if rng.random() < 0.1:
        cfg.update(huge=True, window=int(rng.random() < 0.8), align=0, alibi_p=False)
    B, Hq, Hkv, Lq, Lk, D, Dv = (cfg[n] for n in ("B", "Hq", "Hkv", "Lq", "Lk", "D", "Dv"))
    qd, kd, vd, od = cfg["dts"]
    p = _lib.SdpaParams()
    keep = []
    fill_params(ctx, rng, cfg, B, Lk, p, keep)
    full = (B, Hq, Lq, Lk)
    mask = bmask = None
    if cfg["mask_p"]:
        ms = rand_mask_shape(rng, full)
        m = rng.normal(0, 2, ms)
        m[rng.random(ms) < 0.15] = -np.inf
        m = m.astype(np.float32).astype(np.float64)
        m = bcast_vals(rng, m, True, 0.3)
        hm, _ = ctx.tensor(rng, m, F32, name="mask")
        p.mask = hm
        mask = np.broadcast_to(np.asarray(m), full)
    if cfg["bmask_p"]:
        ms = rand_mask_shape(rng, full)
        m = (rng.random(ms) < 0.7).astype(np.uint8) * rng.integers(1, 256, ms).astype(np.uint8)
        m = bcast_vals(rng, m, True, 0.3)
        hb, _ = ctx.tensor(rng, m, U8, name="bool_mask")
        p.bool_mask = hb
        bmask = np.broadcast_to(np.asarray(m), full)
    q = data(rng, (B, Hq, Lq, D), qd, cfg["span"])
    kx = rng.uniform(-cfg["span"], cfg["span"], (B, Hkv, Lk, D))
    vx = rng.uniform(-1, 1, (B, Hkv, Lk, Dv))
    if rng.random() < 0.5:
        hid = sdpa_hidden(cfg, full, mask, bmask)
        kx, vx = poison_hidden(kx, hid, Hkv), poison_hidden(vx, hid, Hkv)
    k = bcast_vals(rng, quantize(kx, kd)[1], True)
    v = bcast_vals(rng, quantize(vx, vd)[1], True)
    hq, _ = ctx.tensor(rng, q, qd, name="q")
    hk, _ = ctx.tensor(rng, k, kd, name="k")
    hv, _ = ctx.tensor(rng, v, vd, name="v")
    ho, vo = ctx.tensor(rng, np.zeros((B, Hq, Lq, Dv)), od, out=True, name="out")
    vl = vw = vlg = None
    if cfg["lse_p"]:
        h, vl = ctx.tensor(rng, np.zeros((B, Hq, Lq)), F32, out=True, name="lse")
        p.lse = h
    if cfg["w_p"]:
        h, vw = ctx.tensor(rng, np.zeros(full), F32, out=True, name="weights")
        p.weights = h
    if cfg["logits_p"]:
        h, vlg = ctx.tensor(rng, np.zeros(full), F32, out=True, name="logits")
        p.logits = h
        p.logits_stage = cfg["stage"]
    st = LIB.attn_sdpa(ctx.h, hq, hk, hv, ho, C.byref(p))
    if st:
        raise Fail("attn_sdpa status %d: %s" % (st, ctx.err()))
    ctx.check_memory()
    r = sdpa_ref(np.asarray(q), np.asarray(k), np.asarray(v), cfg, mask, bmask)
    tol_out, tol_lse, tol_w, _ = sdpa_tols(r, od, D)
    worst = compare("out", get(vo, od), r["out"], tol_out)
    if vl is not None:
        worst = max(worst, compare("lse", get(vl, F32), r["lse"], tol_lse))
    if vw is not None:
        worst = max(worst, compare("weights", get(vw, F32), r["w"], tol_w))
    if vlg is not None:
        want = [r["raw"], r["capped"], r["masked"]][cfg["stage"]]
        tS = 6 * EPS * (np.abs(want) + np.abs(r["raw"])) + r["tolS_all"] + 1e-6
        if cfg["stage"] == 2:
            tS = np.where(np.isfinite(want), tS, 0)
        worst = max(worst, compare("logits", get(vlg, F32), want, tS))
    return worst, cfg


def run_varlen(ctx, rng, case):
    cfg = rand_sdpa_cfg(rng, varlen=True)
    nb = int(rng.choice([0, 1, 2, 3, 5]))
    Hq, Hkv, D, Dv = cfg["Hq"], cfg["Hkv"], cfg["D"], cfg["Dv"]
    lq = rng.choice([0, 1, 1, 2, 3, 5, 9, 17, 33], nb)
    lk = rng.choice([0, 1, 2, 3, 5, 9, 17, 33, 70], nb)
    cq = np.concatenate([[0], np.cumsum(lq)]).astype(np.int64)
    ck = np.concatenate([[0], np.cumsum(lk)]).astype(np.int64)
    Tq, Tk = int(cq[-1]), int(ck[-1])
    qd, kd, vd, od = cfg["dts"]
    q = data(rng, (Tq, Hq, D), qd, cfg["span"])
    k = data(rng, (Tk, Hkv, D), kd, cfg["span"])
    v = data(rng, (Tk, Hkv, Dv), vd)
    hq, _ = ctx.tensor(rng, q, qd, name="q")
    hk, _ = ctx.tensor(rng, k, kd, name="k")
    hv, _ = ctx.tensor(rng, v, vd, name="v")
    ho, vo = ctx.tensor(rng, np.zeros((Tq, Hq, Dv)), od, out=True, name="out")
    p = _lib.SdpaParams()
    keep = []
    fill_params(ctx, rng, cfg, nb, int(lk.max()) if nb else 0, p, keep)
    vl = None
    if cfg["lse_p"]:
        h, vl = ctx.tensor(rng, np.zeros((Hq, Tq)), F32, out=True, name="lse")
        p.lse = h
    cqa, cqp = i64(cq)
    cka, ckp = i64(ck)
    st = LIB.attn_sdpa_varlen(ctx.h, hq, hk, hv, ho, nb, cqp, ckp, C.byref(p))
    if st:
        raise Fail("attn_sdpa_varlen status %d: %s" % (st, ctx.err()))
    ctx.check_memory()
    worst = 0.0
    got = get(vo, od)
    gl = get(vl, F32) if vl is not None else None
    qa, ka, va = np.asarray(q), np.asarray(k), np.asarray(v)
    for b in range(nb):
        c = dict(cfg)
        c["q_offsets"] = None if cfg["q_offsets"] is None else cfg["q_offsets"][b:b + 1]
        qs = qa[cq[b]:cq[b + 1]].transpose(1, 0, 2)[None]
        ks = ka[ck[b]:ck[b + 1]].transpose(1, 0, 2)[None]
        vs = va[ck[b]:ck[b + 1]].transpose(1, 0, 2)[None]
        r = sdpa_ref(qs, ks, vs, c, None, None)
        tol_out, tol_lse, _, _ = sdpa_tols(r, od, D)
        worst = max(worst, compare("out[seq %d]" % b, got[cq[b]:cq[b + 1]].transpose(1, 0, 2),
                                   r["out"][0], tol_out[0]))
        if gl is not None:
            worst = max(worst, compare("lse[seq %d]" % b, gl[:, cq[b]:cq[b + 1]], r["lse"][0],
                                       tol_lse[0]))
    return worst, cfg


# ------------------------------------------------------- SDPA backward --

def torch_sdpa(q, k, v, cfg, mask, bmask, sinks):
    """Differentiable float64 torch formulation of attn.h's SDPA (q, k, v,
    mask, sinks torch leaves). Returns out."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    g = Hq // Hkv
    kk = k.repeat_interleave(g, 1)
    vv = v.repeat_interleave(g, 1)
    scale = cfg["scale"] if cfg["scale"] != 0 else 1.0 / math.sqrt(D)
    scale = float(np.float32(scale))
    s = scale * q @ kk.transpose(-1, -2)
    if cfg["softcap"] > 0:
        sc = float(np.float32(cfg["softcap"]))
        s = sc * torch.tanh(s / sc)
    i = torch.arange(Lq)[None, :]
    if cfg["q_offsets"] is not None:
        ip = torch.tensor(cfg["q_offsets"])[:, None] + i
    elif cfg["align"] == 1:
        n = torch.tensor(cfg["kv_lens"]) if cfg["kv_lens"] is not None else torch.full((B,), Lk)
        ip = n[:, None] + i - Lq
    else:
        ip = i.expand(B, Lq)
    ip = ip.double()[:, None, :, None]
    j = torch.arange(Lk).double()[None, None, None, :]
    if cfg["alibi"] is not None:
        s = s + torch.tensor(cfg["alibi"].astype(np.float64))[None, :, None, None] * (j - ip)
    if mask is not None:
        s = s + mask
    hidden = torch.zeros(s.shape, dtype=torch.bool)
    if cfg["causal"]:
        hidden |= j > ip
    if cfg["window"]:
        hidden |= (j < ip - cfg["wl"]) | (j > ip + cfg["wr"])
    if cfg["kv_lens"] is not None:
        hidden |= j >= torch.tensor(cfg["kv_lens"])[:, None, None, None]
    if bmask is not None:
        hidden |= torch.tensor(np.asarray(bmask) == 0)
    s = s.masked_fill(hidden, -math.inf)
    if sinks is not None:
        s = torch.cat([s, sinks[None, :, None, None].expand(B, Hq, Lq, 1)], -1)
    if s.shape[-1] == 0:
        return (s[..., :0] @ vv[..., :0, :]) * 0
    m = s.max(-1, keepdim=True).values.detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)
    den = e.sum(-1, keepdim=True)
    w = e / torch.where(den > 0, den, torch.ones_like(den))
    if sinks is not None:
        w = w[..., :Lk]
    return w @ vv


def run_sdpa_bwd(ctx, rng, case, varlen=False):
    if varlen:
        return run_varlen_bwd(ctx, rng, case)
    cfg = rand_sdpa_cfg(rng)
    cfg["Hkv"] = max(cfg["Hkv"], 1)
    cfg["Hq"] = max(cfg["Hq"], cfg["Hkv"])
    cfg["D"] = max(cfg["D"], 1)
    cfg["Dv"] = max(cfg["Dv"], 1)
    cfg["Lq"] = min(cfg["Lq"], 40)
    cfg["Lk"] = min(cfg["Lk"], 80)
    B, Hq, Hkv, Lq, Lk, D, Dv = (cfg[n] for n in ("B", "Hq", "Hkv", "Lq", "Lk", "D", "Dv"))
    q = data(rng, (B, Hq, Lq, D), F32, cfg["span"])
    k = data(rng, (B, Hkv, Lk, D), F32, cfg["span"])
    v = data(rng, (B, Hkv, Lk, Dv), F32)
    hq, _ = ctx.tensor(rng, q, F32, name="q")
    hk, _ = ctx.tensor(rng, k, F32, name="k")
    hv, _ = ctx.tensor(rng, v, F32, name="v")
    ho, vo = ctx.tensor(rng, np.zeros((B, Hq, Lq, Dv)), F32, out=True, name="out")
    hl, vl = ctx.tensor(rng, np.zeros((B, Hq, Lq)), F32, out=True, name="lse")
    p = _lib.SdpaParams()
    keep = []
    fill_params(ctx, rng, cfg, B, Lk, p, keep)
    full = (B, Hq, Lq, Lk)
    mask = bmask = None
    if cfg["mask_p"]:
        ms = rand_mask_shape(rng, full)
        m = rng.normal(0, 2, ms)
        m[rng.random(ms) < 0.15] = -np.inf
        m = m.astype(np.float32).astype(np.float64)
        hm, _ = ctx.tensor(rng, m, F32, name="mask")
        p.mask = hm
        mask = m
    if cfg["bmask_p"]:
        ms = rand_mask_shape(rng, full)
        m = (rng.random(ms) < 0.7).astype(np.uint8)
        hb, _ = ctx.tensor(rng, m, U8, name="bool_mask")
        p.bool_mask = hb
        bmask = np.broadcast_to(m, full)
    p.lse = hl
    st = LIB.attn_sdpa(ctx.h, hq, hk, hv, ho, C.byref(p))
    if st:
        raise Fail("attn_sdpa status %d: %s" % (st, ctx.err()))
    p.lse = None
    dout = data(rng, (B, Hq, Lq, Dv), F32)
    # the forward's outputs become inputs (read as they are)
    o_np, l_np = np.array(vo, np.float64), np.array(vl, np.float64)
    ho2, _ = ctx.tensor(rng, o_np, F32, name="out_in")
    hl2, _ = ctx.tensor(rng, l_np, F32, name="lse_in")
    hd, _ = ctx.tensor(rng, dout, F32, name="dout")
    hdq, vdq = ctx.tensor(rng, np.zeros(q.shape), F32, out=True, name="dq")
    hdk, vdk = ctx.tensor(rng, np.zeros(k.shape), F32, out=True, name="dk")
    hdv, vdv = ctx.tensor(rng, np.zeros(v.shape), F32, out=True, name="dv")
    bp = _lib.SdpaBackwardParams()
    vdm = None
    if rng.random() < 0.3:
        hdm, vdm = ctx.tensor(rng, np.zeros(full), F32, out=True, bcast=False, name="dmask")
        bp.dmask = hdm
    ds = None
    if cfg["sinks"] is not None and rng.random() < 0.7:
        ds = np.full(Hq, np.nan, np.float32)
        bp.dsinks = ds.ctypes.data_as(C.POINTER(C.c_float))
    st = LIB.attn_sdpa_backward(ctx.h, hq, hk, hv, ho2, hl2, hd, hdq, hdk, hdv, C.byref(p),
                                C.byref(bp))
    if st:
        raise Fail("attn_sdpa_backward status %d: %s" % (st, ctx.err()))
    ctx.check_memory()
    tq = torch.tensor(np.asarray(q), requires_grad=True)
    tk = torch.tensor(np.asarray(k), requires_grad=True)
    tv = torch.tensor(np.asarray(v), requires_grad=True)
    tm = None
    if mask is not None:
        tm = torch.tensor(np.ascontiguousarray(np.broadcast_to(mask, full)), requires_grad=True)
    tsk = torch.tensor(cfg["sinks"].astype(np.float64), requires_grad=True) \
        if cfg["sinks"] is not None else None
    out = torch_sdpa(tq, tk, tv, cfg, tm, bmask, tsk)
    leaves = [tq, tk, tv] + ([tm] if tm is not None else []) + ([tsk] if tsk is not None else [])
    grads = torch.autograd.grad(out, leaves, torch.tensor(np.asarray(dout)), allow_unused=True)
    grads = [np.zeros(l.shape) if g_ is None else g_.numpy() for g_, l in zip(grads, leaves)]
    r = sdpa_ref(np.asarray(q), np.asarray(k), np.asarray(v), cfg,
                 None if mask is None else np.broadcast_to(mask, full), bmask)
    # dS ~ P (dP - D): errors in S perturb P; scale by |dout||v| and the sizes
    dmax = np.abs(np.asarray(dout)).max(initial=0) * max(np.abs(np.asarray(v)).max(initial=0), 1)
    tS = r["tolS"].max(initial=0) + 8 * EPS
    base = (tS * 8 + 64 * EPS) * dmax
    sc = abs(r["scale"])
    qmax = max(np.abs(np.asarray(q)).max(initial=0), 1e-3)
    kmax = max(np.abs(np.asarray(k)).max(initial=0), 1e-3)
    worst = compare("dq", np.array(vdq, np.float64), grads[0],
                    base * sc * kmax * (Lk + 1) ** 0.5 * 4 + 1e-6 + 1e-5 * np.abs(grads[0]))
    worst = max(worst, compare("dk", np.array(vdk, np.float64), grads[1],
                               base * sc * qmax * (Lq * Hq + 1) ** 0.5 * 4 + 1e-6
                               + 1e-5 * np.abs(grads[1])))
    worst = max(worst, compare("dv", np.array(vdv, np.float64), grads[2],
                               8 * EPS * np.sqrt(Lq * Hq + 1) * np.abs(np.asarray(dout)).max(
                                   initial=0) + base + 1e-6 + 1e-5 * np.abs(grads[2])))
    if vdm is not None:
        # dS per logit, before the mask's broadcast sum
        ref_ds = grads[3] if tm is not None else None
        if ref_ds is None:
            tm2 = torch.zeros(full, dtype=torch.float64, requires_grad=True)
            out2 = torch_sdpa(tq.detach(), tk.detach(), tv.detach(), cfg, tm2, bmask, None
                              if tsk is None else tsk.detach())
            ref_ds = torch.autograd.grad(out2, [tm2], torch.tensor(np.asarray(dout)))[0].numpy()
        worst = max(worst, compare("dmask", np.array(vdm, np.float64), ref_ds,
                                   base + 1e-6 + 1e-5 * np.abs(ref_ds)))
    if ds is not None:
        worst = max(worst, compare("dsinks", ds.astype(np.float64), grads[-1],
                                   base * (B * Lq + 1) + 1e-6 + 1e-5 * np.abs(grads[-1])))
    return worst, cfg


def run_varlen_bwd(ctx, rng, case):
    cfg = rand_sdpa_cfg(rng, varlen=True)
    cfg["Hkv"] = max(cfg["Hkv"], 1)
    cfg["Hq"] = max(cfg["Hq"], cfg["Hkv"])
    cfg["D"] = max(cfg["D"], 1)
    cfg["Dv"] = max(cfg["Dv"], 1)
    nb = int(rng.choice([0, 1, 2, 3]))
    Hq, Hkv, D, Dv = cfg["Hq"], cfg["Hkv"], cfg["D"], cfg["Dv"]
    lq = rng.choice([0, 1, 2, 3, 5, 9, 17], nb)
    lk = rng.choice([0, 1, 2, 5, 9, 17, 33], nb)
    cq = np.concatenate([[0], np.cumsum(lq)]).astype(np.int64)
    ck = np.concatenate([[0], np.cumsum(lk)]).astype(np.int64)
    Tq, Tk = int(cq[-1]), int(ck[-1])
    q = data(rng, (Tq, Hq, D), F32, cfg["span"])
    k = data(rng, (Tk, Hkv, D), F32, cfg["span"])
    v = data(rng, (Tk, Hkv, Dv), F32)
    hq, _ = ctx.tensor(rng, q, F32, name="q")
    hk, _ = ctx.tensor(rng, k, F32, name="k")
    hv, _ = ctx.tensor(rng, v, F32, name="v")
    ho, vo = ctx.tensor(rng, np.zeros((Tq, Hq, Dv)), F32, out=True, name="out")
    hl, vl = ctx.tensor(rng, np.zeros((Hq, Tq)), F32, out=True, name="lse")
    p = _lib.SdpaParams()
    keep = []
    fill_params(ctx, rng, cfg, nb, int(lk.max()) if nb else 0, p, keep)
    p.lse = hl
    cqa, cqp = i64(cq)
    cka, ckp = i64(ck)
    st = LIB.attn_sdpa_varlen(ctx.h, hq, hk, hv, ho, nb, cqp, ckp, C.byref(p))
    if st:
        raise Fail("varlen status %d: %s" % (st, ctx.err()))
    p.lse = None
    dout = data(rng, (Tq, Hq, Dv), F32)
    ho2, _ = ctx.tensor(rng, np.array(vo, np.float64), F32, name="out_in")
    hl2, _ = ctx.tensor(rng, np.array(vl, np.float64), F32, name="lse_in")
    hd, _ = ctx.tensor(rng, dout, F32, name="dout")
    hdq, vdq = ctx.tensor(rng, np.zeros(q.shape), F32, out=True, name="dq")
    hdk, vdk = ctx.tensor(rng, np.zeros(k.shape), F32, out=True, name="dk")
    hdv, vdv = ctx.tensor(rng, np.zeros(v.shape), F32, out=True, name="dv")
    bp = _lib.SdpaBackwardParams()
    ds = None
    if cfg["sinks"] is not None and rng.random() < 0.7:
        ds = np.full(Hq, np.nan, np.float32)
        bp.dsinks = ds.ctypes.data_as(C.POINTER(C.c_float))
    st = LIB.attn_sdpa_varlen_backward(ctx.h, hq, hk, hv, ho2, hl2, hd, hdq, hdk, hdv, nb, cqp,
                                       ckp, C.byref(p), C.byref(bp))
    if st:
        raise Fail("varlen_backward status %d: %s" % (st, ctx.err()))
    ctx.check_memory()
    tq = torch.tensor(np.asarray(q), requires_grad=True)
    tk = torch.tensor(np.asarray(k), requires_grad=True)
    tv = torch.tensor(np.asarray(v), requires_grad=True)
    tsk = torch.tensor(cfg["sinks"].astype(np.float64), requires_grad=True) \
        if cfg["sinks"] is not None else None
    td = torch.tensor(np.asarray(dout))
    loss = 0
    for b in range(nb):
        c = dict(cfg)
        c["q_offsets"] = None if cfg["q_offsets"] is None else cfg["q_offsets"][b:b + 1]
        qs = tq[cq[b]:cq[b + 1]].transpose(0, 1)[None]
        ks = tk[ck[b]:ck[b + 1]].transpose(0, 1)[None]
        vs = tv[ck[b]:ck[b + 1]].transpose(0, 1)[None]
        o = torch_sdpa(qs, ks, vs, c, None, None, tsk)
        loss = loss + (o[0].transpose(0, 1) * td[cq[b]:cq[b + 1]]).sum()
    leaves = [tq, tk, tv] + ([tsk] if tsk is not None else [])
    if nb and torch.is_tensor(loss):
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        grads = [np.zeros(l.shape) if g_ is None else g_.numpy() for g_, l in zip(grads, leaves)]
    else:
        grads = [np.zeros(l.shape) for l in leaves]
    tol = 2e-5 * max(1, cfg["span"] ** 2) * (1 + 4 * cfg["softcap"] * 0) + 1e-5
    worst = compare("dq", np.array(vdq, np.float64), grads[0], tol * (1 + np.abs(grads[0])))
    worst = max(worst, compare("dk", np.array(vdk, np.float64), grads[1],
                               tol * (1 + np.abs(grads[1])) * Hq))
    worst = max(worst, compare("dv", np.array(vdv, np.float64), grads[2],
                               tol * (1 + np.abs(grads[2])) * Hq))
    if ds is not None:
        worst = max(worst, compare("dsinks", ds.astype(np.float64), grads[-1],
                                   tol * (1 + np.abs(grads[-1])) * (Tq + 1)))
    return worst, cfg


# ------------------------------------------------------------ softmax --

def run_softmax(ctx, rng, case):
    nd = int(rng.integers(1, 5))
    shape = tuple(int(rng.choice([0, 1, 1, 2, 3, 5, 8, 17, 33, 64, 100])) if rng.random() < 0.9
                  else int(rng.integers(100, 700)) for _ in range(nd))
    if np.prod(shape) > 200000:
        shape = tuple(min(d, 8) for d in shape)
    axis = -1 if rng.random() < 0.6 else -int(rng.integers(1, nd + 1))
    log = rng.random() < 0.4
    backward = rng.random() < 0.35
    xd = F32 if backward else pick_dt(rng)
    yd = F32 if backward else pick_dt(rng)
    span = float(rng.choice([1, 5, 30]))
    scale = 0.0 if rng.random() < 0.5 else float(rng.uniform(-2, 3))
    p = _lib.SoftmaxParams()
    p.scale = scale
    p.axis = axis if (axis != -1 or rng.random() < 0.5) else 0
    mask = bmask = None
    full = shape
    if rng.random() < 0.35:
        ms = tuple(d if rng.random() < 0.6 else 1 for d in shape[nd - int(rng.integers(1, nd + 1)):])
        m = rng.normal(0, 2, ms)
        m[rng.random(ms) < 0.2] = -np.inf
        m = bcast_vals(rng, m.astype(np.float32).astype(np.float64), True, 0.3)
        h, _ = ctx.tensor(rng, m, F32, name="mask")
        p.mask = h
        mask = np.broadcast_to(np.asarray(m), full)
    if rng.random() < 0.3:
        ms = tuple(d if rng.random() < 0.6 else 1 for d in shape[nd - int(rng.integers(1, nd + 1)):])
        m = (rng.random(ms) < 0.7).astype(np.uint8)
        m = bcast_vals(rng, m, True, 0.3)
        h, _ = ctx.tensor(rng, m, U8, name="bool_mask")
        p.bool_mask = h
        bmask = np.broadcast_to(np.asarray(m), full)
    # hidden entries may hold NaN / inf (never read); a few visible ones too
    hid0 = np.zeros(shape, bool)
    if bmask is not None:
        hid0 |= bmask == 0
    if mask is not None:
        hid0 |= mask == -np.inf
    xr = rng.uniform(-span, span, shape)
    if rng.random() < 0.4:
        xr = np.where(hid0, np.where(rng.random(shape) < 0.5, np.nan, np.inf), xr)
    if (not backward) and rng.random() < 0.1 and xr.size:
        xr.flat[int(rng.integers(0, xr.size))] = rng.choice([np.nan, np.inf, -np.inf])
    x = bcast_vals(rng, quantize(xr, xd)[1], True)
    inplace = (not backward) and xd == yd and rng.random() < 0.2
    hx, vx = ctx.tensor(rng, x, xd, name="x", bcast=not inplace)
    if inplace:
        # an in-place call: x must be a writable, no-zero-stride view
        if any(s == 0 for s, d in zip(ctx.inputs[-1][4], shape) if d > 1):
            inplace = False
    if inplace:
        rec = ctx.inputs.pop()
        ctx.outs.append(rec)
        hy, vy = hx, vx
    else:
        hy, vy = ctx.tensor(rng, np.zeros(shape), yd, out=True, name="y")
    fn = LIB.attn_log_softmax if log else LIB.attn_softmax
    st = fn(ctx.h, hx, hy, C.byref(p))
    if st:
        raise Fail("softmax status %d: %s" % (st, ctx.err()))
    if not backward:
        ctx.check_memory()
    xs = np.asarray(x, np.float64)
    sc = float(np.float32(scale)) if scale != 0 else 1.0
    z = sc * xs
    if mask is not None:
        with np.errstate(invalid="ignore"):
            z = z + mask
    hidden = np.zeros(shape, bool)
    if bmask is not None:
        hidden |= bmask == 0
    if mask is not None:
        hidden |= mask == -np.inf
    zm = np.where(hidden, -np.inf, z)
    ax = axis % nd if nd else 0
    with np.errstate(invalid="ignore"):
        if zm.size:
            mx = zm.max(axis=ax, keepdims=True)
        else:
            mx = np.zeros([1 if i == ax else d for i, d in enumerate(shape)])
        # a NaN or +inf among the visible z makes the row NaN
        bad = (np.isnan(zm) | (zm == np.inf)).any(axis=ax, keepdims=True)
        mf = np.where(np.isfinite(mx), mx, 0)
        e = np.exp(zm - mf)
        den = e.sum(axis=ax, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        yref = np.where(den > 0, e / np.where(den > 0, den, 1), 0.0)
        lref = np.where(hidden | (den == 0), -np.inf, zm - mf - np.log(np.where(den > 0, den, 1)))
    yref = np.where(bad, np.nan, yref)
    lref = np.where(bad, np.nan, lref)
    badrows = np.broadcast_to(bad, shape)
    with np.errstate(invalid="ignore"):
        absz = np.abs(sc * xs) + (np.where(np.isfinite(mask), np.abs(mask), 0)
                                  if mask is not None else 0)
    absz = np.where(hidden | ~np.isfinite(absz), 0, absz)
    tz = 4 * EPS * np.where(hidden, 0, absz)
    tzr = tz.max(axis=ax, keepdims=True, initial=0) + 4 * EPS
    got = get(vy, yd)
    if badrows.any():
        # NaN rows: every visible entry NaN; a hidden one NaN or its masked value
        hv = badrows & hidden & ~np.isnan(got)
        yref = np.where(hv, 0.0, yref)
        lref = np.where(hv, -np.inf, lref)
        if not log and np.any(hv & (got != 0)) or log and np.any(hv & (got != -np.inf)):
            raise Fail("hidden entry of a NaN row neither NaN nor masked")
    if log:
        tol = 2 * tzr + 8 * EPS * np.abs(np.where(np.isfinite(lref), lref, 0)) + 1e-6 \
            + HALF_U[yd] * np.abs(np.where(np.isfinite(lref), lref, 0))
        worst = compare("log_softmax", got, lref, tol)
    else:
        tol = yref * (4 * tzr + 8 * EPS) + 1e-7 + HALF_U[yd] * yref
        worst = compare("softmax", got, yref, tol)
    if backward:
        y_np = np.array(vy, np.float64)
        dy = data(rng, shape, F32)
        hy2, _ = ctx.tensor(rng, y_np, F32, name="y_in")
        hdy, _ = ctx.tensor(rng, dy, F32, name="dy")
        hdx, vdx = ctx.tensor(rng, np.zeros(shape), F32, out=True, name="dx")
        hdm = vdm = None
        if rng.random() < 0.4:
            hdm, vdm = ctx.tensor(rng, np.zeros(shape), F32, out=True, name="dmask")
        fnb = LIB.attn_log_softmax_backward if log else LIB.attn_softmax_backward
        st = fnb(ctx.h, hy2, hdy, hdx, hdm, C.byref(p))
        if st:
            raise Fail("softmax_backward status %d: %s" % (st, ctx.err()))
        ctx.check_memory()
        dyv = np.asarray(dy, np.float64)
        # formulas of attn.h from the library's own y (float64 sums)
        if log:
            live = np.isfinite(y_np)
            s = np.where(live, dyv, 0).sum(axis=ax, keepdims=True)
            dz = np.where(live, dyv - np.exp(np.where(live, y_np, 0)) * s, 0)
        else:
            live = y_np != 0
            s = np.where(live, y_np * dyv, 0).sum(axis=ax, keepdims=True)
            dz = np.where(live, y_np * (dyv - s), 0)
        # attn.h: a NaN in y (a NaN row of the forward) gives a NaN row
        dz = np.where(np.isnan(y_np).any(axis=ax, keepdims=True), np.nan, dz)
        n = shape[ax] if shape else 1
        tol = 8 * EPS * (np.abs(dz) + np.abs(dyv).max(initial=0) * (1 + np.sqrt(n))) + 1e-7
        worst = max(worst, compare("dx", np.array(vdx, np.float64), sc * dz, tol * max(abs(sc), 1)))
        if vdm is not None:
            worst = max(worst, compare("dz", np.array(vdm, np.float64), dz, tol))
        # and against torch autograd from x on fully live rows
        if torch is not None and not (hidden.any() or np.any(~np.isfinite(y_np))) and xs.size:
            tx = torch.tensor(xs, requires_grad=True)
            zz = sc * tx + (torch.tensor(np.ascontiguousarray(mask)) if mask is not None else 0)
            yy = torch.log_softmax(zz, ax) if log else torch.softmax(zz, ax)
            gx = torch.autograd.grad(yy, tx, torch.tensor(dyv))[0].numpy()
            worst = max(worst, compare("dx(torch)", np.array(vdx, np.float64), gx,
                                       tol * max(abs(sc), 1) * 4 + 1e-6 * np.abs(gx)
                                       + 4 * tzr * np.abs(dyv).max(initial=0) * n))
    return worst, dict(shape=shape, axis=axis, log=log, bwd=backward)


# --------------------------------------------------------------- pool --

def run_pool(ctx, rng, case):
    four = rng.random() < 0.5
    B = int(rng.choice([0, 1, 2, 3]))
    H = int(rng.choice([1, 2, 3])) if four else None
    L = int(rng.choice([0, 1, 2, 3, 5, 8, 17, 40]))
    D = int(rng.choice([0, 1, 2, 3, 8, 17, 33, 64]))
    mode = int(rng.integers(0, 4))
    backward = rng.random() < 0.4
    xs = (B, H, L, D) if four else (B, L, D)
    xd, od = pick_dt(rng), pick_dt(rng)
    os_ = (B, H, D) if four else (B, D)
    ho, vo = ctx.tensor(rng, np.zeros(os_), od, out=True, name="out")
    p = _lib.PoolParams(mode=mode)
    tok = (B, H, L) if (four and rng.random() < 0.5) else (B, L)
    keepm = np.ones((B, 1, L) if (four and len(tok) == 3) else (B, L), bool)
    if four and len(tok) == 2:
        keepm = keepm[:, None, :]
    if rng.random() < 0.4:
        la, lp = i64(rng.integers(0, L + 1, B))  # la outlives the calls below
        p.lengths = lp
        keepm = keepm & (np.arange(L)[None, :] < la[:, None]).reshape(
            (B, 1, L) if four else (B, L))
    if rng.random() < 0.4:
        ks = tuple(d if rng.random() < 0.7 else 1 for d in tok)
        km = (rng.random(ks) < 0.7).astype(np.uint8)
        h, _ = ctx.tensor(rng, km, U8, name="keep")
        p.keep = h
        kb = km.reshape(ks if not (four and len(ks) == 2) else (ks[0], 1, ks[1])) != 0
        keepm = keepm & kb
    sc_ = None
    sd = F32
    if mode == 3:
        ss = tuple(d if rng.random() < 0.7 else 1 for d in tok)
        sd = pick_dt(rng)
        sv = rng.normal(0, 2, ss)
        sv[rng.random(ss) < 0.1] = -np.inf
        if ss == tok and rng.random() < 0.4:
            # a dropped token's score is never read
            sv = np.where(np.broadcast_to(keepm, (B, H, L) if four else (B, L)).reshape(ss)
                          if len(ss) == keepm.ndim or not four else
                          np.broadcast_to(keepm, (B, 1, L)).reshape(ss), sv, np.nan)
        _, sv = quantize(sv, sd)
        h, _ = ctx.tensor(rng, sv, sd, name="scores")
        p.scores = h
        sc_ = sv.reshape(ss if not (four and len(ss) == 2) else (ss[0], 1, ss[1]))
    xr = rng.uniform(-2, 2, xs)
    if rng.random() < 0.4:
        # a dropped token is never read
        km = np.broadcast_to(keepm, xs[:-1])
        xr = np.where(km[..., None], xr, np.nan)
    x = bcast_vals(rng, quantize(xr, xd)[1], True)
    hx, _ = ctx.tensor(rng, x, xd, name="x")
    st = LIB.attn_pool(ctx.h, hx, ho, C.byref(p))
    if st:
        raise Fail("pool status %d: %s" % (st, ctx.err()))
    ctx.check_memory()
    xv = np.asarray(x, np.float64)
    if not four:
        xv4 = xv[:, None]
        keep4 = keepm[:, None] if keepm.ndim == 2 else keepm
        sc4 = None if sc_ is None else sc_[:, None]
    else:
        xv4, keep4, sc4 = xv, keepm, sc_
    keep4 = np.broadcast_to(keep4, xv4.shape[:3])
    xv4 = np.where(keep4[..., None], xv4, 0.0)  # a dropped token is never read
    Hh = xv4.shape[1]
    n = keep4.sum(-1)
    if mode in (0, 1):
        s = np.einsum("bhl,bhld->bhd", keep4.astype(np.float64), xv4)
        ref = s if mode == 0 else np.where(n[..., None] > 0, s / np.maximum(n, 1)[..., None], 0)
        tol = 8 * EPS * np.einsum("bhl,bhld->bhd", keep4.astype(np.float64), np.abs(xv4)) \
            / (1 if mode == 0 else np.maximum(n, 1)[..., None])
    elif mode == 2:
        xm = np.where(keep4[..., None], xv4, -np.inf)
        ref = xm.max(axis=2, initial=-np.inf)
        ref = np.where(n[..., None] > 0, ref, 0.0)
        tol = np.zeros(ref.shape)
    else:
        sc4b = np.broadcast_to(sc4, xv4.shape[:3])
        z = np.where(keep4, sc4b, -np.inf)
        m = z.max(-1, keepdims=True, initial=-np.inf)
        mf = np.where(np.isfinite(m), m, 0)
        with np.errstate(invalid="ignore"):
            e = np.exp(z - mf)
        den = e.sum(-1, keepdims=True)
        live = (den > 0) | np.isnan(den)
        w = np.where(live, e / np.where(live, den, 1), 0)
        ref = np.einsum("bhl,bhld->bhd", w, np.where(keep4[..., None], xv4, 0))
        ref = np.where(den == 0, 0.0, ref)  # every kept score -inf: zeros
        sfin = np.where(np.isfinite(sc4b) & keep4, np.abs(sc4b), 0)
        tol = (16 * EPS * sfin.max(initial=0) + 8 * EPS) \
            * np.nan_to_num(np.abs(xv4)).max(initial=0) + 1e-7 + np.zeros(ref.shape)
    ref = ref if four else ref[:, 0]
    tol = np.broadcast_to(tol, (B, Hh, D))
    tol = tol if four else tol[:, 0]
    got = get(vo, od)
    worst = compare("pool mode %d" % mode, got, round_to(ref, od), tol + 2 * HALF_U[od] * np.abs(ref)
                    + 1e-30)
    if backward and B and L and torch is not None:
        dout = data(rng, os_, F32)
        hd, _ = ctx.tensor(rng, dout, F32, name="dout")
        dxd = pick_dt(rng)
        hdx, vdx = ctx.tensor(rng, np.zeros(xs), dxd, out=True, name="dx")
        hds = vds = None
        if mode == 3 and rng.random() < 0.6:
            hds, vds = ctx.tensor(rng, np.zeros(np.asarray(sv).shape), F32, out=True,
                                  name="dscores")
        st = LIB.attn_pool_backward(ctx.h, hx, hd, hdx, hds, C.byref(p))
        if st:
            raise Fail("pool_backward status %d: %s" % (st, ctx.err()))
        ctx.check_memory()
        tx = torch.tensor(xv4, requires_grad=True)
        dd = torch.tensor(np.asarray(dout, np.float64))
        dd4 = dd if four else dd[:, None]
        kk = torch.tensor(keep4)
        leaves = [tx]
        if mode == 0:
            y = (tx * kk[..., None]).sum(2)
        elif mode == 1:
            y = (tx * kk[..., None]).sum(2) / torch.tensor(np.maximum(n, 1))[..., None]
        elif mode == 2:
            # the header's rule: dout to the first kept maximum
            xm = np.where(keep4[..., None], xv4, -np.inf)
            am = np.argmax(xm, axis=2)
            gx = np.zeros(xv4.shape)
            for b in range(B):
                for h in range(Hh):
                    for d in range(D):
                        if n[b, h] > 0:
                            gx[b, h, am[b, h, d], d] = dd4[b, h, d].item()
            y = None
        else:
            # per-token scores as a leaf of their own: attn.h gives a token of
            # weight 0 no gradient (torch: 0 x NaN when the output is NaN),
            # then sums over the axes scores is broadcast along
            sb = torch.tensor(np.ascontiguousarray(np.broadcast_to(
                np.asarray(sv, np.float64).reshape(sc4.shape), xv4.shape[:3])),
                requires_grad=True)
            z = sb.masked_fill(~kk, -math.inf)
            m = z.max(-1, keepdim=True).values.detach()
            m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
            e = torch.exp(z - m)
            den = e.sum(-1, keepdim=True)
            w = e / torch.where(den > 0, den, torch.ones_like(den))
            y = (w[..., None] * tx.masked_fill(~kk[..., None], 0)).sum(2)
            leaves.append(sb)
            w0 = (w == 0).detach().numpy()
        if y is not None:
            gr = torch.autograd.grad(y, leaves, dd4, allow_unused=True)
            gx = gr[0].numpy()
            gs = None
            if len(gr) > 1 and gr[1] is not None:
                g3 = np.where(w0, 0.0, gr[1].numpy())
                ssh = np.asarray(sv).shape
                g3 = g3.sum(axis=tuple(a for a in range(3) if sc4.shape[a] == 1), keepdims=True)
                gs = g3.reshape(ssh)
        gx = gx if four else gx[:, 0]
        tolx = 1e-6 * (1 + np.abs(gx)) + HALF_U[dxd] * np.abs(gx)
        if mode == 3:
            tolx = tolx + tol.max(initial=0) * np.abs(np.asarray(dout)).max(initial=0)
        worst = max(worst, compare("dx", get(vdx, dxd), gx, tolx))
        if vds is not None:
            gs = gs if gs is not None else np.zeros(np.asarray(sv).shape)
            worst = max(worst, compare("dscores", np.array(vds, np.float64), gs,
                                       1e-5 * (1 + np.abs(gs)) * L))
    return worst, dict(xs=xs, mode=mode, bwd=backward)


# --------------------------------------------------------------- rope --

def hf_inv_freq(kind, r, theta, cfg):
    """Hugging Face modeling_rope_utils formulas (float64), and the attention factor."""
    i = np.arange(0, r, 2, dtype=np.float64)
    base = theta
    w = 1.0 / base ** (i / r)
    s = cfg.get("factor", 1.0)
    P0 = cfg.get("P0", 1)
    af = 1.0
    if kind == 1:
        w = w / s
    elif kind == 2:
        base = theta * s ** (r / (r - 2))
        w = 1.0 / base ** (i / r)
    elif kind == 3:
        n = max(cfg["seq_len"], P0)
        base = theta * (s * n / P0 - (s - 1)) ** (r / (r - 2))
        w = 1.0 / base ** (i / r)
    elif kind == 4:
        bf, bs = cfg["beta_fast"], cfg["beta_slow"]

        def dim_of(nrot):
            return (r * math.log(P0 / (nrot * 2 * math.pi))) / (2 * math.log(theta))
        lo, hi = dim_of(bf), dim_of(bs)
        if not cfg["no_trunc"]:
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, r - 1)
        if lo == hi:
            hi += 0.001
        ramp = np.clip((np.arange(r // 2) - lo) / (hi - lo), 0, 1)
        extra_factor = 1 - ramp  # HF: inv_freq_extrapolation_factor = 1 - linear_ramp
        w = (w / s) * (1 - extra_factor) + w * extra_factor

        def m(sc, k):
            return 0.1 * k * math.log(sc) + 1 if sc > 1 else 1.0
        if cfg["af"]:
            af = cfg["af"]
        elif cfg["mscale"] and cfg["mscale_all_dim"]:
            af = m(s, cfg["mscale"]) / m(s, cfg["mscale_all_dim"])
        else:
            af = m(s, 1)
    elif kind == 5:
        lf, hf = cfg["lff"], cfg["hff"]
        wl = 2 * math.pi / w
        lo_wl, hi_wl = P0 / lf, P0 / hf
        wn = np.where(wl > lo_wl, w / s, w)
        smooth = (P0 / wl - lf) / (hf - lf)
        smoothed = (1 - smooth) * wn / s + smooth * wn
        mid = ~(wl < hi_wl) & ~(wl > lo_wl)
        w = np.where(mid, smoothed, wn)
    elif kind == 6:
        f = cfg["long"] if cfg["seq_len"] > P0 else cfg["short"]
        w = w / np.asarray(f)
        if cfg["af"]:
            af = cfg["af"]
        else:
            af = 1.0 if s <= 1 else math.sqrt(1 + math.log(s) / math.log(P0))
    return w, af


def run_rope(ctx, rng, case):
    B = int(rng.choice([0, 1, 2]))
    H = int(rng.choice([1, 2, 3]))
    L = int(rng.choice([0, 1, 2, 5, 9, 33]))
    D = int(rng.choice([2, 4, 6, 8, 10, 16, 64, 66, 128]))
    r = D if rng.random() < 0.5 else int(rng.integers(1, D // 2 + 1)) * 2
    style = int(rng.integers(0, 2))
    xd = pick_dt(rng)
    x = data(rng, (B, H, L, D), xd, 2.0)
    which = rng.random()
    xv = np.asarray(x, np.float64)
    if which < 0.4:
        # attn_rope / attn_rope_backward with offset or positions
        theta = float(rng.choice([10000.0, 500000.0, 1.5, 1e6]))
        p = _lib.RopeParams(style=style, rotary_dim=r if (r != D or rng.random() < 0.5) else 0,
                            theta=theta if rng.random() < 0.8 else 0)
        theta = theta if p.theta else 10000.0
        if rng.random() < 0.5:
            pos, pp = i64(rng.integers(0, 100000, (B, L)))
            p.positions = pp
        else:
            p.offset = int(rng.choice([0, 1, 7, 4096, 10 ** 6]))
            pos = np.broadcast_to(p.offset + np.arange(L), (B, L))
        hx, vx = ctx.tensor(rng, x, xd, name="x", bcast=False)
        rec = ctx.inputs.pop()
        ctx.outs.append(rec)
        bwd = rng.random() < 0.4
        st = (LIB.attn_rope_backward if bwd else LIB.attn_rope)(ctx.h, hx, C.byref(p))
        if st:
            raise Fail("rope status %d: %s" % (st, ctx.err()))
        ctx.check_memory()
        ref = rope_ref(xv, pos[:, None, :], r, theta, style, inverse=bwd)  # pos [B, L] over the heads
        # the angle p*w in double: a 1e6 position keeps ~1e-10 abs error
        tol = HALF_U[xd] * np.abs(ref) + 2 * EPS * np.abs(ref) + 1e-9 * (1 + pos.max(initial=0) * 1e-6)
        return compare("rope%s" % ("_bwd" if bwd else ""), get(vx, xd), round_to(ref, xd),
                       tol + EPS * np.abs(ref)), dict(D=D, r=r, style=style, bwd=bwd)
    # cache fill with a scaling, then rope_cached
    kind = int(rng.integers(0, 7))
    if kind in (2, 3) and r < 4:
        r = 4 if D >= 4 else r
        if r < 4:
            kind = 1
    P = max(L, 1) + int(rng.integers(0, 40))
    cfg = {}
    rp = _lib.RopeCacheParams(scaling=kind)
    theta = float(rng.choice([10000.0, 500000.0, 1e6]))
    rp.theta = theta
    if kind in (1, 2, 3, 4, 5):
        cfg["factor"] = float(rng.choice([1.0, 2.0, 4.0, 8.0, 0.5, 32.0]))
        rp.factor = cfg["factor"]
    if kind in (3, 4, 5, 6):
        cfg["P0"] = int(rng.choice([4, 16, 64, 2048, 8192]))
        rp.original_max_position = cfg["P0"]
    if kind in (3, 6):
        cfg["seq_len"] = int(rng.choice([0, 1, P, 3 * P + 100, 20000]))
        rp.seq_len = cfg["seq_len"]
        if cfg["seq_len"] == 0:
            cfg["seq_len"] = P
    if kind == 4:
        cfg["beta_fast"] = float(rng.choice([0, 32, 16, 4]))
        cfg["beta_slow"] = float(rng.choice([0, 1, 2]))
        rp.beta_fast, rp.beta_slow = cfg["beta_fast"], cfg["beta_slow"]
        cfg["beta_fast"] = cfg["beta_fast"] or 32.0
        cfg["beta_slow"] = cfg["beta_slow"] or 1.0
        cfg["mscale"] = float(rng.choice([0, 0, 1, 0.707]))
        cfg["mscale_all_dim"] = float(rng.choice([0, 0, 1, 0.707]))
        cfg["af"] = float(rng.choice([0, 0, 0, 1.3]))
        cfg["no_trunc"] = int(rng.random() < 0.3)
        rp.mscale, rp.mscale_all_dim = cfg["mscale"], cfg["mscale_all_dim"]
        rp.attention_factor, rp.yarn_no_truncate = cfg["af"], cfg["no_trunc"]
    if kind == 5:
        cfg["lff"] = float(rng.choice([0, 1, 2]))
        cfg["hff"] = float(rng.choice([0, 4, 8]))
        rp.low_freq_factor, rp.high_freq_factor = cfg["lff"], cfg["hff"]
        cfg["lff"] = cfg["lff"] or 1.0
        cfg["hff"] = cfg["hff"] or 4.0
    keep = []
    if kind == 6:
        sf = rng.uniform(1, 5, r // 2)
        lf = rng.uniform(1, 50, r // 2)
        keep += [sf, lf]
        rp.short_factors = sf.ctypes.data_as(C.POINTER(C.c_double))
        rp.long_factors = lf.ctypes.data_as(C.POINTER(C.c_double))
        cfg["short"], cfg["long"] = sf, lf
        cfg["af"] = float(rng.choice([0, 0, 1.2]))
        rp.attention_factor = cfg["af"]
        cfg["factor"] = float(rng.choice([0, 4.0, 0.5]))
        rp.factor = cfg["factor"]
        if cfg["factor"] == 0:
            cfg["factor"] = P / cfg["P0"]
    apply = int(rng.random() < 0.5)
    rp.apply_attention_factor = apply
    hc, vc = ctx.tensor(rng, np.zeros((P, r // 2)), F32, out=True, name="cos")
    hs, vs = ctx.tensor(rng, np.zeros((P, r // 2)), F32, out=True, name="sin")
    afo = C.c_double(-1)
    st = LIB.attn_rope_cache_fill(ctx.h, hc, hs, C.byref(rp), C.byref(afo))
    if st:
        if st == 2 and kind == 5 and cfg["hff"] <= cfg["lff"]:
            return 0.0, dict(kind=kind, refused=True)
        raise Fail("rope_cache_fill kind %d status %d: %s" % (kind, st, ctx.err()))
    ctx.check_memory()
    w, af = hf_inv_freq(kind, r, theta, cfg)
    ang = np.arange(P)[:, None] * w[None, :]
    a = af if apply else 1.0
    worst = compare("attention_factor", np.array([afo.value]), np.array([af]), 1e-12 * af)
    worst = max(worst, compare("cos[%d]" % kind, np.array(vc, np.float64), a * np.cos(ang),
                               2 * EPS * a + 1e-12 * np.abs(ang)))
    worst = max(worst, compare("sin[%d]" % kind, np.array(vs, np.float64), a * np.sin(ang),
                               2 * EPS * a + 1e-12 * np.abs(ang)))
    # rope_cached with the library's tables, position ids or not, 3-D or 4-D x
    cos_t, sin_t = np.array(vc, np.float64), np.array(vs, np.float64)
    cp = _lib.RopeCachedParams(style=style)
    keep.append(cp)
    pos = None
    per_token = rng.random() < 0.3
    if per_token:
        # ONNX without position_ids: arbitrary [B|1, L, r/2] tables, one row per token
        tb = 1 if rng.random() < 0.5 else B
        cos_t = data(rng, (tb, L, r // 2), F32, 1.5)
        sin_t = data(rng, (tb, L, r // 2), F32, 1.5)
    elif rng.random() < 0.5:
        pos, pp = i64(rng.integers(0, P, (B, L)))
        cp.position_ids = pp
    else:
        pos = np.broadcast_to(np.arange(L), (B, L))
    hc2, _ = ctx.tensor(rng, cos_t, F32, name="cos_in")
    hs2, _ = ctx.tensor(rng, sin_t, F32, name="sin_in")
    three = rng.random() < 0.3
    yd = pick_dt(rng)
    inplace = rng.random() < 0.25
    if inplace:
        yd = xd
    if three:
        x3 = np.ascontiguousarray(xv.transpose(0, 2, 1, 3)).reshape(B, L, H * D)
        hx, vx3 = ctx.tensor(rng, x3, xd, name="x3", bcast=not inplace)
        if inplace:
            ctx.outs.append(ctx.inputs.pop())
            hy, vy = hx, vx3
        else:
            hy, vy = ctx.tensor(rng, np.zeros(x3.shape), yd, out=True, name="y3")
        cp.num_heads = H
    else:
        hx, vx4 = ctx.tensor(rng, xv, xd, name="x", bcast=not inplace)
        if inplace:
            ctx.outs.append(ctx.inputs.pop())
            hy, vy = hx, vx4
        else:
            hy, vy = ctx.tensor(rng, np.zeros(xv.shape), yd, out=True, name="y")
    st = LIB.attn_rope_cached(ctx.h, hx, hy, hc2, hs2, C.byref(cp))
    if st:
        raise Fail("rope_cached status %d: %s" % (st, ctx.err()))
    ctx.check_memory()
    if per_token:
        c = np.broadcast_to(np.asarray(cos_t), (B, L, r // 2))[:, None]
        s_ = np.broadcast_to(np.asarray(sin_t), (B, L, r // 2))[:, None]
    else:
        c = cos_t[pos][:, None]  # [B,1,L,r/2]
        s_ = sin_t[pos][:, None]
    if style == 0:
        a_, b_ = xv[..., :r // 2], xv[..., r // 2:r]
    else:
        a_, b_ = xv[..., 0:r:2], xv[..., 1:r:2]
    ref = xv.copy()
    ra, rb = a_ * c - b_ * s_, a_ * s_ + b_ * c
    if style == 0:
        ref[..., :r // 2], ref[..., r // 2:r] = ra, rb
    else:
        ref[..., 0:r:2], ref[..., 1:r:2] = ra, rb
    got = get(vy, yd)
    if three:
        got = got.reshape(B, L, H, D).transpose(0, 2, 1, 3)
    worst = max(worst, compare("rope_cached", got, round_to(ref, yd),
                               (HALF_U[yd] + 2 * EPS) * np.abs(ref) + 1e-12))
    return worst, dict(kind=kind, D=D, r=r, style=style)


# ----------------------------------------------------------- KV cache --

def rope_ref(x, pos, r, theta, style, inverse=False):
    """attn_rope on x [..., L, D] (float64) at positions pos [..., L]."""
    w = 1.0 / theta ** (np.arange(0, r, 2) / r)
    ang = pos[..., None].astype(np.float64) * w
    if inverse:
        ang = -ang
    c, s_ = np.cos(ang), np.sin(ang)
    if style == 0:
        a, b = x[..., :r // 2], x[..., r // 2:r]
    else:
        a, b = x[..., 0:r:2], x[..., 1:r:2]
    ra, rb = a * c - b * s_, a * s_ + b * c
    y = x.copy()
    if style == 0:
        y[..., :r // 2], y[..., r // 2:r] = ra, rb
    else:
        y[..., 0:r:2], y[..., 1:r:2] = ra, rb
    return y


def kv_read_f64(ctx, rng, cache, b, n, Hkv, D, Dv):
    """Sequence b's first n rows of keys and values, read back as F32 (exact
    for every cache dtype) into random layouts; float64 [Hkv, n, D|Dv]."""
    hk, vk = ctx.tensor(rng, np.zeros((Hkv, n, D)), F32, out=True, name="k_read")
    hv, vv = ctx.tensor(rng, np.zeros((Hkv, n, Dv)), F32, out=True, name="v_read")
    st = LIB.attn_kv_read(ctx.h, cache, b, 0, hk, hv)
    if st:
        raise Fail("kv_read status %d: %s" % (st, ctx.err()))
    return np.array(vk, np.float64), np.array(vv, np.float64)


def kv_info(ctx, cache, B):
    """(attn_kv_cache_info, the B lengths)."""
    info = _lib.KvCacheInfo()
    lens = np.zeros(B, np.int64)
    st = LIB.attn_kv_cache_info_get(ctx.h, cache, C.byref(info),
                                    lens.ctypes.data_as(C.POINTER(C.c_int64)))
    if st:
        raise Fail("kv_cache_info_get status %d: %s" % (st, ctx.err()))
    return info, lens


def run_kv(ctx, rng, case):
    """Appends (with and without RoPE, n_new with zeros, a truncate) into a
    contiguous or paged cache of any dtype, read back, then attn_kv_attend
    with random SDPA options against sdpa_ref on the cache's contents."""
    B = int(rng.choice([1, 1, 2, 3]))
    Hkv = int(rng.choice([1, 2]))
    Hq = Hkv * int(rng.choice([1, 2, 4]))
    D = int(rng.choice([2, 4, 8, 16, 32, 64, 80, 128]))
    Dv = D if rng.random() < 0.7 else int(rng.choice([1, 8, 24, 64]))
    cd = pick_dt(rng, 0.6)
    paged = rng.random() < 0.5
    cap = int(rng.choice([8, 40, 100, 300]))
    kp = _lib.KvCacheParams(layout=int(paged), dtype=cd, batch=B, kv_heads=Hkv, head_dim=D,
                            value_dim=Dv)
    if paged:
        bs = int(rng.choice([1, 2, 3, 16, 64]))
        kp.block_size = bs
        kp.num_blocks = (cap + bs - 1) // bs * B + 2
        kp.capacity = cap
    else:
        kp.capacity = cap
    cache = C.c_void_p()
    st = LIB.attn_kv_cache_create(ctx.h, C.byref(kp), C.byref(cache))
    if st:
        raise Fail("kv_cache_create status %d: %s" % (st, ctx.err()))
    try:
        lens = np.zeros(B, np.int64)
        rope_on = rng.random() < 0.4
        rp = _lib.RopeParams(style=int(rng.integers(0, 2)),
                             rotary_dim=int(rng.integers(1, D // 2 + 1)) * 2 if D >= 2 else 0,
                             theta=float(rng.choice([10000.0, 500000.0])))
        ap = _lib.KvAppendParams()
        if rope_on:
            ap.rope = C.pointer(rp)
        steps = int(rng.integers(1, 4))
        mk = [[np.zeros((Hkv, 0, D))] for _ in range(B)]
        mv = [[np.zeros((Hkv, 0, Dv))] for _ in range(B)]
        for step in range(steps):
            L = int(rng.choice([1, 1, 2, 5, 17, 40]))
            nn = np.minimum(rng.integers(0, L + 1, B), cap - lens)
            if rng.random() < 0.3 and (nn == L).all():
                nnp = None
            else:
                nnp = nn
            kdt, vdt = pick_dt(rng), pick_dt(rng)
            kx = data(rng, (B, Hkv, L, D), kdt, 1.0)
            vx = data(rng, (B, Hkv, L, Dv), vdt, 1.0)
            hk, _ = ctx.tensor(rng, kx, kdt, name="k_new")
            hv, _ = ctx.tensor(rng, vx, vdt, name="v_new")
            a, ptr = i64(nn)
            st = LIB.attn_kv_append(ctx.h, cache, hk, hv, ptr if nnp is not None else None,
                                    C.byref(ap))
            if st:
                raise Fail("kv_append status %d: %s" % (st, ctx.err()))
            for b in range(B):
                n = int(nn[b])
                kb = np.asarray(kx, np.float64)[b, :, :n]
                if rope_on:
                    kb = rope_ref(kb, lens[b] + np.arange(n), rp.rotary_dim or D, rp.theta,
                                  rp.style)
                mk[b].append(kb)
                mv[b].append(np.asarray(vx, np.float64)[b, :, :n])
            lens += nn
            if rng.random() < 0.2:
                b = int(rng.integers(0, B))
                t = int(rng.integers(0, lens[b] + 1))
                st = LIB.attn_kv_truncate(ctx.h, cache, b, t)
                if st:
                    raise Fail("kv_truncate status %d: %s" % (st, ctx.err()))
                lens[b] = t
                mk[b] = [np.concatenate(mk[b], 1)[:, :t]]
                mv[b] = [np.concatenate(mv[b], 1)[:, :t]]
        # mirror: read back, and check the read-back against the appends
        # only through attention (RoPE'd rows: also against rope_ref below)
        Lk = int(lens.max()) if B else 0
        kc = np.zeros((B, Hkv, Lk, D))
        vc = np.zeros((B, Hkv, Lk, Dv))
        for b in range(B):
            n = int(lens[b])
            if n == 0:
                continue
            kc[b, :, :n], vc[b, :, :n] = kv_read_f64(ctx, rng, cache, b, n, Hkv, D, Dv)
        worst = 0.0
        for b in range(B):
            n = int(lens[b])
            ek = np.concatenate(mk[b], 1)
            ev = np.concatenate(mv[b], 1)
            # stored once rounded into the cache's type (RoPE computed in float first)
            tk = (2 * HALF_U[cd] + 4 * EPS) * np.abs(ek) + (4 * EPS if rope_on else 0)
            worst = max(worst, compare("kv_read k[%d]" % b, kc[b, :, :n], round_to(ek, cd)
                                       if not rope_on else ek, tk if rope_on else 0))
            worst = max(worst, compare("kv_read v[%d]" % b, vc[b, :, :n], round_to(ev, cd), 0))
        # attend
        Lq = int(rng.choice([1, 1, 2, 3, 8]))
        use_nn = rng.random() < 0.6 or Lq > (lens.min() if B else 0)
        nq = np.minimum(rng.integers(0, Lq + 1, B), lens) if use_nn else np.full(B, Lq)
        qd, od = pick_dt(rng), pick_dt(rng)
        q = data(rng, (B, Hq, Lq, D), qd, 1.0)
        hq, _ = ctx.tensor(rng, q, qd, name="q")
        ho, vo = ctx.tensor(rng, np.zeros((B, Hq, Lq, Dv)), od, out=True, name="out")
        cfg = rand_sdpa_cfg(rng)
        cfg.update(Hq=Hq, Hkv=Hkv, kv_lens_p=False, qoff_p=False, align=0)
        p = _lib.SdpaParams()
        keep = []
        fill_params(ctx, rng, cfg, B, Lk, p, keep)
        vl = None
        if cfg["lse_p"]:
            h, vl = ctx.tensor(rng, np.zeros((B, Hq, Lq)), F32, out=True, name="lse")
            p.lse = h
        na, nptr = i64(nq)
        st = LIB.attn_kv_attend(ctx.h, cache, hq, ho, nptr if use_nn else None, C.byref(p))
        if st:
            raise Fail("kv_attend status %d: %s" % (st, ctx.err()))
        ctx.check_memory()
        cfg["kv_lens"] = lens
        cfg["q_offsets"] = lens - nq
        r = sdpa_ref(np.asarray(q), kc, vc, cfg, None, None)
        rows = np.arange(Lq)[None, None, :] < nq[:, None, None]  # [B,1,Lq]
        want = np.where(rows[..., None], r["out"], 0.0)
        wl = np.where(rows, r["lse"], -np.inf)
        tol_out, tol_lse, _, _ = sdpa_tols(r, od, D)
        worst = max(worst, compare("kv out", get(vo, od), want, tol_out))
        if vl is not None:
            worst = max(worst, compare("kv lse", get(vl, F32), wl, tol_lse))
        return worst, dict(B=B, paged=paged, dt=cd, rope=rope_on)
    finally:
        LIB.attn_kv_cache_free(ctx.h, cache)


def kv_snapshot(ctx, cache, B, Hkv, D, Dv, cd):
    """Every sequence's rows in the cache's own type (exact), the lengths and
    the free blocks."""
    info, lens = kv_info(ctx, cache, B)
    rows = []
    for b in range(B):
        n = int(lens[b])
        k = np.zeros((Hkv, n, D), STORE[cd])
        v = np.zeros((Hkv, n, Dv), STORE[cd])
        if n:
            keep = []
            hs = []
            for a in (k, v):
                dims = (C.c_int64 * 3)(*a.shape)
                sts = (C.c_int64 * 3)(a.shape[1] * a.shape[2], a.shape[2], 1)
                h = C.c_void_p()
                st = LIB.attn_tensor_wrap(ctx.h, cd, 3, dims, sts, C.c_void_p(a.ctypes.data),
                                          a.nbytes, C.byref(h))
                if st:
                    raise Fail("wrap: %s" % ctx.err())
                hs.append(h)
                keep.append(a)
            st = LIB.attn_kv_read(ctx.h, cache, b, 0, hs[0], hs[1])
            for h in hs:
                LIB.attn_tensor_free(ctx.h, h)
            if st:
                raise Fail("kv_read status %d: %s" % (st, ctx.err()))
        rows.append((k, v))
    return lens, int(info.free_blocks), rows


def run_kv_edit(ctx, rng, case):
    """Random sequences of attn_kv_append, truncate, reset (one or all), copy
    (paged: shared blocks, copy on write) and refused calls (past the
    capacity or the block pool, bad sequence indices, lengths, shapes) on a
    contiguous or paged cache, against a model holding each sequence's rows;
    after each call the whole cache is read back in its own type. A refused
    call must leave the cache exactly as it was (rows, lengths, free blocks)."""
    B = int(rng.choice([1, 2, 3, 4]))
    Hkv = int(rng.choice([1, 2]))
    D = int(rng.choice([1, 4, 8, 16]))
    Dv = D if rng.random() < 0.7 else int(rng.choice([1, 8]))
    cd = pick_dt(rng, 0.6)
    paged = rng.random() < 0.6
    cap = int(rng.choice([4, 9, 30]))
    kp = _lib.KvCacheParams(layout=int(paged), dtype=cd, batch=B, kv_heads=Hkv, head_dim=D,
                            value_dim=Dv, capacity=cap)
    bs = 0
    if paged:
        bs = int(rng.choice([1, 2, 3, 8]))
        # sometimes a pool too small for every sequence at capacity
        need = (cap + bs - 1) // bs * B
        kp.block_size = bs
        kp.num_blocks = need if rng.random() < 0.5 else max((cap + bs - 1) // bs, need // 2)
    cache = C.c_void_p()
    st = LIB.attn_kv_cache_create(ctx.h, C.byref(kp), C.byref(cache))
    if st:
        raise Fail("kv_cache_create status %d: %s" % (st, ctx.err()))
    try:
        model = [(np.zeros((Hkv, 0, D)), np.zeros((Hkv, 0, Dv))) for _ in range(B)]
        ops = 0
        for it in range(int(rng.integers(4, 14))):
            before = kv_snapshot(ctx, cache, B, Hkv, D, Dv, cd)
            lens = before[0]
            kind = rng.choice(["append", "append", "truncate", "reset", "copy", "bad"])
            expect_ok = True
            if kind == "append" or kind == "bad":
                L = int(rng.choice([1, 2, 3, 7]))
                nn = rng.integers(0, L + 1, B)
                bad = None
                if kind == "bad":
                    bad = rng.choice(["count", "shape", "capacity"])
                    if bad == "count":
                        nn[int(rng.integers(0, B))] = int(rng.choice([-1, L + 1]))
                    elif bad == "capacity":
                        b = int(rng.integers(0, B))
                        L = max(L, int(cap - lens[b] + 1))
                        nn = rng.integers(0, L + 1, B)
                        nn[b] = cap - lens[b] + 1
                fits = bool(((lens + np.maximum(nn, 0)) <= cap).all())
                kx = quantize(rng.uniform(-1, 1, (B, Hkv, L, D)), F32)[1]
                vx = quantize(rng.uniform(-1, 1, (B, Hkv, L, Dv)), F32)[1]
                shape_v = (B, Hkv, L, Dv + 1) if bad == "shape" else (B, Hkv, L, Dv)
                if bad == "shape":
                    vx = np.zeros(shape_v)
                hk, _ = ctx.tensor(rng, kx, F32, name="k_new")
                hv, _ = ctx.tensor(rng, vx, F32, name="v_new")
                a, ptr = i64(nn)
                st = LIB.attn_kv_append(ctx.h, cache, hk, hv, ptr, None)
                expect_ok = bad is None and fits
                if st == 0 and not expect_ok:
                    raise Fail("append %s accepted (counts %s, lens %s, cap %d)"
                               % (bad or "past capacity", nn.tolist(), lens.tolist(), cap))
                if st == 0:
                    for b in range(B):
                        n = int(nn[b])
                        model[b] = (np.concatenate([model[b][0], kx[b, :, :n]], 1),
                                    np.concatenate([model[b][1], vx[b, :, :n]], 1))
                elif expect_ok and not (paged and st == 5):
                    # 5, ATTN_ERR_NO_MEMORY: the block pool ran out (it may be
                    # smaller than every sequence at capacity); checked below
                    raise Fail("append refused (%d: %s)" % (st, ctx.err()))
            elif kind == "truncate":
                b = int(rng.integers(0, B)) if rng.random() < 0.8 else int(rng.choice([-1, B]))
                t = int(rng.integers(0, lens[b] + 1)) if 0 <= b < B and rng.random() < 0.8 \
                    else int(rng.integers(-1, cap + 2))
                st = LIB.attn_kv_truncate(ctx.h, cache, b, t)
                expect_ok = 0 <= b < B and 0 <= t <= lens[b]
                if (st == 0) != expect_ok:
                    raise Fail("truncate(%d, %d) with lens %s: status %d" % (b, t, lens.tolist(), st))
                if st == 0:
                    model[b] = (model[b][0][:, :t], model[b][1][:, :t])
            elif kind == "reset":
                b = int(rng.integers(-2, B + 1))
                st = LIB.attn_kv_reset(ctx.h, cache, b)
                expect_ok = -1 <= b < B
                if (st == 0) != expect_ok:
                    raise Fail("reset(%d): status %d" % (b, st))
                if st == 0:
                    for s in (range(B) if b == -1 else [b]):
                        model[s] = (model[s][0][:, :0], model[s][1][:, :0])
            else:
                d, s = (int(rng.integers(0, B)) if rng.random() < 0.85
                        else int(rng.choice([-1, B])) for _ in range(2))
                st = LIB.attn_kv_copy(ctx.h, cache, d, s)
                expect_ok = 0 <= d < B and 0 <= s < B
                if (st == 0) != expect_ok:
                    raise Fail("copy(%d, %d): status %d" % (d, s, st))
                if st == 0:
                    model[d] = model[s]
            after = kv_snapshot(ctx, cache, B, Hkv, D, Dv, cd)
            if st != 0:
                if not (np.array_equal(after[0], before[0]) and after[1] == before[1] and all(
                        np.array_equal(x.view(np.uint8), y.view(np.uint8))
                        for p, q in zip(after[2], before[2]) for x, y in zip(p, q))):
                    raise Fail("a refused %s (status %d: %s) changed the cache" % (kind, st, ctx.err()))
            for b in range(B):
                want_k, want_v = round_to(model[b][0], cd), round_to(model[b][1], cd)
                got_k, got_v = widen(after[2][b][0], cd), widen(after[2][b][1], cd)
                if got_k.shape != want_k.shape or not np.array_equal(got_k, want_k) or \
                        not np.array_equal(got_v, want_v):
                    raise Fail("after %s: sequence %d differs from the model (len %d, want %d)"
                               % (kind, b, got_k.shape[1], want_k.shape[1]))
            if paged:
                # blocks held: distinct blocks are not visible, but never more
                # than the unshared count, and all free once everything is reset
                held = kp.num_blocks - after[1]
                if held > int(((after[0] + bs - 1) // bs).sum()):
                    raise Fail("%d blocks held for lengths %s (block size %d)"
                               % (held, after[0].tolist(), bs))
            ctx.reset()
            ops += 1
        st = LIB.attn_kv_reset(ctx.h, cache, -1)
        fin = kv_snapshot(ctx, cache, B, Hkv, D, Dv, cd)
        if st or fin[0].any() or (paged and fin[1] != kp.num_blocks):
            raise Fail("after reset(-1): lens %s, free blocks %d of %d"
                       % (fin[0].tolist(), fin[1], kp.num_blocks))
        return 0.0, dict(B=B, paged=paged, dt=cd, ops=ops)
    finally:
        LIB.attn_kv_cache_free(ctx.h, cache)


# ---------------------------------------------------- attention pooling --

def run_pool_attention(ctx, rng, case):
    """attn_pool_attention (+ backward): sdpa with queries shared by the
    batch, lengths as kv_lens, keep as a [B, 1, 1, L] boolean mask."""
    B = int(rng.choice([0, 1, 2, 3]))
    Hkv = int(rng.choice([1, 2]))
    Hq = Hkv * int(rng.choice([1, 2, 3]))
    M = int(rng.choice([1, 1, 2, 4, 9]))
    L = int(rng.choice([0, 1, 2, 5, 17, 64, 130]))
    D = int(rng.choice([1, 4, 8, 16, 33, 64]))
    Dv = D if rng.random() < 0.6 else int(rng.choice([1, 8, 24]))
    backward = rng.random() < 0.4 and torch is not None
    qd, kd, vd, od = [F32] * 4 if backward else [pick_dt(rng) for _ in range(4)]
    cfg = dict(scale=0.0 if rng.random() < 0.5 else float(rng.uniform(0.05, 1.5)), softcap=0.0,
               causal=0, align=0, window=0, wl=0, wr=0, alibi=None, sinks=None, q_offsets=None,
               kv_lens=None)
    p = _lib.PoolAttentionParams(scale=cfg["scale"])
    keep = []
    if rng.random() < 0.5:
        a, ptr = i64(rng.integers(0, L + 1, B))
        keep.append(a)
        cfg["kv_lens"] = a
        p.lengths = ptr
    bm = None
    if rng.random() < 0.5:
        m = (rng.random((B, L)) < 0.7).astype(np.uint8)
        h, _ = ctx.tensor(rng, m, U8, name="keep")
        p.keep = h
        bm = np.broadcast_to(m[:, None, None, :], (B, Hq, M, L))
    full = (B, Hq, M, L)
    hid = sdpa_hidden(cfg, full, None, bm)
    qs = data(rng, (Hq, M, D), qd, 1.0)
    kx = poison_hidden(rng.uniform(-1, 1, (B, Hkv, L, D)), hid, Hkv) if not backward else \
        rng.uniform(-1, 1, (B, Hkv, L, D))
    vx = poison_hidden(rng.uniform(-1, 1, (B, Hkv, L, Dv)), hid, Hkv) if not backward else \
        rng.uniform(-1, 1, (B, Hkv, L, Dv))
    k = bcast_vals(rng, quantize(kx, kd)[1], True)
    v = bcast_vals(rng, quantize(vx, vd)[1], True)
    hq, _ = ctx.tensor(rng, qs, qd, name="queries")
    hk, _ = ctx.tensor(rng, k, kd, name="k")
    hv, _ = ctx.tensor(rng, v, vd, name="v")
    ho, vo = ctx.tensor(rng, np.zeros((B, Hq, M, Dv)), od, out=True, name="out")
    vw = vl = None
    if rng.random() < 0.3:
        h, vw = ctx.tensor(rng, np.zeros(full), F32, out=True, name="weights")
        p.weights = h
    if backward or rng.random() < 0.4:
        h, vl = ctx.tensor(rng, np.zeros((B, Hq, M)), F32, out=True, name="lse")
        p.lse = h
    st = LIB.attn_pool_attention(ctx.h, hq, hk, hv, ho, C.byref(p))
    if st:
        raise Fail("pool_attention status %d: %s" % (st, ctx.err()))
    ctx.check_memory()
    q4 = np.broadcast_to(np.asarray(qs, np.float64)[None], (B, Hq, M, D))
    r = sdpa_ref(q4, np.asarray(k), np.asarray(v), cfg, None, bm)
    tol_out, tol_lse, tol_w, _ = sdpa_tols(r, od, D)
    worst = compare("pool_attention out", get(vo, od), r["out"], tol_out)
    if vl is not None:
        worst = max(worst, compare("pool_attention lse", get(vl, F32), r["lse"], tol_lse))
    if vw is not None:
        worst = max(worst, compare("pool_attention weights", get(vw, F32), r["w"], tol_w))
    if backward:
        p.weights = None
        o_np, l_np = np.array(vo, np.float64), np.array(vl, np.float64)
        p.lse = None
        ho2, _ = ctx.tensor(rng, o_np, F32, name="out_in")
        hl2, _ = ctx.tensor(rng, l_np, F32, name="lse_in")
        dout = data(rng, (B, Hq, M, Dv), F32)
        hd, _ = ctx.tensor(rng, dout, F32, name="dout")
        hdq, vdq = ctx.tensor(rng, np.zeros((Hq, M, D)), F32, out=True, name="dqueries")
        hdk, vdk = ctx.tensor(rng, np.zeros(k.shape), F32, out=True, name="dk")
        hdv, vdv = ctx.tensor(rng, np.zeros(v.shape), F32, out=True, name="dv")
        st = LIB.attn_pool_attention_backward(ctx.h, hq, hk, hv, ho2, hl2, hd, hdq, hdk, hdv,
                                              C.byref(p))
        if st:
            raise Fail("pool_attention_backward status %d: %s" % (st, ctx.err()))
        ctx.check_memory()
        tq = torch.tensor(np.asarray(qs, np.float64), requires_grad=True)
        tk = torch.tensor(np.asarray(k), requires_grad=True)
        tv = torch.tensor(np.asarray(v), requires_grad=True)
        if B and L:
            out = torch_sdpa(tq[None].expand(B, Hq, M, D), tk, tv, cfg, None, bm, None)
            g = torch.autograd.grad(out, [tq, tk, tv], torch.tensor(np.asarray(dout)),
                                    allow_unused=True)
            g = [np.zeros(t.shape) if x is None else x.numpy() for x, t in zip(g, [tq, tk, tv])]
        else:
            g = [np.zeros(qs.shape), np.zeros(k.shape), np.zeros(v.shape)]
        tol = 2e-5 * (1 + np.sqrt(L * B + 1))
        worst = max(worst, compare("dqueries", np.array(vdq, np.float64), g[0],
                                   tol * (1 + np.abs(g[0])) * B))
        worst = max(worst, compare("dk", np.array(vdk, np.float64), g[1], tol * (1 + np.abs(g[1]))
                                   * Hq))
        worst = max(worst, compare("dv", np.array(vdv, np.float64), g[2], tol * (1 + np.abs(g[2]))
                                   * Hq))
    return worst, dict(B=B, L=L, bwd=backward)




# ------------------------------------------------ sinusoidal and copy --

def run_sinusoidal(ctx, rng, case):
    L = int(rng.choice([0, 1, 2, 7, 33, 100]))
    D = int(rng.choice([1, 2, 3, 4, 5, 8, 9, 64, 127, 128]))
    layout = int(rng.integers(0, 4))
    if layout == 2 and D < 4:
        D = 4 + int(rng.integers(0, 3))
    base = float(rng.choice([0, 10000.0, 1.5, 1e5, 10000.5]))
    b = base or 10000.0
    p = _lib.SinusoidalParams(layout=layout, base=base)
    keep = []
    if rng.random() < 0.4:
        pos = rng.choice([0.0, 1.0, 2.5, 1e5, 123456.0, 1e6], L) + rng.uniform(0, 1, L) * \
            (rng.random() < 0.5)
        pos = np.ascontiguousarray(pos)
        keep.append(pos)
        p.positions = pos.ctypes.data_as(C.POINTER(C.c_double))
    else:
        p.offset = float(rng.choice([0, 1, 7.5, 1000, 1e6]))
        pos = p.offset + np.arange(L)
    h = D // 2
    i = np.arange(h)
    tab = np.zeros((L, D))
    if layout == 0:
        w = b ** (-2.0 * np.arange((D + 1) // 2) / D)
        a = pos[:, None] * w
        tab[:, 0::2] = np.sin(a)
        tab[:, 1::2] = np.cos(a[:, :D // 2])
    else:
        w = b ** (-i / (h - 1)) if layout == 2 else b ** (-i / h) if h else np.zeros(0)
        a = pos[:, None] * w
        first, second = (np.sin(a), np.cos(a)) if layout in (1, 2) else (np.cos(a), np.sin(a))
        tab[:, :h], tab[:, h:2 * h] = first, second
    add = rng.random() < 0.5
    dt = pick_dt(rng)
    tol = 1e-6 + (HALF_U[dt] + EPS) * 2
    if add:
        Bs = () if rng.random() < 0.5 else (int(rng.choice([1, 2, 3])),)
        x = data(rng, Bs + (L, D), dt, 1.0, allow_bcast=False)
        hx, vx = ctx.tensor(rng, x, dt, name="x", bcast=False)
        ctx.outs.append(ctx.inputs.pop())
        st = LIB.attn_sinusoidal_add(ctx.h, hx, C.byref(p))
        want = np.asarray(x, np.float64) + tab
        name = "sinusoidal_add"
    else:
        hx, vx = ctx.tensor(rng, np.zeros((L, D)), dt, out=True, name="out")
        st = LIB.attn_sinusoidal(ctx.h, hx, C.byref(p))
        want = tab
        name = "sinusoidal"
    if st:
        raise Fail("%s status %d: %s" % (name, st, ctx.err()))
    ctx.check_memory()
    return compare(name, get(vx, dt), want, tol * (1 + np.abs(want))), dict(L=L, D=D)


def run_copy(ctx, rng, case):
    nd = int(rng.integers(1, 5))
    shape = tuple(int(rng.choice([0, 1, 2, 3, 7, 16, 33])) for _ in range(nd))
    sd, dd = int(rng.choice([F32, F16, BF16, U8])), None
    dd = U8 if sd == U8 else int(rng.choice([F32, F16, BF16]))
    if sd == U8:
        vals = rng.integers(0, 256, shape).astype(np.uint8)
        src = bcast_vals(rng, vals, True)
    else:
        x = rng.normal(0, 1, shape) * 10.0 ** rng.integers(-9, 6, shape)
        sp = rng.random(shape)
        x = np.where(sp < 0.03, np.nan, np.where(sp < 0.06, np.inf, np.where(
            sp < 0.09, -np.inf, np.where(sp < 0.12, 65519.99, np.where(sp < 0.15, 65520.0, x)))))
        x = np.where((sp > 0.15) & (sp < 0.2), rng.normal(0, 1, shape) * 2.0 ** -20, x)
        src = bcast_vals(rng, quantize(x, sd)[1], True)
    hs, _ = ctx.tensor(rng, src, sd, name="src")
    hd, vd = ctx.tensor(rng, np.zeros(shape), dd, out=True, name="dst")
    st = LIB.attn_tensor_copy(ctx.h, hs, hd)
    if st:
        raise Fail("tensor_copy %d->%d status %d: %s" % (sd, dd, st, ctx.err()))
    ctx.check_memory()
    got = get(vd, dd)
    if sd == U8:
        return compare("copy u8", got, np.asarray(src), 0), dict(shape=shape)
    want = np.asarray(src, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        want = want if dd == F32 else round_to(want, dd)
    want = np.where(np.isnan(np.asarray(src, np.float64)), np.nan, want)
    return compare("copy %d->%d" % (sd, dd), got, want, 0), dict(shape=shape)


# ---------------------------------------------------------- bad input --

def run_bad_sdpa(ctx, rng, case):
    """One documented error per case on an otherwise valid attn_sdpa call:
    the status attn.h names, a message, and nothing written into any output."""
    B, Hkv = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    Hq, Lq, Lk, D = Hkv * int(rng.integers(1, 3)), int(rng.integers(1, 6)), \
        int(rng.integers(1, 9)), int(rng.choice([1, 4, 16]))
    full = (B, Hq, Lq, Lk)
    p = _lib.SdpaParams()
    keep = []
    kind = int(rng.integers(0, 14))
    q = data(rng, (B, Hq, Lq, D), F32)
    k = data(rng, (B, Hkv, Lk, D), F32)
    hq, _ = ctx.tensor(rng, q, F32, name="q")
    hk, _ = ctx.tensor(rng, k, F32, name="k")
    hv, _ = ctx.tensor(rng, k, F32, name="v")
    ho, vo = ctx.tensor(rng, np.zeros((B, Hq, Lq, D)), F32, out=True, name="out")
    hl, _ = ctx.tensor(rng, np.zeros((B, Hq, Lq)), F32, out=True, name="lse")
    p.lse = hl
    if rng.random() < 0.5:
        hw, _ = ctx.tensor(rng, np.zeros(full), F32, out=True, name="weights")
        p.weights = hw
    want = 2
    if kind == 0:
        a, ptr = i64(np.zeros(B))
        keep.append(a)
        p.q_offsets, p.align = ptr, 1
    elif kind == 1:
        a, ptr = i64(np.full(B, Lk + int(rng.integers(1, 3))) * (1 if rng.random() < 0.5 else -1))
        keep.append(a)
        p.kv_lens = ptr
    elif kind == 2:
        hm, _ = ctx.tensor(rng, np.zeros((Lq + 1, Lk)) if rng.random() < 0.5 else
                           np.zeros((Lk + 1,)), F32, name="mask")
        p.mask = hm
        want = 3
    elif kind == 3:
        p.scale = float(rng.choice([np.nan, np.inf, -np.inf]))
    elif kind == 4:
        p.softcap = float(rng.choice([-1.0, np.nan, np.inf]))
    elif kind == 5:
        p.window, p.window_left = 1, -int(rng.integers(1, 5))
    elif kind == 6:
        a, ptr = f32p(np.where(np.arange(Hq) == Hq - 1, rng.choice([np.nan, np.inf]), 0.5))
        keep.append(a)
        p.alibi_slopes = ptr
    elif kind == 7:
        a, ptr = f32p(np.where(np.arange(Hq) == 0, rng.choice([np.nan, np.inf, -np.inf]), 0.5))
        keep.append(a)
        p.sinks = ptr
    elif kind == 8:
        a, ptr = i64(np.full(B, 2 ** 60 + 1) * (1 if rng.random() < 0.5 else -1))
        keep.append(a)
        p.q_offsets = ptr
    elif kind == 9:
        p.align = int(rng.choice([2, -1, 7]))
    elif kind == 10:
        hb, _ = ctx.tensor(rng, np.ones((B + 1, 1, 1, Lk)), U8, name="bool_mask")
        p.bool_mask = hb
        want = 3
    elif kind == 11:
        # the mask given as U8 or the bool mask as F32: wrong dtype
        hm, _ = ctx.tensor(rng, np.ones((Lk,)), U8, name="mask_u8")
        p.mask = hm
        want = (2, 6)
    elif kind == 12:
        p.reserved_ = 1
        want = (2, 6)
    else:
        p.logits_stage = int(rng.choice([3, -1]))
        hg, _ = ctx.tensor(rng, np.zeros(full), F32, out=True, name="logits")
        p.logits = hg
    st = LIB.attn_sdpa(ctx.h, hq, hk, hv, ho, C.byref(p))
    wants = want if isinstance(want, tuple) else (want,)
    if st not in wants:
        raise Fail("bad input kind %d: status %d, want %s (%s)" % (kind, st, wants, ctx.err()))
    if not ctx.err():
        raise Fail("bad input kind %d: no message" % kind)
    ctx.check_memory(written=False)
    return 0.0, dict(kind=kind)


# ------------------------------------------------ nn.MultiheadAttention --

def run_mha_torch(ctx, rng, case):
    """attn_mha_torch_forward against torch.nn.MultiheadAttention in float64
    (its masks merged into one float attn_mask for torch; no row fully masked,
    where torch gives NaN and attn.h zeros)."""
    if torch is None:
        return 0.0, {}
    H = int(rng.choice([1, 2, 4]))
    E = H * int(rng.choice([1, 2, 8, 16]))
    kdim = E if rng.random() < 0.6 else int(rng.choice([1, 5, 16]))
    vdim = kdim if rng.random() < 0.7 else int(rng.choice([3, 8]))
    B = int(rng.choice([1, 2, 3]))
    L = int(rng.choice([1, 2, 5, 17]))
    S = L if rng.random() < 0.5 else int(rng.choice([1, 3, 9, 40]))
    no_bias, bf = int(rng.random() < 0.3), int(rng.random() < 0.5)
    self_attn = kdim == E and vdim == E and S == L and rng.random() < 0.4
    mp = _lib.MhaTorchParams(embed_dim=E, num_heads=H, kdim=kdim, vdim=vdim, no_bias=no_bias,
                             batch_first=bf)
    layer = C.c_void_p()
    st = LIB.attn_mha_create_torch(ctx.h, C.byref(mp), C.byref(layer))
    if st:
        raise Fail("mha_create_torch status %d: %s" % (st, ctx.err()))
    try:
        m = torch.nn.MultiheadAttention(E, H, bias=not no_bias, kdim=kdim, vdim=vdim,
                                        batch_first=bool(bf), dtype=torch.float64)
        ws = {}
        if kdim == E and vdim == E:
            ws[8] = ("in_proj_weight", (3 * E, E))
        else:
            ws[0], ws[1], ws[2] = (("q_proj_weight", (E, E)), ("k_proj_weight", (E, kdim)),
                                   ("v_proj_weight", (E, vdim)))
        ws[3] = ("out_proj.weight", (E, E))
        if not no_bias:
            ws[9], ws[7] = ("in_proj_bias", (3 * E,)), ("out_proj.bias", (E,))
        sd = {}
        for which, (name, shape) in ws.items():
            w = data(rng, shape, F32, 1.0 / math.sqrt(shape[-1]), allow_bcast=False)
            h, _ = ctx.tensor(rng, w, F32, name=name)
            st = LIB.attn_mha_set_weight(ctx.h, layer, which, h)
            if st:
                raise Fail("mha_set_weight %s status %d: %s" % (name, st, ctx.err()))
            sd[name] = torch.tensor(np.asarray(w))
        m.load_state_dict(sd, strict=False)
        dts = [pick_dt(rng) for _ in range(4)]
        qs = (B, L, E) if bf else (L, B, E)
        ks = (B, S, kdim) if bf else (S, B, kdim)
        vs = (B, S, vdim) if bf else (S, B, vdim)
        query = data(rng, qs, dts[0], 1.0)
        hq, _ = ctx.tensor(rng, query, dts[0], name="query")
        if self_attn:
            key = value = query
            hk = hv = hq
        else:
            key = data(rng, ks, dts[1], 1.0)
            value = data(rng, vs, dts[2], 1.0)
            hk, _ = ctx.tensor(rng, key, dts[1], name="key")
            hv, _ = ctx.tensor(rng, value, dts[2], name="value")
        merged = np.zeros((B, H, L, S))
        hkpm = ham = None
        if rng.random() < 0.5:
            if rng.random() < 0.5:
                kp = (rng.random((B, S)) < 0.3).astype(np.uint8)
                kp[:, 0] = 0
                hkpm, _ = ctx.tensor(rng, kp, U8, name="key_padding_mask")
                merged += np.where(kp != 0, -np.inf, 0.0)[:, None, None, :]
            else:
                kp = data(rng, (B, S), F32, 2.0)
                hkpm, _ = ctx.tensor(rng, kp, F32, name="key_padding_mask")
                merged += np.asarray(kp)[:, None, None, :]
        if rng.random() < 0.5:
            shp = (L, S) if rng.random() < 0.5 else (B * H, L, S)
            if rng.random() < 0.5:
                am = (rng.random(shp) < 0.3).astype(np.uint8)
                am[..., 0] = 0
                ham, _ = ctx.tensor(rng, am, U8, name="attn_mask")
                add = np.where(am != 0, -np.inf, 0.0)
            else:
                am = data(rng, shp, F32, 2.0)
                ham, _ = ctx.tensor(rng, am, F32, name="attn_mask")
                add = np.asarray(am, np.float64)
            merged += add if len(shp) == 2 else add.reshape(B, H, L, S)
        fp = _lib.MhaTorchForwardParams(need_weights=int(rng.random() < 0.5),
                                        per_head_weights=int(rng.random() < 0.5),
                                        is_causal=int(rng.random() < 0.3))
        if fp.is_causal:
            merged += np.where(np.arange(S)[None, :] > np.arange(L)[:, None], -np.inf, 0.0)
        od = dts[3]
        ho, vo = ctx.tensor(rng, np.zeros(qs), od, out=True, name="out")
        hw = vw = None
        if fp.need_weights:
            wsh = (B, H, L, S) if fp.per_head_weights else (B, L, S)
            hw, vw = ctx.tensor(rng, np.zeros(wsh), F32, out=True, name="out_weights")
        st = LIB.attn_mha_torch_forward(ctx.h, layer, hq, hk, hv, hkpm, ham, C.byref(fp), ho, hw)
        if st:
            raise Fail("mha_torch_forward status %d: %s" % (st, ctx.err()))
        ctx.check_memory()
        tq, tk, tv = (torch.tensor(np.asarray(a, np.float64)) for a in (query, key, value))
        with torch.no_grad():
            o, w = m(tq, tk, tv, attn_mask=torch.tensor(merged.reshape(B * H, L, S)),
                     need_weights=True, average_attn_weights=not fp.per_head_weights)
        o, w = o.numpy(), w.numpy()
        scale_o = 1 + np.abs(o).max(initial=0)
        worst = compare("mha out", get(vo, od), o,
                        3e-5 * scale_o * math.sqrt(E + kdim + vdim) / 4 + HALF_U[od] * np.abs(o))
        if vw is not None:
            worst = max(worst, compare("mha weights", np.array(vw, np.float64), w,
                                       3e-5 * (np.abs(w) + 1e-2)))
        return worst, dict(E=E, H=H, bf=bf)
    finally:
        LIB.attn_mha_free(ctx.h, layer)


# ------------------------------------------------- decoder attention layer --

def mha_layer_ref(x, W, cfg, pos, kc, vc):
    """One attn_mha_forward for one sequence in float64: x [n, E] at
    positions pos; kc, vc [Hkv, m, D] the cache's rows so far (as stored).
    Returns (y [n, E], the new keys as rotated, the new values)."""
    Hq, Hkv, D = cfg["Hq"], cfg["Hkv"], cfg["D"]
    n = x.shape[0]
    q = (x @ W[0].T + W[4]).reshape(n, Hq, D).transpose(1, 0, 2)
    k = (x @ W[1].T + W[5]).reshape(n, Hkv, D).transpose(1, 0, 2)
    v = (x @ W[2].T + W[6]).reshape(n, Hkv, D).transpose(1, 0, 2)
    if cfg["rope"] is not None:
        r, w, amp, style = cfg["rope"]
        q = rope_freqs_ref(q, pos, r, w, amp, style)
        k = rope_freqs_ref(k, pos, r, w, amp, style)
    return q, k, v


def rope_freqs_ref(x, pos, r, w, amp, style):
    """x [..., n, D] with dims 0..r-1 rotated by pos * w and scaled by amp."""
    ang = pos[:, None].astype(np.float64) * w
    c, s_ = amp * np.cos(ang), amp * np.sin(ang)
    y = x.copy()
    if style == 0:
        a, b = x[..., :r // 2], x[..., r // 2:r]
        y[..., :r // 2], y[..., r // 2:r] = a * c - b * s_, a * s_ + b * c
    else:
        a, b = x[..., 0:r:2], x[..., 1:r:2]
        y[..., 0:r:2], y[..., 1:r:2] = a * c - b * s_, a * s_ + b * c
    return y


def run_mha(ctx, rng, case):
    """attn_mha_create_decoder + attn_mha_forward over a prompt and then
    chunked steps (per-sequence counts, zeros included) into a contiguous
    or paged cache of any dtype, against a float64 model of the layer and
    its cache (projections, RoPE at each sequence's own positions, GQA,
    causal attention over the cache with window and soft-cap, RoPE scalings
    by Hugging Face's formulas); then the
    cache's contents read back against the model's."""
    Hkv = int(rng.choice([1, 2, 3]))
    Hq = Hkv * int(rng.choice([1, 2, 4]))
    D = int(rng.choice([2, 4, 8, 16, 32]))
    E = int(rng.choice([1, 4, 16, 24, 64]))
    B = int(rng.choice([1, 2, 3]))
    cd = pick_dt(rng, 0.5)
    qkv_bias, out_bias = int(rng.random() < 0.5), int(rng.random() < 0.5)
    rope_on = rng.random() < 0.7
    rp = _lib.RopeParams(style=int(rng.integers(0, 2)),
                         rotary_dim=int(rng.integers(1, D // 2 + 1)) * 2 if rng.random() < 0.4 else 0,
                         theta=float(rng.choice([10000.0, 500000.0, 100.0])))
    softcap = float(rng.choice([0.0, 0.0, 0.5, 5.0]))
    scale = float(rng.choice([0.0, 0.0, 0.3]))
    window = int(rng.random() < 0.3)
    wl = int(rng.integers(0, 12))
    mp = _lib.MhaDecoderParams(embed_dim=E, num_heads=Hq, num_kv_heads=Hkv, head_dim=D,
                               qkv_bias=qkv_bias, out_bias=out_bias, scale=scale,
                               softcap=softcap, window=window, window_left=wl)
    r = rp.rotary_dim or D
    freqs, amp = hf_inv_freq(0, r, rp.theta, {})
    if rope_on:
        mp.rope = C.pointer(rp)
        if rng.random() < 0.4:
            # a long-context scaling (linear, NTK, YaRN, Llama 3) as
            # attn_rope_cache_fill() makes it, Hugging Face's formulas
            kind = int(rng.choice([1, 2, 4, 5] if r >= 4 else [1, 4, 5]))
            scfg = dict(factor=float(rng.choice([2.0, 4.0, 8.0, 0.5])),
                        P0=int(rng.choice([4, 16, 64, 2048])), beta_fast=32.0, beta_slow=1.0,
                        mscale=0.0, mscale_all_dim=0.0, af=0.0, no_trunc=0, lff=1.0, hff=4.0)
            sp = _lib.RopeCacheParams(scaling=kind, factor=scfg["factor"],
                                      apply_attention_factor=int(rng.random() < 0.5))
            if kind in (4, 5):
                sp.original_max_position = scfg["P0"]
            mp.rope_scaling = C.pointer(sp)
            freqs, amp = hf_inv_freq(kind, r, rp.theta, scfg)
            amp = amp if sp.apply_attention_factor else 1.0
    layer = C.c_void_p()
    st = LIB.attn_mha_create_decoder(ctx.h, C.byref(mp), C.byref(layer))
    if st:
        raise Fail("mha_create_decoder status %d: %s" % (st, ctx.err()))
    cache = C.c_void_p()
    try:
        shapes = [(Hq * D, E), (Hkv * D, E), (Hkv * D, E), (E, Hq * D),
                  (Hq * D,), (Hkv * D,), (Hkv * D,), (E,)]
        W = []
        for which, shape in enumerate(shapes):
            used = which < 4 or (which < 7 and qkv_bias) or (which == 7 and out_bias)
            if not used:
                W.append(np.zeros(shape))
                continue
            wdt = pick_dt(rng, 0.2)
            w = data(rng, shape, wdt, 1.0 / math.sqrt(shape[-1]), allow_bcast=False)
            h, _ = ctx.tensor(rng, w, wdt, name="w%d" % which)
            st = LIB.attn_mha_set_weight(ctx.h, layer, which, h)
            if st:
                raise Fail("mha_set_weight %d status %d: %s" % (which, st, ctx.err()))
            W.append(np.asarray(w, np.float64))
        cap = int(rng.choice([12, 40, 70]))
        paged = rng.random() < 0.5
        kp = _lib.KvCacheParams(layout=int(paged), dtype=cd, batch=B, kv_heads=Hkv,
                                head_dim=D, value_dim=D, capacity=cap)
        if paged:
            bs = int(rng.choice([1, 3, 16, 64]))
            kp.block_size = bs
            kp.num_blocks = (cap + bs - 1) // bs * B
        st = LIB.attn_kv_cache_create(ctx.h, C.byref(kp), C.byref(cache))
        if st:
            raise Fail("kv_cache_create status %d: %s" % (st, ctx.err()))
        cfg = dict(Hq=Hq, Hkv=Hkv, D=D,
                   rope=(r, freqs, amp, rp.style) if rope_on else None)
        sc = scale or 1.0 / math.sqrt(D)
        lens = np.zeros(B, np.int64)
        mk = [np.zeros((Hkv, 0, D)) for _ in range(B)]
        mv = [np.zeros((Hkv, 0, D)) for _ in range(B)]
        worst = 0.0
        steps = int(rng.integers(1, 5))
        for step in range(steps):
            L = int(rng.choice([1, 1, 2, 5, 13])) if step else int(rng.choice([1, 4, 9, 20]))
            nn = np.minimum(rng.integers(0, L + 1, B), cap - lens)
            if step == 0 and rng.random() < 0.5:
                nn = np.minimum(np.full(B, L), cap - lens)
            full = bool((nn == L).all()) and rng.random() < 0.5
            xd, yd = pick_dt(rng, 0.3), pick_dt(rng, 0.3)
            x = data(rng, (B, L, E), xd, 1.0, allow_bcast=False)
            hx, _ = ctx.tensor(rng, x, xd, name="x")
            hy, vy = ctx.tensor(rng, np.zeros((B, L, E)), yd, out=True, name="y")
            a, ptr = i64(nn)
            st = LIB.attn_mha_forward(ctx.h, layer, cache, hx, hy, None if full else ptr)
            if st:
                raise Fail("mha_forward status %d: %s" % (st, ctx.err()))
            ctx.check_memory()
            want = np.zeros((B, L, E))
            tol = np.zeros((B, L, E))
            for b in range(B):
                n = int(nn[b])
                if n == 0:
                    continue
                pos = lens[b] + np.arange(n)
                q, k, v = mha_layer_ref(np.asarray(x, np.float64)[b, :n], W, cfg, pos, mk[b], mv[b])
                # the cache stores the float results rounded once to its type
                mk[b] = np.concatenate([mk[b], round_to(k, cd)], 1)
                mv[b] = np.concatenate([mv[b], round_to(v, cd)], 1)
                m = mk[b].shape[1]
                g = Hq // Hkv
                kk = np.repeat(mk[b], g, 0)
                vv = np.repeat(mv[b], g, 0)
                s = sc * q @ kk.transpose(0, 2, 1)  # [Hq, n, m]
                if softcap > 0:
                    s = softcap * np.tanh(s / softcap)
                j = np.arange(m)[None, :]
                p_ = pos[:, None]
                hid = j > p_
                if window:
                    hid |= j < p_ - wl
                s = np.where(hid[None], -np.inf, s)
                e = np.exp(s - s.max(-1, keepdims=True))
                P = e / e.sum(-1, keepdims=True)
                o = (P @ vv).transpose(1, 0, 2).reshape(n, Hq * D)
                y = o @ W[3].T + W[7]
                want[b, :n] = y
                # float32 products over E, Hq*D and the keys; a half cache's
                # stored rows may round the other way from float64's
                mag = 1 + np.abs(np.asarray(x, np.float64)[b, :n]).max()
                tol[b, :n] = (2e-5 * math.sqrt(E + Hq * D + m) + 8 * HALF_U[cd]) * mag \
                    * (1 + np.abs(y).max()) + HALF_U[yd] * np.abs(y)
            lens += nn
            worst = max(worst, compare("mha y step %d" % step, get(vy, yd), round_to(want, yd)
                                       if yd != F32 else want, tol))
            ctx.reset()
            info, got = kv_info(ctx, cache, B)
            if not np.array_equal(got, lens):
                raise Fail("cache lengths %s, want %s" % (got.tolist(), lens.tolist()))
            if paged and info.free_blocks != kp.num_blocks - int(((lens + bs - 1) // bs).sum()):
                raise Fail("free blocks %d with lengths %s, block size %d of %d"
                           % (info.free_blocks, lens.tolist(), bs, kp.num_blocks))
        for b in range(B):
            n = int(lens[b])
            if n == 0:
                continue
            gk, gv = kv_read_f64(ctx, rng, cache, b, n, Hkv, D, D)
            t = (2e-5 * math.sqrt(E) + 2 * HALF_U[cd]) * (1 + np.abs(mk[b]).max())
            worst = max(worst, compare("mha cache k[%d]" % b, gk, mk[b], t))
            t = (2e-5 * math.sqrt(E) + 2 * HALF_U[cd]) * (1 + np.abs(mv[b]).max())
            worst = max(worst, compare("mha cache v[%d]" % b, gv, mv[b], t))
        return worst, dict(B=B, paged=paged, dt=cd, rope=rope_on)
    finally:
        if cache:
            LIB.attn_kv_cache_free(ctx.h, cache)
        LIB.attn_mha_free(ctx.h, layer)


OPS = {"sdpa": run_sdpa, "varlen": run_varlen, "sdpa_bwd": run_sdpa_bwd,
       "varlen_bwd": run_varlen_bwd, "softmax": run_softmax, "pool": run_pool,
       "rope": run_rope, "kv": run_kv, "kv_edit": run_kv_edit,
       "pool_attention": run_pool_attention, "sinusoidal": run_sinusoidal, "copy": run_copy,
       "bad_sdpa": run_bad_sdpa, "mha_torch": run_mha_torch, "mha": run_mha}


NEEDS_TORCH = ("sdpa_bwd", "varlen_bwd", "mha_torch")


def run_cases(op, seed, first, count, threads=0, verbose=False, max_fail=20, ctxs=None):
    """Cases first..first+count-1 of op; returns (failure messages, worst err/tol)."""
    own = ctxs is None
    ctxs = ctxs if ctxs is not None else {}
    fails, worst = [], 0.0
    try:
        for n in range(first, first + count):
            rng = np.random.default_rng([seed, n])
            t = threads or int(rng.integers(1, 4))
            ctx = ctxs.get(t) or ctxs.setdefault(t, Ctx(t))
            try:
                with np.errstate(all="ignore"):  # inf / NaN inputs are on purpose
                    w, _ = OPS[op](ctx, rng, n)
                worst = max(worst, w)
                if verbose:
                    print("ok %s case %d worst %.3f" % (op, n, w))
            except Fail as e:
                fails.append("FAIL seed %d case %d (%s, %d threads): %s" % (seed, n, op, t, e))
            except Exception:
                fails.append("ERROR seed %d case %d (%s, %d threads):\n%s"
                             % (seed, n, op, t, traceback.format_exc()))
            finally:
                ctx.reset()
            if len(fails) >= max_fail:
                break
    finally:
        if own:
            for c in ctxs.values():
                c.close()
    return fails, worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--threads", type=int, default=0, help="0: random 1..3 per case")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--max-fail", type=int, default=20)
    a = ap.parse_args()
    ops = a.ops.split(",")
    if torch is None:
        print("torch not available: %s left out" % ", ".join(NEEDS_TORCH))
        ops = [o for o in ops if o not in NEEDS_TORCH]
    ctxs = {}
    fails = 0
    worst = {o: 0.0 for o in ops}
    counts = {o: 0 for o in ops}
    for n in range(a.first, a.first + a.count):
        op = ops[n % len(ops)]
        f, w = run_cases(op, a.seed, n, 1, a.threads, a.verbose, ctxs=ctxs)
        worst[op] = max(worst[op], w)
        counts[op] += 1
        for m in f:
            print(m)
        fails += len(f)
        if fails >= a.max_fail:
            break
    for c in ctxs.values():
        c.close()
    print("kernels %s: %s; worst err/tol %s; %d failures"
          % (os.environ.get("ATTN_KERNELS", "default"), counts,
             {k: round(v, 3) for k, v in worst.items()}, fails))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
