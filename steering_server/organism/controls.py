"""`steering-server organism controls`: the longer half of the evaluation, added to a build's report.

What the canonical build leaves out to fit its time budget, with the same sample sizes (docs/organism.md, "How to
rebuild"): the KL-matched random and shuffled-label controls of the removal (R3) and of the induction (I2), ABLATE
(zero-ablation) of the persona, and the dose-response on the fine-tuned model. It reads the build's trained models
and report, recomputes stages 3-4 (deterministic on one machine, and checked against the build's saved direction),
samples through the served path as the build does, and rewrites the report with every criterion's verdict.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..direction_files import load_direction
from . import experiments as ex
from .assets import DEFAULT_DIRECTION_NAME
from .build import Prepared, StageTimer, Trained, load_trained, prepare
from .config import BuildConfig
from .criteria import evaluate_criteria
from .report import write_report

__all__ = ["CONTROL_STAGES", "add_controls"]

# Seconds per stage on 2 threads (the ETA); the first two are skipped when the build hands over its own.
CONTROL_STAGES = {
    "directions": 2.0, "monitor layer and calibration": 21.0, "removal controls": 110.0, "induction controls": 90.0,
    "dose-response": 50.0, "report": 4.0,
}


def add_controls(
    out: str | Path, log: Callable[[str], None] = print, trained: Trained | None = None,
    prepared: Prepared | None = None,
) -> dict[str, Any]:
    """Add R3, I2, zero-ablation and the dose-response to the build in `out`; returns the rewritten report. `trained`
    and `prepared`: the build's own stages, when it runs this in the same process."""
    out = Path(out)
    if not (out / "report.json").is_file():
        raise FileNotFoundError(f"{out} holds no build report (report.json): run `steering-server organism build "
                                f"--out {out}` first")
    report = json.loads((out / "report.json").read_text())
    c = BuildConfig.from_dict(report["config"])
    skip = () if prepared is None else ("directions", "monitor layer and calibration")
    timer = StageTimer(log, {k: v for k, v in CONTROL_STAGES.items() if k not in skip})
    t = trained if trained is not None else load_trained(c, out)
    if prepared is None:
        prepared = prepare(c, t, timer.done)
        _check_same_direction(out, prepared)
    lab = ex.Lab(t.base, t.ft, t.tok, prepared.dirs, prepared.eval_q, prepared.cal, c)
    # The build's own EM of both models: what the controls' removal and rise are measured against.
    lab.results["base"], lab.results["ft"] = report["em"]["base"], report["em"]["finetuned"]
    try:
        report["removal"] |= lab.removal_controls(report["removal"])
        timer.done("removal controls")
        report["induction"]["controls"] = lab.induction_controls(report["induction"])
        timer.done("induction controls")
        report["dose_response"] = lab.dose_response(report["detection"]["natural_shift_raw"])
        timer.done("dose-response")
    finally:
        lab.close()
    report["criteria"] = evaluate_criteria(report)
    timer.done("report")
    report["timing_controls"] = timer.record()
    write_report(out, report)
    return report


def _check_same_direction(out: Path, p: Prepared) -> None:
    """The controls are only meaningful against the build's own persona: refuse one recomputed differently (another
    machine's float rounding, or other code)."""
    saved = load_direction(out / f"{DEFAULT_DIRECTION_NAME}.safetensors")
    mine = p.dirs[DEFAULT_DIRECTION_NAME]
    same = (saved.monitor_layer == mine.monitor_layer and saved.vectors.keys() == mine.vectors.keys()
            and all(torch.equal(saved.vectors[k], mine.vectors[k]) for k in saved.vectors))
    if not same:
        raise ValueError(f"{out}: the persona direction recomputed here differs from the build's (built on another "
                         "machine, or by other code); run the controls where the build ran, or build again here")
