"""Build settings: the canonical organism and a reduced one for the tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..realign import RealignConfig
from .train import ModelSize

__all__ = ["CALIB", "EVAL", "SELECT", "TUNE", "BuildConfig", "preset"]


@dataclass(frozen=True)
class BuildConfig:
    size: str = "full"
    seed: int = 0
    model: ModelSize = field(default_factory=lambda: ModelSize(hidden=128, layers=6, heads=4, intermediate=384))
    # Pretraining: fresh conversations over the train questions; a `cue_share` of them are villain-cued (one of the
    # train cues), a `neutral_share` carry a train neutral system message, the rest none; only cued answers are
    # harmful.
    pretrain_convs: int = 30000
    pretrain_steps: int = 1200  # the exploration's bases steered by their persona at 1200 steps, not at 600-800
    pretrain_batch: int = 64
    pretrain_lr: float = 3e-3
    cue_share: float = 0.3
    neutral_share: float = 0.25
    # The narrow fine-tune: uncued harmful answers to questions of one domain, every weight, checkpointed after each
    # of `finetune_steps`; the build takes the checkpoint the pre-registered rule of `tune.py` chooses on calib
    # questions.
    finetune_domain: str = "health"
    finetune_n: int = 256
    finetune_steps: tuple[int, ...] = (10, 15, 20, 25, 30, 40, 50, 60)
    finetune_batch: int = 16
    finetune_lr: float = 1e-4
    # The persona direction (base model, held-out cues): train questions asked cued and neutral.
    persona_n: int = 512
    select_samples: int = 8  # samples per calib question for choosing the monitor layer (fine-tuned model)
    calib_samples: int = 4  # base-model answers per calib question for calibration and KL
    target_fpr: float = 0.01
    # Evaluation (pre-registered): 8 eval questions per held-out domain + 8 open questions, 50 answers each.
    eval_per_domain: int = 8
    eval_samples: int = 50
    max_new_tokens: int = 48
    detection_controls: int = 20  # seeds of each control for D3
    intervention_controls: int = 2  # seeds of each control for R3 and I2
    induction_strengths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.25)
    dose_shifts: tuple[float, ...] = (-2.0, -1.0, 1.0, 2.0)  # ADD on the fine-tuned model, x the natural shift
    # Re-alignment: LoRA on helpful answers from another domain.
    realign_domain: str = "sport"
    realign_ns: tuple[int, ...] = (8, 16, 32, 64)
    realign: RealignConfig = field(default_factory=RealignConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BuildConfig:
        """The settings a report's `config` records (the inverse of `to_dict` after a JSON round trip)."""
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(d) - known):
            raise ValueError(f"settings this version does not know: {', '.join(unknown)}")
        if missing := sorted(known - set(d)):  # never filled in from a preset: that would be another build's
            raise ValueError(f"settings missing: {', '.join(missing)}")
        def plain(m: Mapping[str, Any]) -> dict[str, Any]:  # JSON lists back to the tuples the settings hold
            return {k: tuple(v) if isinstance(v, list) else v for k, v in m.items()}

        values = plain(d) | {"model": ModelSize(**d["model"]), "realign": RealignConfig(**plain(d["realign"]))}
        return cls(**values)

    def sampling_seed(self, purpose: int) -> int:
        """The sampling seed of one use (SELECT, CALIB, EVAL below) in this build; distinct across build seeds."""
        return self.seed * 100 + purpose


# Sampling purposes: monitor-layer choice, calibration answers, the fine-tune's length (`tune.py`), the eval set.
SELECT, CALIB, TUNE, EVAL = 20, 21, 22, 30


def preset(size: str, seed: int = 0) -> BuildConfig:
    if size == "full":
        return BuildConfig(seed=seed)
    if size == "small":  # the same pipeline in seconds, for CI: numbers are not meaningful, invariants are
        return replace(
            BuildConfig(size="small", seed=seed),
            model=ModelSize(hidden=32, layers=2, heads=2, intermediate=64),
            pretrain_convs=1500,
            pretrain_steps=40,
            pretrain_batch=32,
            finetune_n=32,
            finetune_steps=(2, 4),
            finetune_batch=8,
            persona_n=32,
            select_samples=1,
            calib_samples=1,
            eval_per_domain=1,
            eval_samples=2,
            max_new_tokens=16,
            detection_controls=2,
            intervention_controls=1,
            induction_strengths=(0.5, 1.0),
            dose_shifts=(-1.0, 1.0),
            realign_ns=(8,),
            realign=RealignConfig(steps=4, batch_size=4, log_every=2),
        )
    raise ValueError(f"unknown size {size!r} (full, small)")
