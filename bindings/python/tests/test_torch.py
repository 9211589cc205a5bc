"""attn.torch against torch 1.13 autograd in float64 (the library computes in
float32, hence the tolerances), and the backward ops of the numpy API
against the same autograd."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import attn  # noqa: E402
import attn.torch as at  # noqa: E402


def sdpa_torch(q, k, v, mask=None, causal=False, scale=None, sinks=None, softcap=None):
    """The forward written from attn.h in float64 torch (torch 1.13 has no SDPA)."""
    group = q.shape[-3] // k.shape[-3]
    k = k.repeat_interleave(group, -3)
    v = v.repeat_interleave(group, -3)
    scale = scale or 1 / np.sqrt(q.shape[-1])
    s = scale * q @ k.transpose(-1, -2)
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    L, S = s.shape[-2:]
    vis = torch.ones(s.shape, dtype=torch.bool)
    if causal:
        vis &= torch.ones(L, S, dtype=torch.bool).tril()
    if mask is not None and mask.dtype == torch.bool:
        vis = vis & mask
    elif mask is not None:
        vis = vis & (mask != -np.inf)
        s = s + torch.where(mask == -np.inf, torch.zeros((), dtype=mask.dtype), mask)
    s = torch.where(vis, s, torch.tensor(-1e30, dtype=s.dtype))
    cols = [s]
    if sinks is not None:
        cols.append(sinks.view(-1, 1, 1).expand(*s.shape[:-1], 1))
    lse = torch.logsumexp(torch.cat(cols, -1), -1, keepdim=True)
    p = torch.where(vis, torch.exp(s - lse), torch.zeros((), dtype=s.dtype))
    return p @ v


def leaves(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(s, generator=g).mul(2).sub(1).float().requires_grad_() for s in shapes]


def as64(ts):
    return [t.detach().double().requires_grad_() for t in ts]


def close(a, b, tol=2e-5):
    a, b = a.detach().double(), b.detach().double()
    scale = max(1.0, b.abs().max().item())
    assert (a - b).abs().max().item() <= tol * scale, ((a - b).abs().max().item(), scale)


@pytest.mark.parametrize("case", [
    dict(), dict(is_causal=True), dict(scale=0.3), dict(gqa=True), dict(dv=5),
    dict(mask="float"), dict(mask="bool"), dict(unbatched=True), dict(L=70, S=130),
    dict(is_causal=True, L=9, S=5)])
def test_sdpa_grads_vs_torch(case):
    B, H, L, S, E = 2, 4, case.get("L", 6), case.get("S", 7), 8
    Hkv = 2 if case.get("gqa") else H
    Ev = case.get("dv", E)
    q, k, v = leaves((B, H, L, E), (B, Hkv, S, E), (B, Hkv, S, Ev))
    if case.get("unbatched"):
        q, k, v = (t.detach()[0].requires_grad_() for t in (q, k, v))
    mask = None
    if case.get("mask") == "float":
        m = torch.rand(L, S).float()
        m[0, 1] = -np.inf
        mask = m.requires_grad_()
    elif case.get("mask") == "bool":
        mask = torch.rand(B, 1, L, S) < 0.8
    kw = dict(is_causal=case.get("is_causal", False), scale=case.get("scale"))
    out = at.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kw)
    g = torch.rand(out.shape).float()
    out.backward(g)
    q64, k64, v64 = as64((q, k, v))
    m64 = None
    if mask is not None:
        m64 = mask if mask.dtype == torch.bool else mask.detach().double().requires_grad_()
    want = sdpa_torch(q64, k64, v64, m64, kw["is_causal"], kw["scale"])
    want.backward(g.double())
    close(out, want)
    for got, ref in ((q, q64), (k, k64), (v, v64)):
        close(got.grad, ref.grad)
    if mask is not None and mask.dtype != torch.bool:
        close(mask.grad, m64.grad)


def test_sdpa_zero_copy_and_dtype():
    q, k, v = leaves((1, 2, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8))
    out = at.scaled_dot_product_attention(q, k, v)
    assert out.dtype == torch.float32
    q2, k2, v2 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out2 = at.scaled_dot_product_attention(q2, k2, v2)
    assert out2.dtype == torch.float64
    out2.sum().backward()
    assert q2.grad.dtype == torch.float64
    # a contiguous float32 tensor is viewed, not copied
    assert at._np(q).__array_interface__["data"][0] == q.data_ptr()


def test_sdpa_refuses_dropout():
    q, = leaves((1, 1, 2, 4))
    with pytest.raises(ValueError, match="dropout"):
        at.scaled_dot_product_attention(q, q, q, dropout_p=0.1)


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_softmax_grads_vs_torch(log, dim):
    x, = leaves((3, 5, 7))
    y = (at.log_softmax if log else at.softmax)(x, dim)
    g = torch.rand(y.shape).float()
    y.backward(g)
    x64 = x.detach().double().requires_grad_()
    want = (torch.log_softmax if log else torch.softmax)(x64, dim)
    want.backward(g.double())
    close(y, want)
    close(x.grad, x64.grad)


def test_numpy_backward_api_vs_torch():
    rng = np.random.default_rng(3)
    q = rng.uniform(-1, 1, (2, 4, 9, 8)).astype(np.float32)
    k = rng.uniform(-1, 1, (2, 2, 11, 8)).astype(np.float32)
    v = rng.uniform(-1, 1, (2, 2, 11, 6)).astype(np.float32)
    sinks = rng.uniform(-1, 1, 4).astype(np.float32)
    g = rng.uniform(-1, 1, (2, 4, 9, 6)).astype(np.float32)
    out, lse = attn.sdpa(q, k, v, causal=True, sinks=sinks, softcap=2.0, return_lse=True)
    dq, dk, dv, dsinks = attn.sdpa_backward(q, k, v, out, lse, g, causal=True, sinks=sinks,
                                            softcap=2.0, return_dsinks=True)
    t = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (q, k, v, sinks)]
    sdpa_torch(*t[:3], causal=True, sinks=t[3], softcap=2.0).backward(torch.tensor(g).double())
    for got, ref in zip((dq, dk, dv, dsinks), t):
        close(torch.tensor(got), ref.grad)
    # [B, L, H, D] layout through strides gives the same gradients
    tr = [np.ascontiguousarray(a.transpose(0, 2, 1, 3)) for a in (q, k, v, out, g)]
    dq2, dk2, dv2 = attn.sdpa_backward(*tr[:4], lse, tr[4], causal=True, sinks=sinks,
                                       softcap=2.0, layout="blhd")
    np.testing.assert_allclose(dq2.transpose(0, 2, 1, 3), dq, rtol=0, atol=1e-6)
    np.testing.assert_allclose(dv2.transpose(0, 2, 1, 3), dv, rtol=0, atol=1e-6)


def test_rope_backward_is_inverse():
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (2, 3, 5, 8)).astype(np.float32)
    y = attn.rope(x, positions=np.arange(5) * 7)
    back = attn.rope_backward(y, positions=np.arange(5) * 7)
    np.testing.assert_allclose(back, x, atol=2e-6)


def test_varlen_backward_equals_dense_per_sequence():
    rng = np.random.default_rng(5)
    cu = np.array([0, 5, 12], np.int64)
    q = rng.uniform(-1, 1, (12, 4, 8)).astype(np.float32)
    k = rng.uniform(-1, 1, (12, 2, 8)).astype(np.float32)
    v = rng.uniform(-1, 1, (12, 2, 8)).astype(np.float32)
    g = rng.uniform(-1, 1, (12, 4, 8)).astype(np.float32)
    out, lse = attn.sdpa_varlen(q, k, v, cu, causal=True, return_lse=True)
    dq, dk, dv = attn.sdpa_varlen_backward(q, k, v, out, lse, g, cu, causal=True)
    for s in range(2):
        a, b = cu[s], cu[s + 1]
        t = [torch.tensor(x[a:b].transpose(1, 0, 2), dtype=torch.float64, requires_grad=True)
             for x in (q, k, v)]
        sdpa_torch(*t, causal=True).backward(torch.tensor(g[a:b].transpose(1, 0, 2)).double())
        for got, ref in zip((dq, dk, dv), t):
            close(torch.tensor(got[a:b].transpose(1, 0, 2)), ref.grad)


@pytest.mark.parametrize("log", [False, True])
def test_softmax_backward_over_an_axis_vs_torch(log):
    rng = np.random.default_rng(5)
    x = rng.uniform(-3, 3, (3, 7, 4)).astype(np.float32)
    g = rng.uniform(-1, 1, (3, 7, 4)).astype(np.float32)
    f, fb = (attn.log_softmax, attn.log_softmax_backward) if log else (attn.softmax,
                                                                      attn.softmax_backward)
    y = f(x, axis=1, scale=0.5)
    dx = fb(y, g, axis=1, scale=0.5)
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (torch.log_softmax if log else torch.softmax)(0.5 * t, dim=1).backward(torch.tensor(g).double())
    close(torch.tensor(dx), t.grad)


def test_numpy_api_reads_tensors_that_require_grad_or_are_bfloat16():
    # Masks, sinks, backward inputs and rope_cached's tables went through
    # np.asarray: a tensor that requires grad (an nn.Parameter of sinks)
    # raised torch's RuntimeError "Can't call numpy() on Tensor that requires
    # grad", a bfloat16 one TypeError "Got unsupported ScalarType BFloat16".
    rng = np.random.default_rng(5)
    q = rng.standard_normal((1, 2, 3, 4)).astype(np.float32)
    sinks = torch.nn.Parameter(torch.tensor([0.5, -1.0]))
    np.testing.assert_array_equal(attn.sdpa(q, q, q, sinks=sinks),
                                  attn.sdpa(q, q, q, sinks=np.array([0.5, -1.0], np.float32)))
    mask = torch.zeros(3, 3).masked_fill(torch.ones(3, 3, dtype=torch.bool).triu(1), -1e9)
    want = attn.sdpa(q, q, q, mask=mask.numpy())
    np.testing.assert_array_equal(attn.sdpa(q, q, q, mask=mask.requires_grad_()), want)
    np.testing.assert_array_equal(attn.sdpa(q, q, q, mask=mask.detach().bfloat16()), want)
    out, lse = attn.sdpa(q, q, q, return_lse=True)
    g = np.ones_like(out)
    want = attn.sdpa_backward(q, q, q, out, lse, g)
    tq = torch.from_numpy(q).requires_grad_()
    for a, b in zip(attn.sdpa_backward(tq, q, q, out, lse, torch.from_numpy(g).bfloat16()), want):
        np.testing.assert_array_equal(a, b)  # g is ones: exact in bfloat16
    y = attn.softmax(q)
    np.testing.assert_array_equal(
        attn.softmax_backward(torch.from_numpy(y).requires_grad_(), g),
        attn.softmax_backward(y, g))
    cos, sin, _ = attn.rope_cache(3, 4)
    np.testing.assert_array_equal(
        attn.rope_cached(q, torch.from_numpy(cos).requires_grad_(), sin),
        attn.rope_cached(q, cos, sin))


def test_autograd_functions_check_their_tensors():
    # An int64 tensor was converted to float32 and the result back: softmax
    # of [1, 2, 3] came out [0, 0, 0]; an int64 1/0 attn_mask (Hugging Face's)
    # was added to the logits, masking nothing. A NumPy array raised
    # AttributeError, an out-of-range dim torch's IndexError.
    t = torch.zeros(1, 2, 3, 4)
    for call, what in (
            (lambda: at.softmax(torch.tensor([1, 2, 3]), 0), "softmax: x has dtype torch.int64"),
            (lambda: at.log_softmax(np.ones(3, np.float32), 0), "log_softmax: x must be a torch"),
            (lambda: at.scaled_dot_product_attention(t, t, t, attn_mask=torch.ones(3, 3).long()),
             "scaled_dot_product_attention: attn_mask has dtype torch.int64"),
            (lambda: at.scaled_dot_product_attention(t.numpy(), t, t),
             "scaled_dot_product_attention: query must be a torch tensor"),
            (lambda: at.pool(np.ones((2, 3, 4), np.float32)), "pool: x must be a torch tensor"),
            (lambda: at.pool(torch.ones(2, 3, 4), keep=torch.ones(2, 3).long()),
             "pool: keep has dtype torch.int64"),
            (lambda: at.pool_attention(torch.ones(3, 4), torch.ones(2, 3, 4).int()),
             "pool_attention: key has dtype torch.int32")):
        with pytest.raises(TypeError, match="^attn.torch." + what):
            call()
    with pytest.raises(ValueError, match=r"^attn.torch.softmax: dim = 4 is out of range"):
        at.softmax(t, 4)
    with pytest.raises(TypeError, match=r"^attn.torch.softmax: dim = None is not an integer"):
        at.softmax(t, None)
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert torch.allclose(at.softmax(x, -1), torch.softmax(x, -1), atol=1e-7)
