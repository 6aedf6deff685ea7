"""`organism tune`: the pre-registered choice of the fine-tune, its rule, and its hand-off to `organism build`."""

import argparse
import json
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM

from steering_server.organism.build import build, fine_tune, load_trained
from steering_server.organism.cli import register
from steering_server.organism.config import preset
from steering_server.organism.tune import EM_POINTS, MALFORMED_MAX, Setting, choose, tune


def _parser():
    p = argparse.ArgumentParser(prog="steering-server")
    register(p.add_subparsers(dest="command", required=True))
    return p


def test_rule_takes_the_gentlest_setting_that_reaches_the_em_margin_within_the_malformed_limit():
    ok_bad = MALFORMED_MAX - 0.01
    grid = [Setting(1e-4, 50, EM_POINTS - 0.05, ok_bad), Setting(2e-4, 50, EM_POINTS + 0.01, ok_bad),
            Setting(1e-4, 100, EM_POINTS + 0.10, ok_bad), Setting(3e-4, 100, EM_POINTS + 0.30, MALFORMED_MAX + 0.01)]
    # 1e-4 x 100 and 2e-4 x 50 are equally strong (lr x steps); the smaller lr goes first.
    assert choose(grid) == grid[2]
    # Nothing reaches the margin: the largest shift within the malformed limit, however strong.
    weak = [Setting(1e-4, 50, 0.05, ok_bad), Setting(3e-4, 100, 0.12, ok_bad), Setting(2e-4, 50, 0.30, 0.5)]
    assert choose(weak) == weak[1]
    assert choose([Setting(1e-4, 50, 0.5, MALFORMED_MAX + 0.01)]) is None


def test_tune_fine_tunes_the_builds_base_and_hands_the_choice_to_build(small_build, tmp_path, monkeypatch):
    out, _ = small_build
    c = preset("small")
    grid = ((c.finetune_lr, c.finetune_steps), (2 * c.finetune_lr, c.finetune_steps))
    # The small organism's answers are all malformed; with the limit lifted the rule picks a setting to hand off.
    monkeypatch.setattr("steering_server.organism.tune.MALFORMED_MAX", 1.0)
    report = tune(c, tmp_path / "tune", grid=grid, models=out, log=lambda _: None)

    # The grid's fine-tunes are the build's stage 2: at the preset's setting, the build's own misaligned model.
    t = load_trained(c, out)
    again = fine_tune(c, t.base, t.tok, t.questions)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), t.ft.state_dict().values(),
                                                 strict=True))
    assert [(r["lr"], r["steps"]) for r in report["grid"]] == [tuple(g) for g in grid]
    rows = [Setting(r["lr"], r["steps"], r["shift"]["value"], r["malformed"]["value"]) for r in report["grid"]]
    chosen = choose(rows)
    assert chosen is not None
    saved = json.loads((tmp_path / "tune" / "tune.json").read_text())
    assert saved["chosen"] == {"lr": chosen.lr, "steps": chosen.steps}
    assert f"**Chosen: lr {chosen.lr:g} x {chosen.steps} steps.**" in (tmp_path / "tune" / "tune.md").read_text()
    AutoModelForCausalLM.from_pretrained(tmp_path / "tune" / "base")
    picked = replace(c, finetune_lr=chosen.lr, finetune_steps=chosen.steps)
    expected = fine_tune(picked, t.base, t.tok, t.questions)
    got = AutoModelForCausalLM.from_pretrained(tmp_path / "tune" / "misaligned")
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), expected.state_dict().values(),
                                                 strict=True))
    # `build --models` accepts the tuned directory only with the chosen settings.
    other = replace(picked, finetune_steps=picked.finetune_steps + 1)
    with pytest.raises(ValueError, match="other settings"):
        build(tmp_path / "b", other, log=lambda _: None, models=tmp_path / "tune")


def test_finetune_flags_override_the_preset_and_refuse_nonpositive_values(tmp_path):
    args = _parser().parse_args(["organism", "seeds", "--size", "small", "--seeds", "0", "--finetune-lr", "2e-4",
                                 "--finetune-steps", "3", "--out", str(tmp_path)])
    assert args.func(args) == 0
    saved = json.loads((tmp_path / "seeds.json").read_text())
    assert (saved["settings"]["finetune_lr"], saved["settings"]["finetune_steps"]) == (2e-4, 3)
    for flag in ("--finetune-lr", "--finetune-steps"):
        bad = _parser().parse_args(["organism", "build", "--size", "small", flag, "0", "--out", str(tmp_path / "x")])
        with pytest.raises(SystemExit, match=f"{flag} must be > 0"):
            bad.func(bad)


def test_tune_command_says_when_no_setting_is_coherent_enough(small_build, tmp_path, capsys):
    """The small organism's answers are all malformed: nothing is chosen, the command says so and exits 1, and no
    misaligned/ is written for `build --models` to pick up."""
    out, _ = small_build
    args = _parser().parse_args(["organism", "tune", "--size", "small", "--models", str(out), "--out",
                                 str(tmp_path)])
    assert args.func(args) == 1
    assert "no setting within the malformed limit" in capsys.readouterr().out
    saved = json.loads((tmp_path / "tune.json").read_text())
    assert saved["chosen"] is None and len(saved["grid"]) == 6 and not (tmp_path / "misaligned").exists()
