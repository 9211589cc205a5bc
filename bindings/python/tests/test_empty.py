"""Zero-size arrays (a dim of 0) give empty results, as in NumPy and PyTorch;
attention over zero keys gives zeros with lse -inf (issue 9)."""
import math

import numpy as np
import pytest

import attn
import reference as ref
from conftest import close

TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(0,), (0, 5), (3, 0), (2, 0, 4), (2, 3, 0, 5), (2, 3, 4, 0)])
def test_softmax_empty(shape):
    x = np.zeros(shape, np.float32)
    for fn in (attn.softmax, attn.log_softmax):
        y = fn(x)
        assert y.shape == shape and y.dtype == np.float32
        y = fn(x, mask=np.zeros(shape[-1:], np.float32))
        assert y.shape == shape


def test_posenc_empty():
    assert attn.sinusoidal(0, 8).shape == (0, 8)
    assert attn.sinusoidal(5, 0).shape == (5, 0)
    for shape in ((0, 8), (2, 0, 8), (2, 5, 0)):
        x = np.zeros(shape, np.float32)
        assert attn.sinusoidal_add(x).shape == shape
    for shape in ((0, 2, 3, 8), (1, 0, 3, 8), (1, 2, 0, 8), (1, 2, 3, 0)):
        x = np.zeros(shape, np.float32)
        assert attn.rope(x).shape == shape
    assert attn.rope(np.zeros((2, 0, 8), np.float32), positions=np.zeros((0,), np.int64)).shape \
        == (2, 0, 8)


def qkv(rng, B, Hq, Hkv, Lq, Lk, D, Dv):
    return (rng.standard_normal((B, Hq, Lq, D)).astype(np.float32),
            rng.standard_normal((B, Hkv, Lk, D)).astype(np.float32),
            rng.standard_normal((B, Hkv, Lk, Dv)).astype(np.float32))


@pytest.mark.parametrize("dims", [
    (0, 4, 2, 3, 5, 8, 8),   # no batch
    (2, 0, 0, 3, 5, 8, 8),   # no heads
    (2, 4, 2, 0, 5, 8, 8),   # no queries
    (2, 4, 2, 3, 0, 8, 8),   # no keys: zeros, lse -inf
    (2, 4, 2, 3, 6, 0, 5),   # empty head dim: every dot product is 0
    (2, 4, 2, 3, 6, 8, 0),   # empty value dim: lse and weights still computed
])
def test_sdpa_empty(rng, dims):
    B, Hq, Hkv, Lq, Lk, D, Dv = dims
    q, k, v = qkv(rng, *dims)
    slopes = np.array([0.5, 0.25, 0.125, 0.0625][:Hq], np.float32) if Hq else None
    for kw in ({}, {"causal": "bottom-right", "alibi_slopes": slopes}):
        out, lse, w = attn.sdpa(q, k, v, return_lse=True, return_weights=True, **kw)
        assert out.shape == (B, Hq, Lq, Dv) and lse.shape == (B, Hq, Lq)
        assert w.shape == (B, Hq, Lq, Lk)
        if not out.size and not lse.size:
            continue
        rk = dict(kw)
        if "causal" in rk:
            rk["align"], rk["causal"] = rk["causal"], True
        if "alibi_slopes" in rk:
            rk["alibi"] = rk.pop("alibi_slopes")
        if D == 0:
            rk["scale"] = 1.0  # an empty dot product is 0 at any scale
        want = ref.sdpa(q, k, v, **rk)
        close(out, want[0], **TOL)
        close(lse, want[1], **TOL)
        close(w, want[2], **TOL)
    if Lk == 0 and Hq:
        sinks = np.arange(Hq, dtype=np.float32)
        out, lse = attn.sdpa(q, k, v, sinks=sinks, return_lse=True)
        assert np.all(out == 0) and np.all(lse == sinks.reshape(1, -1, 1))


def test_sdpa_varlen_empty(rng):
    q = np.zeros((0, 2, 4), np.float32)
    k = np.zeros((0, 1, 4), np.float32)
    out, lse = attn.sdpa_varlen(q, k, k, [0], [0], return_lse=True)
    assert out.shape == (0, 2, 4) and lse.shape == (2, 0)
    # and its backward: no sequences, empty gradients, sink gradients 0
    dq, dk, dv, ds = attn.sdpa_varlen_backward(q, k, k, out, lse, out, [0], [0],
                                               sinks=np.ones(2, np.float32), return_dsinks=True)
    assert dq.shape == (0, 2, 4) and dk.shape == (0, 1, 4) and np.all(ds == 0)
    q = rng.standard_normal((5, 2, 4)).astype(np.float32)
    out, lse = attn.sdpa_varlen(q, k, k, [0, 2, 5], [0, 0, 0], return_lse=True)
    assert np.all(out == 0) and np.all(lse == -np.inf)
    q0, k0 = np.zeros((3, 2, 0), np.float32), np.zeros((6, 1, 0), np.float32)
    out, lse = attn.sdpa_varlen(q0, k0, k0, [0, 2, 3], [0, 4, 6], return_lse=True)
    assert out.shape == (3, 2, 0)
    close(lse, np.array([[math.log(4)] * 2 + [math.log(2)]] * 2), **TOL)
