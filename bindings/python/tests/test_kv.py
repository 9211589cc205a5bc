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
