"""attn.KVCache against a float64 NumPy reference: decoding in chunks gives
one causal pass over the whole sequence; paged equals contiguous; copy,
truncate, read; bad input raises and changes nothing."""
import numpy as np
import pytest

import attn


def causal_ref(q, k, v):
    """q [Hq, T, D], k, v [Hkv, T, *]: causal attention in float64."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    g = q.shape[0] // k.shape[0]
    k, v = np.repeat(k, g, axis=0), np.repeat(v, g, axis=0)
    s = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
    T = q.shape[1]
    s[:, np.triu(np.ones((T, T), bool), 1)] = -np.inf
    w = np.exp(s - s.max(-1, keepdims=True))
    return (w / w.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("paged", [False, True])
def test_chunks_equal_full_causal(paged):
    rng = np.random.default_rng(5)
    B, Hq, Hkv, D, T = 2, 4, 2, 8, 23
    q = rng.standard_normal((B, Hq, T, D)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, T, D)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, T, D)).astype(np.float32)
    cache = (attn.KVCache(B, Hkv, D, paged=True, block_size=4, num_blocks=16) if paged
             else attn.KVCache(B, Hkv, D, capacity=T))
    got = np.zeros_like(q)
    done = np.zeros(B, np.int64)
    for step in [5, 1, 0, 7, 3, 4, 1, 1, 1]:
        n = np.minimum(np.array([step, (step + 2) % 5]), T - done)
        L = max(int(n.max()), 1)
        kn = np.zeros((B, Hkv, L, D), np.float32)
        vn, qn = np.zeros_like(kn), np.zeros((B, Hq, L, D), np.float32)
        for b in range(B):
            sl = slice(done[b], done[b] + n[b])
            kn[b, :, :n[b]], vn[b, :, :n[b]], qn[b, :, :n[b]] = k[b, :, sl], v[b, :, sl], q[b, :, sl]
        cache.append(kn, vn, n)
        out = cache.attend(qn, n)
        for b in range(B):
            got[b, :, done[b]:done[b] + n[b]] = out[b, :, :n[b]]
            assert not out[b, :, n[b]:].any()
        done += n
    np.testing.assert_array_equal(cache.lengths, done)
    for b in range(B):
        m = int(done[b])
        np.testing.assert_allclose(got[b, :, :m], causal_ref(q[b, :, :m], k[b, :, :m],
                                                             v[b, :, :m]), atol=2e-6)
        rk, rv = cache.read(b)
        np.testing.assert_array_equal(rk, k[b, :, :m])
        np.testing.assert_array_equal(rv, v[b, :, :m])


def test_copy_truncate_and_bad_input():
    rng = np.random.default_rng(6)
    cache = attn.KVCache(2, 1, 4, paged=True, block_size=4, num_blocks=4)
    k = rng.standard_normal((2, 1, 6, 4)).astype(np.float32)
    cache.append(k, k, [6, 0])
    cache.copy(1, 0)
    assert cache.free_blocks == 2  # shared, not copied
    cache.truncate(1, 5)
    cache.append(k, k, [0, 1])     # copy on write of the shared block
    assert cache.free_blocks == 1
    np.testing.assert_array_equal(cache.read(0)[0][0], k[0, 0])
    np.testing.assert_array_equal(cache.read(1)[0][0, 5], k[1, 0, 0])
    with pytest.raises(attn.AttnError, match="pool"):
        cache.append(np.zeros((2, 1, 8, 4), np.float32), np.zeros((2, 1, 8, 4), np.float32))
    np.testing.assert_array_equal(cache.lengths, [6, 6])
    with pytest.raises(attn.AttnError):
        cache.truncate(0, 7)
    cache.reset()
    assert cache.free_blocks == 4


def test_read_checks_seq_start_and_n():
    # read(seq, start) with start past the sequence's end returned empty
    # arrays (n = 0 skipped the library's check) or failed inside NumPy
    # ("negative dimensions"); a seq out of range was an IndexError.
    cache = attn.KVCache(2, 1, 8, capacity=4)
    x = np.ones((2, 1, 2, 8), np.float32)
    cache.append(x, x)
    assert cache.read(0, 2)[0].shape == (1, 0, 8)  # at the end: nothing left
    for args in ((0, 3), (0, 5, 0), (-1,), (5,)):
        with pytest.raises(attn.AttnError, match="attn_kv_read: (start|seq)"):
            cache.read(*args)
    with pytest.raises(ValueError, match="n = -1"):
        cache.read(0, 0, -1)
    # n past the sequence is refused before n rows are allocated: 2**40 raised
    # MemoryError (16 TiB) before libattn could say so.
    for n in (3, 2 ** 40):
        with pytest.raises(attn.AttnError, match="n = %d tokens but sequence 0 holds 2" % n) as e:
            cache.read(0, 0, n)
        assert e.value.status == "ATTN_ERR_INVALID_ARG"
    with pytest.raises(attn.AttnError, match="attn_kv_read: start = 1 and n = 2"):
        cache.read(0, 1, 2)
    assert cache.read(0, 1, 1)[0].shape == (1, 1, 8)
    cache.close()


def test_fractions_and_ranges_refused():
    # int() cut a fraction: truncate(0, 2.9) kept 2 tokens, capacity=10.5
    # made a cache of 10.
    cache = attn.KVCache(2, 1, 2, capacity=8)
    ones = np.ones((2, 1, 5, 2), np.float32)
    cache.append(ones, ones)
    for call in (lambda: cache.truncate(0, 2.9), lambda: cache.truncate(0.5, 1),
                 lambda: cache.copy(1.5, 0), lambda: cache.reset(np.float64(0.25)),
                 lambda: cache.read(0, 1.5), lambda: cache.read(0, 0, 2.5),
                 lambda: cache.read(0, 0, -1),
                 lambda: attn.KVCache(1, 1, 2, capacity=10.5),
                 lambda: attn.DecoderLayer(8, 2, window=3.5),
                 lambda: attn.MultiheadAttention(8, 2, kdim=4.5)):
        with pytest.raises(ValueError, match="not an integer|>= 0"):
            call()
    np.testing.assert_array_equal(cache.lengths, [5, 5])
    cache.truncate(0, 3.0)  # an integral float is taken, as in count arrays
    np.testing.assert_array_equal(cache.lengths, [3, 5])


def test_append_rope_must_be_a_dict_of_known_keys():
    # rope="half-split" raised AttributeError ('str' object has no attribute
    # 'get'); rope={"Theta": 5e5} ignored the key and rotated with theta 10000.
    cache = attn.KVCache(1, 1, 4, capacity=8)
    x = np.ones((1, 1, 2, 4), np.float32)
    with pytest.raises(TypeError, match="^KVCache.append: rope must be None or a dict, not str"):
        cache.append(x, x, rope="half-split")
    with pytest.raises(TypeError, match="^KVCache.append: rope has no key 'Theta'"):
        cache.append(x, x, rope={"Theta": 5e5})
    np.testing.assert_array_equal(cache.lengths, [0])
    cache.append(x, x, rope={"style": "interleaved", "theta": 5e5})
    np.testing.assert_array_equal(cache.lengths, [2])


def test_constructor_refuses_ignored_and_zero_sizes():
    # num_blocks / block_size without paged=True were ignored (a contiguous
    # cache was made); value_dim=0, and a paged capacity or block_size of 0,
    # were read by libattn as "the default" (head_dim, the whole pool, 16).
    for kw in (dict(num_blocks=4), dict(block_size=32)):
        with pytest.raises(ValueError, match="^KVCache: num_blocks and block_size are for a "
                                             "paged cache"):
            attn.KVCache(1, 1, 4, capacity=8, **kw)
    for kw, name in ((dict(capacity=8, value_dim=0), "value_dim"),
                     (dict(paged=True, num_blocks=4, capacity=0), "capacity"),
                     (dict(paged=True, num_blocks=4, block_size=0), "block_size")):
        with pytest.raises(ValueError, match="^KVCache: %s = 0 is not allowed" % name):
            attn.KVCache(1, 1, 4, **kw)
    with pytest.raises(attn.AttnError, match="capacity = 0"):
        attn.KVCache(1, 1, 4, capacity=0)  # contiguous: no default, libattn's message
    assert attn.KVCache(1, 1, 4, capacity=8, value_dim=6).value_dim == 6


def test_attend_causal_takes_no_alignment():
    # causal="top-left" was taken (as sdpa's alignment), and libattn's
    # attn_kv_attend ignores the alignment: the rows still sat at their
    # cache positions, not top-left.
    cache = attn.KVCache(1, 1, 4, capacity=8)
    x = np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4)
    cache.append(x, x)
    for causal in ("top-left", "bottom-right"):
        with pytest.raises(TypeError, match="^KVCache.attend: causal = '%s'" % causal):
            cache.attend(x[:, :, :1], n_new=[0], causal=causal)
    assert cache.attend(x[:, :, :1], n_new=[0], causal=True).shape == (1, 1, 1, 4)


def _bf16_bits(x):
    """float32 -> bfloat16 bits, nearest even (NaN-free input), in NumPy."""
    b = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def _bf16_value(h):
    return (h.astype(np.uint32) << 16).view(np.float32)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("paged", [False, True])
def test_half_cache(dtype, paged):
    """A half cache holds the rows rounded once (NumPy's float16 cast, or
    nearest-even bfloat16 by bits here); attention over it equals the
    float64 reference over those rounded rows."""
    rng = np.random.default_rng(11)
    B, Hq, Hkv, D, T = 2, 4, 2, 8, 19
    q = rng.standard_normal((B, Hq, T, D)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, T, D)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, T, D)).astype(np.float32)
    cache = (attn.KVCache(B, Hkv, D, paged=True, block_size=4, num_blocks=16, dtype=dtype)
             if paged else attn.KVCache(B, Hkv, D, capacity=T, dtype=dtype))
    if dtype == "float16":
        kr, vr = k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)
        # Half of the steps append float16 arrays (no upcast), half float32.
        first = (k[:, :, :7].astype(np.float16), v[:, :, :7].astype(np.float16), {})
    else:
        kr, vr = _bf16_value(_bf16_bits(k)), _bf16_value(_bf16_bits(v))
        first = (_bf16_bits(k[:, :, :7]), _bf16_bits(v[:, :, :7]), {"src_dtype": "bfloat16"})
    cache.append(first[0], first[1], **first[2])
    cache.append(k[:, :, 7:], v[:, :, 7:])
    np.testing.assert_array_equal(cache.lengths, [T, T])
    for b in range(B):
        rk, rv = cache.read(b)
        assert rk.dtype == np.float32
        np.testing.assert_array_equal(rk, kr[b])
        np.testing.assert_array_equal(rv, vr[b])
        hk, hv = cache.read(b, dtype=dtype)
        if dtype == "float16":
            assert hk.dtype == np.float16
            np.testing.assert_array_equal(hk.astype(np.float32), kr[b])
        else:
            assert hk.dtype == np.uint16
            np.testing.assert_array_equal(hk, _bf16_bits(k[b]))
    out = cache.attend(q[:, :, -3:], np.array([3, 3]))
    for b in range(B):
        want = causal_ref(q[b], kr[b], vr[b])[:, -3:]
        np.testing.assert_allclose(out[b], want, atol=2e-6, rtol=1e-5)
    out16 = cache.attend(q[:, :, -3:].astype(np.float16), np.array([3, 3]))
    assert out16.dtype == np.float16
    q16 = q[:, :, -3:].astype(np.float16).astype(np.float32)
    for b in range(B):
        want = causal_ref(np.concatenate([q[b, :, :-3], q16[b]], 1), kr[b], vr[b])[:, -3:]
        np.testing.assert_allclose(out16[b].astype(np.float32), want, rtol=2**-10, atol=1e-5)
    with pytest.raises(ValueError):
        attn.KVCache(1, 1, 4, capacity=4, dtype="int8")
