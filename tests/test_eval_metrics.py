"""Metric wiring on a toy qrels/run pair whose values are worked out by hand."""
import math

import numpy as np
import pytest

pytest.importorskip("pytrec_eval")

from omnivec.eval.metrics import evaluate, make_run, ranking  # noqa: E402


def test_known_values():
    # q1: relevant d1, d3; ranking d2, d1, d3.  q2: relevant d2; ranking d1, d3, d2.
    qrels = {"q1": {"d1": 1, "d3": 1}, "q2": {"d2": 1}}
    run = make_run([[1, 0, 2], [0, 2, 1]], ["q1", "q2"], ["d1", "d2", "d3"])
    m = evaluate(qrels, run, ks=(1, 3, 10))
    idcg_q1 = 1 + 1 / math.log2(3)
    ndcg3_q1 = (1 / math.log2(3) + 1 / math.log2(4)) / idcg_q1
    ndcg3_q2 = (1 / math.log2(4)) / 1.0
    assert m["nDCG@1"] == pytest.approx(0.0)
    assert m["nDCG@3"] == pytest.approx((ndcg3_q1 + ndcg3_q2) / 2)
    assert m["R@1"] == pytest.approx(0.0)
    assert m["R@3"] == pytest.approx(1.0)
    assert m["MRR@1"] == pytest.approx(0.0)
    assert m["MRR@3"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    # AP q1 = (1/2 + 2/3) / 2; AP q2 = 1/3
    assert m["MAP@10"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1 / 3) / 2)


def test_unretrieved_query_counts_as_zero_and_ties_keep_corpus_order():
    qrels = {"q1": {"d1": 1}, "q2": {"d1": 1}}
    run = make_run(ranking(np.array([[0.5, 0.5]]), 10), ["q1"], ["d1", "d2"])
    m = evaluate(qrels, run, ks=(1,))
    assert m["R@1"] == pytest.approx(0.5)          # q1 hits (tie -> corpus order), q2 has no run
