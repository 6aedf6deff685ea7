"""Scalar metrics: AUROC, question-clustered bootstrap intervals, Cohen's kappa, and KL costs."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .capture import batches
from .steer import RefTerm, steering
from .train import Encoded

__all__ = ["Estimate", "auroc", "bootstrap", "cohens_kappa", "control_summary", "kl_divergence"]


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(score of a random positive > that of a random negative), ties counted half (Mann-Whitney U)."""
    if pos.numel() == 0 or neg.numel() == 0:
        return float("nan")
    both = torch.cat([pos.double().flatten(), neg.double().flatten()])
    order = both.argsort()
    ranks = torch.empty_like(both)
    ranks[order] = torch.arange(1, both.numel() + 1, dtype=torch.double)
    # Average ranks over ties.
    uniq, inverse = torch.unique(both, return_inverse=True)
    sums = torch.zeros_like(uniq).index_add_(0, inverse, ranks)
    counts = torch.zeros_like(uniq).index_add_(0, inverse, torch.ones_like(ranks))
    ranks = (sums / counts)[inverse]
    n_pos, n_neg = pos.numel(), neg.numel()
    u = float(ranks[:n_pos].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


@dataclass(frozen=True)
class Estimate:
    """A rate (or a difference of rates) over questions with its 95% bootstrap interval."""

    value: float
    lo: float
    hi: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi}


def bootstrap(per_question: Sequence[float], n_resamples: int = 2000, seed: int = 0) -> Estimate:
    """Mean over questions, 95% percentile interval from resampling questions (the cluster: answers to one question
    are not independent). For a paired difference pass the per-question differences."""
    x = torch.tensor(list(per_question), dtype=torch.double)  # (questions,)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, x.numel(), (n_resamples, x.numel()), generator=g)
    means = x[idx].mean(1)  # (resamples,)
    lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.double)).tolist()
    return Estimate(float(x.mean()), lo, hi)


def cohens_kappa(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Agreement of two binary raters beyond chance; 1.0 when both are constant and equal."""
    n = len(a)
    if n == 0 or n != len(b):
        raise ValueError("kappa needs two equally long, non-empty label lists")
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    pa, pb = sum(a) / n, sum(b) / n
    expected = pa * pb + (1 - pa) * (1 - pb)
    return 1.0 if expected == 1.0 else (observed - expected) / (1 - expected)


Steered = tuple[torch.nn.Module, Sequence[RefTerm]]


@torch.no_grad()
def kl_divergence(p: Steered, q: Steered, examples: Sequence[Encoded], pad_id: int, batch_size: int = 64) -> float:
    """Mean KL(p || q) in nats per answer position (the positions that predict the answer and its `<|end|>`);
    p and q are (model, reference steering terms)."""
    total, count = 0.0, 0
    for chunk, ids, mask in batches(examples, batch_size, pad_id):
        logp = []
        for model, terms in (p, q):
            with steering(model, terms):
                logp.append(torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1))
        for i, e in enumerate(chunk):
            sl = slice(e.answer_start - 1, len(e.ids) - 1)  # (answer positions, vocab)
            a, b = logp[0][i, sl], logp[1][i, sl]
            total += float((a.exp() * (a - b)).sum())
            count += a.shape[0]
    return total / max(count, 1)


def control_summary(values: Sequence[float]) -> dict[str, float]:
    """Controls over seeds: mean and sd, the best seed as measured (`max`), and the best seed with its sign chosen
    after the fact (`best_abs` = max of max(a, 1 - a)), the most generous reading of a control."""
    vals = [v for v in values if not math.isnan(v)]  # NaN: no positives or no negatives to rank
    if not vals:
        return {"mean": math.nan, "sd": math.nan, "max": math.nan, "best_abs": math.nan, "n": 0.0}
    return {"mean": statistics.fmean(vals), "sd": statistics.pstdev(vals), "max": max(vals),
            "best_abs": max(max(v, 1 - v) for v in vals), "n": float(len(vals))}
