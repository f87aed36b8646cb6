"""Training losses of the jina-v4 recipe (reference jina-v4.md sec 5), written for clarity.

Every function takes already-normalised embeddings (or score matrices) so each term can be
checked by hand on tiny inputs. The joint loss of phase 1 is
``w_dense * InfoNCE(dense) + w_multi * InfoNCE(MaxSim / |q|) + w_kl * KL(dense || multi)``;
graded pairs use CoSENT; :func:`matryoshka` sums a dense loss over truncated prefixes.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F


def info_nce_from_scores(scores: torch.Tensor, temperature: float,
                         labels: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of ``scores / temperature`` (B, N) against the positive column of each row.

    ``labels`` default to ``arange(B)``: row i's positive is candidate i (in-batch negatives are
    the other rows' positives; hard negatives are extra columns after the B positives).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if labels is None:
        labels = torch.arange(scores.shape[0], device=scores.device)
    return F.cross_entropy(scores / temperature, labels)


def info_nce(queries: torch.Tensor, positives: torch.Tensor, temperature: float,
             negatives: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE with in-batch negatives and optional hard negatives (M, D) shared by the batch."""
    candidates = positives if negatives is None else torch.cat([positives, negatives], dim=0)
    return info_nce_from_scores(queries @ candidates.T, temperature)


def maxsim_matrix(q_tokens: torch.Tensor, q_mask: torch.Tensor, d_tokens: torch.Tensor,
                  d_mask: torch.Tensor, *, normalize_by_query_length: bool = True) -> torch.Tensor:
    """Late-interaction scores (Bq, Nd) between padded token sets.

    ``q_tokens`` (Bq, Lq, m), ``q_mask`` (Bq, Lq); ``d_tokens`` (Nd, Ld, m), ``d_mask`` (Nd, Ld).
    Score = sum over real query tokens of the max over real document tokens of the dot product,
    divided by the query's token count when ``normalize_by_query_length`` (the training form).
    """
    sim = torch.einsum("qim,djm->qdij", q_tokens, d_tokens)              # (Bq, Nd, Lq, Ld)
    sim = sim.masked_fill(~d_mask.bool()[None, :, None, :], float("-inf"))
    best = sim.max(dim=-1).values                                          # (Bq, Nd, Lq)
    best = torch.where(q_mask.bool()[:, None, :], best, torch.zeros_like(best))
    best = torch.nan_to_num(best, neginf=0.0)                              # a document with no tokens
    scores = best.sum(dim=-1)
    if normalize_by_query_length:
        scores = scores / q_mask.sum(dim=1, keepdim=True).clamp(min=1).to(scores.dtype)
    return scores


def kl_divergence(target_scores: torch.Tensor, scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(target/T) || softmax(scores/T)) per row, averaged over rows.

    The joint loss aligns the dense and late-interaction score distributions over the same
    candidates; which side is the target is the caller's choice (the trainer uses dense).
    """
    log_p = F.log_softmax(target_scores / temperature, dim=-1)
    log_q = F.log_softmax(scores / temperature, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()


def cosent(cosines: torch.Tensor, gold: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """CoSENT: ``log(1 + sum over pairs (i, j) with gold_i > gold_j of exp(scale * (cos_j - cos_i)))``.

    A ranking loss on graded pairs: it only asks that pairs with a higher gold score get a
    higher cosine, whatever the scale of the gold scores.
    """
    diff = scale * (cosines[None, :] - cosines[:, None])                 # [i, j] = s(cos_j - cos_i)
    ordered = gold[:, None] > gold[None, :]                                # gold_i > gold_j
    terms = diff[ordered]
    zero = torch.zeros(1, dtype=cosines.dtype, device=cosines.device)
    return torch.logsumexp(torch.cat([zero, terms]), dim=0)


def truncate(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The first ``dim`` coordinates, re-normalised (a Matryoshka prefix)."""
    return F.normalize(x[..., :dim], p=2, dim=-1)


def matryoshka(loss: Callable[..., torch.Tensor], dims: Sequence[int],
               weights: Sequence[float] | None = None) -> Callable[..., torch.Tensor]:
    """Wrap a loss over embedding tensors so it is summed over truncated, re-normalised prefixes.

    ``matryoshka(lambda q, d: info_nce(q, d, 0.05), [384, 128])(q, d)`` =
    ``info_nce(q[:, :384]/|.|, ...) + info_nce(q[:, :128]/|.|, ...)``. Every positional tensor
    argument is truncated; keyword arguments pass through.
    """
    dims = [int(d) for d in dims]
    if not dims or min(dims) < 1:
        raise ValueError(f"matryoshka dims must be positive, got {dims}")
    ws = [1.0] * len(dims) if weights is None else [float(w) for w in weights]
    if len(ws) != len(dims):
        raise ValueError("matryoshka needs one weight per dimension")

    def wrapped(*tensors: torch.Tensor, **kwargs) -> torch.Tensor:
        total = None
        for d, w in zip(dims, ws):
            term = w * loss(*(truncate(t, d) if t is not None else None for t in tensors), **kwargs)
            total = term if total is None else total + term
        return total

    return wrapped
