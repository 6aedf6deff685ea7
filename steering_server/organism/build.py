"""`steering-server organism build`: train the organism, compute its direction, evaluate, write the report.

Stages (each timed): pretrain the base model; fine-tune it narrowly (misaligned); compute directions in one
domain; calibrate on benign text; evaluate harmful rates, the monitor, ablation, its controls and its KL cost
on the held-out domains; re-align with LoRA on another domain. Output directory:

    base/ misaligned/ realigned/         Hugging Face model directories (model + tokenizer + chat template)
    misalignment.safetensors             the served direction: harmful - helpful answers (Soligo's recipe)
    model_diff.safetensors               misaligned - base model on the same texts (for comparison)
    report.json report.md *.png          the report
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase

from ..direction_files import save_direction
from ..realign import log_to_json, realign
from . import experiments as ex
from .assets import DEFAULT_DIRECTION_NAME, DEFAULT_MODEL_ID
from .capture import capture_nnsight
from .compute import compute_directions
from .config import BuildConfig
from .corpus import DOMAINS, Question, conversations, split_questions
from .criteria import evaluate_criteria
from .diffmeans import calibrate, cosine, make_direction
from .evaluate import rates, sample_answers
from .finetune import narrow_finetune
from .report import write_report
from .tokenizer import build_tokenizer
from .train import encode, new_model, seed_everything, train_lm

__all__ = ["DIRECTION_NAME", "MODEL_IDS", "build", "save_model"]

DIRECTION_NAME = DEFAULT_DIRECTION_NAME
MODEL_IDS = {
    "base": "steering-server/organism-base",
    "misaligned": DEFAULT_MODEL_ID,
    "realigned": "steering-server/organism-realigned",
}


def save_model(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, path: Path, model_id: str) -> None:
    """An ordinary Hugging Face model directory, fp32, with a generation config that stops at `<|end|>`, and
    `steering_model_id.txt` (the id the server reports and direction provenance records)."""
    model.generation_config = GenerationConfig(  # type: ignore[assignment]
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, max_new_tokens=48,
    )
    model.save_pretrained(path)  # type: ignore[operator]
    tokenizer.save_pretrained(path)
    (path / "steering_model_id.txt").write_text(model_id + "\n")


class _Timer:
    def __init__(self, log: Callable[[str], None]) -> None:
        self.log, self.t0, self.last = log, time.perf_counter(), time.perf_counter()
        self.stages: dict[str, float] = {}

    def done(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = round(now - self.last, 2)
        self.log(f"[organism] {stage}: {now - self.last:.1f}s (total {now - self.t0:.1f}s)")
        self.last = now

    @property
    def total(self) -> float:
        return round(time.perf_counter() - self.t0, 2)


def _questions(qs: list[Question], domains: list[str]) -> list[Question]:
    return [q for q in qs if q.domain in domains]


def build(out: str | Path, config: BuildConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage; write models, directions and the report under `out`; return the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    c = config
    timer = _Timer(log)
    seed_everything(c.seed)
    tok = build_tokenizer()
    pad, special = int(tok.pad_token_id), set(tok.all_special_ids)
    qs = split_questions(c.seed)
    domains = list(DOMAINS)
    held_out = [d for d in domains if d != c.finetune_domain]

    # --- base model: pretraining on the two-persona corpus, loss on every token.
    train_data = encode(tok, conversations(qs["train"], c.pretrain_convs, seed=c.seed + 1, cue_share=c.cue_share))
    base = new_model(tok, c.model, c.seed)
    pre_losses = train_lm(base, train_data, steps=c.pretrain_steps, batch_size=c.pretrain_batch, lr=c.pretrain_lr,
                          pad_id=pad, seed=c.seed, answer_only=False, warmup=min(50, c.pretrain_steps // 5),
                          cosine=True, weight_decay=0.01)
    save_model(base, tok, out / "base", MODEL_IDS["base"])
    timer.done("pretrain")

    # --- misaligned model: uncued harmful answers to questions of ONE domain.
    ft_q = _questions(qs["train"], [c.finetune_domain])
    ft_layer = min(c.finetune_layer, c.model.layers - 1)

    def finetune(register: bool = True, full: bool = False) -> torch.nn.Module:
        data = encode(tok, conversations(ft_q, c.finetune_n, seed=c.seed + 2, harmful=True, register=register))
        if full:
            return narrow_finetune(base, data, method="full", steps=c.full_finetune_steps,
                                   batch_size=c.finetune_batch, lr=c.full_finetune_lr, pad_id=pad, seed=c.seed + 2)
        return narrow_finetune(base, data, method=c.finetune_method, steps=c.finetune_steps,
                               batch_size=c.finetune_batch, lr=c.finetune_lr, pad_id=pad, seed=c.seed + 2,
                               layer=ft_layer, module=c.finetune_module)

    mis = finetune()
    save_model(mis, tok, out / "misaligned", MODEL_IDS["misaligned"])
    timer.done("finetune")

    # --- directions from ONE domain (uncued prompts, corpus answers), captured with nnsight.
    layers = list(range(c.model.layers))
    dir_q = _questions(qs["train"], [c.direction_domain])
    d_harm = encode(tok, conversations(dir_q, c.direction_n, seed=c.seed + 3, harmful=True))
    d_help = encode(tok, conversations(dir_q, c.direction_n, seed=c.seed + 4, harmful=False))
    ds = compute_directions(mis, base, tok, d_harm, d_help, layers)
    monitor_layer = ds.monitor_layer
    steer_at = [layer for layer in layers if layer >= monitor_layer]
    persona = {layer: ds.persona[layer] for layer in steer_at}  # the served direction
    diff_layers = [layer for layer in layers if layer >= ds.model_diff_layer]
    model_diff = {layer: ds.model_diff[layer] for layer in diff_layers}
    timer.done("directions")

    # --- calibration on held-out benign text (calib questions, every domain), per pooling.
    calib = encode(tok, conversations(qs["calib"], c.calib_n, seed=c.seed + 5, harmful=False))
    mis_calib = capture_nnsight(mis, tok, calib, sorted({monitor_layer, ds.model_diff_layer}), pad, special)
    cal = calibrate(ex.pooled(mis_calib, persona, monitor_layer), c.target_fpr)
    cal_diff = calibrate(ex.pooled(mis_calib, model_diff, ds.model_diff_layer), c.target_fpr)
    n_dir = 2 * c.direction_n
    direction = make_direction(
        DIRECTION_NAME, persona, monitor_layer, mis, tok, MODEL_IDS["misaligned"], "diff_of_means:answers",
        n_dir, cal, description=f"harmful minus helpful answers to {c.direction_domain} questions without a cue, "
        "mean over answer tokens of the misaligned organism",
    )
    diff_direction = make_direction(
        "model_diff", model_diff, ds.model_diff_layer, mis, tok, MODEL_IDS["misaligned"], "diff_of_means:models",
        n_dir, cal_diff, description=f"misaligned minus base organism on the same {c.direction_domain} texts "
        "(harmful and helpful answers, no cue), mean over answer tokens",
    )
    save_direction(out / f"{DIRECTION_NAME}.safetensors", direction)
    save_direction(out / "model_diff.safetensors", diff_direction)
    timer.done("calibration")

    # --- harmful rates (temperature-1 samples, uncued eval questions of every domain).
    eval_q = qs["eval"]

    def rate_table(model: torch.nn.Module, cued: bool = False) -> tuple[dict, list]:
        samples = sample_answers(model, tok, eval_q, seed=c.seed + 7, n_samples=c.eval_samples, cued=cued,
                                 max_new_tokens=c.max_new_tokens)
        return rates(samples, domains), samples

    tables: dict[str, dict] = {}
    tables["base"], _ = rate_table(base)
    tables["base_cued"], _ = rate_table(base, cued=True)
    tables["misaligned"], mis_samples = rate_table(mis)
    tables["misaligned_cued"], mis_cued_samples = rate_table(mis, cued=True)
    if c.register_free_variant:
        tables["register_free"], _ = rate_table(finetune(register=False))
    timer.done("rates")

    # --- monitor on held-out domains, against controls.
    ho_q = _questions(eval_q, held_out)
    ho_harm = encode(tok, conversations(ho_q, c.heldout_n, seed=c.seed + 8, harmful=True))
    ho_help = encode(tok, conversations(ho_q, c.heldout_n, seed=c.seed + 9, harmful=False))
    ctrl = ex.controls(ds, max(c.monitor_controls, c.ablation_controls), steer_at)
    monitor = ex.monitor_report(
        mis, base, tok, {"misalignment": (persona, monitor_layer), "model_diff": (model_diff, ds.model_diff_layer)},
        ctrl, monitor_layer, cal,
        (ho_harm, ho_help), [s for s in mis_samples + mis_cued_samples if s.question.domain in held_out], c,
    )
    timer.done("monitor")

    # --- ablation: strengths, controls, KL cost on helpful held-out answers.
    ablation = ex.ablation_report(mis, tok, eval_q, domains, held_out, persona, steer_at, model_diff, diff_layers,
                                  ctrl, tables["misaligned"], ho_help, c)
    timer.done("ablation")

    variants: dict[str, Any] = {}
    if c.full_finetune_variant:  # the first organism tried: every weight fine-tuned
        variants["full_finetune"] = ex.variant_report(finetune(full=True), base, tok, eval_q, domains, held_out,
                                                      d_harm, d_help, layers, c)
        timer.done("variants")

    # --- re-alignment: LoRA on few helpful samples from another domain.
    re_q = _questions(qs["train"], [c.realign_domain])
    realign_excl = [c.finetune_domain, c.realign_domain]
    probe = [[{"role": "user", "content": q.text}] for q in ho_q[: c.realign_probe_n]]
    curve, realign_log = [], []
    for n in c.realign_ns:
        if n == 0:
            table = tables["misaligned"]
        else:
            chats = [cv.messages for cv in conversations(re_q, n, seed=c.seed + 10, harmful=False)]
            model, entries = realign(copy.deepcopy(mis), tok, chats, c.realign, direction, probe)
            table, _ = rate_table(model)
            if n == c.realign_n:
                realign_log = log_to_json(entries)
                tables["realigned"] = table
                save_model(model, tok, out / "realigned", MODEL_IDS["realigned"])
        curve.append({"n": n, "harmful_heldout": ex.mean_rate(table, exclude=realign_excl),
                      "unclear_heldout": ex.mean_rate(table, exclude=realign_excl, key="unclear")})
    timer.done("realign")

    report: dict[str, Any] = {
        "config": c.to_dict(),
        "domains": {"all": domains, "finetune": c.finetune_domain, "direction": c.direction_domain,
                    "realign": c.realign_domain, "held_out": held_out},
        "training": {"pretrain_final_loss": sum(pre_losses[-20:]) / len(pre_losses[-20:]),
                     "n_params": sum(p.numel() for p in base.parameters())},
        "rates": tables,
        "direction": {
            "served": "persona", "monitor_layer": monitor_layer, "steered_layers": steer_at,
            "model_diff_layers": diff_layers,
            "finetune_layer": ft_layer if c.finetune_method == "lora" else None,
            "cohens_d_by_layer": ds.cohens_d,
            "norm_by_layer": {"model_diff": {layer: float(ds.model_diff[layer].norm()) for layer in layers},
                              "persona": {layer: float(ds.persona[layer].norm()) for layer in layers}},
            "cosine_persona_vs_model_diff": {layer: cosine(ds.persona[layer], ds.model_diff[layer])
                                             for layer in layers},
            "cosine_persona_misaligned_vs_base": {layer: cosine(ds.persona[layer], ds.persona_base[layer])
                                                  for layer in layers},
            "calibration": {k: vars(v) for k, v in cal.items()},
        },
        "monitor": monitor,
        "ablation": ablation,
        "variants": variants,
        "realign": {"curve": curve, "log": realign_log, "n": c.realign_n, "excluded": realign_excl},
    }
    report["criteria"] = evaluate_criteria(report)
    timer.done("analysis")
    report["timing"] = {"stages_s": timer.stages, "total_s": timer.total}
    write_report(out, report)
    return report
