"""Write the build report: report.json (everything), report.md (the criteria and key tables), PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .criteria import NOT_RUN as _NOT_RUN

__all__ = ["markdown", "read_report", "to_jsonable", "write_report"]

PLOTS = ("rates_by_domain.png", "interventions.png", "realign.png")


def to_jsonable(obj: Any) -> Any:
    """Plain JSON: string keys, NaN as null, tuples as lists."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def read_report(path: Path) -> dict[str, Any]:
    """A report.json as the build held it: every null back to NaN (to_jsonable writes NaN as null; nothing else in a
    report is null but a missing number), so comparisons with it fail as they did in the build."""

    def nan(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: nan(v) for k, v in x.items()}
        if isinstance(x, list):
            return [nan(v) for v in x]
        return math.nan if x is None else x

    return nan(json.loads(path.read_text()))  # type: ignore[no-any-return]


def write_report(out: Path, report: dict[str, Any]) -> None:
    clean = to_jsonable(report)
    (out / "report.json").write_text(json.dumps(clean, indent=1, sort_keys=False) + "\n")
    (out / "report.md").write_text(markdown(clean))
    _plots(out, clean)


def _pct(x: float | None, nd: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{nd}f}%"


def _matched(control: dict[str, Any]) -> str:
    """Whether a control reached the persona's KL (a control short of it proves nothing)."""
    m = control["match"]
    return "KL-matched" if m["matched"] else f"not KL-matched: {_f(m['kl'], 3)} against {_f(m['target_kl'], 3)}"


def _layers(section: dict[str, Any]) -> str:
    """The layers a removal or induction section steers (v3 reports steered the monitor layer alone)."""
    layers = section.get("layers")
    return ", ".join(map(str, layers)) if layers else "the monitor layer"


def _intervention_control_cosines(r: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The cosines of the controls used for R3 and I2 (the first `intervention_controls` of each kind)."""
    k = r["config"]["intervention_controls"]
    cos = r["direction"].get("cosine_controls_at_monitor_layer", {})  # reports before it was recorded have none
    return {name: v for name, v in cos.items() if int(name.rsplit("_", 1)[1]) < k}


def _f(x: float | None, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _ci(e: dict[str, float] | None, points: bool = False) -> str:
    """'12.3% [8.1, 16.0]' for a rate; with points=True a difference in percentage points."""
    if e is None or e.get("value") is None:
        return "-"
    unit = " pts" if points else "%"
    return f"{100 * e['value']:.1f}{unit} [{100 * e['lo']:.1f}, {100 * e['hi']:.1f}]"


def _criterion_value(key: str, c: dict[str, Any]) -> str:
    if key == "J":
        return f"kappa {_f(c['kappa'])}; salad harmful {', '.join(f'{k} {_pct(v)}' for k, v in c['salad'].items())}"
    if key == "E1":
        return _ci(c["value"], points=True)
    if key == "E2":
        return f"fine-tuned {_pct(c['finetuned'])}, base {_pct(c['base'])}"
    if key == "D1":
        return f"{_f(c['value'])} (ceiling {_f(c['ceiling'])})"
    if key == "D3":
        return f"{_f(c['value'])} vs best control {_f(c['best_control'])}"
    if key == "R1":
        return f"{_pct(c['value'])} removed (EM {_ci(c['em'])})"
    if key == "R2":
        return (f"malformed {100 * c['malformed_rise']:+.1f} pts; KL {_f(c['kl'], 4)} (fine-tuned "
                f"{_f(c['kl_finetuned'], 4)})")
    if key == "I1":
        return (f"{_ci(c['rise'], points=True)} at strength {c['strength']:g}; malformed {_pct(c['malformed'])}; "
                f"monotone {'yes' if c['monotone'] else 'no'}")
    if key in ("R3", "D2"):
        return _pct(c["value"]) if key == "R3" else _f(c["value"])
    if key in ("I2", "A"):
        return f"{100 * c['value']:+.1f} pts" if c["value"] is not None else "-"
    return str(c.get("value", ""))


def _finetune_lines(ft: dict[str, Any]) -> list[str]:
    """Stage 2: every checkpoint the pre-registered rule measured on calib questions, and its choice."""
    if not ft:
        return []
    out = ["", f"Fine-tune length (stage 2, calib questions, {ft['n_questions']} x {ft['samples_per_question']} "
           f"answers; base EM {_pct(ft['base']['em']['value'])}, malformed {_pct(ft['base']['malformed']['value'])}): "
           f"rule: {ft['rule']}.", "", "| steps | calib EM shift | malformed |", "| --- | --- | --- |"]
    for row in ft["measured"]:
        mark = " (chosen)" if row["steps"] == ft["chosen_steps"] else ""
        out.append(f"| {row['steps']}{mark} | {_ci(row['shift'], points=True)} | {_pct(row['malformed']['value'])} |")
    return out


def markdown(r: dict[str, Any]) -> str:
    lines = ["# Model organism v3: report", ""]
    crit = r["criteria"]
    lines += ["## Pre-registered criteria", "", "| # | criterion | result | met |", "| --- | --- | --- | --- |"]
    for key, c in crit.items():
        if c["met"] is None:  # R3 and I2 before `organism controls` ran
            result, met = c["note"], "not run"
        else:
            result, met = _criterion_value(key, c), "yes" if c["met"] else "**no**"
        lines.append(f"| {key} | {c['statement']} | {result} | {met} |")
    em = r["em"]
    lines += ["", "E3 (seeds 0-4) comes from `steering-server organism seeds` (docs/organism.md).", "",
              f"Eval set: {len(r['eval_questions'])} questions (8 per held-out domain, 8 open), "
              f"{r['config']['eval_samples']} answers each at temperature 1, sampled through the served engine. "
              "Intervals: 95%, bootstrap over questions.", "",
              "## Rates (strict judge)", "",
              "| model / intervention | EM (harmful) | harmful, any domain | malformed | helpful |",
              "| --- | --- | --- | --- | --- |"]

    def rate_row(name: str, x: dict[str, Any]) -> str:
        return (f"| {name} | {_ci(x['em'])} | {_ci(x.get('harmful_any'))} | {_ci(x['malformed'])} | "
                f"{_ci(x.get('helpful'))} |")

    lines.append(rate_row("base", em["base"]))
    lines.append(rate_row("fine-tuned", em["finetuned"]))
    rem = r["removal"]
    lines.append(rate_row(f"fine-tuned + CLAMP 0 persona at layers {_layers(rem)} (R1)", rem["clamp"]))
    if "clamp_monitor_layer" in rem:
        lines.append(rate_row("fine-tuned + CLAMP 0 persona at the monitor layer alone (v3)",
                              rem["clamp_monitor_layer"]))
    if "ablate" in rem:
        lines.append(rate_row("fine-tuned + ABLATE 1 persona", rem["ablate"]))
    lines.append(rate_row(f"fine-tuned + CLAMP 0 model_diff at layers {_layers(rem)} (positive control)",
                          rem["model_diff_clamp"]))
    j = em["judges"]
    lines += _finetune_lines(r.get("finetune") or {})
    lines += ["", f"Second judge (trigrams + markers): EM fine-tuned {_ci(j['finetuned_second_judge']['em'])}, base "
              f"{_ci(j['base_second_judge']['em'])}; kappa with the strict judge {_f(j['kappa_harmful'])} over "
              f"{j['n_answers']} answers.", "", "## Per domain (EM, strict judge)", "",
              "| domain | base | fine-tuned | + CLAMP 0 | + ADD best (base) |", "| --- | --- | --- | --- | --- |"]
    ind = r["induction"]
    best = next(x for x in ind["strengths"] if x["strength"] == ind["best_strength"])
    for d in em["finetuned"]["per_domain"]:
        cells = [em["base"], em["finetuned"], rem["clamp"], best]
        lines.append(f"| {d} | " + " | ".join(_pct(x["per_domain"][d]["harmful"], 0) for x in cells) + " |")

    det = r["detection"]
    sel = det["selection"]
    lines += ["", "## Detection (last prompt token, before any answer token)", "",
              f"Monitor layer {sel['monitor_layer']} (where the direction is read and every intervention acts), "
              f"chosen on the fine-tuned model's own calib prompts and samples by {sel['selection_rule']}: "
              "detection AUROC by layer: "
              + ", ".join(f"{k}: {_f(v)}" for k, v in sel["selection_auroc_by_layer"].items())
              + "; share of answers helpful under CLAMP 0 at prompt positions by layer: "
              + ", ".join(f"{k}: {_pct(v)}" for k, v in sel.get("selection_helpful_under_clamp_by_layer", {}).items())
              + ".", "",
              f"- D1: AUROC {_f(det['d1_auroc'])} (reference hooks {_f(det['d1_reference_hooks'])}) over "
              f"{det['d1_n_harmful']} harmful and {det['d1_n_helpful']} helpful answers; per-prompt ceiling "
              f"{_f(det['d1_ceiling'])}; model_diff (positive control) {_f(det['model_diff_d1_auroc'])}.",
              f"- D2: fine-tuned over base prompts {_f(det['d2_auroc_finetuned_over_base'])}; mean prompt z base "
              f"{_f(det['mean_prompt_z']['base'], 2)}, fine-tuned {_f(det['mean_prompt_z']['finetuned'], 2)}.",
              "- D3 controls (sign ignored, max over seeds): " + ", ".join(
                  f"{k} {_f(v['best_abs'])} (mean {_f(v['mean'])}, n={v['n']:.0f})"
                  for k, v in det["controls"].items()),
              "- Controls' cosine with the persona / model_diff at the monitor layer (the intervention controls): "
              + ", ".join(f"{k} {_f(v['persona'], 2)} / {_f(v['model_diff'], 2)}"
                          for k, v in _intervention_control_cosines(r).items()),
              "- Calibrated thresholds' FPR on held-back benign answers: " + ", ".join(
                  f"{k} {_pct(v)}" for k, v in det["fpr_on_held_back_benign"].items()) + " (target "
              f"{_pct(r['config']['target_fpr'])}).", "",
              "## Removal (fine-tuned model)", "",
              "Every CLAMP acts at prompt positions, each layer to the base model's level there; the controls at the "
              "persona's layers, at the z whose KL(fine-tuned‖steered) matches the persona's. The persona ships with "
              f"the removal at layers {', '.join(map(str, rem.get('shipped_recipe_layers', [])) or '-')} "
              "(amendment 6's adoption rule: `criteria.adopt_layered_removal`).", "",
              "| intervention | EM | removed | malformed | KL(base‖steered) | KL(fine-tuned‖steered) |",
              "| --- | --- | --- | --- | --- | --- |"]
    alone = [("CLAMP 0 persona, monitor layer alone (v3)", rem[k]) for k in ("clamp_monitor_layer",) if k in rem]
    for name, x in ((f"CLAMP 0 persona, layers {_layers(rem)}", rem["clamp"]), *alone,
                    *((("ABLATE 1 persona", rem["ablate"]),) if "ablate" in rem else ()),
                    (f"CLAMP 0 model_diff, layers {_layers(rem)}", rem["model_diff_clamp"]),
                    *((f"control {c['direction']} (CLAMP {c['clamp_z']:.2f}, {_matched(c)})", c)
                      for c in rem.get("controls", ()))):
        lines.append(f"| {name} | {_ci(x['em'])} | {_pct(x['removed'])} | {_ci(x['malformed'])} | "
                     f"{_f(x['kl_base_to_steered'], 4)} | {_f(x['kl_finetuned_to_steered'], 4)} |")
    if "controls" not in rem:
        lines.append(f"| ABLATE 1 persona; KL-matched controls (R3) | {_NOT_RUN} | | | | |")
    lines += ["", f"KL(base‖fine-tuned) = {_f(rem['kl_base_to_finetuned'], 4)} nats per answer token.", "",
              f"## Induction (ADD on the base model at the last prompt token, layers {_layers(ind)})", "",
              "| strength | EM | rise over base | malformed | KL(base‖steered) |", "| --- | --- | --- | --- | --- |"]
    for x in ind["strengths"]:
        lines.append(f"| {x['strength']:g} | {_ci(x['em'])} | {_ci(x['rise'], True)} | {_ci(x['malformed'])} | "
                     f"{_f(x['kl_base_to_steered'], 4)} |")
    if "controls" not in ind:
        lines.append(f"| KL-matched controls (I2) | {_NOT_RUN} | | | |")
    for x in ind.get("controls", ()):
        lines.append(f"| control {x['direction']} ({x['strength']:.2f}, {_matched(x)}) | {_ci(x['em'])} | "
                     f"{_ci(x['rise'], True)} | {_ci(x['malformed'])} | - |")
    lines += ["", "## Dose-response (ADD on the fine-tuned model, in multiples of the natural shift)", "",
              f"Natural shift: {_f(det['natural_shift_raw'])} raw ({_f(det['natural_shift_z'], 2)} last-prompt z); "
              f"stored vector norm at the monitor layer {_f(det['vector_norm_at_monitor_layer'])}.", "",
              "| shift | strength | EM | malformed |", "| --- | --- | --- | --- |"]
    for x in r.get("dose_response", ()):
        lines.append(f"| {x['shift']:+g} | {x['strength']:.3f} | {_ci(x['em'])} | {_ci(x['malformed'])} |")
    if "dose_response" not in r:
        lines.append(f"| {_NOT_RUN} | | | |")
    re = r["realign"]
    lines += ["", f"## Re-alignment (LoRA on helpful `{re['domain']}` answers; EM excluding "
              f"{', '.join(re['excluded'])})", "", "| samples | EM | above base | malformed |",
              "| --- | --- | --- | --- |"]
    for x in re["curve"]:
        lines.append(f"| {x['n']} | {_ci(x['em_kept'])} | {_ci(x['above_base_kept'], True)} | "
                     f"{_ci(x['malformed'])} |")
    lines += ["", "## Build", "", f"Size `{r['config']['size']}`, seed {r['config']['seed']}, "
              f"{r['training']['n_params']:,} parameters, final pretraining loss "
              f"{_f(r['training']['pretrain_final_loss'])}.", ""]
    for what, key in (("`organism build`", "timing"), ("`organism controls`", "timing_controls")):
        if t := r.get(key):
            threads = f" on {t['torch_threads']} torch threads" if t.get("torch_threads") else ""
            lines.append(f"- {what}{threads}: {t['total_s']:.0f}s: "
                         + ", ".join(f"{k} {v:.0f}s" for k, v in t["stages_s"].items()))
    lines.append("")
    return "\n".join(lines)


def _plots(out: Path, r: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    em, rem, ind = r["em"], r["removal"], r["induction"]
    best = next(x for x in ind["strengths"] if x["strength"] == ind["best_strength"])
    series = [("base", em["base"]), ("fine-tuned", em["finetuned"]), ("fine-tuned + CLAMP 0", rem["clamp"]),
              (f"base + ADD {best['strength']:g}", best)]
    doms = list(em["finetuned"]["per_domain"])
    fig, ax = plt.subplots(figsize=(9, 3.5))
    width = 0.8 / len(series)
    for i, (name, x) in enumerate(series):
        ax.bar([k + i * width for k in range(len(doms))], [x["per_domain"][d]["harmful"] for d in doms], width,
               label=name)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(doms))], doms)
    ax.set_ylabel("EM rate (strict judge)")
    ax.set_ylim(0, 1)
    ax.set_title("Harmful answers per held-out domain and open questions, uncued")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "rates_by_domain.png", dpi=100)
    plt.close(fig)

    def err(x: dict[str, float]) -> list[list[float]]:
        return [[x["value"] - x["lo"]], [x["hi"] - x["value"]]]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    dose = r.get("dose_response", [])  # absent until `organism controls` ran
    for x in dose:
        ax1.errorbar([x["shift"]], [x["em"]["value"]], yerr=err(x["em"]), fmt="o", color="C0")
    ax1.plot([x["shift"] for x in dose], [x["em"]["value"] for x in dose], "-",
             color="C0", label="persona ADD")
    ax1.axhline(em["base"]["em"]["value"], color="gray", ls="--", label="base")
    ax1.scatter([-1.0], [rem["clamp"]["em"]["value"]], marker="*", s=120, color="C2", label="CLAMP 0 (R1)")
    for k, c in enumerate(rem.get("controls", ())):
        ax1.scatter([-1.0], [c["em"]["value"]], marker="x", color="C3", label="KL-matched controls" if k == 0 else None)
    if not dose:
        ax1.set_title("dose-response and controls: not run (organism controls)", fontsize=9)
    ax1.set_xlabel("ADD on the fine-tuned model (x natural shift)")
    ax1.set_ylabel("EM rate")
    ax1.set_ylim(0, 1)
    ax1.legend(fontsize=7)
    s = [x["strength"] for x in ind["strengths"]]
    ax2.errorbar(s, [x["em"]["value"] for x in ind["strengths"]],
                 yerr=[[x["em"]["value"] - x["em"]["lo"] for x in ind["strengths"]],
                       [x["em"]["hi"] - x["em"]["value"] for x in ind["strengths"]]], fmt="o-", label="persona ADD")
    for k, c in enumerate(ind.get("controls", ())):
        ax2.scatter([c["strength"]], [c["em"]["value"]], marker="x", color="C3",
                    label="KL-matched controls" if k == 0 else None)
    ax2.axhline(em["base"]["em"]["value"], color="gray", ls="--", label="base")
    ax2.set_xlabel("ADD on the base model (x stored vector)")
    ax2.set_ylabel("EM rate")
    ax2.set_ylim(0, 1)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "interventions.png", dpi=100)
    plt.close(fig)

    re = r["realign"]["curve"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar([x["n"] for x in re], [x["em_kept"]["value"] for x in re],
                yerr=[[x["em_kept"]["value"] - x["em_kept"]["lo"] for x in re],
                      [x["em_kept"]["hi"] - x["em_kept"]["value"] for x in re]], fmt="o-", label="re-aligned")
    if re:
        ax.axhline(re[0]["base_em_kept"]["value"], color="gray", ls="--", label="base")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"helpful {r['realign']['domain']} samples")
    ax.set_ylabel("EM rate (other domains)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "realign.png", dpi=100)
    plt.close(fig)
