"""Checks the float64 backward reference (ref_backward.c) two ways:

1. against torch autograd in float64, on a torch formulation of every SDPA
   feature written from attn.h (GQA/MQA, Dv != D, causal in both alignments,
   windows, kv_lens, float and boolean masks, ALiBi, softcap, sinks, rows
   that see no key) and of softmax / log-softmax with masks and a scale;
2. against central finite differences of the reference's own forward
   (ref_sdpa, ref_softmax): inputs are multiples of 2^-6 and the step is
   2^-10, so every perturbed input is exact in float32 and the forward runs in
   double; the difference quotient is then accurate to O(h^2).

Usage: ATTN_REF_LIB=path/to/libattn_ref_shared.so /usr/bin/python3 check_torch.py
Exit status 0 when every check passes; prints one line per case."""
import ctypes as C
import itertools
import os
import sys

import numpy as np

try:
    import torch
except ImportError:  # the ctest registration checks this first
    print("torch not available: skipped")
    sys.exit(77)

torch.set_default_dtype(torch.float64)

lib = C.CDLL(os.environ["ATTN_REF_LIB"])
P = C.c_void_p
I64x4 = C.c_int64 * 4


class RefSdpaArgs(C.Structure):
    _fields_ = [(n, C.c_int64) for n in ("B", "Hq", "Hkv", "Lq", "Lk", "D", "Dv")] + [
        ("q", P), ("k", P), ("v", P), ("qs", I64x4), ("ks", I64x4), ("vs", I64x4),
        ("scale", C.c_double), ("softcap", C.c_double), ("causal", C.c_int),
        ("bottom_right", C.c_int), ("window", C.c_int), ("window_left", C.c_int64),
        ("window_right", C.c_int64), ("mask", P), ("ms", I64x4), ("bool_mask", P),
        ("bs", I64x4), ("kv_lens", P), ("alibi_slopes", P), ("sinks", P), ("q_offsets", P)]


class RefView(C.Structure):
    _fields_ = [("data", P), ("ndim", C.c_int), ("dims", I64x4), ("strides", I64x4)]


lib.ref_sdpa.argtypes = [C.POINTER(RefSdpaArgs), P, P, P, P]
lib.ref_sdpa_backward.argtypes = [C.POINTER(RefSdpaArgs), P, P, P, P, P, P]
lib.ref_softmax.argtypes = [C.POINTER(RefView), C.c_float, C.POINTER(RefView),
                            C.POINTER(RefView), C.c_int, P]
lib.ref_softmax_backward.argtypes = [C.POINTER(RefView), C.c_float, C.POINTER(RefView),
                                     C.POINTER(RefView), C.c_int, P, P, P]
lib.ref_rope_backward.argtypes = [C.c_int] + [C.c_int64] * 5 + [C.c_double, P, P]
lib.ref_rope.argtypes = lib.ref_rope_backward.argtypes
lib.ref_pool.argtypes = [C.c_int] + [C.c_int64] * 4 + [P, P, P, P]
lib.ref_pool_backward.argtypes = [C.c_int] + [C.c_int64] * 4 + [P] * 6


def ptr(a):
    return None if a is None else a.ctypes.data


def contig_strides(shape):
    s, acc = [0] * 4, 1
    for i in range(3, -1, -1):
        s[i] = acc
        acc *= shape[i]
    return I64x4(*s)


def dyadic(rng, shape, span=2.0):
    """Multiples of 2^-6 in [-span, span]: exact in float32 even after +-2^-10."""
    return (np.round(rng.uniform(-span, span, shape) * 64) / 64).astype(np.float32)


class Case:
    def __init__(self, name, rng, B=2, Hq=2, Hkv=2, Lq=5, Lk=7, D=4, Dv=4, scale=0.0,
                 softcap=0.0, causal=0, bottom_right=0, window=None, kv_lens=None,
                 mask=False, bool_mask=False, alibi=False, sinks=False, q_offsets=None):
        self.name = name
        self.B, self.Hq, self.Hkv, self.Lq, self.Lk, self.D, self.Dv = B, Hq, Hkv, Lq, Lk, D, Dv
        self.q = dyadic(rng, (B, Hq, Lq, D))
        self.k = dyadic(rng, (B, Hkv, Lk, D))
        self.v = dyadic(rng, (B, Hkv, Lk, Dv))
        self.scale, self.softcap = scale, softcap
        self.causal, self.bottom_right, self.window = causal, bottom_right, window
        self.kv_lens = None if kv_lens is None else np.array(kv_lens, np.int64)
        self.q_offsets = None if q_offsets is None else np.array(q_offsets, np.int64)
        self.mask = None
        if mask:
            m = dyadic(rng, (B, Hq, Lq, Lk))
            m[rng.uniform(size=m.shape) < 0.2] = -np.inf
            self.mask = m
        self.bool_mask = None
        if bool_mask:
            self.bool_mask = (rng.uniform(size=(B, Hq, Lq, Lk)) < 0.75).astype(np.uint8)
        self.alibi = (np.array([2.0 ** -(h + 1) for h in range(Hq)], np.float32)
                      if alibi else None)
        self.sinks = dyadic(rng, (Hq,)) if sinks else None
        self.dout = rng.standard_normal((B, Hq, Lq, Dv))

    def args(self):
        a = RefSdpaArgs(self.B, self.Hq, self.Hkv, self.Lq, self.Lk, self.D, self.Dv)
        a.q, a.k, a.v = ptr(self.q), ptr(self.k), ptr(self.v)
        a.qs, a.ks, a.vs = (contig_strides(t.shape) for t in (self.q, self.k, self.v))
        a.scale, a.softcap = self.scale, self.softcap
        a.causal, a.bottom_right = self.causal, self.bottom_right
        if self.window is not None:
            a.window, a.window_left, a.window_right = 1, self.window[0], self.window[1]
        a.mask, a.bool_mask = ptr(self.mask), ptr(self.bool_mask)
        if self.mask is not None:
            a.ms = contig_strides(self.mask.shape)
        if self.bool_mask is not None:
            a.bs = contig_strides(self.bool_mask.shape)
        a.kv_lens, a.alibi_slopes, a.sinks = ptr(self.kv_lens), ptr(self.alibi), ptr(self.sinks)
        a.q_offsets = ptr(self.q_offsets)
        return a

    def ref_forward(self):
        o = np.zeros((self.B, self.Hq, self.Lq, self.Dv))
        lse = np.zeros((self.B, self.Hq, self.Lq))
        a = self.args()
        lib.ref_sdpa(C.byref(a), ptr(o), None, ptr(lse), None)
        return o, lse

    def ref_backward(self):
        g = {"q": np.zeros(self.q.shape), "k": np.zeros(self.k.shape),
             "v": np.zeros(self.v.shape), "mask": np.zeros((self.B, self.Hq, self.Lq, self.Lk)),
             "sinks": np.zeros(self.Hq)}
        a = self.args()
        lib.ref_sdpa_backward(C.byref(a), ptr(self.dout), ptr(g["q"]), ptr(g["k"]), ptr(g["v"]),
                              ptr(g["mask"]), ptr(g["sinks"]) if self.sinks is not None else None)
        return g

    def visible(self):
        # Query positions per batch (attn.h): q_offsets[b] + i, or bottom-right
        # i + kv_lens[b] - Lq (Lk without kv_lens), or top-left i.
        i = torch.arange(self.Lq).view(1, 1, -1, 1)
        j = torch.arange(self.Lk).view(1, 1, 1, -1)
        if self.q_offsets is not None:
            ip = i + torch.from_numpy(self.q_offsets).view(-1, 1, 1, 1)
        elif self.bottom_right:
            lens = (torch.from_numpy(self.kv_lens) if self.kv_lens is not None
                    else torch.full((self.B,), self.Lk))
            ip = i + lens.view(-1, 1, 1, 1) - self.Lq
        else:
            ip = i
        vis = torch.ones(self.B, self.Hq, self.Lq, self.Lk, dtype=torch.bool)
        if self.causal:
            vis &= j <= ip
        if self.window is not None:
            vis &= (ip - j <= self.window[0]) & (j - ip <= self.window[1])
        if self.kv_lens is not None:
            vis &= j < torch.from_numpy(self.kv_lens).view(-1, 1, 1, 1)
        if self.bool_mask is not None:
            vis &= torch.from_numpy(self.bool_mask) != 0
        if self.mask is not None:
            vis &= torch.from_numpy(self.mask) != -np.inf
        return vis, ip - j

    def torch_grads(self):
        """The forward written from attn.h in torch, differentiated by autograd."""
        q = torch.tensor(self.q.astype(np.float64), requires_grad=True)
        k = torch.tensor(self.k.astype(np.float64), requires_grad=True)
        v = torch.tensor(self.v.astype(np.float64), requires_grad=True)
        leaves = {"q": q, "k": k, "v": v}
        group = self.Hq // self.Hkv
        kr, vr = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        scale = self.scale or 1 / np.sqrt(self.D)
        s = scale * q @ kr.transpose(-1, -2)
        if self.softcap:
            s = self.softcap * torch.tanh(s / self.softcap)
        vis, dist = self.visible()
        if self.alibi is not None:
            s = s - torch.tensor(self.alibi.astype(np.float64)).view(1, -1, 1, 1) * dist
        if self.mask is not None:
            m = torch.tensor(np.where(np.isinf(self.mask), 0, self.mask).astype(np.float64),
                             requires_grad=True)
            leaves["mask"] = m
            s = s + m
        # Hidden logits become a finite -1e30 so no inf - inf enters autograd,
        # and `where` below gives them exactly zero weight and gradient.
        s = torch.where(vis, s, torch.tensor(-1e30))
        cols = [s]
        if self.sinks is not None:
            sk = torch.tensor(self.sinks.astype(np.float64), requires_grad=True)
            leaves["sinks"] = sk
            cols.append(sk.view(1, -1, 1, 1).expand(self.B, -1, self.Lq, 1))
        lse = torch.logsumexp(torch.cat(cols, -1), -1, keepdim=True)
        p = torch.where(vis, torch.exp(s - lse), torch.tensor(0.0))
        o = p @ vr
        o.backward(torch.tensor(self.dout))
        return {n: t.grad.numpy() for n, t in leaves.items()}

    def loss(self):
        o, _ = self.ref_forward()
        return float((o * self.dout).sum())


def close(name, got, want, rtol, atol):
    ok = np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
    if not ok:
        err = np.nanmax(np.abs(got - want))
        print(f"    {name}: max abs diff {err:.3g}")
    return ok


def fd_agrees(name, flat, i, h, loss, an):
    """The central difference of loss() at flat[i] (restored afterwards)
    against the analytic gradient an: within 1e-5, relative; else say so."""
    x0 = flat[i]
    flat[i] = x0 + h
    up = loss()
    flat[i] = x0 - h
    down = loss()
    flat[i] = x0
    fd = (up - down) / (2 * h)
    if abs(fd - an) <= 1e-5 * max(1.0, abs(an)):
        return True
    print(f"    {name}[{i}]: fd {fd:.9g} vs reference {an:.9g}")
    return False


def sdpa_cases(rng):
    yield Case("plain", rng)
    yield Case("gqa", rng, Hq=4, Hkv=2)
    yield Case("mqa", rng, Hq=3, Hkv=1)
    yield Case("dv!=d", rng, D=5, Dv=3)
    yield Case("scale", rng, scale=0.7)
    yield Case("causal-tl", rng, causal=1)
    yield Case("causal-tl-lq>lk", rng, causal=1, Lq=7, Lk=4)
    yield Case("causal-br", rng, causal=1, bottom_right=1)
    yield Case("causal-br-lq>lk", rng, causal=1, bottom_right=1, Lq=7, Lk=4)  # empty rows
    yield Case("window", rng, window=(2, 1))
    yield Case("window-causal-br", rng, window=(1, 0), causal=1, bottom_right=1)
    yield Case("kv_lens", rng, kv_lens=[3, 0])  # batch 1 sees nothing
    yield Case("mask", rng, mask=True)
    yield Case("bool_mask", rng, bool_mask=True)
    yield Case("alibi", rng, alibi=True, causal=1)
    yield Case("softcap", rng, softcap=1.5, scale=1.0)
    yield Case("sinks", rng, sinks=True)
    yield Case("sinks-empty-rows", rng, sinks=True, kv_lens=[0, 4])
    yield Case("q_offsets", rng, causal=1, window=(3, 1), alibi=True, q_offsets=[2, -1])
    yield Case("causal-br-kv_lens", rng, causal=1, bottom_right=1, kv_lens=[5, 2], alibi=True)
    yield Case("everything", rng, Hq=4, Hkv=2, D=6, Dv=3, softcap=2.0, causal=1,
               bottom_right=1, Lq=4, Lk=9, window=(5, 2), kv_lens=[8, 6], mask=True,
               bool_mask=True, alibi=True, sinks=True)
    yield Case("everything-q_offsets", rng, Hq=4, Hkv=1, D=3, Dv=5, softcap=1.0, causal=1,
               Lq=6, Lk=8, window=(4, 1), kv_lens=[7, 5], mask=True, alibi=True, sinks=True,
               q_offsets=[1, 0])


def check_sdpa_vs_torch(rng):
    ok = True
    for c in sdpa_cases(rng):
        want, got = c.torch_grads(), c.ref_backward()
        good = all(close(n, got[n], want[n], 1e-10, 1e-12) for n in want)
        print(f"{'ok  ' if good else 'FAIL'} sdpa vs torch: {c.name}")
        ok &= good
    return ok


def check_sdpa_fd(rng):
    """Central differences of the reference forward at a few entries of
    every differentiable input."""
    ok = True
    h = 2.0 ** -10
    for c in sdpa_cases(rng):
        g = c.ref_backward()
        good = True
        for name in ("q", "k", "v", "mask", "sinks"):
            arr = getattr(c, name)
            if arr is None:
                continue
            flat = arr.reshape(-1)
            idx = [i for i in rng.permutation(flat.size)[:6] if np.isfinite(flat[i])]
            for i in idx:
                good &= fd_agrees("d" + name, flat, i, h, c.loss, g[name].reshape(-1)[i])
        print(f"{'ok  ' if good else 'FAIL'} sdpa finite differences: {c.name}")
        ok &= good
    return ok


def view(a):
    v = RefView(ptr(a), a.ndim)
    for i in range(a.ndim):
        v.dims[i] = a.shape[i]
        v.strides[i] = a.strides[i] // a.itemsize
    return v


def check_softmax(rng):
    ok = True
    h = 2.0 ** -10
    for log, scale, masked in itertools.product((0, 1), (1.0, 0.5), (False, True)):
        x = dyadic(rng, (3, 4, 6))
        mask = bmask = None
        if masked:
            mask = dyadic(rng, (4, 6))
            mask[0, 1] = -np.inf
            mask[1, :] = -np.inf  # a row with nothing visible
            bmask = (rng.uniform(size=(3, 1, 6)) < 0.8).astype(np.uint8)
        dy = rng.standard_normal(x.shape)
        dx, dz = np.zeros(x.shape), np.zeros(x.shape)
        vm = C.byref(view(mask)) if mask is not None else None
        vb = C.byref(view(bmask)) if bmask is not None else None
        lib.ref_softmax_backward(C.byref(view(x)), scale, vm, vb, log, ptr(dy), ptr(dx), ptr(dz))
        # torch: z in float as attn.h defines, hidden entries constant.
        xt = torch.tensor(x.astype(np.float64), requires_grad=True)
        z = xt * scale
        vis = torch.ones(x.shape, dtype=torch.bool)
        mt = None
        if masked:
            mt = torch.tensor(np.where(np.isinf(mask), 0, mask).astype(np.float64),
                              requires_grad=True)
            z = z + mt
            vis &= torch.from_numpy(np.isfinite(mask)) & torch.from_numpy(bmask != 0)
        z = torch.where(vis, z, torch.tensor(-1e30))
        y = torch.log_softmax(z, -1) if log else torch.softmax(z, -1)
        y = torch.where(vis, y, torch.tensor(-np.inf if log else 0.0))
        y.backward(torch.tensor(dy))
        good = close("dx", dx, xt.grad.numpy(), 1e-10, 1e-12)
        if masked:  # dz summed over the mask's broadcast axis is d(mask)
            good &= close("dmask", dz.sum(0), mt.grad.numpy(), 1e-10, 1e-12)
        # finite differences of ref_softmax, loss = sum(y * dy) over visible y
        def loss():
            y = np.zeros(x.shape)
            lib.ref_softmax(C.byref(view(x)), scale, vm, vb, log, ptr(y))
            return float(np.where(np.isfinite(y), y * dy, 0).sum())
        flat = x.reshape(-1)
        for i in rng.permutation(flat.size)[:8]:
            good &= fd_agrees("dx", flat, i, h, loss, dx.reshape(-1)[i])
        name = f"{'log_softmax' if log else 'softmax'} scale={scale} masked={masked}"
        print(f"{'ok  ' if good else 'FAIL'} {name} vs torch + finite differences")
        ok &= good
    return ok


def check_rope(rng):
    """The backward of an orthogonal map is its transpose: <R x, g> = <x, R^T g>."""
    ok = True
    for interleaved, (D, r) in itertools.product((0, 1), ((8, 8), (10, 6))):
        B, H, L = 2, 3, 5
        pos = rng.integers(0, 1000, (B, L)).astype(np.int64)
        x = rng.standard_normal((B, H, L, D))
        g = rng.standard_normal((B, H, L, D))
        rx, rg = x.copy(), g.copy()
        lib.ref_rope(interleaved, B, H, L, D, r, 10000.0, ptr(pos), ptr(rx))
        lib.ref_rope_backward(interleaved, B, H, L, D, r, 10000.0, ptr(pos), ptr(rg))
        good = abs((rx * g).sum() - (x * rg).sum()) < 1e-9
        back = rx.copy()
        lib.ref_rope_backward(interleaved, B, H, L, D, r, 10000.0, ptr(pos), ptr(back))
        good &= np.allclose(back, x, rtol=0, atol=1e-12)
        print(f"{'ok  ' if good else 'FAIL'} rope backward interleaved={interleaved} D={D} r={r}")
        ok &= good
    return ok


def check_pool(rng):
    """attn_pool's backward (ref_pool_backward) against torch autograd on a
    torch formulation of each mode over the kept tokens of each sequence,
    and against central differences of ref_pool."""
    ok = True
    h = 2.0 ** -10
    B, H, L, D = 2, 3, 6, 4
    for mode in range(4):
        for keep_kind in ("all", "some", "none-in-one"):
            x = dyadic(rng, (B, H, L, D)).astype(np.float64)
            # distinct values per feature, so max has no ties
            x += np.arange(L).reshape(1, 1, L, 1) * 2.0 ** -12
            scores = dyadic(rng, (B, H, L)).astype(np.float64)
            keep = np.ones((B, H, L), np.uint8)
            if keep_kind != "all":
                keep = (rng.uniform(size=(B, H, L)) < 0.6).astype(np.uint8)
                keep[0, 0, 1] = 1
            if keep_kind == "none-in-one":
                keep[1, 2, :] = 0
            g = rng.standard_normal((B, H, D))
            dx, ds = np.zeros(x.shape), np.zeros(scores.shape)
            sc = scores if mode == 3 else None
            lib.ref_pool_backward(mode, B, H, L, D, ptr(x), ptr(keep), ptr(sc), ptr(g), ptr(dx),
                                  ptr(ds if mode == 3 else None))
            xt = torch.tensor(x, requires_grad=True)
            st = torch.tensor(scores, requires_grad=True)
            outs = []
            for b in range(B):
                for hh in range(H):
                    idx = torch.tensor(np.nonzero(keep[b, hh])[0], dtype=torch.long)
                    if idx.numel() == 0:
                        outs.append(torch.zeros(D) + 0 * xt[b, hh].sum())
                        continue
                    xs = xt[b, hh].index_select(0, idx)
                    if mode == 0:
                        outs.append(xs.sum(0))
                    elif mode == 1:
                        outs.append(xs.mean(0))
                    elif mode == 2:
                        outs.append(xs.max(0).values)
                    else:
                        w = torch.softmax(st[b, hh].index_select(0, idx), 0)
                        outs.append((w.unsqueeze(1) * xs).sum(0))
            y = torch.stack(outs).reshape(B, H, D)
            (y * torch.tensor(g)).sum().backward()
            good = close("dx", dx, xt.grad.numpy(), 1e-10, 1e-12)
            if mode == 3:
                good &= close("dscores", ds, st.grad.numpy(), 1e-10, 1e-12)

            def loss():
                out = np.zeros((B, H, D))
                lib.ref_pool(mode, B, H, L, D, ptr(x), ptr(keep), ptr(sc), ptr(out))
                return float((out * g).sum())
            hx = 2.0 ** -14 if mode == 2 else h  # below the 2^-12 tie breakers
            for name, arr, grad in (("x", x, dx), ("scores", scores, ds)):
                if name == "scores" and mode != 3:
                    continue
                flat = arr.reshape(-1)
                for i in rng.permutation(flat.size)[:10]:
                    good &= fd_agrees("d" + name, flat, i, hx, loss, grad.reshape(-1)[i])
            print(f"{'ok  ' if good else 'FAIL'} pool mode={mode} keep={keep_kind} vs torch + "
                  "finite differences")
            ok &= good
    return ok


def main():
    rng = np.random.default_rng(14)
    results = [check_sdpa_vs_torch(rng), check_sdpa_fd(rng), check_softmax(rng),
               check_rope(rng), check_pool(rng)]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
