"""Scalar metrics: AUROC and the KL cost of steering."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

import torch

from .capture import batches
from .steer import ablation
from .train import Encoded

__all__ = ["auroc", "control_summary", "kl_cost"]


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


@torch.no_grad()
def kl_cost(
    model: torch.nn.Module, examples: Sequence[Encoded], vectors: Mapping[int, torch.Tensor], strength: float,
    layers: Sequence[int], pad_id: int, batch_size: int = 64,
) -> float:
    """Mean KL(unsteered || steered) in nats per answer position (the positions that predict answer tokens)."""
    total, count = 0.0, 0
    for chunk, ids, mask in batches(examples, batch_size, pad_id):
        base = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)  # (b, seq, vocab)
        with ablation(model, vectors, strength, layers):
            steered = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        for i, e in enumerate(chunk):
            sl = slice(e.answer_start - 1, len(e.ids) - 1)  # predicts ids[answer_start:], the answer and <|end|>
            p, q = base[i, sl], steered[i, sl]
            total += float((p.exp() * (p - q)).sum())
            count += p.shape[0]
    return total / max(count, 1)


def control_summary(values: Sequence[float]) -> dict[str, float]:
    """Controls over seeds: mean and sd, the best seed as measured (`max`), and the best seed with its sign chosen
    after the fact (`best_abs` = max of max(a, 1 - a)), the most generous reading of a control."""
    vals = list(values)
    return {"mean": statistics.fmean(vals), "sd": statistics.pstdev(vals), "max": max(vals),
            "best_abs": max(max(v, 1 - v) for v in vals), "n": float(len(vals))}
