import numpy as np
import pytest

import attn
import reference as ref
from conftest import close, try_torch

SHAPES = [(1,), (7,), (3, 1), (4, 33), (2, 3, 17), (2, 2, 3, 129), (1, 1000)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("log", [False, True])
def test_matches_reference(rng, shape, log):
    x = rng.standard_normal(shape).astype(np.float32) * 4
    f = attn.log_softmax if log else attn.softmax
    close(f(x), ref.softmax(x, log=log))


@pytest.mark.parametrize("log", [False, True])
def test_scale_and_masks(rng, log):
    x = rng.standard_normal((2, 3, 5, 9)).astype(np.float32)
    add = rng.standard_normal((5, 9)).astype(np.float32)
    add[0, 3] = -np.inf
    keep = rng.random((2, 1, 1, 9)) > 0.3
    f = attn.log_softmax if log else attn.softmax
    close(f(x, scale=0.5), ref.softmax(x, scale=0.5, log=log))
    close(f(x, mask=add), ref.softmax(x, mask=add, log=log))
    close(f(x, mask=keep), ref.softmax(x, bool_mask=keep, log=log))
    close(f(x, mask=keep.astype(np.uint8)), ref.softmax(x, bool_mask=keep, log=log))
    close(f(x, scale=2.0, mask=add, bool_mask=keep),
          ref.softmax(x, scale=2.0, mask=add, bool_mask=keep, log=log))


def test_masked_entries_and_rows():
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    keep = np.array([[True, False, True, True], [False] * 4])
    y = attn.softmax(x, mask=keep)
    assert y[0, 1] == 0.0
    assert np.all(y[1] == 0.0)  # every entry masked: zeros, not NaN
    ly = attn.log_softmax(x, mask=keep)
    assert ly[0, 1] == -np.inf and np.all(ly[1] == -np.inf)
    x[0, 2] = np.nan
    assert np.all(np.isnan(attn.softmax(x)[0]))


def test_rows_sum_to_one_and_shift_invariance(rng):
    x = rng.standard_normal((6, 50)).astype(np.float32) * 10
    y = attn.softmax(x)
    close(y.sum(-1), np.ones(6), rtol=1e-5)
    close(attn.softmax(x + 100.0), y, rtol=1e-4, atol=1e-6)


def test_torch(rng):
    torch = try_torch()
    if torch is None:
        pytest.skip("torch is not installed")
    x = rng.standard_normal((3, 4, 31)).astype(np.float32)
    t = torch.from_numpy(x).double()
    close(attn.softmax(x), torch.softmax(t, -1).numpy())
    close(attn.log_softmax(x), torch.log_softmax(t, -1).numpy())
    close(attn.softmax(x, scale=0.25), torch.softmax(t * 0.25, -1).numpy())
    keep = rng.random((4, 31)) > 0.5
    tm = torch.zeros(4, 31, dtype=torch.float64).masked_fill(~torch.from_numpy(keep), -np.inf)
    close(attn.softmax(x, mask=keep), torch.softmax(t + tm, -1).numpy())


def test_strided_views_zero_copy(rng):
    base = rng.standard_normal((6, 20)).astype(np.float32)
    keep = base.copy()
    view = base[1::2, 3:15]  # sliced: strided rows, contiguous innermost
    want = ref.softmax(view)
    out = attn.softmax(view, out=view)  # in place through the view: no copy
    assert out is view
    close(view, want)
    untouched = np.ones(base.shape, bool)
    untouched[1::2, 3:15] = False
    assert np.array_equal(base[untouched], keep[untouched])


def test_converted_inputs(rng):
    x = rng.standard_normal((5, 7))
    close(attn.softmax(x), ref.softmax(x))                    # float64 -> float32 copy
    close(attn.softmax(x.T), ref.softmax(x.T))                # strided innermost -> copy
    close(attn.softmax(x[:, ::-1]), ref.softmax(x[:, ::-1]))  # negative stride -> copy
    close(attn.softmax(np.arange(6).reshape(2, 3)), ref.softmax(np.arange(6).reshape(2, 3)))
    close(attn.softmax([[1.0, 2.0, 3.0]]), ref.softmax([[1.0, 2.0, 3.0]]))
    raw = np.zeros(5 * 7 * 4 + 1, np.uint8)
    unaligned = np.ndarray((5, 7), np.float32, raw.data, offset=1)
    unaligned[:] = x
    assert not unaligned.flags.aligned
    close(attn.softmax(unaligned), ref.softmax(x.astype(np.float32)))  # misaligned -> copy
    with pytest.raises(ValueError, match="aligned"):
        attn.softmax(x.astype(np.float32), out=unaligned)


def test_broadcast_mask_view(rng):
    x = rng.standard_normal((4, 8, 16)).astype(np.float32)
    m = np.broadcast_to(rng.standard_normal(16).astype(np.float32), (4, 8, 16))
    assert m.strides[0] == 0
    close(attn.softmax(x, mask=m), ref.softmax(x, mask=m))


def test_errors(rng):
    x = rng.standard_normal((3, 5)).astype(np.float32)
    with pytest.raises(attn.AttnError) as e:
        attn.softmax(x, mask=np.zeros((4, 5), np.float32))
    assert e.value.status == "ATTN_ERR_SHAPE" and "attn_softmax" in e.value.message
    with pytest.raises(attn.AttnError) as e:
        attn.softmax(x, out=np.empty((3, 6), np.float32))
    assert e.value.status == "ATTN_ERR_SHAPE"
    y = x.copy()
    assert attn.softmax(y, out=y[:, :]) is not None  # the same view: in place, allowed
    with pytest.raises(attn.AttnError) as e:
        big = np.zeros((3, 6), np.float32)
        attn.softmax(big[:, 1:], out=big[:, :5])  # overlapping, not in place
    assert e.value.status == "ATTN_ERR_ALIASING"
    with pytest.raises(ValueError, match="float32"):
        attn.softmax(x, out=np.empty((3, 5)))
    ro = np.empty((3, 5), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        attn.softmax(x, out=ro)
    with pytest.raises(ValueError, match="contiguous innermost"):
        attn.softmax(x, out=np.empty((5, 3), np.float32).T)
    with pytest.raises(TypeError):
        attn.softmax(x.astype(np.complex64))
    with pytest.raises(TypeError):
        attn.softmax(x, bool_mask=np.ones((3, 5), np.float32))
    with pytest.raises(ValueError, match="scale"):
        attn.softmax(x, scale=0)
    with pytest.raises(attn.AttnError) as e:
        attn.softmax(x, scale=np.inf)
    assert e.value.status == "ATTN_ERR_INVALID_ARG"
    with pytest.raises(attn.AttnError) as e:
        attn.softmax(np.zeros((1, 1, 1, 1, 2), np.float32))
    assert "argument x" in str(e.value)
