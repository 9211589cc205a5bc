import numpy as np
import pytest

import attn
import reference as ref
from conftest import close, try_torch

LAYOUTS = ["interleaved", "concat", "concat-shifted", "cos-sin"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dim", [4, 7, 16, 65])
def test_sinusoidal(layout, dim):
    close(attn.sinusoidal(23, dim, layout=layout), ref.sinusoidal(23, dim, layout), atol=2e-6)
    close(attn.sinusoidal(5, dim, layout=layout, base=500.0, offset=1000.5),
          ref.sinusoidal(5, dim, layout, base=500.0, offset=1000.5), atol=2e-6)
    pos = np.array([0.0, 3.0, 1e5, 7.25])
    close(attn.sinusoidal(4, dim, layout=layout, positions=pos),
          ref.sinusoidal(4, dim, layout, positions=pos), atol=2e-6)


def test_sinusoidal_chunks_agree():
    whole = attn.sinusoidal(40, 32)
    close(attn.sinusoidal(15, 32, offset=25), whole[25:], atol=1e-6)


def test_sinusoidal_into_view():
    buf = np.zeros((10, 20), np.float32)
    attn.sinusoidal(10, 8, out=buf[:, 4:12])
    close(buf[:, 4:12], ref.sinusoidal(10, 8), atol=2e-6)
    assert not buf[:, :4].any() and not buf[:, 12:].any()


def test_sinusoidal_add(rng):
    x = rng.standard_normal((3, 9, 12)).astype(np.float32)
    y = attn.sinusoidal_add(x, layout="concat")
    close(y, x + ref.sinusoidal(9, 12, "concat"), atol=2e-6)
    x2 = x[0].copy()
    same = attn.sinusoidal_add(x2, offset=4, inplace=True)
    assert same is x2
    close(x2, x[0] + ref.sinusoidal(9, 12, offset=4), atol=2e-6)
    with pytest.raises(ValueError, match="float32"):
        attn.sinusoidal_add(x.astype(np.float64), inplace=True)


def test_sinusoidal_errors():
    with pytest.raises(ValueError, match="layout"):
        attn.sinusoidal(4, 4, layout="diagonal")
    with pytest.raises(attn.AttnError) as e:
        attn.sinusoidal(4, 4, base=1.0)
    assert e.value.status == "ATTN_ERR_INVALID_ARG"
    with pytest.raises(ValueError, match="positions"):
        attn.sinusoidal(4, 4, positions=[1.0, 2.0])


@pytest.mark.parametrize("style", ["half", "interleaved"])
@pytest.mark.parametrize("rotary_dim", [None, 4])
def test_rope(rng, style, rotary_dim):
    x = rng.standard_normal((2, 3, 7, 8)).astype(np.float32)
    close(attn.rope(x, style=style, rotary_dim=rotary_dim),
          ref.rope(x, style, rotary_dim), atol=2e-6)
    pos = rng.integers(0, 5000, size=(2, 7))
    close(attn.rope(x, style=style, rotary_dim=rotary_dim, theta=500000.0, positions=pos),
          ref.rope(x, style, rotary_dim, theta=500000.0, positions=pos), atol=1e-5)


def test_rope_offset_layouts_and_inplace(rng):
    x = rng.standard_normal((2, 4, 6, 16)).astype(np.float32)   # [B, H, L, D]
    want = ref.rope(x, positions=np.broadcast_to(np.arange(10, 16), (2, 6)))
    close(attn.rope(x, offset=10), want, atol=2e-6)
    close(attn.rope(x, positions=np.arange(10, 16)), want, atol=2e-6)
    blhd = np.ascontiguousarray(x.transpose(0, 2, 1, 3))        # [B, L, H, D]
    got = attn.rope(blhd, offset=10, layout="blhd")
    close(got.transpose(0, 2, 1, 3), want, atol=2e-6)
    close(attn.rope(x[0], offset=10), want[0], atol=2e-6)      # no batch axis
    y = blhd.copy()
    assert attn.rope(y, offset=10, layout="blhd", inplace=True) is y
    close(y, got, atol=0)


def test_rope_torch_rotate_half(rng):
    torch = try_torch()
    if torch is None:
        pytest.skip("torch is not installed")
    x = rng.standard_normal((1, 2, 5, 8)).astype(np.float32)
    t = torch.from_numpy(x).double()
    inv = 1.0 / (10000.0 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8))
    freqs = torch.outer(torch.arange(5, dtype=torch.float64), inv)
    emb = torch.cat([freqs, freqs], -1)
    half = torch.cat([-t[..., 4:], t[..., :4]], -1)             # HF rotate_half
    close(attn.rope(x), (t * emb.cos() + half * emb.sin()).numpy(), atol=2e-6)


def test_rope_errors(rng):
    x = rng.standard_normal((1, 2, 3, 6)).astype(np.float32)
    with pytest.raises(attn.AttnError) as e:
        attn.rope(x, rotary_dim=3)
    assert e.value.status == "ATTN_ERR_INVALID_ARG" and "rotary_dim" in e.value.message
    with pytest.raises(attn.AttnError):
        attn.rope(x, positions=np.array([[0, -1, 2]]))
    with pytest.raises(ValueError, match="positions"):
        attn.rope(x, positions=np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match="style"):
        attn.rope(x, style="sideways")
    with pytest.raises(ValueError, match="dims"):
        attn.rope(x[0, 0])


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 12, 16, 24, 40, 64])
def test_alibi_slopes(n):
    close(attn.alibi_slopes(n), ref.alibi_slopes_press(n), rtol=1e-6)
    close(attn.alibi_slopes(n, max_bias=4.0), ref.alibi_slopes(n, 4.0), rtol=1e-6)


def test_alibi_errors():
    # n_heads < 1 was reported as "slopes is NULL" (the binding passed no array).
    for n in (0, -3):
        with pytest.raises(attn.AttnError) as e:
            attn.alibi_slopes(n)
        assert e.value.status == "ATTN_ERR_INVALID_ARG" and "n_heads = %d" % n in e.value.message
    with pytest.raises(attn.AttnError):
        attn.alibi_slopes(4, max_bias=-1.0)


def test_explicit_zero_is_not_the_default():
    # libattn reads 0 as "the default" in these fields, so theta=0, base=0 and
    # max_bias=0 (all invalid: theta and base must exceed 1) silently gave
    # theta 10000, base 10000 and max_bias 8; None is the default here.
    x = np.ones((1, 1, 3, 8), np.float32)
    cache = attn.KVCache(1, 1, 8, capacity=4)
    for call, what in ((lambda: attn.rope(x, theta=0), "rope: theta"),
                       (lambda: attn.rope_backward(x, theta=0.0), "rope_backward: theta"),
                       (lambda: attn.sinusoidal(4, 8, base=0), "sinusoidal: base"),
                       (lambda: attn.sinusoidal_add(x[0, 0], base=0), "sinusoidal_add: base"),
                       (lambda: attn.alibi_slopes(8, max_bias=0), "alibi_slopes: max_bias"),
                       (lambda: attn.rope_cache(8, 4, theta=0), "rope_cache: theta"),
                       (lambda: attn.rope_cache(8, 4, scaling="yarn", factor=2,
                                                original_max_position=4, beta_fast=0),
                        "rope_cache: beta_fast"),
                       (lambda: attn.rope_cache(8, 4, scaling="llama3", factor=2,
                                                original_max_position=4, low_freq_factor=0),
                        "rope_cache: low_freq_factor"),
                       (lambda: attn.rope_cache(8, 4, scaling="dynamic", factor=2,
                                                original_max_position=4, seq_len=0),
                        "rope_cache: seq_len"),
                       (lambda: cache.append(x, x, rope={"theta": 0}),
                        "KVCache.append: rope theta")):
        with pytest.raises(ValueError, match="^%s = 0 is not allowed" % what):
            call()
    assert cache.lengths.tolist() == [0]
    cache.close()


def test_positions_and_factors_must_be_real_numbers():
    # A float64 cast kept the real part of complex positions (a
    # ComplexWarning only), took bools as positions 0/1 and raised numpy's
    # "could not convert string to float" naming nothing.
    for bad in (np.array([1 + 1j, 2]), np.array([True, False]), ["a", "b"]):
        with pytest.raises(TypeError, match="^sinusoidal: positions has dtype"):
            attn.sinusoidal(2, 8, positions=bad)
        with pytest.raises(TypeError, match="^sinusoidal_add: positions has dtype"):
            attn.sinusoidal_add(np.ones((2, 8), np.float32), positions=bad)
    ones = np.ones(2)
    with pytest.raises(TypeError, match="^rope_cache: short_factors has dtype complex"):
        attn.rope_cache(8, 4, scaling="longrope", original_max_position=4,
                        short_factors=ones.astype(complex), long_factors=ones)
    with pytest.raises(TypeError, match="^rope_cache: long_factors has dtype bool"):
        attn.rope_cache(8, 4, scaling="longrope", original_max_position=4,
                        short_factors=ones, long_factors=ones.astype(bool))
    close(attn.sinusoidal(2, 8, positions=[3, 5]), ref.sinusoidal(2, 8, positions=[3.0, 5.0]),
          atol=2e-6)


def test_sinusoidal_out_must_match_length_and_dim():
    # With out= the table's shape came from out alone: sinusoidal(10, 8,
    # out=[4, 8] array) wrote 4 rows and ignored length; a 0-d out raised
    # IndexError, a list AttributeError, length=-1 numpy's unnamed error.
    with pytest.raises(ValueError, match=r"^sinusoidal: out has shape \(4, 8\) but length and "
                                         r"dim say \(10, 8\)"):
        attn.sinusoidal(10, 8, out=np.empty((4, 8), np.float32))
    with pytest.raises(ValueError, match="^sinusoidal: out has shape"):
        attn.sinusoidal(10, 8, out=np.empty((), np.float32))
    with pytest.raises(TypeError, match="^sinusoidal: out must be a numpy array"):
        attn.sinusoidal(2, 2, out=[[0.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="^sinusoidal: length = -1 and dim = 8 must be >= 0"):
        attn.sinusoidal(-1, 8)
    out = np.empty((4, 8), np.float32)
    assert attn.sinusoidal(4, 8, out=out) is out
    close(out, ref.sinusoidal(4, 8), atol=2e-6)


def test_rope_rotary_dim_zero_is_not_all():
    # rotary_dim=0 rotated every dim (libattn's 0 = D) where it says none.
    x = np.ones((1, 1, 3, 8), np.float32)
    for f in (attn.rope, attn.rope_backward):
        with pytest.raises(ValueError, match="^%s: rotary_dim = 0 is not allowed" % f.__name__):
            f(x, rotary_dim=0)
    close(attn.rope(x, rotary_dim=None), attn.rope(x, rotary_dim=8), atol=0)


def test_offset_with_positions_is_refused():
    # libattn uses positions instead of offset + l: rope(x, positions=p,
    # offset=5) rotated by p alone, the offset silently dropped.
    x = np.ones((1, 1, 3, 8), np.float32)
    for call, fn in ((lambda: attn.rope(x, positions=[0, 1, 2], offset=5), "rope"),
                     (lambda: attn.rope_backward(x, positions=[0, 1, 2], offset=1),
                      "rope_backward"),
                     (lambda: attn.sinusoidal(3, 8, positions=[0.0, 1, 2], offset=0.5),
                      "sinusoidal"),
                     (lambda: attn.sinusoidal_add(x[0, 0], positions=[0.0, 1, 2], offset=2),
                      "sinusoidal_add")):
        with pytest.raises(ValueError, match="^%s: offset = .* and positions are both set" % fn):
            call()
    close(attn.rope(x, positions=[5, 6, 7]), attn.rope(x, offset=5), atol=0)


def test_rope_cached_position_ids_with_bad_x_names_x():
    # A 2-D x with position_ids gave "position_ids has shape (1, 4) but must
    # have shape (4, 0)", blaming position_ids for x's dims.
    cos, sin, _ = attn.rope_cache(4, 8)
    with pytest.raises(ValueError, match=r"^rope_cached: x has 2 dims but must be \[B, H, L, D\]"):
        attn.rope_cached(np.ones((4, 8), np.float32), cos, sin, position_ids=[[0, 1, 2, 3]])
    x = np.ones((1, 1, 4, 8), np.float32)
    close(attn.rope_cached(x, cos, sin, position_ids=[[0, 1, 2, 3]]),
          attn.rope_cached(x, cos, sin), atol=0)
