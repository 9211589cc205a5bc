"""Pooling, attention pooling and rotary tables from Python, against NumPy
written here from the definitions (and PyTorch where it is installed)."""
import numpy as np
import pytest

import attn
from conftest import close, try_torch


def np_pool(x, mode, keep, scores=None):
    """x [B, H, L, D], keep [B, H, L] bool, scores [B, H, L]."""
    B, H, L, D = x.shape
    out = np.zeros((B, H, D))
    for b in range(B):
        for h in range(H):
            k = keep[b, h]
            if not k.any():
                continue
            xs = x[b, h][k].astype(np.float64)
            if mode == "sum":
                out[b, h] = xs.sum(0)
            elif mode == "mean":
                out[b, h] = xs.mean(0)
            elif mode == "max":
                out[b, h] = xs.max(0)
            else:
                s = scores[b, h][k].astype(np.float64)
                w = np.exp(s - s.max())
                out[b, h] = (w / w.sum()) @ xs
    return out


@pytest.mark.parametrize("mode", ["sum", "mean", "max", "weighted"])
def test_pool_3d_and_4d(rng, mode):
    x = rng.standard_normal((3, 2, 11, 5)).astype(np.float32)
    scores = rng.standard_normal((3, 2, 11)).astype(np.float32)
    lengths = np.array([11, 4, 0])
    keep = rng.random((3, 11)) > 0.3
    full = np.broadcast_to((keep & (np.arange(11) < lengths[:, None]))[:, None], (3, 2, 11))
    sc = scores if mode == "weighted" else None
    close(attn.pool(x, mode, scores=sc, lengths=lengths, keep=keep),
          np_pool(x, mode, full, scores), rtol=2e-6, atol=1e-6)
    # 3-D: x [B, L, D] with scores [B, L]
    x3 = x[:, 0]
    s3 = scores[:, 0] if mode == "weighted" else None
    close(attn.pool(x3, mode, scores=s3, lengths=lengths),
          np_pool(x3[:, None], mode, np.arange(11)[None, None] < lengths[:, None, None],
                  None if s3 is None else s3[:, None])[:, 0], rtol=2e-6, atol=1e-6)
    assert not attn.pool(x3, mode, scores=s3, lengths=lengths)[2].any()  # nothing kept


def test_pool_blhd_view_and_numpy_reductions(rng):
    x = rng.standard_normal((2, 9, 3, 4)).astype(np.float32)  # [B, L, H, D]
    v = x.transpose(0, 2, 1, 3)  # the [B, H, L, D] view, no copy
    close(attn.pool(v, "mean"), x.mean(1), rtol=1e-6)
    close(attn.pool(v, "max"), x.max(1))
    close(attn.pool(v, "sum"), x.sum(1), rtol=1e-6, atol=1e-6)


def test_pool_against_torch_softmax(rng):
    torch = try_torch()
    if torch is None:
        pytest.skip("no torch")
    x = rng.standard_normal((4, 13, 6)).astype(np.float32)
    s = rng.standard_normal((4, 13)).astype(np.float32)
    want = (torch.softmax(torch.from_numpy(s).double(), -1)[..., None]
            * torch.from_numpy(x).double()).sum(1).numpy()
    close(attn.pool(x, "weighted", scores=s), want, rtol=2e-6, atol=1e-6)


def test_pool_errors():
    x = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(attn.AttnError, match="params.scores is NULL"):
        attn.pool(x, "weighted")
    with pytest.raises(attn.AttnError, match="lengths"):
        attn.pool(x, lengths=[4, 1])
    with pytest.raises(ValueError, match="mode"):
        attn.pool(x, "median")


def test_pool_attention(rng):
    q = rng.standard_normal((4, 2, 8)).astype(np.float32)     # [Hq, M, D]
    k = rng.standard_normal((3, 2, 10, 8)).astype(np.float32)  # [B, Hkv, L, D]
    v = rng.standard_normal((3, 2, 10, 5)).astype(np.float32)
    keep = rng.random((3, 10)) > 0.2
    out, w = attn.pool_attention(q, k, v, keep=keep, lengths=[10, 6, 10],
                                 return_weights=True)
    vis = keep & (np.arange(10)[None] < np.array([10, 6, 10])[:, None])
    want = np.zeros((3, 4, 2, 5))
    for b in range(3):
        for h in range(4):
            logits = q[h].astype(np.float64) @ k[b, h // 2].T.astype(np.float64) / np.sqrt(8)
            logits[:, ~vis[b]] = -np.inf
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            want[b, h] = p @ v[b, h // 2]
            close(w[b, h], p, rtol=1e-5, atol=1e-6)
    close(out, want, rtol=1e-5, atol=1e-6)
    # [M, D] queries over x [B, L, D] itself (k = v = x)
    x = rng.standard_normal((2, 7, 8)).astype(np.float32)
    o = attn.pool_attention(q[0], x)
    assert o.shape == (2, 2, 8)
    lg = np.einsum("md,bld->bml", q[0].astype(np.float64), x) / np.sqrt(8)
    p = np.exp(lg - lg.max(-1, keepdims=True))
    close(o, np.einsum("bml,bld->bmd", p / p.sum(-1, keepdims=True), x), rtol=1e-5, atol=1e-6)


def np_rope_tables(x, cos, sin, interleaved):
    """ONNX RotaryEmbedding on x [B, H, L, D] with per-token rows cos [B, L, r/2]."""
    x = x.astype(np.float64).copy()
    half = cos.shape[-1]
    c, s = cos[:, None], sin[:, None]
    if interleaved:
        x1, x2 = x[..., 0:2 * half:2].copy(), x[..., 1:2 * half:2].copy()
        x[..., 0:2 * half:2] = c * x1 - s * x2
        x[..., 1:2 * half:2] = s * x1 + c * x2
    else:
        x1, x2 = x[..., :half].copy(), x[..., half:2 * half].copy()
        x[..., :half] = c * x1 - s * x2
        x[..., half:2 * half] = s * x1 + c * x2
    return x


@pytest.mark.parametrize("style", ["half", "interleaved"])
def test_rope_cached_random_tables(rng, style):
    B, H, L, D, half, P = 2, 3, 7, 10, 3, 20
    x = rng.standard_normal((B, H, L, D)).astype(np.float32)
    cos = rng.uniform(-2, 2, (P, half)).astype(np.float32)
    sin = rng.uniform(-2, 2, (P, half)).astype(np.float32)
    pos = rng.integers(0, P, (B, L))
    want = np_rope_tables(x, cos[pos], sin[pos], style == "interleaved")
    close(attn.rope_cached(x, cos, sin, position_ids=pos, style=style), want, rtol=1e-6,
          atol=1e-6)
    # 3-D [B, L, H*D] with num_heads, per-token tables [B, L, r/2]
    x3 = np.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(B, L, H * D)
    got = attn.rope_cached(x3, cos[pos], sin[pos], num_heads=H, style=style)
    close(got.reshape(B, L, H, D).transpose(0, 2, 1, 3), want, rtol=1e-6, atol=1e-6)
    y = x.copy()
    assert attn.rope_cached(y, cos, sin, position_ids=pos, style=style, inplace=True) is y
    close(y, want, rtol=1e-6, atol=1e-6)


def test_rope_cache_default_and_against_rope(rng):
    cos, sin, af = attn.rope_cache(50, 8, theta=100.0)
    inv = 100.0 ** (-np.arange(0, 8, 2) / 8)
    ang = np.arange(50)[:, None] * inv
    close(cos, np.cos(ang), atol=2e-7)
    close(sin, np.sin(ang), atol=2e-7)
    assert af == 1.0
    x = rng.standard_normal((1, 2, 50, 8)).astype(np.float32)
    close(attn.rope_cached(x, cos, sin), attn.rope(x, theta=100.0), atol=1e-6)


def test_rope_cache_yarn_llama3_longrope():
    # YaRN, transformers' formula written out (truncate=True).
    r, base, s, p0 = 16, 10000.0, 4.0, 64
    cos, sin, af = attn.rope_cache(30, r, scaling="yarn", factor=s, original_max_position=p0)
    d = lambda rot: r * np.log(p0 / (rot * 2 * np.pi)) / (2 * np.log(base))
    lo, hi = max(np.floor(d(32)), 0), min(np.ceil(d(1)), r - 1)
    ramp = np.clip((np.arange(r // 2) - lo) / (hi - lo), 0, 1)
    w0 = base ** (-np.arange(0, r, 2) / r)
    w = w0 / s * ramp + w0 * (1 - ramp)
    close(cos, np.cos(np.arange(30)[:, None] * w), atol=2e-7)
    assert abs(af - (0.1 * np.log(s) + 1)) < 1e-12
    c2, s2, af2 = attn.rope_cache(30, r, scaling="yarn", factor=s, original_max_position=p0,
                                  apply_attention_factor=True)
    close(c2, cos * af, atol=3e-7)
    # Llama 3.1's published configuration
    r, base = 128, 500000.0
    cos, _, af = attn.rope_cache(4, r, scaling="llama3", theta=base, factor=8,
                                 low_freq_factor=1, high_freq_factor=4,
                                 original_max_position=8192)
    w0 = base ** (-np.arange(0, r, 2) / r)
    wl = 2 * np.pi / w0
    g = (8192 / wl - 1) / 3
    w = np.where(wl < 8192 / 4, w0, np.where(wl > 8192, w0 / 8, (1 - g) * w0 / 8 + g * w0))
    close(cos, np.cos(np.arange(4)[:, None] * w), atol=2e-7)
    # LongRoPE: long factors past p0, and sqrt(1 + ln s / ln p0)
    short, long_ = np.linspace(1, 2, 4), np.linspace(1, 30, 4)
    cos, sin, af = attn.rope_cache(10, 8, scaling="longrope", factor=8,
                                   original_max_position=4, short_factors=short,
                                   long_factors=long_)
    w = 1 / (long_ * 10000.0 ** (np.arange(0, 8, 2) / 8))
    close(sin, np.sin(np.arange(10)[:, None] * w), atol=2e-7)
    assert abs(af - np.sqrt(1 + np.log(8) / np.log(4))) < 1e-12
    with pytest.raises(attn.AttnError, match="factor"):
        attn.rope_cache(10, 8, scaling="linear")



def test_rope_cache_longrope_p0_of_1():
    # sqrt(1 + ln s / ln P0) has no value for P0 = 1 and s > 1: rope_cache
    # returns the factor, so it is refused with a message naming the field,
    # the formula, the rule and the way out (attention_factor); with that
    # given, or s <= 1, the tables are filled.
    f = dict(scaling="longrope", original_max_position=1, short_factors=[1.0, 2.0],
             long_factors=[3.0, 4.0])
    for kw in (dict(factor=2.0), dict(factor=2.0, apply_attention_factor=True),
               dict(seq_len=8)):  # factor None: s = 8 / 1
        with pytest.raises(attn.AttnError) as e:
            attn.rope_cache(8, 4, **f, **kw)
        assert e.value.status == "ATTN_ERR_INVALID_ARG"
        assert ("original_max_position = 1 but LongRoPE's attention factor sqrt(1 + ln s / "
                "ln P0) needs P0 >= 2 when s > 1 (or give attention_factor)") in str(e.value)
    cos, sin, af = attn.rope_cache(8, 4, **f, factor=2.0, attention_factor=1.5)
    assert af == 1.5 and np.isfinite(cos).all()
    w = 1 / (np.array([3.0, 4.0]) * 10000.0 ** (np.arange(0, 4, 2) / 4))  # past P0: long
    close(cos, np.cos(np.arange(8)[:, None] * w), atol=2e-7)
    _, _, af = attn.rope_cache(8, 4, **f, factor=1.0)
    assert af == 1.0

@pytest.mark.parametrize("axis", [0, 1, -2, 2, -1])
def test_softmax_any_axis(rng, axis):
    x = rng.standard_normal((3, 5, 7)).astype(np.float32)
    want = np.exp(x - x.max(axis, keepdims=True))
    want /= want.sum(axis, keepdims=True)
    close(attn.softmax(x, axis=axis), want, rtol=2e-6, atol=1e-7)
    close(attn.log_softmax(x, axis=axis), np.log(want), rtol=2e-6, atol=2e-6)
    xt = np.swapaxes(x, 0, 2)  # a strided view
    w2 = np.exp(xt - xt.max(axis, keepdims=True))
    close(attn.softmax(xt, axis=axis), w2 / w2.sum(axis, keepdims=True), rtol=2e-6, atol=1e-7)
    with pytest.raises(ValueError):
        attn.softmax(x, axis=3)


def test_sdpa_logits_stages(rng):
    q = rng.standard_normal((2, 3, 4, 8)).astype(np.float32)
    k = rng.standard_normal((2, 3, 6, 8)).astype(np.float32)
    v = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    mask = rng.standard_normal((4, 6)).astype(np.float32)
    raw = np.einsum("bhid,bhjd->bhij", q.astype(np.float64), k) / np.sqrt(8)
    capped = 2.0 * np.tanh(raw / 2.0)
    masked = capped + mask
    masked[..., np.triu(np.ones((4, 6), bool), 1)] = -np.inf
    for stage, want in (("scaled", raw), ("softcapped", capped), ("masked", masked)):
        out, lg = attn.sdpa(q, k, v, mask=mask, causal=True, softcap=2.0,
                            return_logits=stage)
        close(lg, want, rtol=1e-5, atol=1e-5)
    w = np.exp(masked - masked.max(-1, keepdims=True))
    close(out, (w / w.sum(-1, keepdims=True)) @ v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["sum", "mean", "max", "weighted"])
def test_pool_backward(rng, mode):
    """dx (and dscores) against the chain rule written here in numpy."""
    x = rng.standard_normal((2, 3, 7, 4)).astype(np.float32)
    scores = rng.standard_normal((2, 3, 7)).astype(np.float32)
    g = rng.standard_normal((2, 3, 4)).astype(np.float32)
    lengths = np.array([7, 3])
    keep = rng.random((2, 7)) > 0.3
    keep[:, 0] = True
    full = np.broadcast_to((keep & (np.arange(7) < lengths[:, None]))[:, None], (2, 3, 7))
    sc = scores if mode == "weighted" else None
    res = attn.pool_backward(x, g, mode, scores=sc, lengths=lengths, keep=keep,
                             return_dscores=mode == "weighted")
    dx = res[0] if mode == "weighted" else res
    want = np.zeros(x.shape)
    want_ds = np.zeros(scores.shape)
    for b in range(2):
        for h in range(3):
            k = np.nonzero(full[b, h])[0]
            xs = x[b, h, k].astype(np.float64)
            if mode == "sum":
                want[b, h, k] = g[b, h]
            elif mode == "mean":
                want[b, h, k] = g[b, h] / len(k)
            elif mode == "max":
                want[b, h, k[xs.argmax(0)], np.arange(4)] = g[b, h]
            else:
                w = np.exp(scores[b, h, k] - scores[b, h, k].max())
                w /= w.sum()
                want[b, h, k] = w[:, None] * g[b, h]
                gx = xs @ g[b, h]
                want_ds[b, h, k] = w * (gx - w @ gx)
    close(dx, want, rtol=1e-5, atol=1e-6)
    if mode == "weighted":
        close(res[1], want_ds, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        attn.pool_backward(x, g, mode, return_dscores=True)  # no scores


@pytest.mark.parametrize("mode", ["sum", "mean", "max", "weighted"])
def test_torch_pool_autograd(rng, mode):
    torch = try_torch()
    if torch is None:
        pytest.skip("torch not installed")
    import attn.torch as at
    x = torch.tensor(rng.standard_normal((2, 5, 3)), dtype=torch.float32, requires_grad=True)
    s = torch.tensor(rng.standard_normal((2, 5)), dtype=torch.float32, requires_grad=True)
    keep = torch.tensor([[True, True, False, True, True], [True, False, True, True, False]])
    sc = s if mode == "weighted" else None
    y = at.pool(x, mode, scores=sc, keep=keep)
    g = torch.tensor(rng.standard_normal(y.shape), dtype=torch.float32)
    y.backward(g)
    # torch itself, in float64, over the kept tokens
    x64 = x.detach().double().requires_grad_()
    s64 = s.detach().double().requires_grad_()
    outs = []
    for b in range(2):
        idx = keep[b].nonzero()[:, 0]
        xs = x64[b, idx]
        if mode == "sum":
            outs.append(xs.sum(0))
        elif mode == "mean":
            outs.append(xs.mean(0))
        elif mode == "max":
            outs.append(xs.max(0).values)
        else:
            outs.append((torch.softmax(s64[b, idx], 0)[:, None] * xs).sum(0))
    torch.stack(outs).backward(g.double())
    close(x.grad.numpy(), x64.grad.numpy(), rtol=1e-5, atol=1e-6)
    if mode == "weighted":
        close(s.grad.numpy(), s64.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_pool_attention_backward(rng):
    torch = try_torch()
    if torch is None:
        pytest.skip("torch not installed")
    q = rng.standard_normal((4, 2, 8)).astype(np.float32)      # [Hq, M, D]
    k = rng.standard_normal((3, 2, 10, 8)).astype(np.float32)  # [B, Hkv, L, D]
    v = rng.standard_normal((3, 2, 10, 5)).astype(np.float32)
    keep = rng.random((3, 10)) > 0.2
    lengths = np.array([10, 6, 9])
    out, lse = attn.pool_attention(q, k, v, keep=keep, lengths=lengths, scale=0.4,
                                   return_lse=True)
    g = rng.standard_normal(out.shape).astype(np.float32)
    dq, dk, dv = attn.pool_attention_backward(q, k, v, out, lse, g, keep=keep,
                                              lengths=lengths, scale=0.4)
    qt, kt, vt = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (q, k, v))
    vis = torch.tensor(keep & (np.arange(10) < lengths[:, None]))[:, None, None, :]
    kk, vv = kt.repeat_interleave(2, 1), vt.repeat_interleave(2, 1)  # Hq / Hkv = 2
    s = torch.einsum("hmd,bhld->bhml", qt, kk) * 0.4
    w = torch.softmax(s.masked_fill(~vis, -float("inf")), -1)
    (torch.einsum("bhml,bhle->bhme", w, vv) * torch.tensor(g, dtype=torch.float64)).sum().backward()
    close(dq, qt.grad.numpy(), rtol=1e-4, atol=1e-5)
    close(dk, kt.grad.numpy(), rtol=1e-4, atol=1e-5)
    close(dv, vt.grad.numpy(), rtol=1e-4, atol=1e-5)
    # v = k (the plain aggregation): dk carries both gradients
    out2, lse2 = attn.pool_attention(q[:1, :, :], k[:, 0], return_lse=True)
    dq2, dk2, dv2 = attn.pool_attention_backward(q[:1], k[:, 0], None, out2, lse2,
                                                 np.ones_like(out2))
    assert dv2 is None and dk2.shape == k[:, 0].shape and dq2.shape == q[:1].shape


def test_torch_pool_attention_autograd(rng):
    torch = try_torch()
    if torch is None:
        pytest.skip("torch not installed")
    import attn.torch as at
    q = torch.tensor(rng.standard_normal((2, 3, 4)), dtype=torch.float32, requires_grad=True)
    x = torch.tensor(rng.standard_normal((2, 7, 4)), dtype=torch.float32, requires_grad=True)
    keep = torch.tensor(rng.random((2, 7)) > 0.3)
    keep[:, 0] = True
    y = at.pool_attention(q, x[:, None], keep=keep, scale=0.5)  # key = value = x
    g = torch.tensor(rng.standard_normal(y.shape), dtype=torch.float32)
    y.backward(g)
    q64 = q.detach().double().requires_grad_()
    x64 = x.detach().double().requires_grad_()
    s = torch.einsum("hmd,bld->bhml", q64, x64) * 0.5
    w = torch.softmax(s.masked_fill(~keep[:, None, None, :], -float("inf")), -1)
    (torch.einsum("bhml,bld->bhmd", w, x64) * g.double()).sum().backward()
    close(q.grad.numpy(), q64.grad.numpy(), rtol=1e-4, atol=1e-5)
    close(x.grad.numpy(), x64.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_rope_cached_float16_kept(rng):
    # A float16 x is read as it is and gives a float16 result (it was widened
    # to a float32 result); the reference rotates the same float16 values in
    # float64 and rounds once.
    B, H, L, D, half, P = 1, 2, 5, 8, 3, 9
    x = rng.standard_normal((B, H, L, D)).astype(np.float16)
    cos = rng.uniform(-1, 1, (P, half)).astype(np.float32)
    sin = rng.uniform(-1, 1, (P, half)).astype(np.float32)
    pos = rng.integers(0, P, (B, L))
    want = np_rope_tables(x.astype(np.float64), cos[pos].astype(np.float64),
                          sin[pos].astype(np.float64), False).astype(np.float16)
    got = attn.rope_cached(x, cos, sin, position_ids=pos)
    assert got.dtype == np.float16
    assert np.array_equal(got.view(np.uint16), want.view(np.uint16))
    y = x.copy()
    assert attn.rope_cached(y, cos, sin, position_ids=pos, inplace=True) is y
    assert np.array_equal(y.view(np.uint16), want.view(np.uint16))
    with pytest.raises(TypeError):
        attn.rope_cached(x.tolist(), cos, sin, position_ids=pos, inplace=True)


def test_pool_attention_backward_checks_dims_first():
    # With 2-D queries and 3-D k, a 0-d out, lse or dout raised IndexError
    # ("too many indices for array") from the binding's squeeze.
    q = np.ones((3, 4), np.float32)        # [M, D]
    k = np.ones((2, 5, 4), np.float32)     # [B, L, D]
    out, lse = attn.pool_attention(q, k, return_lse=True)
    g = np.ones_like(out)
    one = np.float32(1)
    for args, name in (((out, lse, one), "dout"), ((out, one, g), "lse"),
                       ((one, lse, g), "out"), ((out[0], lse, g), "out")):
        with pytest.raises(ValueError, match="^pool_attention_backward: %s has" % name):
            attn.pool_attention_backward(q, k, None, *args)
    with pytest.raises(ValueError, match="^pool_attention_backward: lse has 2 dims but must "
                                         "have 3"):
        attn.pool_attention_backward(q[None], k[:, None], None, out[:, None], lse, g[:, None])
    dq, dk, dv = attn.pool_attention_backward(q, k, None, out, lse, g)
    assert dq.shape == q.shape and dk.shape == k.shape and dv is None
