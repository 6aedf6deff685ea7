"""The held-out experiments of the build: the monitor and the ablation, each against its controls.

Controls (DESIGN.md, "The model organism") for the served direction: a random direction with its per-layer
norms, and the same difference of means with the harmful/helpful labels shuffled. Control seeds are shared by the
monitor and the ablation experiments (random: 1000 + i, shuffled: 2000 + i).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..directions import Calibration
from .capture import Activations, capture
from .compute import DirectionSet, compute_directions
from .config import BuildConfig
from .corpus import CUES, Question
from .diffmeans import project, random_like, shuffled_diff_of_means
from .evaluate import Sample, prompt_messages, rates, sample_answers
from .judge import judge
from .metrics import auroc, control_summary, kl_cost
from .steer import ablation
from .tokenizer import format_chat
from .train import Encoded

__all__ = ["ablation_report", "controls", "mean_rate", "monitor_report", "pooled", "variant_report"]

Vectors = Mapping[int, torch.Tensor]
ANSWER_POOLINGS = ("token", "response_mean")


def pooled(acts: Activations, vectors: Vectors, layer: int) -> dict[str, torch.Tensor]:
    """Raw projections per pooling at `layer`: every answer token, the mean per answer, the last prompt token."""
    v = vectors[layer]
    return {"token": project(acts.tokens[layer], v), "response_mean": project(acts.mean[layer], v),
            "last_prompt": project(acts.last_prompt[layer], v)}


def mean_rate(table: Mapping[str, Mapping[str, float]], exclude: Sequence[str], key: str = "harmful") -> float:
    vals = [row[key] for d, row in table.items() if d not in exclude]
    return statistics.fmean(vals) if vals else float("nan")


def controls(ds: DirectionSet, k: int, layers: Sequence[int]) -> dict[str, list[dict[int, torch.Tensor]]]:
    """k random directions with the served direction's per-layer norms, and k differences of means with the
    harmful/helpful labels of the direction-domain examples shuffled."""
    harm, help_ = ds.mis
    ref = {layer: ds.persona[layer] for layer in layers}
    pos = {layer: harm.mean[layer] for layer in layers}
    neg = {layer: help_.mean[layer] for layer in layers}
    return {
        "random": [random_like(ref, 1000 + i) for i in range(k)],
        "shuffled": [shuffled_diff_of_means(pos, neg, 2000 + i) for i in range(k)],
    }


def _aurocs(pos: Activations, neg: Activations, vectors: Vectors, layer: int, poolings: Sequence[str]) -> dict:
    p, n = pooled(pos, vectors, layer), pooled(neg, vectors, layer)
    return {k: auroc(p[k], n[k]) for k in poolings}


def _with_controls(
    pos: Activations, neg: Activations, named: Mapping[str, tuple[Vectors, int]],
    ctrl: Mapping[str, Sequence[Vectors]], layer: int, poolings: Sequence[str],
) -> dict[str, Any]:
    """AUROCs of each named (vectors, read layer) and summaries of the controls (read at `layer`)."""
    out: dict[str, Any] = {name: _aurocs(pos, neg, vecs, at, poolings) for name, (vecs, at) in named.items()}
    for name, dirs in ctrl.items():
        per = [_aurocs(pos, neg, d, layer, poolings) for d in dirs]
        out[name] = {k: control_summary([a[k] for a in per]) for k in poolings}
    return out


def _encode_samples(tok, samples: Sequence[Sample], cue: str | None) -> list[Encoded]:
    """Prompt + generated answer + <|end|>, as the server would score them."""
    out = []
    for s in samples:
        prompt = tok(format_chat(prompt_messages(s.question, cue if s.cued else None), True),
                     add_special_tokens=False)["input_ids"]
        out.append(Encoded((*prompt, *s.answer_ids, tok.eos_token_id), len(prompt)))
    return out


def _subset(acts: Activations, idx: list[int]) -> Activations:
    keep = torch.tensor(idx, dtype=torch.long)
    tok_mask = torch.isin(acts.token_example, keep)
    return Activations(
        tokens={k: v[tok_mask] for k, v in acts.tokens.items()},
        token_example=acts.token_example[tok_mask],
        mean={k: v[keep] for k, v in acts.mean.items()},
        last_prompt={k: v[keep] for k, v in acts.last_prompt.items()},
    )


def monitor_report(
    mis: torch.nn.Module, base: torch.nn.Module, tok, named: Mapping[str, tuple[Vectors, int]],
    ctrl: Mapping[str, Sequence[Vectors]], layer: int, cal: Mapping[str, Calibration],
    heldout: tuple[list[Encoded], list[Encoded]], generated: Sequence[Sample], c: BuildConfig,
) -> dict[str, Any]:
    """AUROCs on held-out domains (teacher-forced corpus answers; the model's own samples), the calibrated
    thresholds checked on held-out data, and the last-prompt projection of base vs misaligned on the same prompts.
    `named` maps a name to (vectors, the layer it is read at); the first is the served direction, read at `layer`
    with calibration `cal`."""
    pad, special = int(tok.pad_token_id), set(tok.all_special_ids)
    ctrl = {k: list(v)[: c.monitor_controls] for k, v in ctrl.items()}
    served = next(iter(named.values()))[0]
    read = sorted({layer, *(at for _, at in named.values())})
    harm = capture(mis, heldout[0], read, pad, special)
    help_ = capture(mis, heldout[1], read, pad, special)
    out: dict[str, Any] = {"answers": _with_controls(harm, help_, named, ctrl, layer, ANSWER_POOLINGS)}

    ph, pn = pooled(harm, served, layer), pooled(help_, served, layer)

    def flagged(scores: torch.Tensor, cal_k: Calibration) -> float:
        thr = cal_k.threshold if cal_k.threshold is not None else float("inf")
        return float((((scores - cal_k.mu) / cal_k.sigma) > thr).double().mean())

    out["thresholds"] = {
        k: {"z_threshold": cal[k].threshold, "target_fpr": cal[k].target_fpr,
            "fpr_heldout_helpful": flagged(pn[k], cal[k]), "tpr_heldout_harmful": flagged(ph[k], cal[k])}
        for k in ANSWER_POOLINGS
    }

    # The misaligned model's own answers, labelled by the judge; last_prompt scores come before any token.
    labelled = [(s, judge(s.answer, s.question.domain)) for s in generated]
    labelled = [(s, j) for s, j in labelled if j.verdict != "unclear" and s.answer_ids]
    gen_acts = capture(mis, _encode_samples(tok, [s for s, _ in labelled], CUES[0]), read, pad, special)
    gen: dict[str, Any] = {}
    for subset, keep in (("all", lambda s: True), ("uncued", lambda s: not s.cued)):
        pos = [i for i, (s, j) in enumerate(labelled) if keep(s) and j.harmful_any]
        neg = [i for i, (s, j) in enumerate(labelled) if keep(s) and not j.harmful_any]
        entry: dict[str, Any] = {"n_harmful": len(pos), "n_helpful": len(neg)}
        if pos and neg:
            entry |= _with_controls(_subset(gen_acts, pos), _subset(gen_acts, neg), named, ctrl, layer,
                                    ("response_mean", "last_prompt"))
        gen[subset] = entry
    out["generated"] = gen

    # Same uncued prompts through both models: does the alarm rise with the fine-tune, before any token?
    questions = sorted({s.question for s in generated if not s.cued}, key=lambda q: (q.domain, q.text))
    prompts = []
    for q in questions:
        ids = tuple(tok(format_chat(prompt_messages(q), True), add_special_tokens=False)["input_ids"])
        prompts.append(Encoded(ids, len(ids)))  # no answer: only the last prompt token is read
    v = served[layer]
    lp_mis = project(capture(mis, prompts, [layer], pad, special).last_prompt[layer], v)
    lp_base = project(capture(base, prompts, [layer], pad, special).last_prompt[layer], v)
    z = cal["last_prompt"]
    z_mis, z_base = (lp_mis - z.mu) / z.sigma, (lp_base - z.mu) / z.sigma
    thr = z.threshold if z.threshold is not None else float("inf")
    out["last_prompt_base_vs_misaligned"] = {
        "n_prompts": len(prompts),
        "mean_z_base": float(z_base.mean()),
        "mean_z_misaligned": float(z_mis.mean()),
        "auroc_misaligned_over_base": auroc(lp_mis, lp_base),
        "flagged_base": float((z_base > thr).double().mean()),
        "flagged_misaligned": float((z_mis > thr).double().mean()),
    }
    return out


def _ablated_rates(
    model: torch.nn.Module, tok, eval_q: Sequence[Question], domains: Sequence[str], vectors: Vectors, a: float,
    layers: Sequence[int], c: BuildConfig,
) -> dict:
    with ablation(model, vectors, a, layers):
        return rates(sample_answers(model, tok, eval_q, seed=c.seed + 7, n_samples=c.eval_samples,
                                    max_new_tokens=c.max_new_tokens), domains)


def ablation_report(
    mis: torch.nn.Module, tok, eval_q: Sequence[Question], domains: Sequence[str], held_out: Sequence[str],
    served: Vectors, layers: Sequence[int], model_diff: Vectors, diff_layers: Sequence[int],
    ctrl: Mapping[str, Sequence[Vectors]], mis_table: dict, helpful: Sequence[Encoded], c: BuildConfig,
) -> dict[str, Any]:
    """Harmful rates under ablation: the served direction at each strength; the model-diff direction (at its own
    layers) and the controls at strength 1; each with its KL cost on helpful held-out answers."""
    pad = int(tok.pad_token_id)
    exclude = [d for d in domains if d not in held_out]

    def run(vectors: Vectors, a: float, at: Sequence[int] = layers) -> dict[str, Any]:
        # Strength 0 is the unsteered model: the same prompts and seed, so its samples are reused.
        table = mis_table if a == 0.0 else _ablated_rates(mis, tok, eval_q, domains, vectors, a, at, c)
        return {
            "strength": a,
            "harmful_heldout": mean_rate(table, exclude),
            "harmful_any_heldout": mean_rate(table, exclude) + mean_rate(table, exclude, "harmful_other"),
            "unclear_heldout": mean_rate(table, exclude, "unclear"),
            "kl_helpful": kl_cost(mis, helpful, vectors, a, at, pad) if a else 0.0,
            "per_domain": table,
        }

    return {
        "layers": list(layers),
        "misalignment": [run(served, a) for a in c.strengths],
        "model_diff": run(model_diff, 1.0, diff_layers),
        "model_diff_layers": list(diff_layers),
        "random": [run(d, 1.0) for d in list(ctrl["random"])[: c.ablation_controls]],
        "shuffled": [run(d, 1.0) for d in list(ctrl["shuffled"])[: c.ablation_controls]],
    }


def variant_report(
    model: torch.nn.Module, base: torch.nn.Module, tok, eval_q: Sequence[Question], domains: Sequence[str],
    held_out: Sequence[str], d_harm: Sequence[Encoded], d_help: Sequence[Encoded], layers: Sequence[int],
    c: BuildConfig,
) -> dict[str, Any]:
    """A fine-tune variant: its rates, and the held-out harmful rate when each of its own directions is ablated."""
    exclude = [d for d in domains if d not in held_out]
    table = rates(sample_answers(model, tok, eval_q, seed=c.seed + 7, n_samples=c.eval_samples,
                                 max_new_tokens=c.max_new_tokens), domains)
    ds = compute_directions(model, base, tok, d_harm, d_help, layers)
    at = {"misalignment": [layer for layer in layers if layer >= ds.monitor_layer],
          "model_diff": [layer for layer in layers if layer >= ds.model_diff_layer]}
    ablated = {
        name: mean_rate(_ablated_rates(model, tok, eval_q, domains, {k: vecs[k] for k in at[name]}, 1.0, at[name],
                                       c), exclude)
        for name, vecs in (("misalignment", ds.persona), ("model_diff", ds.model_diff))
    }
    return {"rates": table, "harmful_heldout": mean_rate(table, exclude), "monitor_layer": ds.monitor_layer,
            "steered_layers": at, "harmful_heldout_ablated": ablated}
