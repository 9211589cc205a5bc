import os
import sys

import numpy as np
import pytest

# Usable from a source checkout without installing: tests/.. holds the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import attn  # noqa: E402


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
