"""Difference-of-means directions, their controls, and calibration on benign text.

All maths in fp32 on the CPU. A direction is a dict layer -> vector (hidden,); its monitor score at a position is
the projection h.d with d = v/|v| at the monitor layer (DESIGN.md, "Steering and monitoring semantics").
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping, Sequence

import torch

from ..directions import DEFAULT_REMOVAL, Calibration, Direction, Provenance, Removal
from ..provenance import config_hash, tokenizer_hash

__all__ = [
    "calibrate",
    "cohens_d",
    "cosine",
    "diff_of_means",
    "false_positive_rate",
    "make_direction",
    "project",
    "random_like",
    "shuffled_diff_of_means",
]

Vectors = dict[int, torch.Tensor]


def diff_of_means(pos: Mapping[int, torch.Tensor], neg: Mapping[int, torch.Tensor]) -> Vectors:
    """mean(pos) - mean(neg) per layer; pos[l]: (n_pos, hidden), neg[l]: (n_neg, hidden)."""
    return {layer: pos[layer].float().mean(0) - neg[layer].float().mean(0) for layer in pos}


def shuffled_diff_of_means(pos: Mapping[int, torch.Tensor], neg: Mapping[int, torch.Tensor], seed: int) -> Vectors:
    """The same recipe with the labels shuffled, balanced (amendment 5): each of the two groups holds half of the
    positives and half of the negatives, drawn at random (one draw shared by every layer), so the true direction's
    mean shift cancels in the difference. An unbalanced permutation leaves a random surplus of positives in one
    group, and with a strong direction that surplus dominates: such "controls" had cosine 0.6-0.9 with the persona."""
    n_pos, n_neg = next(iter(pos.values())).shape[0], next(iter(neg.values())).shape[0]
    g = torch.Generator().manual_seed(seed)
    p, q = torch.randperm(n_pos, generator=g), torch.randperm(n_neg, generator=g)
    a_pos, b_pos, a_neg, b_neg = p[: n_pos // 2], p[n_pos // 2:], q[: n_neg // 2], q[n_neg // 2:]
    out: Vectors = {}
    for layer in pos:
        x, y = pos[layer].float(), neg[layer].float()  # (n_pos, hidden), (n_neg, hidden)
        out[layer] = torch.cat([x[a_pos], y[a_neg]]).mean(0) - torch.cat([x[b_pos], y[b_neg]]).mean(0)
    return out


def random_like(vectors: Mapping[int, torch.Tensor], seed: int) -> Vectors:
    """Gaussian directions with the same per-layer norms."""
    g = torch.Generator().manual_seed(seed)
    out: Vectors = {}
    for layer in sorted(vectors):
        r = torch.randn(vectors[layer].shape, generator=g)
        out[layer] = r / r.norm() * vectors[layer].float().norm()
    return out


def project(h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """h.d with d = v/|v|; h: (..., hidden) -> (...)."""
    return h.float() @ (v.float() / v.float().norm())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=0))


def cohens_d(pos: torch.Tensor, neg: torch.Tensor) -> float:
    pooled = math.sqrt((float(pos.var()) + float(neg.var())) / 2) or 1e-12
    return (float(pos.mean()) - float(neg.mean())) / pooled


def calibrate(benign: Mapping[str, torch.Tensor], target_fpr: float) -> dict[str, Calibration]:
    """Per pooling: mu, sigma of benign scores and the z threshold that flags `target_fpr` of them."""
    out: dict[str, Calibration] = {}
    for pooling, scores in benign.items():
        s = scores.double()
        mu, sigma = float(s.mean()), float(s.std())
        z = (s - mu) / sigma
        threshold = float(torch.quantile(z, 1 - target_fpr, interpolation="higher"))
        out[pooling] = Calibration(mu=mu, sigma=sigma, threshold=threshold, target_fpr=target_fpr, n=int(s.numel()))
    return out


def false_positive_rate(cal: Calibration, benign_scores: torch.Tensor) -> float:
    """Share of benign scores whose z exceeds the threshold (check on data not used to set it)."""
    assert cal.threshold is not None
    z = (benign_scores.double() - cal.mu) / cal.sigma
    return float((z > cal.threshold).double().mean())


def make_direction(
    name: str,
    vectors: Mapping[int, torch.Tensor],
    monitor_layer: int,
    model: torch.nn.Module,
    tokenizer,
    model_id: str,
    method: str,
    n_examples: int,
    calibration: Mapping[str, Calibration] | None = None,
    layer_calibration: Mapping[int, Mapping[str, Calibration]] | None = None,
    description: str = "",
    layers: Sequence[int] | None = None,
    removal: Removal = DEFAULT_REMOVAL,
) -> Direction:
    keep = sorted(vectors) if layers is None else sorted(layers)
    return Direction(
        name=name,
        vectors={layer: vectors[layer].float().contiguous() for layer in keep},
        monitor_layer=monitor_layer,
        calibration=dict(calibration or {}),
        layer_calibration={layer: dict(t) for layer, t in (layer_calibration or {}).items() if layer in keep},
        provenance=Provenance(model_id, config_hash(model.config), tokenizer_hash(tokenizer)),
        method=method,
        n_examples=n_examples,
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        description=description,
        removal=removal,
    )
