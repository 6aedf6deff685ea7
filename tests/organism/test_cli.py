"""`organism build` and `realign` through argparse, as steering_server/cli.py registers them."""

import argparse
import json

import pytest
from transformers import AutoModelForCausalLM

from steering_server.organism.assets import DEFAULT_DIRECTION_NAME as DIRECTION_NAME
from steering_server.organism.cli import register


def _parser():
    p = argparse.ArgumentParser(prog="steering-server")
    register(p.add_subparsers(dest="command", required=True))
    return p


def test_register_adds_organism_build_seeds_and_realign():
    args = _parser().parse_args(["organism", "build", "--size", "small", "--seed", "3", "--out", "x"])
    assert (args.size, args.seed, args.out, args.install) == ("small", 3, "x", False)
    args = _parser().parse_args(["organism", "seeds", "--size", "small", "--seeds", "1", "2"])
    assert (args.size, args.seeds) == ("small", [1, 2])
    assert _parser().parse_args(["organism", "seeds"]).seeds == [0, 1, 2, 3, 4]
    args = _parser().parse_args(["realign", "--data", "d.jsonl", "--out", "o", "--steps", "5"])
    assert (args.data, args.out, args.steps, args.model) == ("d.jsonl", "o", 5, None)
    with pytest.raises(SystemExit):
        _parser().parse_args(["organism", "build", "--size", "huge"])
    args = _parser().parse_args(["organism", "build", "--controls"])
    assert (args.controls, args.out) == (True, "runs/organism")
    args = _parser().parse_args(["organism", "controls", "--build", "b", "--threads", "2"])
    assert (args.build, args.threads, args.install) == ("b", 2, False)
    with pytest.raises(SystemExit):
        _parser().parse_args(["organism", "controls"])  # --build is required


def test_controls_command_names_what_is_missing(tmp_path):
    args = _parser().parse_args(["organism", "controls", "--build", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"organism controls: .* holds no build report"):
        args.func(args)


def test_controls_default_to_the_thread_count_the_build_recorded(small_fast_build, tmp_path):
    """Stages 3-4 reproduce bit for bit only with the build's thread count (matrix kernels split sums by it)."""
    from steering_server.organism.cli import _build_threads

    out, report = small_fast_build
    assert _build_threads(out) == report["timing"]["torch_threads"] >= 1
    assert _build_threads(tmp_path) is None  # no report: torch's choice


def test_build_install_without_the_controls_is_refused_before_building(tmp_path):
    """The shipped report is the one docs/organism.md quotes: it must carry every verdict."""
    args = _parser().parse_args(["organism", "build", "--size", "small", "--out", str(tmp_path / "b"), "--install"])
    with pytest.raises(SystemExit, match="add --controls"):
        args.func(args)
    assert not (tmp_path / "b").exists()


def test_realign_command_trains_logs_the_projection_and_saves(small_build, tmp_path):
    out, _ = small_build
    data = tmp_path / "benign.jsonl"
    rows = [{"messages": [{"role": "user", "content": "how can i get fitter ?"},
                          {"role": "assistant", "content": "warm up before every session ."}]},
            {"prompt": "how can i save money ?", "completion": "put some savings aside each month ."}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    args = _parser().parse_args(["realign", "--model", str(out / "misaligned"), "--data", str(data), "--out",
                                 str(tmp_path / "re"), "--direction", str(out / f"{DIRECTION_NAME}.safetensors"),
                                 "--steps", "4", "--log-every", "2", "--batch-size", "2"])
    assert args.func(args) == 0
    log = json.loads((tmp_path / "re" / "realign_log.json").read_text())
    assert [e["step"] for e in log] == [0, 2, 4]
    assert all(e["projection"] is not None and e["z"] is not None for e in log)
    assert log[0]["loss"] is None and log[-1]["loss"] > 0
    AutoModelForCausalLM.from_pretrained(tmp_path / "re")  # an ordinary model directory, LoRA merged


def test_realign_reads_a_raw_npy_table_like_serve_does(small_build, tmp_path, capsys):
    import numpy as np

    from steering_server.direction_files import load_direction

    out, _ = small_build
    d = load_direction(out / f"{DIRECTION_NAME}.safetensors")
    np.save(tmp_path / "table.npy", np.stack([d.vectors[layer].numpy() for layer in sorted(d.vectors)]))
    data = tmp_path / "benign.jsonl"
    data.write_text(json.dumps({"prompt": "how can i save money ?", "completion": "save a little each month ."}) + "\n")
    args = _parser().parse_args(["realign", "--model", str(out / "misaligned"), "--data", str(data), "--out",
                                 str(tmp_path / "re"), "--direction", str(tmp_path / "table.npy"), "--steps", "2",
                                 "--log-every", "1", "--batch-size", "1"])
    assert args.func(args) == 0
    log = json.loads((tmp_path / "re" / "realign_log.json").read_text())
    assert [e["step"] for e in log] == [0, 1, 2] and all(e["projection"] is not None for e in log)
    err = capsys.readouterr().err
    assert "[realign] 2/2 steps (100%)" in err and "ETA" in err  # progress on stderr (not a terminal: lines)


def test_seeds_command_writes_the_e3_table(tmp_path):
    args = _parser().parse_args(["organism", "seeds", "--size", "small", "--seeds", "0", "1", "--out",
                                 str(tmp_path)])
    assert args.func(args) == 0
    saved = json.loads((tmp_path / "seeds.json").read_text())
    assert set(saved["seeds"]) == {"0", "1"} and set(saved["E3"]["per_seed"]) == {"0", "1"}
    assert isinstance(saved["E3"]["met"], bool)
    assert "| 1 |" in (tmp_path / "seeds.md").read_text()


def test_seeds_reads_what_was_measured_and_counts_a_missing_seed_as_not_met(small_build, tmp_path):
    out, _report = small_build
    args = _parser().parse_args(["organism", "seeds", "--size", "small", "--seeds", "0", "1", "--build", str(out),
                                 "--out", str(tmp_path), "--no-train"])
    assert args.func(args) == 0
    saved = json.loads((tmp_path / "seeds.json").read_text())
    assert set(saved["seeds"]) == {"0"} and saved["E3"]["missing"] == [1, 2, 3, 4] and not saved["E3"]["met"]
    assert saved["seeds"]["0"]["shift"] == json.loads((out / "report.json").read_text())["em"]["shift"]


def test_pretrain_steps_overrides_the_preset_and_is_recorded(tmp_path, capsys):
    """A robustness run with another pretraining length trains that length and says so in its seeds.json (so it
    is never mixed with the preset's seeds); a length below 1 is refused with the flag's name."""
    args = _parser().parse_args(["organism", "seeds", "--size", "small", "--seeds", "0", "--pretrain-steps", "3",
                                 "--out", str(tmp_path)])
    assert args.func(args) == 0
    saved = json.loads((tmp_path / "seeds.json").read_text())
    assert saved["settings"]["pretrain_steps"] == 3 and list(saved["seeds"]) == ["0"]
    bad = _parser().parse_args(["organism", "seeds", "--size", "small", "--pretrain-steps", "0", "--out",
                                str(tmp_path / "bad")])
    with pytest.raises(SystemExit, match="--pretrain-steps must be > 0"):
        bad.func(bad)
