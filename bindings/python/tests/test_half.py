"""attn.convert: float32 <-> float16 / bfloat16 through libattn's kernels,
checked against NumPy's float16 casts (IEEE, nearest even) and torch's
bfloat16 casts (nearest even) as independent references."""
import numpy as np
import pytest

import attn
from test_pool import np_pool

try:
    import torch
except ImportError:  # torch is optional
    torch = None


def _all_f16():
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)


def _nasty_f32(n=200000, seed=1):
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    edge = np.array([0.0, -0.0, 65504.0, 65519.99, 65520.0, -65520.0, 65536.0, 2**-24,
                     2**-25, 1.5 * 2**-24, 2**-14, 1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-8,
                     np.inf, -np.inf, 3.4028235e38, 1e-45], np.float32)
    return np.concatenate([bits.view(np.float32), edge])


def test_f16_widening_is_exact_for_all_patterns():
    h = _all_f16()
    got = attn.convert(h, "float32")
    assert got.dtype == np.float32
    want = h.astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
    assert np.isnan(got[nan]).all()
    # Quiet bit set, sign and payload kept.
    assert np.array_equal(got[nan].view(np.uint32) & 0x80000000,
                          want[nan].view(np.uint32) & 0x80000000)
    assert (got[nan].view(np.uint32) & 0x400000).all()


def test_f16_narrowing_matches_numpy():
    x = _nasty_f32()
    got = attn.convert(x, np.float16)
    assert got.dtype == np.float16
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    nan = np.isnan(x)
    assert np.array_equal(got[~nan].view(np.uint16), want[~nan].view(np.uint16))
    assert np.isnan(got[nan]).all()
    # Round trip of every non-NaN half is exact.
    h = _all_f16()
    ok = ~np.isnan(h)
    back = attn.convert(attn.convert(h, "float32"), "float16")
    assert np.array_equal(back[ok].view(np.uint16), h[ok].view(np.uint16))


def test_strided_and_scalar_inputs():
    x = _nasty_f32(982).reshape(10, 100)
    got = attn.convert(x.T, "float16")  # transposed: copied to a layout libattn reads
    with np.errstate(over="ignore"):
        want = x.T.astype(np.float16)
    assert np.array_equal(got.view(np.uint16)[~np.isnan(want)],
                          want.view(np.uint16)[~np.isnan(want)])
    with np.errstate(over="ignore"):
        h = x.astype(np.float16)[:, ::2][1:5]  # a strided float16 view, read in place
    assert np.array_equal(attn.convert(h, "float32"), h.astype(np.float32), equal_nan=True)
    assert attn.convert(np.float32(1.5), "float16") == np.float16(1.5)
    assert attn.convert(np.zeros((0, 3), np.float32), "float16").shape == (0, 3)


def test_bf16_needs_an_explicit_dtype():
    u = np.zeros(4, np.uint16)
    with pytest.raises(TypeError, match="src_dtype"):
        attn.convert(u, "float32")
    with pytest.raises(TypeError):
        attn.convert(np.zeros(4, np.float64), "float16")
    with pytest.raises(ValueError):
        attn.convert(np.zeros(4, np.float32), "int8")
    # bf16 widening is a shift: 0x3f80 is 1.0, 0xc000 is -2.0.
    got = attn.convert(np.array([0x3f80, 0xc000, 0x7f80], np.uint16), "float32",
                       src_dtype="bfloat16")
    assert got.tolist() == [1.0, -2.0, float("inf")]


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_bf16_matches_torch():
    x = _nasty_f32()
    got = attn.convert(x, "bfloat16")
    assert got.dtype == np.uint16
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(x)
    assert np.array_equal(got[~nan], want[~nan])
    assert ((got[nan] & 0x7fc0) == 0x7fc0).all()  # quiet NaN
    # torch tensors in and out, bfloat16 both ways.
    t = torch.from_numpy(x[~nan].copy())
    tb = attn.convert(t, "bfloat16")
    assert tb.dtype == torch.bfloat16
    assert torch.equal(tb.view(torch.int16), t.to(torch.bfloat16).view(torch.int16))
    back = attn.convert(tb, torch.float32)
    assert torch.equal(back, tb.to(torch.float32))
    h = attn.convert(tb, "float16")
    assert h.dtype == torch.float16
    assert torch.equal(h.view(torch.int16), tb.to(torch.float32).to(torch.float16).view(torch.int16))



@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_src_dtype_must_agree_with_a_torch_tensor():
    # It was ignored for torch tensors: a float32 tensor with
    # src_dtype="bfloat16" was read as float32 (convert, KVCache.append).
    t = torch.ones(1, 1, 2, 4)
    with pytest.raises(TypeError, match="^convert: src_dtype=bfloat16 but the torch tensor is "
                                        "float32"):
        attn.convert(t, "float16", src_dtype="bfloat16")
    cache = attn.KVCache(1, 1, 4, capacity=4)
    with pytest.raises(TypeError, match="^KVCache.append: src_dtype=float16 but the torch "
                                        "tensor is float32"):
        cache.append(t, t, src_dtype="float16")
    assert cache.lengths.tolist() == [0]
    b = t.to(torch.bfloat16)
    cache.append(b, b, src_dtype="bfloat16")
    assert cache.lengths.tolist() == [2]
    assert torch.equal(attn.convert(b, "float32", src_dtype=torch.bfloat16), t)


def test_convert_reads_byte_swapped_arrays():
    # A big-endian float32 or float16 array was refused with "a has dtype >f4
    # but must be float32 or float16"; the ops themselves take them.
    x = np.array([1.5, -2.25, 65504.0, 1e-3], np.float32)
    np.testing.assert_array_equal(attn.convert(x.astype(">f4"), "float16"), x.astype(np.float16))
    h = x.astype(np.float16)
    np.testing.assert_array_equal(attn.convert(h.astype(">f2"), "float32"), h.astype(np.float32))
    bits = attn.convert(x, "bfloat16")
    np.testing.assert_array_equal(
        attn.convert(bits.astype(">u2"), "float32", src_dtype="bfloat16"),
        attn.convert(bits, "float32", src_dtype="bfloat16"))

# ---- ops on half arrays ----

def _bound_ok(got, want, u, tol, scale=1.0):
    got = np.asarray(got, np.float64)
    return np.all(np.abs(got - want) <= u * np.abs(want) + tol * scale + 2.0**-24)


def test_softmax_float16_in_and_out():
    rng = np.random.default_rng(3)
    x = rng.uniform(-6, 6, (5, 77)).astype(np.float16)
    y = attn.softmax(x)
    assert y.dtype == np.float16
    xf = x.astype(np.float64)
    e = np.exp(xf - xf.max(-1, keepdims=True))
    want = e / e.sum(-1, keepdims=True)
    assert _bound_ok(y, want, 2.0**-11, 1e-6 * np.abs(want).max())
    # An explicit float32 out computes from the same float16 inputs.
    y32 = attn.softmax(x, out=np.empty(x.shape, np.float32))
    assert np.allclose(y32, want, rtol=1e-5, atol=1e-7)
    ly = attn.log_softmax(x)
    assert ly.dtype == np.float16
    # Byte-swapped float16 is still float16 (was widened to a float32 result).
    ys = attn.softmax(x.astype(x.dtype.newbyteorder()))
    assert ys.dtype == np.float16 and np.array_equal(ys.view(np.uint16), y.view(np.uint16))


def test_rope_and_sinusoidal_float16():
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (1, 2, 9, 16)).astype(np.float16)
    r16 = attn.rope(x)
    r32 = attn.rope(x.astype(np.float32))
    assert r16.dtype == np.float16
    assert _bound_ok(r16, r32.astype(np.float64), 2.0**-11, 2e-6)
    s16 = attn.sinusoidal_add(x[0, 0])
    assert s16.dtype == np.float16
    t = attn.sinusoidal(9, 16, out=np.empty((9, 16), np.float16))
    assert t.dtype == np.float16
    assert _bound_ok(t, attn.sinusoidal(9, 16).astype(np.float64), 2.0**-11, 1e-6)


def test_sdpa_float16_and_mixed():
    rng = np.random.default_rng(5)
    q = rng.uniform(-1, 1, (1, 4, 7, 16)).astype(np.float16)
    k = rng.uniform(-1, 1, (1, 2, 30, 16)).astype(np.float16)
    v = rng.uniform(-1, 1, (1, 2, 30, 16)).astype(np.float16)
    o16 = attn.sdpa(q, k, v, causal="bottom-right")
    assert o16.dtype == np.float16
    o32 = attn.sdpa(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32),
                    causal="bottom-right")
    assert _bound_ok(o16, o32.astype(np.float64), 2.0**-11, 1e-5)
    # f32 queries over an f16 cache: a float32 result.
    om = attn.sdpa(q.astype(np.float32), k, v, causal="bottom-right")
    assert om.dtype == np.float32
    assert np.allclose(om, o32, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_sdpa_torch_bfloat16_cache():
    g = torch.Generator().manual_seed(0)
    q = torch.rand(1, 4, 1, 32, generator=g)
    k = torch.rand(1, 2, 500, 32, generator=g).to(torch.bfloat16)
    v = torch.rand(1, 2, 500, 32, generator=g).to(torch.bfloat16)
    o = attn.sdpa(q, k, v)
    assert o.dtype == np.float32
    want = attn.sdpa(q.numpy(), k.float().numpy(), v.float().numpy())
    assert np.allclose(o, want, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_rope_and_sinusoidal_torch_half():
    # rope and sinusoidal_add take torch tensors as the other ops do (a
    # bfloat16 one failed inside np.array, a float16 one gave float32):
    # float16 stays float16, bfloat16 gives float32 from its exact widening;
    # inplace=True writes the tensor itself, rounded once to its type.
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 5, 8, generator=g)
    for dt, kept in ((torch.float16, np.float16), (torch.bfloat16, np.float32)):
        t = x.to(dt)
        same = t.numpy() if dt == torch.float16 else t.float().numpy()
        for op, arg in ((attn.rope, t), (attn.sinusoidal_add, t[0, 0])):
            want = op(same if op is attn.rope else same[0, 0])
            got = op(arg)
            assert got.dtype == kept and np.array_equal(got, want)
            w = arg.clone()
            assert op(w, inplace=True) is w
            want_t = torch.from_numpy(np.ascontiguousarray(want, np.float32)).to(dt)
            assert torch.equal(w.view(torch.int16), want_t.view(torch.int16))
    assert attn.rope(x).dtype == np.float32
    # In place on a tensor that requires grad would go around autograd.
    cos, sin, _ = attn.rope_cache(5, 8)
    g = x[0].clone().requires_grad_()
    for call in (lambda: attn.rope(g, inplace=True), lambda: attn.sinusoidal_add(g, inplace=True),
                 lambda: attn.rope_cached(g[None], cos, sin, inplace=True)):
        with pytest.raises(ValueError, match="requires grad"):
            call()
    assert attn.rope(g.detach(), inplace=True) is not None
    with pytest.raises(TypeError, match="real numbers"):
        attn.rope(np.ones((1, 2, 3, 4), bool))
    with pytest.raises(TypeError, match="torch dtype"):
        attn.sinusoidal_add(torch.ones(3, 4, dtype=torch.int32))


@pytest.mark.parametrize("mode", ["sum", "mean", "max", "weighted"])
def test_pool_float16_in_and_out(mode):
    rng = np.random.default_rng(6)
    x = rng.uniform(-2, 2, (3, 2, 40, 8)).astype(np.float16)
    scores = rng.uniform(-3, 3, (3, 2, 40)).astype(np.float16)
    lengths = np.array([40, 7, 0])
    keep = rng.random((3, 40)) > 0.2
    sc = scores if mode == "weighted" else None
    got = attn.pool(x, mode, scores=sc, lengths=lengths, keep=keep)
    assert got.dtype == np.float16
    full = np.broadcast_to((keep & (np.arange(40) < lengths[:, None]))[:, None], (3, 2, 40))
    want = np_pool(x, mode, full, scores)
    scale = np.abs(x.astype(np.float64)).sum(2) if mode == "sum" else np.abs(want)
    assert _bound_ok(got, want, 2.0**-11, 1e-6 * (scale + 1))
    assert not got[2].any()  # nothing kept: zeros
    # float32 out from the same float16 inputs: the float64 result to float32.
    g32 = attn.pool(x, mode, scores=sc, lengths=lengths, keep=keep,
                    out=np.empty(got.shape, np.float32))
    assert np.allclose(g32, want, rtol=1e-6, atol=1e-6)
    # The backward keeps float16 too (dx, and dscores for float16 scores).
    dout = rng.uniform(-1, 1, got.shape).astype(np.float16)
    res = attn.pool_backward(x, dout, mode, scores=sc, lengths=lengths, keep=keep,
                             return_dscores=mode == "weighted")
    dx = res[0] if mode == "weighted" else res
    assert dx.dtype == np.float16 and dx.shape == x.shape
    d32 = attn.pool_backward(x.astype(np.float32), dout.astype(np.float32), mode,
                             scores=None if sc is None else sc.astype(np.float32),
                             lengths=lengths, keep=keep, return_dscores=mode == "weighted")
    dx32 = d32[0] if mode == "weighted" else d32
    assert _bound_ok(dx, dx32.astype(np.float64), 2.0**-11, 1e-6)
    if mode == "weighted":
        assert res[1].dtype == np.float16
        assert _bound_ok(res[1], d32[1].astype(np.float64), 2.0**-11, 1e-5)


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_pool_torch_bfloat16():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 30, 16, generator=g).to(torch.bfloat16)
    s = torch.randn(2, 30, generator=g).to(torch.bfloat16)
    got = attn.pool(x, "weighted", scores=s)
    assert got.dtype == np.float32  # NumPy has no bfloat16: the result is float32
    want = attn.pool(x.float().numpy(), "weighted", scores=s.float().numpy())
    assert np.array_equal(got, want)  # the same widened values, the same computation
    w = torch.softmax(s.double(), -1)
    assert np.allclose(got, (w[..., None] * x.double()).sum(1).numpy(), rtol=1e-6, atol=1e-6)


def test_pool_attention_float16():
    rng = np.random.default_rng(7)
    q = rng.uniform(-1, 1, (2, 3, 16)).astype(np.float16)
    k = rng.uniform(-1, 1, (2, 2, 50, 16)).astype(np.float16)
    o16 = attn.pool_attention(q, k)
    assert o16.dtype == np.float16
    o32 = attn.pool_attention(q.astype(np.float32), k.astype(np.float32))
    assert _bound_ok(o16, o32.astype(np.float64), 2.0**-11, 1e-5)
    om = attn.pool_attention(q.astype(np.float32), k)  # f32 queries over f16 keys
    assert om.dtype == np.float32
    assert np.array_equal(om, o32)


def test_layers_float16():
    rng = np.random.default_rng(8)
    E, Hq, Hkv, D, T = 16, 4, 2, 4, 9
    layer = attn.DecoderLayer(E, Hq, Hkv, D)
    for name, shape in (("q_proj.weight", (Hq * D, E)), ("k_proj.weight", (Hkv * D, E)),
                        ("v_proj.weight", (Hkv * D, E)), ("o_proj.weight", (E, Hq * D))):
        w = rng.uniform(-0.3, 0.3, shape).astype(np.float16)
        layer.set_weight(name, w)  # read as float16, kept as float32
        assert np.array_equal(layer.get_weight(name), w.astype(np.float32))
    x = rng.uniform(-1, 1, (1, T, E)).astype(np.float16)
    y16 = layer(x, attn.KVCache(1, Hkv, D, capacity=T))
    assert y16.dtype == np.float16
    y32 = layer(x.astype(np.float32), attn.KVCache(1, Hkv, D, capacity=T))
    assert _bound_ok(y16, y32.astype(np.float64), 2.0**-11, 1e-6)

    m = attn.MultiheadAttention(E, 4, batch_first=True)
    m.load_state_dict({k: rng.uniform(-0.3, 0.3, v.shape).astype(np.float16)
                       for k, v in m.state_dict().items()})
    q = rng.uniform(-1, 1, (2, 5, E)).astype(np.float16)
    o16, w16 = m(q, q, q)
    assert o16.dtype == np.float16 and w16.dtype == np.float32
    o32, w32 = m(q.astype(np.float32), q.astype(np.float32), q.astype(np.float32))
    assert np.abs(o32).max() > 0.01  # weights that do something
    assert _bound_ok(o16, o32.astype(np.float64), 2.0**-11, 1e-6)
    assert np.allclose(w16, w32, rtol=1e-6, atol=1e-7)
