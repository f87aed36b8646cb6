import numpy as np
import pytest

from omnivec.scoring import dense_scores, maxsim_scores, score


def test_maxsim_matches_the_definition():
    rng = np.random.default_rng(0)
    qs = [rng.normal(size=(n, 8)).astype(np.float32) for n in (1, 3, 5)]
    ds = [rng.normal(size=(n, 8)).astype(np.float32) for n in (2, 7, 4, 1)]
    got = maxsim_scores(qs, ds, max_elements=64)
    for i, q in enumerate(qs):
        for j, d in enumerate(ds):
            assert got[i, j] == pytest.approx((q @ d.T).max(axis=1).sum(), rel=1e-5)
    np.testing.assert_allclose(maxsim_scores(qs, ds), got, rtol=1e-5)
    norm = maxsim_scores(qs, ds, normalize_by_query_length=True)
    np.testing.assert_allclose(norm, got / np.array([[1], [3], [5]]), rtol=1e-5)


def test_score_dispatches_and_rejects_mixing():
    a = np.eye(3, dtype=np.float32)
    np.testing.assert_array_equal(score(a, a), np.eye(3))
    with pytest.raises(ValueError, match="multi-vectors"):
        score(a, [a])
    with pytest.raises(ValueError, match="dimension mismatch"):
        dense_scores(np.ones((1, 3)), np.ones((1, 4)))
    assert maxsim_scores([], [a]).shape == (0, 1)
