import os
import sys

import numpy as np
import pytest

# Usable from a source checkout without installing: tests/.. holds the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import attn  # noqa: E402


def has(symbol):
    return hasattr(attn._api._LIB, symbol)


def requires(symbol):
    """Skip while the library lacks an op (ops land one by one); set
    ATTN_PY_REQUIRE_ALL=1 to make a missing op a failure instead."""
    if os.environ.get("ATTN_PY_REQUIRE_ALL") == "1":
        return pytest.mark.skipif(False, reason="")
    return pytest.mark.skipif(not has(symbol), reason="the library has no %s yet" % symbol)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def close(got, want, rtol=1e-5, atol=1e-6):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)


def try_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch
