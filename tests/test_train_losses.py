"""Each loss of the training recipe on inputs small enough to compute by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from omnivec.train.losses import (cosent, info_nce, info_nce_from_scores, kl_divergence, matryoshka,
                                  maxsim_matrix, truncate)


def test_info_nce_two_by_two_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    t = 0.5
    # row 0 scores (1, 0.6); row 1 scores (0, 0.8); positives on the diagonal
    row0 = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(0.6 / t)))
    row1 = -math.log(math.exp(0.8 / t) / (math.exp(0 / t) + math.exp(0.8 / t)))
    assert info_nce(q, d, t).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_info_nce_hard_negatives_are_extra_columns():
    q = torch.tensor([[1.0, 0.0]])
    d = torch.tensor([[1.0, 0.0]])
    neg = torch.tensor([[0.0, 1.0], [1.0, 0.0]])       # the second negative equals the positive
    t = 1.0
    expected = -math.log(math.e / (math.e + 1 + math.e))
    assert info_nce(q, d, t, negatives=neg).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        info_nce_from_scores(torch.eye(2), 0.0)


def test_maxsim_matrix_by_hand_with_padding():
    # query 0 has two real tokens, query 1 one real token (second row padding)
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [9.0, 9.0]]])
    q_mask = torch.tensor([[1, 1], [1, 0]])
    # doc 0 has tokens (1,0) and padding (9,9); doc 1 has (0,1), (0.8,0.6)
    d = torch.tensor([[[1.0, 0.0], [9.0, 9.0]], [[0.0, 1.0], [0.8, 0.6]]])
    d_mask = torch.tensor([[1, 0], [1, 1]])
    raw = maxsim_matrix(q, q_mask, d, d_mask, normalize_by_query_length=False)
    # q0 vs d0: max(1)=1 + max(0)=0 -> 1; q0 vs d1: max(0, .8)=.8 + max(1, .6)=1 -> 1.8
    # q1 vs d0: .6; q1 vs d1: max(.8, .48+.48=.96) = .96
    assert torch.allclose(raw, torch.tensor([[1.0, 1.8], [0.6, 0.96]]), atol=1e-6)
    norm = maxsim_matrix(q, q_mask, d, d_mask)
    assert torch.allclose(norm, torch.tensor([[0.5, 0.9], [0.6, 0.96]]), atol=1e-6)


def test_maxsim_matrix_matches_scoring_module():
    from omnivec.scoring import maxsim_scores
    g = torch.Generator().manual_seed(0)
    qs = [F.normalize(torch.randn(n, 8, generator=g), dim=-1) for n in (3, 5)]
    ds = [F.normalize(torch.randn(n, 8, generator=g), dim=-1) for n in (4, 2, 6)]
    pad = lambda xs: (torch.nn.utils.rnn.pad_sequence(xs, batch_first=True),  # noqa: E731
                      torch.nn.utils.rnn.pad_sequence([torch.ones(len(x)) for x in xs], batch_first=True))
    (qt, qm), (dt, dm) = pad(qs), pad(ds)
    ours = maxsim_matrix(qt, qm, dt, dm, normalize_by_query_length=False)
    ref = maxsim_scores([x.numpy() for x in qs], [x.numpy() for x in ds])
    assert torch.allclose(ours, torch.from_numpy(ref), atol=1e-5)


def test_kl_divergence_by_hand():
    p_scores = torch.tensor([[0.0, math.log(3.0)]])          # softmax -> (1/4, 3/4)
    q_scores = torch.tensor([[0.0, 0.0]])                    # softmax -> (1/2, 1/2)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert kl_divergence(p_scores, q_scores, 1.0).item() == pytest.approx(expected, rel=1e-6)
    assert kl_divergence(q_scores, q_scores, 0.1).item() == pytest.approx(0.0, abs=1e-7)


def test_cosent_by_hand():
    cos = torch.tensor([0.9, 0.2, 0.5])
    gold = torch.tensor([5.0, 1.0, 3.0])
    s = 20.0
    # ordered pairs (i, j) with gold_i > gold_j: (0,1), (0,2), (2,1)
    terms = [s * (0.2 - 0.9), s * (0.5 - 0.9), s * (0.2 - 0.5)]
    expected = math.log(1 + sum(math.exp(t) for t in terms))
    assert cosent(cos, gold, s).item() == pytest.approx(expected, rel=1e-4)
    # wrong order costs more than right order; ties in gold contribute nothing
    assert cosent(torch.tensor([0.2, 0.9]), torch.tensor([5.0, 1.0])).item() > cosent(torch.tensor([0.9, 0.2]), torch.tensor([5.0, 1.0])).item()
    assert cosent(torch.tensor([0.2, 0.9]), torch.tensor([1.0, 1.0])).item() == pytest.approx(0.0, abs=1e-7)


def test_matryoshka_sums_truncated_renormalised_losses():
    q = torch.tensor([[3.0, 4.0, 12.0]])
    d = torch.tensor([[3.0, 4.0, -12.0]])
    cos = lambda a, b: (a * b).sum()     # noqa: E731
    total = matryoshka(cos, [3, 2, 1], weights=[1.0, 2.0, 0.5])(q, d)
    full = (9 + 16 - 144) / 169
    assert total.item() == pytest.approx(full + 2 * 1.0 + 0.5 * 1.0, rel=1e-6)
    assert torch.allclose(truncate(q, 2), torch.tensor([[0.6, 0.8]]))
    with pytest.raises(ValueError):
        matryoshka(cos, [0])


def test_false_negatives_are_hidden_by_group_and_identity():
    from omnivec.train.common import false_negatives
    batch = [{"q": [1, 2], "pos": [3], "negs": [[9]], "group": "a"},
             {"q": [3], "pos": [1, 2], "negs": [], "group": None},      # the same pair, reversed
             {"q": [5], "pos": [6], "negs": [], "group": "a"},          # another translation of "a"
             {"q": [7], "pos": [8], "negs": [], "group": None}]
    hide = false_negatives(batch)
    assert hide.shape == (4, 5)
    assert hide.tolist() == [[False, True, True, False, False],
                             [True, False, False, False, False],
                             [True, False, False, False, False],
                             [False, False, False, False, False]]
    assert false_negatives([batch[3], {"q": [1], "pos": [2], "negs": [], "group": None}]) is None
