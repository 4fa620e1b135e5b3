"""Held-out evaluation on the data path: the test set's records, the linearised twin's test
predictions and the twin gaps against an independent NumPy reference written from the
network's definition and THEORY §0 / §C.1 / §E.5; Result.predict; positional data
containers."""

from __future__ import annotations

import numpy as np
import pytest

import ntkflow as nf

# ---- data containers take their arrays positionally ---------------------------------------


def test_dataset_and_moments_take_arrays_positionally() -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(6, 2)), rng.normal(size=6)
    a, b = nf.Dataset(X, y), nf.Dataset(X=X, y=y)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.y, b.y)
    S, c = np.array([[2.0, 0.5], [0.5, 1.0]]), np.array([1.0, -1.0])
    m1, m2 = nf.Moments(S, c), nf.Moments(Sigma=S, b=c)
    np.testing.assert_array_equal(m1.moments().beta, m2.moments().beta)
    assert nf.Moments(S, c, 3.0).moments().loss_min == nf.Moments(S, c, y2=3.0).moments().loss_min
    with pytest.raises(ValueError, match="^y must have shape"):
        nf.Dataset(X, y[:5])
