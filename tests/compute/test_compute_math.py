"""The maths of ComputeDirection (compute_direction.py) against plain definitions."""

from __future__ import annotations

import random

import torch

from steering_server.compute_direction import (
    bootstrap_auroc,
    calibrate_held_out,
    choose_monitor_layer,
    held_out_split,
    layer_separation,
)
from steering_server.compute_types import LayerSeparation
from steering_server.organism.metrics import auroc


def test_bootstrap_interval_matches_resampling_by_hand() -> None:
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(30, generator=g) + 0.8, torch.randn(40, generator=g)
    pos[3] = neg[5]  # a tie counts half
    lo, hi = bootstrap_auroc(pos, neg, 4000, seed=1)
    rng = random.Random(2)
    by_hand = sorted(
        auroc(pos[[rng.randrange(30) for _ in range(30)]], neg[[rng.randrange(40) for _ in range(40)]])
        for _ in range(1000)
    )
    assert abs(lo - by_hand[25]) < 0.03 and abs(hi - by_hand[974]) < 0.03
    assert lo < auroc(pos, neg) < hi


def test_split_keeps_a_prompt_on_one_side_and_holds_out_each_label() -> None:
    labels = [i % 2 == 0 for i in range(60)]
    groups = [i // 2 for i in range(60)]  # pairs: one positive and one negative answer per prompt
    train, held = held_out_split(labels, groups, 0.3, seed=4)
    assert sorted(train + held) == list(range(60)) and not set(train) & set(held)
    assert {groups[i] for i in train}.isdisjoint({groups[i] for i in held})
    assert sum(labels[i] for i in held) == sum(not labels[i] for i in held) == 9
    # One prompt for everything: grouping cannot hold anything out, so the split is per example.
    train, held = held_out_split(labels, [0] * 60, 0.3, seed=4)
    assert sum(labels[i] for i in held) == 9 and len(held) == 18


def test_separation_direction_and_layer_choice() -> None:
    g = torch.Generator().manual_seed(3)
    d = torch.zeros(16)
    d[2] = 1.0
    pos = {0: torch.randn(50, 16, generator=g) + 0.2 * d, 1: torch.randn(50, 16, generator=g) + 3 * d}
    neg = {0: torch.randn(50, 16, generator=g), 1: torch.randn(50, 16, generator=g)}
    tr = {k: v[:30] for k, v in pos.items()}, {k: v[:30] for k, v in neg.items()}
    ho = {k: v[30:] for k, v in pos.items()}, {k: v[30:] for k, v in neg.items()}
    vectors, stats = layer_separation(tr[0], tr[1], ho[0], ho[1], 500, seed=0)
    assert torch.allclose(vectors[1], pos[1][:30].mean(0) - neg[1][:30].mean(0))
    assert stats[1].auroc > 0.9 > stats[0].auroc and stats[1].cohens_d > 2
    assert choose_monitor_layer(stats) == 1
    tie = [LayerSeparation(0, 1.0, 1.0, 1.0, 3.0, 1.0), LayerSeparation(1, 1.0, 1.0, 1.0, 5.0, 1.0)]
    assert choose_monitor_layer(tie) == 1  # saturated AUROC: the larger effect size


def test_calibration_is_checked_on_examples_it_did_not_see() -> None:
    g = torch.Generator().manual_seed(5)
    per_example = [torch.randn(50, generator=g, dtype=torch.float64) * 2 + 1 for _ in range(40)]
    cal, fpr = calibrate_held_out({"token": per_example, "last_prompt": [per_example[0][:1]]}, 0.05, seed=0)
    assert set(cal) == {"token"}  # one last-prompt score cannot be split into a fit and a check
    assert abs(cal["token"].mu - 1) < 0.2 and abs(cal["token"].sigma - 2) < 0.2 and cal["token"].n == 1000
    assert abs(fpr["token"] - 0.05) < 0.02
