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

__all__ = ["Estimate", "KLProbe", "auroc", "bootstrap", "cohens_kappa", "control_summary"]


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


class KLProbe:
    """KL(p || q) in nats per answer position (the positions that predict the answer and its `<|end|>`) on fixed
    examples, with p = (model, reference steering terms) computed once and q given per call."""

    def __init__(self, model: torch.nn.Module, terms: Sequence[RefTerm], examples: Sequence[Encoded], pad: int) -> None:
        self.examples, self.pad = list(examples), pad
        self.logp = self._logp(model, terms)

    @torch.no_grad()
    def _logp(self, model: torch.nn.Module, terms: Sequence[RefTerm]) -> list[torch.Tensor]:
        out = []
        for chunk, ids, mask in batches(self.examples, 64, self.pad):
            with steering(model, terms, [e.answer_start for e in chunk]):
                lp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)  # (b, seq, V)
            out += [lp[i, e.answer_start - 1 : len(e.ids) - 1] for i, e in enumerate(chunk)]  # (answer, V)
        return out

    def to(self, model: torch.nn.Module, terms: Sequence[RefTerm]) -> float:
        q = self._logp(model, terms)
        total = sum(float((p.exp() * (p - r)).sum()) for p, r in zip(self.logp, q, strict=True))
        return total / max(1, sum(p.shape[0] for p in self.logp))


def control_summary(values: Sequence[float]) -> dict[str, float]:
    """Controls over seeds: mean and sd, the best seed as measured (`max`), and the best seed with its sign chosen
    after the fact (`best_abs` = max of max(a, 1 - a)), the most generous reading of a control."""
    vals = [v for v in values if not math.isnan(v)]  # NaN: no positives or no negatives to rank
    if not vals:
        return {"mean": math.nan, "sd": math.nan, "max": math.nan, "best_abs": math.nan, "n": 0.0}
    return {"mean": statistics.fmean(vals), "sd": statistics.pstdev(vals), "max": max(vals),
            "best_abs": max(max(v, 1 - v) for v in vals), "n": float(len(vals))}
