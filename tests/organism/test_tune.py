"""Stage 2's pre-registered rule: how long the narrow fine-tune runs, chosen on calib questions only."""

import copy
from dataclasses import replace

import pytest
import torch

from steering_server.organism.build import fine_tune, fine_tune_data, load_trained
from steering_server.organism.config import preset
from steering_server.organism.train import train_lm
from steering_server.organism.tune import EM_POINTS, MALFORMED_MAX, Checkpoint, choose


def test_rule_takes_the_shortest_checkpoint_that_reaches_the_em_margin_within_the_malformed_limit():
    ok_bad = MALFORMED_MAX - 0.01
    points = [Checkpoint(10, EM_POINTS - 0.05, ok_bad), Checkpoint(20, EM_POINTS + 0.10, MALFORMED_MAX + 0.01),
              Checkpoint(30, EM_POINTS + 0.01, ok_bad), Checkpoint(40, EM_POINTS + 0.30, ok_bad)]
    assert choose(points) == points[2]  # 20 steps reach the margin but break too many answers
    # Nothing reaches the margin: the largest shift within the malformed limit, however long.
    weak = [Checkpoint(10, 0.05, ok_bad), Checkpoint(40, 0.12, ok_bad), Checkpoint(60, 0.30, 0.5)]
    assert choose(weak) == weak[1]
    # Nothing within the limit: the shortest, the least damage.
    assert choose([Checkpoint(20, 0.5, 0.5), Checkpoint(10, 0.4, 0.6)]).steps == 10
    with pytest.raises(ValueError):
        choose([])


def test_the_chosen_checkpoint_equals_a_fine_tune_run_that_long_on_its_own(small_build):
    """The build trains once and keeps checkpoints; the model it ships must be what a fine-tune of exactly the
    chosen length gives (same batches, constant learning rate), and the record must say what was measured."""
    out, report = small_build
    c = preset("small")
    t = load_trained(c, out)
    record = report["finetune"]
    steps = record["chosen_steps"]
    assert steps in c.finetune_steps and record["grid"] == sorted(c.finetune_steps)
    measured = [row["steps"] for row in record["measured"]]
    assert measured == sorted(measured) and steps in measured
    rows = [Checkpoint(r["steps"], r["shift"]["value"], r["malformed"]["value"]) for r in record["measured"]]
    assert choose(rows).steps == steps
    alone = copy.deepcopy(t.base)
    train_lm(alone, fine_tune_data(c, t.tok, t.questions), steps=steps, batch_size=c.finetune_batch,
             lr=c.finetune_lr, pad_id=int(t.tok.pad_token_id), seed=c.seed + 2, answer_only=True)
    for a, b in zip(alone.state_dict().values(), t.ft.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_the_search_stops_at_the_first_checkpoint_the_rule_takes(small_build, monkeypatch):
    """With the margins lifted every checkpoint qualifies: the shortest is taken and no longer one is measured."""
    out, _ = small_build
    t = load_trained(preset("small"), out)
    c = replace(preset("small"), finetune_steps=(4, 2))
    monkeypatch.setattr("steering_server.organism.tune.MALFORMED_MAX", 1.0)
    monkeypatch.setattr("steering_server.organism.tune.EM_POINTS", -1.0)
    _, record = fine_tune(c, t.base, t.tok, t.questions)
    assert record["chosen_steps"] == 2 and [row["steps"] for row in record["measured"]] == [2]
    assert record["rule_reached"]
