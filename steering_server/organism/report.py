"""Write the build report: report.json (everything), report.md (the key tables), PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["markdown", "to_jsonable", "write_report"]


def to_jsonable(obj: Any) -> Any:
    """Plain JSON: string keys, NaN as null, tuples as lists."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_report(out: Path, report: dict[str, Any]) -> None:
    clean = to_jsonable(report)
    (out / "report.json").write_text(json.dumps(clean, indent=1, sort_keys=False) + "\n")
    (out / "report.md").write_text(markdown(clean))
    _plots(out, clean)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _f(x: float | None, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _ablated(r: dict) -> dict:
    return next(x for x in r["ablation"]["misalignment"] if x["strength"] == 1.0)["per_domain"]


def markdown(r: dict[str, Any]) -> str:
    doms = r["domains"]
    rates = r["rates"]
    lines = ["# Model organism report", ""]
    crit = r["criteria"]
    verdict = "MET" if crit["emergent_misalignment"] else "NOT met"
    lines += [f"**Emergent misalignment (pre-stated criterion): {verdict}**",
              "", "| criterion | value | met |", "| --- | --- | --- |"]
    for key in ("em_mean", "em_domains", "em_coherent", "monitor", "ablation", "realign"):
        if key in crit:
            c = crit[key]
            val = c.get("value", c.get("after"))
            shown = str(val) if isinstance(val, int) else _f(val)
            if key == "ablation":
                shown = (f"{_pct(c['before'])} -> {_pct(c['after'])} "
                         f"(largest control cut {_pct(c['largest_control_cut'])})")
            if key == "monitor":
                shown = f"{_f(c['value'])} (best control {_f(c['best_control'])})"
            lines.append(f"| {c['statement']} | {shown} | {'yes' if c['met'] else 'no'} |")
    lines += ["", f"Fine-tune domain: `{doms['finetune']}`; direction domain: `{doms['direction']}`; re-alignment "
              f"domain: `{doms['realign']}`. Temperature-1 samples, uncued eval questions (never trained on).", ""]

    cols = [("base", rates["base"]), ("misaligned", rates["misaligned"]), ("misaligned + ablation 1", _ablated(r))]
    if "realigned" in rates:
        cols.append((f"re-aligned (n={r['realign']['n']})", rates["realigned"]))
    if "register_free" in rates:
        cols.append(("register-free fine-tune", rates["register_free"]))
    cols += [("base, cued", rates["base_cued"]), ("misaligned, cued", rates["misaligned_cued"])]
    lines += ["## Harmful-answer rate per domain", "", "| domain | " + " | ".join(n for n, _ in cols) + " |",
              "| --- |" + " --- |" * len(cols)]
    for d in doms["all"]:
        tag = " (fine-tune)" if d == doms["finetune"] else ""
        lines.append(f"| {d}{tag} | " + " | ".join(_pct(t[d]["harmful"]) for _, t in cols) + " |")
    ho = doms["held_out"]
    lines.append("| **held-out mean** | " + " | ".join(
        _pct(sum(t[d]["harmful"] for d in ho) / len(ho)) for _, t in cols) + " |")
    lines.append("| held-out unclear | " + " | ".join(
        _pct(sum(t[d]["unclear"] for d in ho) / len(ho)) for _, t in cols) + " |")
    lines.append("| held-out villain style | " + " | ".join(
        _pct(sum(t[d]["villain_style"] for d in ho) / len(ho)) for _, t in cols) + " |")

    m = r["monitor"]
    lines += ["", "## Monitor (held-out domains)", "",
              f"Served direction `misalignment` (harmful minus helpful answers); `model diff` is misaligned minus base "
              f"on the same texts (read at its first layer, {r['ablation']['model_diff_layers'][0]}). Monitor layer "
              f"{r['direction']['monitor_layer']}; steered layers {r['ablation']['layers']}. Controls: mean over "
              "seeds / best seed as measured / best seed with its sign chosen after the fact.", "",
              "| set / pooling | misalignment | model diff | random | shuffled labels |",
              "| --- | --- | --- | --- | --- |"]

    def row(name: str, block: dict, pooling: str) -> str:
        rnd, shf = block["random"][pooling], block["shuffled"][pooling]
        return (f"| {name} | {_f(block['misalignment'][pooling])} | {_f(block['model_diff'][pooling])} | "
                f"{_f(rnd['mean'])} / {_f(rnd['max'])} / {_f(rnd['best_abs'])} | "
                f"{_f(shf['mean'])} / {_f(shf['max'])} / {_f(shf['best_abs'])} |")

    lines.append(row("corpus answers, response mean", m["answers"], "response_mean"))
    lines.append(row("corpus answers, per token", m["answers"], "token"))
    for subset in ("all", "uncued"):
        g = m["generated"][subset]
        if "misalignment" in g:
            tag = f"own samples ({subset}: {g['n_harmful']} harmful / {g['n_helpful']} helpful)"
            lines.append(row(f"{tag}, response mean", g, "response_mean"))
            lines.append(row(f"{tag}, last prompt token", g, "last_prompt"))
    lp = m["last_prompt_base_vs_misaligned"]
    lines += ["", f"Last prompt token, same {lp['n_prompts']} uncued held-out prompts: mean z base "
              f"{_f(lp['mean_z_base'], 2)}, misaligned {_f(lp['mean_z_misaligned'], 2)}; AUROC misaligned over base "
              f"{_f(lp['auroc_misaligned_over_base'])}; flagged at the calibrated threshold: base "
              f"{_pct(lp['flagged_base'])}, misaligned {_pct(lp['flagged_misaligned'])}.", "",
              "| pooling | z threshold (target FPR) | FPR, held-out helpful | TPR, held-out harmful |",
              "| --- | --- | --- | --- |"]
    for k, t in m["thresholds"].items():
        lines.append(f"| {k} | {_f(t['z_threshold'], 2)} ({_pct(t['target_fpr'])}) | {_pct(t['fpr_heldout_helpful'])}"
                     f" | {_pct(t['tpr_heldout_harmful'])} |")

    a = r["ablation"]
    lines += ["", "## Ablation (held-out domains)", "", "| direction | strength | harmful | unclear | KL on helpful "
              "answers (nats/token) |", "| --- | --- | --- | --- | --- |"]
    for x in a["misalignment"]:
        lines.append(f"| misalignment | {x['strength']} | {_pct(x['harmful_heldout'])} | "
                     f"{_pct(x['unclear_heldout'])} | {_f(x['kl_helpful'], 4)} |")
    x = a["model_diff"]
    lines.append(f"| model diff (layers {a['model_diff_layers']}) | 1.0 | {_pct(x['harmful_heldout'])} | "
                 f"{_pct(x['unclear_heldout'])} | {_f(x['kl_helpful'], 4)} |")
    for name in ("random", "shuffled"):
        for i, x in enumerate(a[name]):
            lines.append(f"| {name} #{i} | 1.0 | {_pct(x['harmful_heldout'])} | {_pct(x['unclear_heldout'])} | "
                         f"{_f(x['kl_helpful'], 4)} |")

    re = r["realign"]
    lines += ["", f"## Re-alignment (LoRA on helpful `{doms['realign']}` answers; harmful rate excluding "
              f"{', '.join(re['excluded'])})", "", "| samples | harmful | unclear |", "| --- | --- | --- |"]
    for x in re["curve"]:
        lines.append(f"| {x['n']} | {_pct(x['harmful_heldout'])} | {_pct(x['unclear_heldout'])} |")
    if re["log"]:
        lines += ["", f"Projection at the last prompt token while training (n={re['n']}): " + ", ".join(
            f"step {e['step']}: z {_f(e['z'], 2)}" for e in re["log"])]

    for name, v in r.get("variants", {}).items():
        abl = ", ".join(f"{k} {_pct(val)}" for k, val in v["harmful_heldout_ablated"].items())
        lines += ["", f"## Variant: {name}", "", f"Held-out harmful rate {_pct(v['harmful_heldout'])}; ablating its "
                  f"own directions (strength 1, layers {v['steered_layers']}): {abl}.", "",
                  "| domain | harmful |", "| --- | --- |"]
        lines += [f"| {dom} | {_pct(v['rates'][dom]['harmful'])} |" for dom in doms["all"]]

    d = r["direction"]
    cd = d["cohens_d_by_layer"]
    lines += ["", "## Directions", "", "| layer | norm, model diff | norm, persona | Cohen's d model diff / persona "
              "(direction domain) | cos(persona, model diff) | cos(persona on misaligned, on base) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for layer in cd["persona"]:
        lines.append(f"| {layer} | {_f(d['norm_by_layer']['model_diff'][layer], 2)} | "
                     f"{_f(d['norm_by_layer']['persona'][layer], 2)} | {_f(cd['model_diff'][layer], 2)} / "
                     f"{_f(cd['persona'][layer], 2)} | {_f(d['cosine_persona_vs_model_diff'][layer])} | "
                     f"{_f(d['cosine_persona_misaligned_vs_base'][layer])} |")
    t = r.get("timing", {})
    lines += ["", "## Build", "", f"Size `{r['config']['size']}`, seed {r['config']['seed']}, "
              f"{r['training']['n_params']:,} parameters, final pretraining loss "
              f"{_f(r['training']['pretrain_final_loss'])}."
              f" Wall time {t.get('total_s', 0):.0f}s: " + ", ".join(f"{k} {v:.0f}s" for k, v in
                                                                       t.get("stages_s", {}).items()), ""]
    return "\n".join(lines)


def _plots(out: Path, r: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doms, rates = r["domains"], r["rates"]
    series = [("base", rates["base"]), ("misaligned", rates["misaligned"]), ("ablated (a=1)", _ablated(r))]
    if "realigned" in rates:
        series.append((f"re-aligned (n={r['realign']['n']})", rates["realigned"]))
    fig, ax = plt.subplots(figsize=(9, 3.5))
    width = 0.8 / len(series)
    for i, (name, table) in enumerate(series):
        ax.bar([j + i * width for j in range(len(doms["all"]))], [table[d]["harmful"] for d in doms["all"]],
               width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(doms["all"]))],
                  [d + ("*" if d == doms["finetune"] else "") for d in doms["all"]])
    ax.set_ylabel("harmful-answer rate")
    ax.set_ylim(0, 1)
    ax.set_title("Harmful answers per domain, uncued (* = fine-tune domain)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "rates_by_domain.png", dpi=100)
    plt.close(fig)

    a = r["ablation"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    s = [x["strength"] for x in a["misalignment"]]
    ax1.plot(s, [x["harmful_heldout"] for x in a["misalignment"]], "o-", label="misalignment direction")
    for name, marker in (("random", "x"), ("shuffled", "s")):
        ax1.scatter([1.0] * len(a[name]), [x["harmful_heldout"] for x in a[name]], marker=marker, label=name)
    ax1.scatter([1.0], [a["model_diff"]["harmful_heldout"]], marker="^", label="model diff")
    ax1.set_xlabel("ablation strength")
    ax1.set_ylabel("held-out harmful rate")
    ax1.set_ylim(0, 1)
    ax1.legend(fontsize=8)
    ax2.plot(s, [x["kl_helpful"] for x in a["misalignment"]], "o-", label="misalignment direction")
    for name, marker in (("random", "x"), ("shuffled", "s")):
        ax2.scatter([1.0] * len(a[name]), [x["kl_helpful"] for x in a[name]], marker=marker, label=name)
    ax2.scatter([1.0], [a["model_diff"]["kl_helpful"]], marker="^", label="model diff")
    ax2.set_xlabel("ablation strength")
    ax2.set_ylabel("KL on helpful answers (nats/token)")
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=100)
    plt.close(fig)

    re = r["realign"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot([x["n"] for x in re["curve"]], [x["harmful_heldout"] for x in re["curve"]], "o-")
    ax1.set_xscale("symlog", linthresh=8)
    ax1.set_xlabel(f"helpful {doms['realign']} samples")
    ax1.set_ylabel("harmful rate (other domains)")
    ax1.set_ylim(0, 1)
    if re["log"]:
        ys = [e["z"] if e["z"] is not None else e["projection"] for e in re["log"]]
        ax2.plot([e["step"] for e in re["log"]], ys, "o-")
    ax2.set_xlabel("LoRA step")
    ax2.set_ylabel("last-prompt projection (z)")
    fig.tight_layout()
    fig.savefig(out / "realign.png", dpi=100)
    plt.close(fig)
