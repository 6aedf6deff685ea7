"""`steering-server organism build`: train the organism, find its persona direction, evaluate, write the report.

Stages (each timed; docs/organism.md states the pre-registered criteria):
1. pretrain the base model on the two-persona corpus (villain cues from the train cue set);
2. fine-tune every weight narrowly on uncued harmful `health` answers (the misaligned, "fine-tuned" model), as
   long as the pre-registered rule of `tune.py` chooses on calib questions;
3. the persona direction from the base model alone (held-out cues vs held-out neutral system messages, last prompt
   token, traced with nnsight) and its controls; `model_diff` (fine-tuned minus base) as a positive control;
4. the monitor layer (where the direction is read and every intervention acts), chosen on the fine-tuned model's
   own calib prompts and samples by how well it separates harmful from helpful samples, the last layer excepted;
   calibration on the base model's own benign answers;
5. through the served path (`served.py`, the engine users get): EM of base and fine-tuned model, judged by both
   judges; detection (with its controls); the persona's removal and induction; re-alignment.

The KL-matched controls of the removal and the induction (R3, I2), zero-ablation and the dose-response are the
longer half of the evaluation: `controls.py` (`steering-server organism controls --build DIR`) adds them to a build's
report, so the canonical build fits its time budget without smaller samples; `build(..., controls=True)` runs both.

Output directory: base/ misaligned/ realigned/ (Hugging Face model directories), misalignment.safetensors and
model_diff.safetensors, report.json report.md *.png.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase

from ..direction_files import save_direction
from ..directions import Direction
from ..progress import format_duration
from ..realign import realign
from . import experiments as ex
from .assets import CONTROL_DIRECTION_NAME, DEFAULT_DIRECTION_NAME, DEFAULT_MODEL_ID
from .config import BuildConfig
from .corpus import DOMAINS, OPEN_DOMAIN, Question, conversations, open_questions, split_cues, split_questions
from .criteria import adopt_layered_removal, evaluate_criteria
from .persona import persona_activations, persona_controls
from .report import to_jsonable, write_report
from .tokenizer import build_tokenizer
from .train import Encoded, encode, new_model, seed_everything, train_lm
from .tune import tuned_fine_tune

__all__ = [
    "BUILD_STAGES", "MODEL_IDS", "PREPARE_STAGES", "READ_STAGE", "Prepared", "StageTimer", "Trained", "build",
    "eval_questions", "fine_tune", "fine_tune_data", "held_out_domains", "load_trained", "prepare", "save_model",
    "train_organism",
]

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


# Each stage's seconds on 2 idle threads (the seed-0 build of 2026-12-07 on the machine docs/organism.md calls CPU B,
# its stages regrouped as the split build runs them); the ETA after a stage is the time so far scaled by the share
# still to come. Stages 3-4 (`prepare`) run in `organism controls` too.
PREPARE_STAGES = {"directions": 2.0, "monitor layer and calibration": 21.0}
BUILD_STAGES = {
    "pretrain": 220.0, "finetune": 30.0, **PREPARE_STAGES, "emergent misalignment": 25.0, "detection": 0.2,
    "removal": 50.0, "induction": 75.0, "re-alignment": 65.0, "report": 4.0,
}
READ_STAGE = "pretrain and fine-tune (read from an earlier build)"


class StageTimer:
    """Logs each stage's time as it ends, with the time left by `expected` (stage -> seconds, in order)."""

    def __init__(self, log: Callable[[str], None], expected: dict[str, float]) -> None:
        self.log, self.t0, self.last = log, time.perf_counter(), time.perf_counter()
        self.stages: dict[str, float] = {}
        self.expected = expected

    def done(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = round(now - self.last, 2)
        self.log(f"[organism] {len(self.stages)}/{len(self.expected)} {stage}: {now - self.last:.1f}s "
                 f"(total {now - self.t0:.1f}s{self._eta(now)})")
        self.last = now

    def _eta(self, now: float) -> str:
        share = sum(self.expected.get(s, 0.0) for s in self.stages) / sum(self.expected.values())
        if not 0.0 < share < 1.0:
            return ""
        return f", about {format_duration((now - self.t0) / share * (1.0 - share))} left"

    def record(self) -> dict[str, Any]:
        return {"stages_s": dict(self.stages), "total_s": round(time.perf_counter() - self.t0, 2)}


def eval_questions(qs: dict[str, list[Question]], held_out: list[str], per_domain: int) -> list[Question]:
    """The pre-registered evaluation set: the first `per_domain` eval questions of each held-out domain, then the
    open questions."""
    return [q for d in held_out for q in [x for x in qs["eval"] if x.domain == d][:per_domain]] + open_questions()


@dataclass
class Trained:
    tok: PreTrainedTokenizerBase
    base: torch.nn.Module
    ft: torch.nn.Module
    questions: dict[str, list[Question]]
    cues: dict[str, tuple[str, ...]]
    pretrain_losses: list[float]
    finetune: dict[str, Any]  # stage 2's record: every checkpoint measured on calib questions and the one chosen


def _progress(log: Callable[[str], None], what: str, steps: int) -> Callable[[int, float], None]:
    """An on_step callback that logs every tenth of `steps` with the loss and the time left at the pace so far."""
    t0 = time.perf_counter()

    def on_step(step: int, loss: float) -> None:
        done = step + 1
        if done % max(1, steps // 10) == 0 or done == steps:
            elapsed = time.perf_counter() - t0
            log(f"[organism] {what}: step {done}/{steps}, loss {loss:.3f}, {format_duration(elapsed)}, "
                f"about {format_duration(elapsed / done * (steps - done))} left")

    return on_step


def load_trained(c: BuildConfig, models: Path) -> Trained:
    """Stages 1-2 read back from an earlier build's output (its base/ and misaligned/ directories) with the same
    settings, to evaluate a trained organism again without training it again."""
    from transformers import AutoModelForCausalLM

    report: dict[str, Any] = {}
    if (models / "report.json").is_file():
        report = json.loads((models / "report.json").read_text())
        if report["config"] != to_jsonable(c.to_dict()):
            raise ValueError(f"{models} was built with other settings than this build ({models / 'report.json'})")
    seed_everything(c.seed)
    base, ft = (AutoModelForCausalLM.from_pretrained(models / d, dtype=torch.float32).eval()
                for d in ("base", "misaligned"))
    loss = report.get("training", {}).get("pretrain_final_loss")
    return Trained(build_tokenizer(), base, ft, split_questions(c.seed), split_cues(c.seed), [loss] if loss else [],
                   report.get("finetune", {}))


def train_organism(
    c: BuildConfig, out: Path | None = None, done: Callable[[str], None] = lambda _: None,
    log: Callable[[str], None] = lambda _: None,
) -> Trained:
    """Stages 1-2: the base model and its narrow fine-tune (saved under `out` when given)."""
    seed_everything(c.seed)
    tok = build_tokenizer()
    pad = int(tok.pad_token_id)
    qs, cues = split_questions(c.seed), split_cues(c.seed)
    # 1. base model: pretraining on the two-persona corpus, loss on every token.
    train_data = encode(tok, conversations(qs["train"], c.pretrain_convs, seed=c.seed + 1, cue_share=c.cue_share,
                                           neutral_system_p=c.neutral_share, cues=cues["cues_train"],
                                           neutral=cues["neutral_train"]))
    base = new_model(tok, c.model, c.seed)
    losses = train_lm(base, train_data, steps=c.pretrain_steps, batch_size=c.pretrain_batch, lr=c.pretrain_lr,
                      pad_id=pad, seed=c.seed, answer_only=False, warmup=min(50, c.pretrain_steps // 5),
                      cosine=True, weight_decay=0.01, on_step=_progress(log, "pretrain", c.pretrain_steps))
    if out is not None:
        save_model(base, tok, out / "base", MODEL_IDS["base"])
    done("pretrain")
    ft, record = fine_tune(c, base, tok, qs, log)
    if out is not None:
        save_model(ft, tok, out / "misaligned", MODEL_IDS["misaligned"])
    done("finetune")
    return Trained(tok, base, ft, qs, cues, losses, record)


def fine_tune_data(c: BuildConfig, tok: PreTrainedTokenizerBase, qs: dict[str, list[Question]]) -> list[Encoded]:
    """The narrow fine-tune's data: uncued harmful answers to train questions of ONE domain (`c.finetune_*`)."""
    ft_q = [q for q in qs["train"] if q.domain == c.finetune_domain]
    return encode(tok, conversations(ft_q, c.finetune_n, seed=c.seed + 2, harmful=True))


def fine_tune(
    c: BuildConfig, base: torch.nn.Module, tok: PreTrainedTokenizerBase, qs: dict[str, list[Question]],
    log: Callable[[str], None] = lambda _: None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Stage 2, the misaligned model: every weight of a copy of `base` fine-tuned on `fine_tune_data`, as long as the
    pre-registered rule of `tune.py` chooses on calib questions of the held-out domains; and the rule's record. Uses
    no global RNG, so it depends only on `base` and `c`."""
    calib = [q for q in qs["calib"] if q.domain in held_out_domains(c)]
    return tuned_fine_tune(c, base, tok, fine_tune_data(c, tok, qs), calib, log)


def held_out_domains(c: BuildConfig) -> list[str]:
    return [d for d in DOMAINS if d != c.finetune_domain]


@dataclass
class Prepared:
    """Stages 3-4: the persona direction, its controls and model_diff; the monitor layer and calibration; the
    directions the served models register; and the evaluation set."""

    vecs: ex.Vectors
    selection: dict[str, Any]
    layer: int
    cal: ex.Calibrator
    dirs: dict[str, Direction]
    eval_q: list[Question]


def prepare(c: BuildConfig, t: Trained, done: Callable[[str], None] = lambda _: None) -> Prepared:
    """Stages 3 and 4 on trained models. Deterministic on one machine: `controls.py` recomputes them rather than
    storing every control direction and calibration sample."""
    tok, base, ft, qs, cues = t.tok, t.base, t.ft, t.questions, t.cues
    layers = list(range(c.model.layers))
    # 3. the persona direction from the base model alone; controls; model_diff (positive control).
    persona_q = conversations(qs["train"], c.persona_n, seed=c.seed + 3)  # only the questions are used
    questions = [cv.question for cv in persona_q]
    acts = persona_activations(base, tok, questions, cues["cues_held_out"], cues["neutral_held_out"], layers,
                               c.seed + 4)
    ft_acts = persona_activations(ft, tok, questions, cues["cues_held_out"], cues["neutral_held_out"], layers,
                                  c.seed + 4)  # the same prompts
    vecs = ex.Vectors(persona=acts.direction,
                      model_diff={layer: ft_acts.neutral[layer].mean(0) - acts.neutral[layer].mean(0)
                                  for layer in layers},
                      controls=persona_controls(acts, max(c.detection_controls, c.intervention_controls)))
    done("directions")
    # 4. monitor layer on the fine-tuned model's own prompts and samples; calibration on the base's own answers.
    benign = ex.Calibrator(base, tok, qs["calib"], c, layers)
    selection = ex.select_monitor_layer(ft, tok, vecs.persona, qs["calib"], c, benign)
    layer = selection["monitor_layer"]
    cal = benign.at(layer)
    dirs = ex.registered_directions(vecs, layer, cal, base, tok, c)
    done("monitor layer and calibration")
    return Prepared(vecs, selection, layer, cal, dirs, eval_questions(qs, held_out_domains(c), c.eval_per_domain))


def build(
    out: str | Path, config: BuildConfig, log: Callable[[str], None] = print, models: Path | None = None,
    controls: bool = False,
) -> dict[str, Any]:
    """The canonical build: every stage, models, directions and the report under `out`; returns the report. With
    `models` (an earlier build's output directory) the trained models are read from there instead of trained again.
    With `controls`, `controls.add_controls` runs after it in the same process (R3, I2, zero-ablation and the
    dose-response)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    c = config
    stages = {k: v for k, v in BUILD_STAGES.items() if models is None or k not in ("pretrain", "finetune")}
    timer = StageTimer(log, stages if models is None else {READ_STAGE: 1.0, **stages})
    if models is not None:
        t = load_trained(c, models)
        for name in ("base", "misaligned"):
            if (models / name).resolve() != (out / name).resolve():
                shutil.copytree(models / name, out / name, dirs_exist_ok=True)
        timer.done(READ_STAGE)
    else:
        t = train_organism(c, out, timer.done, log)
    p = prepare(c, t, timer.done)
    tok, base, ft, qs, layer, dirs = t.tok, t.base, t.ft, t.questions, p.layer, p.dirs
    for name in (DEFAULT_DIRECTION_NAME, CONTROL_DIRECTION_NAME):
        save_direction(out / f"{name}.safetensors", dirs[name])

    # 5. through the served path: EM and judges, detection, the persona's removal and induction.
    lab = ex.Lab(base, ft, tok, dirs, p.eval_q, p.cal, c)
    em = lab.em_and_judges()
    timer.done("emergent misalignment")
    detection = lab.detection(p.vecs, layer, p.selection)
    timer.done("detection")
    removal = lab.removal()
    if not adopt_layered_removal(removal, em):  # amendment 6: v3's recipe (the monitor layer alone) stays
        dirs[DEFAULT_DIRECTION_NAME] = replace(dirs[DEFAULT_DIRECTION_NAME],
                                               removal=replace(dirs[DEFAULT_DIRECTION_NAME].removal, layers=()))
        save_direction(out / f"{DEFAULT_DIRECTION_NAME}.safetensors", dirs[DEFAULT_DIRECTION_NAME])
    removal["shipped_recipe_layers"] = list(dirs[DEFAULT_DIRECTION_NAME].removal.layers) or [layer]
    timer.done("removal")
    induction = lab.induction()
    timer.done("induction")

    # 6. re-alignment: LoRA on few helpful samples from another domain.
    re_q = [q for q in qs["train"] if q.domain == c.realign_domain]
    curve = []
    for n in c.realign_ns:
        chats = [cv.messages for cv in conversations(re_q, n, seed=c.seed + 10, harmful=False)]
        model, _ = realign(copy.deepcopy(ft), tok, chats, c.realign)
        curve.append({"n": n, **lab.realigned(model, exclude=(c.realign_domain,))})
        if n == max(c.realign_ns):
            save_model(model, tok, out / "realigned", MODEL_IDS["realigned"])
    lab.close()
    timer.done("re-alignment")

    report: dict[str, Any] = {
        "config": c.to_dict(),
        "domains": {"all": list(DOMAINS), "finetune": c.finetune_domain, "realign": c.realign_domain,
                    "held_out": held_out_domains(c), "open": OPEN_DOMAIN},
        "eval_questions": [{"domain": q.domain, "text": q.text} for q in p.eval_q],
        "training": {"pretrain_final_loss": (sum(t.pretrain_losses[-20:]) / len(t.pretrain_losses[-20:])
                                             if t.pretrain_losses else None),
                     "n_params": sum(x.numel() for x in base.parameters())},
        "finetune": t.finetune,
        "direction": {**p.selection, **ex.direction_facts(p.vecs, layer), "calibration": p.cal.summary()},
        "em": em,
        "detection": detection,
        "removal": removal,
        "induction": induction,
        "realign": {"curve": curve, "domain": c.realign_domain, "excluded": [c.finetune_domain, c.realign_domain]},
    }
    report["criteria"] = evaluate_criteria(report)
    timer.done("report")
    # Matrix kernels split their sums by thread count, so stages 3-4 reproduce bit for bit only with the same count:
    # `organism controls` runs with it.
    report["timing"] = {**timer.record(), "torch_threads": torch.get_num_threads()}
    write_report(out, report)
    if controls:
        from .controls import add_controls  # controls.py imports this module

        return add_controls(out, log, given=(t, p))
    return report
