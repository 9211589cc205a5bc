import math

import numpy as np
import pytest

import attn
import reference as ref
from conftest import close, try_torch

TOL = dict(rtol=1e-4, atol=2e-5)


def qkv(rng, B=2, Hq=4, Hkv=2, Lq=5, Lk=7, D=8, Dv=None):
    Dv = D if Dv is None else Dv
    q = rng.standard_normal((B, Hq, Lq, D)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, Lk, D)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, Lk, Dv)).astype(np.float32)
    return q, k, v


def check(q, k, v, **kw):
    """Compare out, lse and weights with the reference for one set of options."""
    refkw = {key: kw[key] for key in kw if key not in ("alibi_slopes",)}
    if "alibi_slopes" in kw:
        refkw["alibi"] = kw["alibi_slopes"]
    if isinstance(refkw.get("causal"), str):
        refkw["align"] = refkw["causal"]
        refkw["causal"] = True
    if refkw.get("mask") is not None and np.asarray(refkw["mask"]).dtype in (np.bool_, np.uint8):
        refkw["bool_mask"] = refkw.pop("mask")
    want_o, want_l, want_w = ref.sdpa(q, k, v, **refkw)
    out, lse, w = attn.sdpa(q, k, v, return_lse=True, return_weights=True, **kw)
    close(out, want_o, **TOL)
    close(lse, want_l, **TOL)
    close(w, want_w, **TOL)
    close(attn.sdpa(q, k, v, **kw), want_o, **TOL)


@pytest.mark.parametrize("shape", [
    dict(B=1, Hq=1, Hkv=1, Lq=1, Lk=1, D=1),
    dict(B=2, Hq=4, Hkv=4, Lq=5, Lk=7, D=8),
    dict(B=1, Hq=6, Hkv=2, Lq=13, Lk=13, D=16, Dv=5),   # GQA, Dv != D
    dict(B=2, Hq=4, Hkv=1, Lq=3, Lk=67, D=32),          # multi-query
    dict(B=1, Hq=2, Hkv=2, Lq=70, Lk=3, D=4),
])
def test_plain(rng, shape):
    check(*qkv(rng, **shape))
    check(*qkv(rng, **shape), scale=0.3)


@pytest.mark.parametrize("align", ["top-left", "bottom-right"])
@pytest.mark.parametrize("lq_lk", [(6, 6), (3, 9), (9, 3), (1, 17)])
def test_causal_both_alignments(rng, align, lq_lk):
    q, k, v = qkv(rng, Lq=lq_lk[0], Lk=lq_lk[1])
    check(q, k, v, causal=align)
    check(q, k, v, causal=True, align=align)


def test_masks(rng):
    q, k, v = qkv(rng)
    add = rng.standard_normal((2, 1, 5, 7)).astype(np.float32)
    add[0, 0, 1, :3] = -np.inf
    check(q, k, v, mask=add)
    keep = rng.random((5, 7)) > 0.4
    keep[2] = False  # a fully masked row: zeros, lse -inf
    check(q, k, v, mask=keep)
    check(q, k, v, mask=keep.astype(np.uint8))
    out, lse = attn.sdpa(q, k, v, mask=add, bool_mask=keep, return_lse=True)
    want = ref.sdpa(q, k, v, mask=add, bool_mask=keep)
    close(out, want[0], **TOL)
    close(lse, want[1], **TOL)
    assert np.all(out[:, :, 2] == 0) and np.all(lse[:, :, 2] == -np.inf)


def test_window_kvlens_alibi_sinks_softcap(rng):
    q, k, v = qkv(rng, Lq=9, Lk=11)
    check(q, k, v, window=(2, 1))
    check(q, k, v, causal="bottom-right", window=(3, 0))
    check(q, k, v, window=(None, 0), align="bottom-right")
    check(q, k, v, kv_lens=[4, 11])
    check(q, k, v, kv_lens=np.array([0, 5]))
    slopes = ref.alibi_slopes(4).astype(np.float32)
    check(q, k, v, alibi_slopes=slopes, causal=True)
    check(q, k, v, alibi_slopes=slopes, align="bottom-right")
    check(q, k, v, sinks=np.array([0.5, -1.0, 2.0, 0.0], np.float32))
    check(q, k, v, softcap=2.0)
    check(q, k, v, softcap=1.5, mask=np.where(rng.random((9, 11)) > 0.5, 0, -np.inf))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [None, (3, 0)])
@pytest.mark.parametrize("alibi", [False, True])
def test_positions(rng, causal, window, alibi):
    """Padded kv_lens with bottom-right alignment, q_offsets, and both."""
    if not (causal or window or alibi):
        return
    q, k, v = qkv(rng, B=3, Lq=4, Lk=12)
    kw = dict(window=window)
    if alibi:
        kw["alibi_slopes"] = ref.alibi_slopes(4).astype(np.float32)
    lens, offs = [5, 12, 0], [-2, 7, 10]
    check(q, k, v, causal="bottom-right" if causal else False,
          align="bottom-right", kv_lens=lens, **kw)
    check(q, k, v, causal=causal, q_offsets=offs, **kw)
    check(q, k, v, causal=causal, q_offsets=np.array(offs, np.float64), kv_lens=lens, **kw)


def test_decode_window_in_padded_cache(rng):
    # One new token per sequence; the cache is padded to 16 keys.
    q, k, v = qkv(rng, B=2, Lq=1, Lk=16)
    out = attn.sdpa(q, k, v, window=(3, 0), align="bottom-right", kv_lens=[6, 11])
    want = ref.sdpa(q, k, v, window=(3, 0), align="bottom-right", kv_lens=[6, 11])[0]
    close(out, want, **TOL)
    assert np.all(np.abs(out) > 0)


def test_q_offsets_varlen_and_errors(rng):
    cu_q, cu_k = np.array([0, 3, 5]), np.array([0, 6, 14])
    q = rng.standard_normal((5, 2, 8)).astype(np.float32)
    k = rng.standard_normal((14, 1, 8)).astype(np.float32)
    v = rng.standard_normal((14, 1, 4)).astype(np.float32)
    offs = [-1, 6]
    out = attn.sdpa_varlen(q, k, v, cu_q, cu_k, causal=True, q_offsets=offs)
    for b in range(2):
        qs, ks = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        want = ref.sdpa(q[qs].transpose(1, 0, 2)[None], k[ks].transpose(1, 0, 2)[None],
                        v[ks].transpose(1, 0, 2)[None], causal=True, q_offsets=[offs[b]])[0]
        close(out[qs], want[0].transpose(1, 0, 2), **TOL)
    q, k, v = qkv(rng)
    with pytest.raises(attn.AttnError) as e:
        attn.sdpa(q, k, v, causal="bottom-right", q_offsets=[0, 1])
    assert e.value.status == "ATTN_ERR_INVALID_ARG" and "align" in e.value.message
    with pytest.raises(attn.AttnError) as e:
        attn.sdpa(q, k, v, q_offsets=[0, 2 ** 61])
    assert "q_offsets[1]" in e.value.message
    for bad in ([0.5, 1], [0, np.nan], ["a", "b"], [0, 2.0 ** 70]):
        with pytest.raises(ValueError, match="q_offsets"):
            attn.sdpa(q, k, v, q_offsets=bad)
    with pytest.raises(ValueError, match="kv_lens"):
        attn.sdpa(q, k, v, kv_lens=[2.5, 3])
    with pytest.raises(ValueError, match="q_offsets"):
        attn.sdpa(q, k, v, q_offsets=[1])


def test_blhd_layout_and_strided_views(rng):
    q, k, v = qkv(rng, Lq=6, Lk=10)
    want = ref.sdpa(q, k, v, causal=True, align="bottom-right")[0]
    tq, tk, tv = (np.ascontiguousarray(a.transpose(0, 2, 1, 3)) for a in (q, k, v))
    out = attn.sdpa(tq, tk, tv, causal="bottom-right", layout="blhd")
    assert out.shape == (2, 6, 4, 8)
    close(out.transpose(0, 2, 1, 3), want, **TOL)
    # The same through explicit transposed views in the default layout.
    close(attn.sdpa(tq.transpose(0, 2, 1, 3), tk.transpose(0, 2, 1, 3),
                    tv.transpose(0, 2, 1, 3), causal="bottom-right"), want, **TOL)
    # A fused QKV buffer [B, L, 3, H, D] sliced into views: no copies.
    fused = rng.standard_normal((2, 6, 3, 4, 8)).astype(np.float32)
    fq, fk, fv = fused[:, :, 0], fused[:, :, 1], fused[:, :, 2]
    for a in (fq, fk, fv):
        assert attn._api._element_strides(a.transpose(0, 2, 1, 3)) is not None
    got = attn.sdpa(fq, fk, fv, layout="blhd", causal=True)
    w = ref.sdpa(*(a.transpose(0, 2, 1, 3) for a in (fq, fk, fv)), causal=True)[0]
    close(got.transpose(0, 2, 1, 3), w, **TOL)
    # Output into a strided view of a bigger buffer.
    buf = np.zeros((2, 4, 6, 20), np.float32)
    attn.sdpa(q[:, :, :6], k, v, out=buf[:, :, :, 4:12], causal="bottom-right")
    close(buf[:, :, :, 4:12], want, **TOL)
    assert not buf[..., :4].any() and not buf[..., 12:].any()
    # float64 and non-contiguous innermost inputs are converted.
    close(attn.sdpa(q.astype(np.float64), np.asfortranarray(k), v[..., ::-1][..., ::-1],
                    causal="bottom-right"), want, **TOL)


def test_unbatched(rng):
    q, k, v = qkv(rng, B=1)
    out, lse = attn.sdpa(q[0], k[0], v[0], return_lse=True)
    want = ref.sdpa(q, k, v)
    close(out, want[0][0], **TOL)
    close(lse, want[1][0], **TOL)


def test_properties(rng):
    # GQA equals multi-head attention with the kv heads repeated.
    q, k, v = qkv(rng, Hq=6, Hkv=3)
    rep = attn.sdpa(q, np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1))
    close(attn.sdpa(q, k, v), rep, rtol=1e-5, atol=1e-6)
    # Keys split in two halves and merged through the log-sum-exp.
    q, k, v = qkv(rng, Lk=12)
    o1, l1 = attn.sdpa(q, k[:, :, :5], v[:, :, :5], return_lse=True)
    o2, l2 = attn.sdpa(q, k[:, :, 5:], v[:, :, 5:], return_lse=True)
    l = np.logaddexp(l1, l2)
    merged = (np.exp(l1 - l)[..., None] * o1 + np.exp(l2 - l)[..., None] * o2)
    close(merged, attn.sdpa(q, k, v), rtol=1e-4, atol=1e-5)


def test_torch(rng):
    torch = try_torch()
    if torch is None:
        pytest.skip("torch is not installed")
    q, k, v = qkv(rng, Hq=8, Hkv=2, Lq=6, Lk=9, D=16)
    tq, tk, tv = (torch.from_numpy(a).double() for a in (q, k, v))
    tk, tv = tk.repeat_interleave(4, dim=1), tv.repeat_interleave(4, dim=1)
    s = tq @ tk.transpose(-1, -2) / math.sqrt(16)
    for align, diag in (("top-left", 0), ("bottom-right", 9 - 6)):
        allowed = torch.ones(6, 9, dtype=torch.bool).tril(diagonal=diag)
        want = torch.softmax(s.masked_fill(~allowed, -math.inf), -1) @ tv
        close(attn.sdpa(q, k, v, causal=align), want.numpy(), **TOL)
    keep = torch.from_numpy(rng.random((6, 9)) > 0.3)
    keep[:, 0] = True
    want = torch.softmax(s.masked_fill(~keep, -math.inf), -1) @ tv
    close(attn.sdpa(q, k, v, mask=keep.numpy()), want.numpy(), **TOL)


def test_varlen(rng):
    cu_q = np.array([0, 3, 3, 10])
    cu_k = np.array([0, 5, 9, 12])
    q = rng.standard_normal((10, 4, 8)).astype(np.float32)
    k = rng.standard_normal((12, 2, 8)).astype(np.float32)
    v = rng.standard_normal((12, 2, 6)).astype(np.float32)
    for kw in ({}, {"causal": "bottom-right"}, {"causal": "top-left", "softcap": 3.0}):
        out, lse = attn.sdpa_varlen(q, k, v, cu_q, cu_k, return_lse=True, **kw)
        assert out.shape == (10, 4, 6) and lse.shape == (4, 10)
        for b in range(3):
            qs, ks = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
            if cu_q[b] == cu_q[b + 1]:
                continue
            rk = dict(kw)
            if "causal" in rk:
                rk["align"], rk["causal"] = rk["causal"], True
            wo, wl, _ = ref.sdpa(q[qs].transpose(1, 0, 2)[None], k[ks].transpose(1, 0, 2)[None],
                                 v[ks].transpose(1, 0, 2)[None], **rk)
            close(out[qs], wo[0].transpose(1, 0, 2), **TOL)
            close(lse[:, qs], wl[0], **TOL)
    # Self-attention: cu_seqlens_k defaults to cu_seqlens_q.
    qq = rng.standard_normal((7, 2, 4)).astype(np.float32)
    got = attn.sdpa_varlen(qq, qq, qq, [0, 4, 7], causal=True)
    close(got[4:], ref.sdpa(qq[4:].transpose(1, 0, 2)[None], qq[4:].transpose(1, 0, 2)[None],
                            qq[4:].transpose(1, 0, 2)[None], causal=True)[0][0]
          .transpose(1, 0, 2), **TOL)


def test_errors(rng):
    q, k, v = qkv(rng)
    with pytest.raises(attn.AttnError) as e:
        attn.sdpa(q, k[..., :4], v)
    assert e.value.status == "ATTN_ERR_SHAPE"
    assert "attn_sdpa" in e.value.message and "k.shape[3]" in e.value.message
    with pytest.raises(attn.AttnError) as e:
        attn.sdpa(q[:, :3], k, v)
    assert e.value.status == "ATTN_ERR_SHAPE" and "multiple" in e.value.message
    with pytest.raises(attn.AttnError) as e:
        attn.sdpa(q, k, v, out=q)
    assert e.value.status == "ATTN_ERR_ALIASING"
    with pytest.raises(attn.AttnError) as e:
        attn.sdpa(q, k, v, kv_lens=[3, 99])
    assert e.value.status == "ATTN_ERR_INVALID_ARG" and "kv_lens[1]" in e.value.message
    with pytest.raises(attn.AttnError) as e:
        attn.sdpa(q, k, v, mask=np.zeros((3, 7), np.float32))
    assert e.value.status == "ATTN_ERR_SHAPE" and "mask" in e.value.message
    with pytest.raises(attn.AttnError) as e:
        attn.sdpa(q, k, v, window=(-1, 0))
    assert e.value.status == "ATTN_ERR_INVALID_ARG"
    with pytest.raises(attn.AttnError) as e:
        attn.sdpa(q, k, v, sinks=[0, np.nan, 0, 0])
    assert "sinks[1]" in e.value.message
    with pytest.raises(ValueError, match="kv_lens"):
        attn.sdpa(q, k, v, kv_lens=[3])
    with pytest.raises(ValueError, match="alibi_slopes"):
        attn.sdpa(q, k, v, alibi_slopes=[1.0, 2.0])
    with pytest.raises(ValueError, match="align"):
        attn.sdpa(q, k, v, causal="diagonal")
    with pytest.raises(ValueError, match="layout"):
        attn.sdpa(q, k, v, layout="hbld")
    with pytest.raises(ValueError, match="dims"):
        attn.sdpa(q, k[0], v)
    with pytest.raises(ValueError, match="softcap"):
        attn.sdpa(q, k, v, softcap=0)
    # No keys is fine (test_empty.py); a shape mismatch is not.
    with pytest.raises(attn.AttnError) as e:
        attn.sdpa(q, k[:, :, :0], v[:, :, :1])
    assert e.value.status == "ATTN_ERR_SHAPE"
    with pytest.raises(attn.AttnError) as e:
        attn.sdpa_varlen(q[0].transpose(1, 0, 2), k[0].transpose(1, 0, 2),
                         v[0].transpose(1, 0, 2), [0, 2, 4], [0, 3, 6])
    assert "cu_seqlens" in e.value.message
    with pytest.raises(ValueError, match="cu_seqlens"):
        attn.sdpa_varlen(q[0], k[0], v[0], [0, 2, 5], [0, 7])


def test_slopes_and_sinks_must_be_real_numbers():
    # They were cast with np.ascontiguousarray(dtype=float32): a complex
    # array lost its imaginary part (a ComplexWarning only), bools became
    # 0/1 slopes, strings raised numpy's error naming nothing, and 1e300
    # became inf.
    q = np.ones((1, 2, 3, 4), np.float32)
    for name in ("alibi_slopes", "sinks"):
        for bad in (np.array([1 + 1j, 2]), np.array([True, False]), ["a", "b"]):
            with pytest.raises(TypeError, match="^sdpa: %s has dtype .* real numbers" % name):
                attn.sdpa(q, q, q, **{name: bad})
        with pytest.raises(ValueError, match="^sdpa: %s .* past float32's range" % name):
            attn.sdpa(q, q, q, **{name: np.array([1e300, 1.0])})
    want = attn.sdpa(q, q, q, alibi_slopes=np.array([0.5, 0.25], np.float32))
    np.testing.assert_array_equal(attn.sdpa(q, q, q, alibi_slopes=[0.5, 0.25]), want)


def test_window_must_be_a_pair():
    # window=2 raised "cannot unpack non-iterable int object" and (2,) "not
    # enough values to unpack", naming neither the call nor the argument.
    q = np.ones((1, 1, 3, 4), np.float32)
    cache = attn.KVCache(1, 1, 4, capacity=4)
    cache.append(q, q)
    for call, fn in ((lambda w: attn.sdpa(q, q, q, window=w), "sdpa"),
                     (lambda w: attn.sdpa_varlen(q[0], q[0], q[0], [0, 1], window=w),
                      "sdpa_varlen"),
                     (lambda w: cache.attend(q, window=w), "KVCache.attend")):
        for bad in (2, (2,), (2, 0, 1), "20", {"left": 2, "right": 0}):
            with pytest.raises(TypeError, match="^%s: window = .* must be a pair" % fn):
                call(bad)
    np.testing.assert_array_equal(attn.sdpa(q, q, q, window=[1, 0]),
                                  attn.sdpa(q, q, q, window=(1, 0)))
    cache.close()


def test_varlen_backward_names_q_dims():
    # A 2-D q with sinks said "sinks has shape (2,) but must have shape (0,)".
    q = np.ones((4, 2, 8), np.float32)
    out, lse = attn.sdpa_varlen(q, q, q, [0, 4], return_lse=True)
    with pytest.raises(ValueError, match=r"^sdpa_varlen_backward: q has 2 dims but must have 3"):
        attn.sdpa_varlen_backward(q[:, 0], q, q, out, lse, out, [0, 4], sinks=[0.0, 0.0])
    assert len(attn.sdpa_varlen_backward(q, q, q, out, lse, out, [0, 4], sinks=[0.0, 0.0])) == 3
