"""A fixed-seed slice of tests/reference/diff_torch.py, the randomized
differential test of libattn against float64 references (random feature
combinations and memory layouts per case; see that file to run thousands of
cases per kernel set). A few cases per op here, on the default kernels."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                "tests", "reference"))
import diff_torch  # noqa: E402

CASES = 10


@pytest.mark.parametrize("op", sorted(diff_torch.OPS))
def test_diff_slice(op):
    if diff_torch.torch is None and op in diff_torch.NEEDS_TORCH:
        pytest.skip("torch not available")
    fails, _ = diff_torch.run_cases(op, seed=2026, first=0, count=CASES)
    assert not fails, "\n".join(fails)
