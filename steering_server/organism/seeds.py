"""`steering-server organism seeds`: criterion E3, emergent misalignment across build seeds.

Each seed rebuilds the base model and its fine-tune from scratch (corpus draws, initialisation, fine-tune data and
sampling noise all follow the seed) and samples the pre-registered evaluation set through the served path. Only
E1 and E2 are evaluated per seed; the canonical build (`organism build`) evaluates everything else on seed 0.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .build import MODEL_IDS, eval_questions, held_out_domains, train_organism
from .config import EVAL, BuildConfig
from .criteria import em_criteria, evaluate_seeds, verdict
from .rates import em_shift, summarize
from .report import to_jsonable
from .served import ServedModel

__all__ = ["run_seeds", "seed_em"]


def seed_em(
    c: BuildConfig, done: Callable[[str], None] = lambda _: None, log: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Train one seed and measure its EM section (base, fine-tuned, shift) on the evaluation set."""
    t = train_organism(c, done=done, log=log)
    eval_q = eval_questions(t.questions, held_out_domains(c), c.eval_per_domain)
    out: dict[str, Any] = {}
    for key, model, model_id in (("base", t.base, MODEL_IDS["base"]), ("finetuned", t.ft, MODEL_IDS["misaligned"])):
        with ServedModel(model, t.tok, [], model_id) as sm:
            samples = sm.sample(eval_q, c.eval_samples, seed=c.sampling_seed(EVAL), max_new_tokens=c.max_new_tokens)
        out[key] = summarize(samples, len(eval_q))
    out["shift"] = em_shift(out["finetuned"], out["base"])
    out["finetune_steps"] = t.finetune["chosen_steps"]  # the length stage 2's rule chose for this seed
    out["finetune"] = t.finetune  # every checkpoint it measured on calib questions
    done("evaluation")
    return out


def _settings(config: BuildConfig) -> dict[str, Any]:
    """Everything a seed's result depends on but the seed, as saved in JSON."""
    return {k: v for k, v in to_jsonable(config.to_dict()).items() if k != "seed"}


def _known(out: Path, build: Path | None, config: BuildConfig) -> dict[int, dict[str, Any]]:
    """Results that need no retraining: seeds already in OUT/seeds.json, and the seed of a canonical build's report
    (its `em` section is the same measurement), each only when it was made with the same settings."""
    known: dict[int, dict[str, Any]] = {}
    settings = _settings(config)
    prev = out / "seeds.json"
    if prev.is_file():
        saved = json.loads(prev.read_text())
        if saved.get("settings") == settings:
            known |= {int(s): em for s, em in saved["seeds"].items()}
    if build is not None:
        report = json.loads((build / "report.json").read_text())
        cfg = report["config"]
        if {k: v for k, v in cfg.items() if k != "seed"} != settings:
            raise ValueError(f"{build / 'report.json'} was built with other settings than this run")
        ft = report.get("finetune", {})
        known[int(cfg["seed"])] = {**report["em"], "finetune_steps": ft.get("chosen_steps"), "finetune": ft}
    return known


def run_seeds(base_config: BuildConfig, seeds: Sequence[int], out: Path, log: Callable[[str], None] = print,
              build: Path | None = None, train: bool = True) -> dict[str, Any]:
    """E1 and E2 for each seed and E3 over them. Seeds already measured with the same settings (an earlier run into
    `out`, or the canonical build in `build`) are read, not retrained, and stay in the table; with train=False the
    others are left out (E3 counts a missing seed as not met)."""
    out.mkdir(parents=True, exist_ok=True)
    known = _known(out, build, base_config)
    per_seed: dict[int, dict[str, Any]] = dict(known)  # the table keeps every seed measured with these settings
    t0 = time.perf_counter()
    for k, seed in enumerate(seeds):
        if seed in known:
            log(f"[organism seeds] seed {seed}: measured before with the same settings, read")
            continue
        if not train:
            log(f"[organism seeds] seed {seed}: not measured yet, left out")
            continue
        c = replace(base_config, seed=seed)

        def done(stage: str, seed: int = seed, k: int = k) -> None:
            elapsed = time.perf_counter() - t0
            log(f"[organism seeds] seed {seed} ({k + 1}/{len(seeds)}) {stage}: {elapsed:.0f}s elapsed")

        per_seed[seed] = seed_em(c, done, log)
        _write(out, base_config, per_seed, time.perf_counter() - t0)
        crit = em_criteria(per_seed[seed])
        log(f"[organism seeds] seed {seed}: EM shift {100 * per_seed[seed]['shift']['value']:.1f} pts "
            f"[{100 * per_seed[seed]['shift']['lo']:.1f}, {100 * per_seed[seed]['shift']['hi']:.1f}], malformed "
            f"fine-tuned {100 * per_seed[seed]['finetuned']['malformed']['value']:.1f}% base "
            f"{100 * per_seed[seed]['base']['malformed']['value']:.1f}%: "
            + ", ".join(f"{n} {verdict(v)}" for n, v in crit.items()))
    return _write(out, base_config, per_seed, time.perf_counter() - t0)


def _write(out: Path, config: BuildConfig, per_seed: dict[int, dict[str, Any]], seconds: float) -> dict[str, Any]:
    """seeds.json and seeds.md for the seeds measured so far (written after every seed, so a long run that is
    stopped keeps what it measured)."""
    settings = _settings(config)
    report: dict[str, Any] = {"settings": settings, "seeds": per_seed,
              "E3": evaluate_seeds(per_seed), "total_s": round(seconds, 1)}
    (out / "seeds.json").write_text(json.dumps(to_jsonable(report), indent=1) + "\n")
    lines = ["# Organism v3: emergent misalignment across seeds (criterion E3)", "",
             "| seed | fine-tune steps | EM base | EM fine-tuned | shift [95% CI] | malformed base / fine-tuned | E1 "
             "| E2 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s, em in sorted(per_seed.items()):
        crit = em_criteria(em)
        sh = em["shift"]
        lines.append(f"| {s} | {em.get('finetune_steps') or '-'} | {100 * em['base']['em']['value']:.1f}% | "
                     f"{100 * em['finetuned']['em']['value']:.1f}% | "
                     f"{100 * sh['value']:.1f} [{100 * sh['lo']:.1f}, {100 * sh['hi']:.1f}] pts | "
                     f"{100 * em['base']['malformed']['value']:.1f}% / "
                     f"{100 * em['finetuned']['malformed']['value']:.1f}% | "
                     f"{'yes' if crit['E1']['met'] else 'no'} | {'yes' if crit['E2']['met'] else 'no'} |")
    e3 = report["E3"]
    missing = ", ".join(map(str, e3["missing"]))
    missing = f" Not measured (counted as not met): seeds {missing}." if missing else ""
    lines += ["", f"**E3 ({e3['statement']}): {verdict(e3)}.**{missing}",
              ""]
    (out / "seeds.md").write_text("\n".join(lines))
    return report
