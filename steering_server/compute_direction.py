"""The maths of ComputeDirection: splits, per-layer difference of means, held-out separation, calibration.

Plain tensors in, numbers out (fp32/fp64 on the CPU); no engine, no I/O. The difference of means, projections,
effect sizes, AUROC and calibration are the organism's (organism/diffmeans.py, organism/metrics.py), so a direction
computed on the server and the organism's own are the same recipe. A direction's score at a position is the
projection h.d with d = v/|v| at the monitor layer (DESIGN.md "Steering and monitoring semantics").
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

import torch

from .compute_types import LayerSeparation
from .directions import Calibration
from .organism.diffmeans import calibrate, cohens_d, diff_of_means, false_positive_rate, project
from .organism.metrics import auroc

__all__ = [
    "MIN_PER_LABEL",
    "bootstrap_auroc",
    "calibrate_held_out",
    "choose_monitor_layer",
    "held_out_split",
    "layer_separation",
]

# Each label needs 4 examples to train on and 4 held out (2 to calibrate on, 2 to check the calibration with).
MIN_PER_LABEL = 8
_MIN_HELD_OUT = 4


def held_out_split(
    labels: Sequence[bool], groups: Sequence[object], share: float, seed: int
) -> tuple[list[int], list[int]]:
    """(train, held_out) indices. Examples of one group (the same prompt: a question asked with a positive and a
    negative answer, or under both system prompts) fall on the same side, so held-out prompts are unseen and paired
    examples never leak across. Groups are held out in a seeded order until each label has round(share * n) of its
    examples held out (at least 4); when grouping cannot leave 4 of each label to train on, the split is made per
    example instead (still stratified). Callers ensure MIN_PER_LABEL examples per label."""
    targets = {y: max(_MIN_HELD_OUT, round(share * sum(1 for x in labels if x == y))) for y in (True, False)}
    members: dict[object, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    order = list(members)
    random.Random(seed).shuffle(order)
    held: list[int] = []
    count = {True: 0, False: 0}
    for g in order:
        if all(count[y] >= targets[y] for y in count):
            break
        if all(count[labels[i]] >= targets[labels[i]] for i in members[g]):
            continue  # this group would only add labels already held out enough
        held += members[g]
        for i in members[g]:
            count[labels[i]] += 1
    left = {y: sum(1 for x in labels if x == y) - count[y] for y in count}
    if min(left.values()) < _MIN_HELD_OUT or min(count.values()) < _MIN_HELD_OUT:
        return _example_split(labels, targets, seed)
    held_set = set(held)
    return [i for i in range(len(labels)) if i not in held_set], sorted(held)


def _example_split(labels: Sequence[bool], targets: dict[bool, int], seed: int) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    train: list[int] = []
    held: list[int] = []
    for label in (True, False):
        idx = [i for i, y in enumerate(labels) if y == label]
        rng.shuffle(idx)
        k = min(len(idx) - _MIN_HELD_OUT, targets[label])
        held += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(held)


def bootstrap_auroc(pos: torch.Tensor, neg: torch.Tensor, resamples: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the AUROC, resampling positives and negatives separately (stratified).

    Exact and vectorised: with P[i, j] = 1 (pos_i > neg_j), 1/2 (tie), 0, a resample's AUROC is
    c_pos^T P c_neg / (n_pos n_neg) for its per-example draw counts c (resamples, n)."""
    p, n = pos.double().flatten(), neg.double().flatten()
    pairs = (p[:, None] > n[None, :]).double() + 0.5 * (p[:, None] == n[None, :]).double()  # (n_pos, n_neg)
    g = torch.Generator().manual_seed(seed)
    cp = torch.zeros(resamples, p.numel(), dtype=torch.double)
    cn = torch.zeros(resamples, n.numel(), dtype=torch.double)
    cp.scatter_add_(1, torch.randint(0, p.numel(), (resamples, p.numel()), generator=g), torch.ones_like(cp))
    cn.scatter_add_(1, torch.randint(0, n.numel(), (resamples, n.numel()), generator=g), torch.ones_like(cn))
    values = ((cp @ pairs) * cn).sum(1) / (p.numel() * n.numel())  # (resamples,)
    lo, hi = torch.quantile(values, torch.tensor([0.025, 0.975], dtype=torch.double)).tolist()
    return float(lo), float(hi)


def layer_separation(
    train_pos: Mapping[int, torch.Tensor],
    train_neg: Mapping[int, torch.Tensor],
    held_pos: Mapping[int, torch.Tensor],
    held_neg: Mapping[int, torch.Tensor],
    resamples: int,
    seed: int,
) -> tuple[dict[int, torch.Tensor], list[LayerSeparation]]:
    """Per layer: v = mean(train_pos) - mean(train_neg) (each (n, hidden), or (1, hidden): a mean already), and
    how the held-out examples' projections onto v separate. Returns (layer -> v (hidden,), separation per layer
    in layer order)."""
    vectors = diff_of_means(train_pos, train_neg)
    stats = []
    for layer in sorted(vectors):
        v = vectors[layer]
        norm = float(v.norm())
        if norm == 0.0 or not math.isfinite(norm):  # the two classes agree exactly here: no direction to score
            stats.append(LayerSeparation(layer, 0.5, 0.5, 0.5, 0.0, norm))
            continue
        sp, sn = project(held_pos[layer], v), project(held_neg[layer], v)  # (n_pos,), (n_neg,)
        lo, hi = bootstrap_auroc(sp, sn, resamples, seed + layer)
        stats.append(LayerSeparation(layer, auroc(sp, sn), lo, hi, cohens_d(sp, sn), norm))
    return vectors, stats


def choose_monitor_layer(stats: Sequence[LayerSeparation]) -> int:
    """The layer whose direction best separates the held-out examples: highest AUROC, then largest effect size,
    then the lowest layer (AUROC saturates at 1 on easy data, where the effect size still tells layers apart)."""
    usable = [s for s in stats if s.norm > 0 and math.isfinite(s.norm)]
    best = max(usable or stats, key=lambda s: (round(s.auroc, 9), s.cohens_d, -s.layer))
    return best.layer


def calibrate_held_out(
    benign: Mapping[str, Sequence[torch.Tensor]], target_fpr: float, seed: int
) -> tuple[dict[str, Calibration], dict[str, float]]:
    """Per pooling, from per-example benign scores (pooling -> one 1-D tensor per held-out benign example):
    calibrate (mu, sigma, threshold for `target_fpr`) on half of the examples and measure the threshold's
    false-positive rate on the other half, which played no part in setting it. A pooling with fewer than two
    scores on either side, or no spread, is left uncalibrated."""
    calibration: dict[str, Calibration] = {}
    fpr: dict[str, float] = {}
    for pooling, per_example in benign.items():
        order = list(range(len(per_example)))
        random.Random(seed).shuffle(order)
        fit = [per_example[i] for i in order[0::2]]
        check = [per_example[i] for i in order[1::2]]
        fit_scores = torch.cat(fit) if fit else torch.zeros(0)
        check_scores = torch.cat(check) if check else torch.zeros(0)
        if fit_scores.numel() < 2 or check_scores.numel() < 2 or float(fit_scores.double().std()) <= 0:
            continue
        cal = calibrate({pooling: fit_scores}, target_fpr)[pooling]
        calibration[pooling] = cal
        fpr[pooling] = false_positive_rate(cal, check_scores)
    return calibration, fpr
