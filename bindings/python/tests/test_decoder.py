"""attn.DecoderLayer against a float64 NumPy layer written here: a prompt
then decode steps give the full causal pass; GQA, biases, RoPE (plain and
linearly scaled), window; weights load from a state_dict and read back;
bad input raises and changes nothing."""
import numpy as np
import pytest

import attn


def rotate(x, pos, theta, freqs=None):
    """Half-split RoPE of x [T, H, D] at positions pos [T], float64."""
    D = x.shape[-1]
    w = freqs if freqs is not None else theta ** (-np.arange(D // 2) * 2.0 / D)
    a = pos[:, None, None] * w[None, None, :]
    c, s = np.cos(a), np.sin(a)
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return np.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], -1)


def layer_ref(sd, x, Hq, Hkv, D, theta=None, freqs=None, window=None):
    """One sequence x [T, E] at positions 0..T-1: y [T, E] in float64."""
    x = np.asarray(x, np.float64)
    T = x.shape[0]

    def lin(name, a):
        w = np.asarray(sd[name + ".weight"], np.float64)
        b = sd.get(name + ".bias")
        return a @ w.T + (0 if b is None else np.asarray(b, np.float64))

    q = lin("q_proj", x).reshape(T, Hq, D)
    k = lin("k_proj", x).reshape(T, Hkv, D)
    v = lin("v_proj", x).reshape(T, Hkv, D)
    if theta is not None:
        pos = np.arange(T, dtype=np.float64)
        q, k = rotate(q, pos, theta, freqs), rotate(k, pos, theta, freqs)
    g = Hq // Hkv
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    s = np.einsum("thd,jhd->htj", q, k) / np.sqrt(D)
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    hidden = (j > i) | ((i - j > window) if window is not None else False)
    s[:, hidden] = -np.inf
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    a = np.einsum("htj,jhd->thd", p, v).reshape(T, Hq * D)
    return lin("o_proj", a)


def state_dict(rng, E, Hq, Hkv, D, bias):
    sd = {"q_proj.weight": rng.standard_normal((Hq * D, E)) / np.sqrt(E),
          "k_proj.weight": rng.standard_normal((Hkv * D, E)) / np.sqrt(E),
          "v_proj.weight": rng.standard_normal((Hkv * D, E)) / np.sqrt(E),
          "o_proj.weight": rng.standard_normal((E, Hq * D)) / np.sqrt(Hq * D)}
    if bias:
        for n, m in (("q_proj", Hq * D), ("k_proj", Hkv * D), ("v_proj", Hkv * D),
                     ("o_proj", E)):
            sd[n + ".bias"] = rng.standard_normal(m) * 0.3
    return {k: v.astype(np.float32) for k, v in sd.items()}


CASES = [  # E, Hq, Hkv, D, bias, rope, window, paged
    (16, 2, 2, 8, False, None, None, False),
    (24, 4, 2, 8, True, "plain", None, True),
    (20, 4, 1, 6, True, "linear", 3, False),
]


@pytest.mark.parametrize("E,Hq,Hkv,D,bias,rope,window,paged", CASES)
def test_prompt_then_decode_equals_full_pass(E, Hq, Hkv, D, bias, rope, window, paged):
    rng = np.random.default_rng(E)
    sd = state_dict(rng, E, Hq, Hkv, D, bias)
    theta, freqs, kw = None, None, {}
    if rope:
        theta = 500.0
        kw["rope"] = {"theta": theta}
    if rope == "linear":  # position interpolation: every frequency / 4
        freqs = theta ** (-np.arange(D // 2) * 2.0 / D) / 4
        kw["rope_scaling"] = {"scaling": "linear", "factor": 4}
    layer = attn.DecoderLayer(E, Hq, Hkv, D, qkv_bias=bias, out_bias=bias, window=window, **kw)
    layer.load_state_dict({"self_attn." + k: v for k, v in sd.items()}, prefix="self_attn.")
    for name, w in sd.items():
        np.testing.assert_array_equal(layer.get_weight(name), w)
    B, T = 2, 19
    x = rng.standard_normal((B, T, E)).astype(np.float32)
    cache = (attn.KVCache(B, Hkv, D, paged=True, block_size=4, num_blocks=16) if paged
             else attn.KVCache(B, Hkv, D, capacity=T))
    prompt = np.array([7, 3])
    y = layer(x[:, :7], cache, prompt)  # sequence 1 takes 3 of the 7 rows
    assert not y[1, 3:].any()
    got = [list(y[0, :7]), list(y[1, :3])]
    done = prompt.copy()
    while (done < T).any():
        n = (done < T).astype(np.int64)
        step = np.stack([x[b, min(done[b], T - 1)] for b in range(B)])[:, None]
        ys = layer(step, cache, n)
        for b in range(B):
            if n[b]:
                got[b].append(ys[b, 0])
        done += n
    np.testing.assert_array_equal(cache.lengths, [T, T])
    for b in range(B):
        want = layer_ref(sd, x[b], Hq, Hkv, D, theta, freqs, window)
        np.testing.assert_allclose(np.array(got[b]), want, atol=2e-5, rtol=1e-5)


def test_bad_input_changes_nothing():
    layer = attn.DecoderLayer(8, 2)
    cache = attn.KVCache(1, 2, 4, capacity=4)
    x = np.ones((1, 3, 8), np.float32)
    layer(x, cache)
    with pytest.raises(attn.AttnError) as e:
        layer(x, cache)  # 3 + 3 > capacity 4
    assert e.value.status == "ATTN_ERR_INVALID_ARG"
    with pytest.raises(attn.AttnError):
        layer(np.ones((1, 1, 7), np.float32), cache)  # wrong E
    with pytest.raises(attn.AttnError):
        layer(x[:, :1], attn.KVCache(1, 1, 4, capacity=4))  # heads differ
    np.testing.assert_array_equal(cache.lengths, [3])
    with pytest.raises(KeyError, match="q_proj.bias"):
        attn.DecoderLayer(8, 2, qkv_bias=True).load_state_dict(
            {"q_proj.weight": np.zeros((8, 8)), "k_proj.weight": np.zeros((8, 8)),
             "v_proj.weight": np.zeros((8, 8)), "o_proj.weight": np.zeros((8, 8))})
    # A wrong shape after good weights: found before any weight is set.
    before = {n: layer.get_weight(n) for n in ("q_proj.weight", "k_proj.weight")}
    with pytest.raises(ValueError, match="v_proj.weight"):
        layer.load_state_dict({"q_proj.weight": np.full((8, 8), 3.0),
                               "k_proj.weight": np.full((8, 8), 3.0),
                               "v_proj.weight": np.zeros((8, 7)), "o_proj.weight": np.zeros((8, 8))})
    for n, w in before.items():
        np.testing.assert_array_equal(layer.get_weight(n), w)
    # A value float32 cannot hold, or a type that is not real, in the last
    # weight: found before any weight is set (the earlier ones were set).
    for bad, error in ((np.full((8, 8), 1e40), ValueError),
                       (np.zeros((8, 8), np.complex64), TypeError)):
        with pytest.raises(error, match="o_proj.weight"):
            layer.load_state_dict({"q_proj.weight": np.full((8, 8), 3.0),
                                   "k_proj.weight": np.full((8, 8), 3.0),
                                   "v_proj.weight": np.zeros((8, 8)), "o_proj.weight": bad})
        for n, w in before.items():
            np.testing.assert_array_equal(layer.get_weight(n), w)
    with pytest.raises(KeyError):
        layer.set_weight("gate_proj.weight", np.zeros((8, 8)))
    with pytest.raises(attn.AttnError):
        layer.set_weight("q_proj.weight", np.zeros((8, 7)))
    with pytest.raises(attn.AttnError) as e:
        attn.DecoderLayer(8, 2, rope={}, rope_scaling={"scaling": "dynamic", "factor": 2,
                                                       "original_max_position": 16})
    assert "seq_len" in str(e.value)
    with pytest.raises(attn.AttnError):
        attn.DecoderLayer(8, 3)  # E not a multiple of the heads
    # A misspelt or misplaced rope setting is refused, not ignored.
    with pytest.raises(TypeError, match="must be None or a dict"):
        attn.DecoderLayer(8, 2, rope="half-split")
    with pytest.raises(TypeError, match="no key 'Theta'"):
        attn.DecoderLayer(8, 2, rope={"Theta": 500000.0})
    # An explicit 0 is refused as rope()'s is (libattn reads 0 as the default).
    for key in ("theta", "rotary_dim"):
        with pytest.raises(ValueError, match="DecoderLayer: rope %s = 0" % key):
            attn.DecoderLayer(8, 2, rope={key: 0})


def test_decode_step_passes_x_without_a_copy(monkeypatch):
    # L = 1: the stride of a size-1 axis never steps, so any value (odd,
    # negative, zero, a slice's) is irrelevant; x and q are read in place
    # and give the contiguous copy's result.
    from numpy.lib.stride_tricks import as_strided
    from attn import _api
    B, E, H, D = 2, 16, 2, 8
    rng = np.random.default_rng(5)
    base = rng.standard_normal((B, 4, E)).astype(np.float32)
    wrapped = []
    orig = _api._Call._wrap
    monkeypatch.setattr(_api._Call, "_wrap", lambda self, a, dt, st, name: (
        wrapped.append((name, a)), orig(self, a, dt, st, name))[1])
    ctx = attn.Context(num_threads=1)
    layer = attn.DecoderLayer(E, H, rope={}, context=ctx)
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        layer.set_weight(name + ".weight", rng.standard_normal((E, E)).astype(np.float32) / 4)
    s0 = base.strides[0]
    last = base[:, -1:, :]
    views = [last] + [as_strided(last, (B, 1, E), (s0, s, 4)) for s in (3, -4, 0)]
    want = None
    for x in views:
        cache = attn.KVCache(B, H, D, capacity=2, context=ctx)
        wrapped.clear()
        y = layer(x, cache)
        assert [np.shares_memory(a, x) for n, a in wrapped if n == "x"] == [True]
        assert [a is y for n, a in wrapped if n == "y"] == [True]
        want = y if want is None else want
        np.testing.assert_array_equal(y, want)
        q = as_strided(base, (B, H, 1, D), (s0, 4 * D, 7, 4))
        wrapped.clear()
        cache.attend(q)
        assert [np.shares_memory(a, q) for n, a in wrapped if n == "q"] == [True]
    np.testing.assert_array_equal(
        layer(np.ascontiguousarray(last), attn.KVCache(B, H, D, capacity=2, context=ctx)),
        want)
    ctx.close()


def test_load_state_dict_needs_a_mapping():
    # A list of (name, array) pairs was searched as a list: every weight
    # "missing" (KeyError); None raised "argument of type 'NoneType' is not
    # iterable".
    layer = attn.DecoderLayer(8, 2)
    pairs = [(n, np.zeros((8, 8), np.float32))
             for n in ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")]
    for bad in (pairs, None):
        with pytest.raises(TypeError, match="^DecoderLayer.load_state_dict: the state dict must "
                                            "be a mapping"):
            layer.load_state_dict(bad)
    layer.load_state_dict(dict(pairs))


def test_rope_scaling_names_a_misspelt_key():
    # TypeError "_rope_cache_params() got an unexpected keyword argument
    # 'Factor'": the binding's helper, not DecoderLayer's rope_scaling.
    with pytest.raises(TypeError, match="^DecoderLayer: rope_scaling has no key 'Factor'"):
        attn.DecoderLayer(8, 2, rope={}, rope_scaling={"scaling": "linear", "Factor": 2.0})
    attn.DecoderLayer(8, 2, rope={}, rope_scaling={"scaling": "linear", "factor": 2.0})


def test_zero_heads_or_head_dim_is_not_the_default():
    # num_kv_heads=0 made a layer with num_heads kv heads and head_dim=0 one
    # with embed_dim / num_heads (libattn reads 0 as the default).
    for kw in (dict(num_kv_heads=0), dict(head_dim=0)):
        with pytest.raises(ValueError, match="^DecoderLayer: %s = 0 is not allowed" % list(kw)[0]):
            attn.DecoderLayer(8, 2, **kw)
    layer = attn.DecoderLayer(8, 2, num_kv_heads=1, head_dim=2)
    assert (layer.num_kv_heads, layer.head_dim) == (1, 2)
