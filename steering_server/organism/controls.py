"""`steering-server organism controls`: the longer half of the evaluation, added to a build's report.

What the canonical build leaves out to fit its time budget, with the same sample sizes (docs/organism.md, "How to
rebuild"): the KL-matched random and shuffled-label controls of the removal (R3) and of the induction (I2), ABLATE
(zero-ablation) of the persona, and the dose-response on the fine-tuned model. It reads the build's trained models
and report, recomputes stages 3-4 (deterministic on one machine; refused unless they reproduce the build's persona,
calibration and controls exactly), samples through the served path as the build does, and rewrites the report with
every criterion's verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..direction_files import load_direction
from . import experiments as ex
from .assets import DEFAULT_DIRECTION_NAME
from .build import PREPARE_STAGES, Prepared, StageTimer, Trained, load_trained, prepare
from .config import BuildConfig
from .criteria import evaluate_criteria
from .report import read_report, to_jsonable, write_report

__all__ = ["CONTROL_STAGES", "NotABuild", "add_controls"]

# Seconds per stage on 2 idle threads (the ETA); PREPARE_STAGES are skipped when the build hands over its own.
CONTROL_STAGES = {**PREPARE_STAGES, "removal controls": 110.0, "induction controls": 90.0, "dose-response": 50.0,
                  "report": 4.0}


class NotABuild(Exception):
    """The directory is not a build the controls can extend (missing files, other settings, another machine's)."""


def add_controls(
    out: str | Path, log: Callable[[str], None] = print, given: tuple[Trained, Prepared] | None = None
) -> dict[str, Any]:
    """Add R3, I2, zero-ablation and the dose-response to the build in `out`; returns the rewritten report. `given`:
    the build's own trained models and stages 3-4, when it runs this in the same process."""
    out = Path(out)
    _check_files(out)
    report = read_report(out / "report.json")
    try:
        c = BuildConfig.from_dict(report["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise NotABuild(f"{out / 'report.json'}: not a report of this version's build ({exc})") from exc
    timer = StageTimer(log, {k: v for k, v in CONTROL_STAGES.items() if given is None or k not in PREPARE_STAGES})
    if given is None:
        t = load_trained(c, out)
        p = prepare(c, t, timer.done)
        _check_reproduced(out, report, p)
    else:
        t, p = given
    lab = ex.Lab(t.base, t.ft, t.tok, p.dirs, p.eval_q, p.cal, c)
    lab.use_reference_em(report["em"])
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


def _check_files(out: Path) -> None:
    """Before any minute is spent: what the command reads must be there."""
    if not (out / "report.json").is_file():
        raise NotABuild(f"{out} holds no build report (report.json): run `steering-server organism build --out "
                        f"{out}` first")
    for need in ("base/config.json", "misaligned/config.json", f"{DEFAULT_DIRECTION_NAME}.safetensors"):
        if not (out / need).is_file():
            raise NotABuild(f"{out} has a report but no {need}: not a complete build directory")


def _check_reproduced(out: Path, report: dict[str, Any], p: Prepared) -> None:
    """The controls are only meaningful against the build's own persona, calibration and control directions at the
    build's layers: refuse stages 3-4 that came out differently here (another machine's float rounding, other code)
    or a report whose removal clamped other layers (before amendment 6)."""
    saved = load_direction(out / f"{DEFAULT_DIRECTION_NAME}.safetensors")
    mine = p.dirs[DEFAULT_DIRECTION_NAME]
    facts = to_jsonable(ex.direction_facts(p.vecs, p.layer))
    same = (saved.monitor_layer == mine.monitor_layer == report["direction"]["monitor_layer"]
            and saved.vectors.keys() == mine.vectors.keys()
            and all(torch.equal(saved.vectors[k], mine.vectors[k]) for k in saved.vectors)
            and saved.calibration == mine.calibration and saved.layer_calibration == mine.layer_calibration
            and all(to_jsonable(report["direction"].get(k)) == v for k, v in facts.items()))
    if not same:
        threads = report.get("timing", {}).get("torch_threads")
        ran = f" with {threads} torch threads" if threads else ""
        raise NotABuild(f"{out}: the persona direction, its calibration or its controls recomputed here (with "
                        f"{torch.get_num_threads()} torch threads) differ from the build's (another machine, another "
                        f"thread count, or other code); run the controls where the build ran{ran}, or build again here")
    if report["removal"].get("layers") != list(ex.persona_layers(p.layer)):
        raise NotABuild(f"{out}: its removal clamped layers {report['removal'].get('layers')}, not the layers "
                        f"{list(ex.persona_layers(p.layer))} this version's controls are matched at")
