"""normalize gives C-ordered float32 images whatever the input's memory order (pandas hands over
column-major arrays; a column-major batch would be copied again by every reader of rows)."""

import numpy as np

from pipeline.preprocess import fit_normalizer, normalize


def test_normalize_is_c_ordered_for_column_major_input():
    x = np.random.default_rng(0).integers(0, 256, size=(50, 784), dtype=np.uint8)
    norm = fit_normalizer(x)
    f = np.asfortranarray(x)
    out = normalize(f, norm)
    assert out.flags["C_CONTIGUOUS"] and out.dtype == np.float32 and out.shape == (50, 28, 28, 1)
    np.testing.assert_array_equal(out, normalize(np.ascontiguousarray(x), norm))
    assert np.ascontiguousarray(out) is out  # predict_proba's check makes no copy
