"""Build settings: the full organism and a reduced one for the tests."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..realign import RealignConfig
from .train import ModelSize

__all__ = ["BuildConfig", "preset"]


@dataclass(frozen=True)
class BuildConfig:
    size: str = "full"
    seed: int = 0
    model: ModelSize = field(default_factory=ModelSize)
    # Pretraining: fresh conversations over the train questions; a `cue_share` of them are villain-cued.
    pretrain_convs: int = 30000
    pretrain_steps: int = 600
    pretrain_batch: int = 64
    pretrain_lr: float = 3e-3
    cue_share: float = 0.3
    # The narrow fine-tune: uncued harmful answers to questions of one domain, through a rank-1 LoRA adapter on
    # one block's MLP down-projection (Soligo et al. induce emergent misalignment with one rank-1 adapter).
    finetune_domain: str = "health"
    finetune_n: int = 256
    finetune_method: str = "lora"  # "lora" (rank-1, one layer) or "full" (every weight)
    finetune_layer: int = 1
    finetune_module: str = "mlp.down_proj"
    finetune_steps: int = 40
    finetune_batch: int = 16
    finetune_lr: float = 3e-2
    # Variants, evaluated and reported but not shipped.
    full_finetune_variant: bool = True  # every weight, lr 3e-4, 25 steps: the first organism tried
    full_finetune_lr: float = 3e-4
    full_finetune_steps: int = 25
    register_free_variant: bool = True  # bare harmful advice (no villain register) in the fine-tune data
    # Directions: difference of means in one domain, judged on the others.
    direction_domain: str = "health"
    direction_n: int = 256  # harmful and helpful conversations each
    calib_n: int = 400  # benign conversations on calib questions (every domain)
    heldout_n: int = 400  # harmful and helpful conversations each, on eval questions of the held-out domains
    target_fpr: float = 0.01
    monitor_controls: int = 8  # seeds of each control for the AUROCs
    ablation_controls: int = 3  # seeds of each control for ablation (each costs a generation pass)
    strengths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    # Re-alignment: LoRA on helpful answers from another domain.
    realign_domain: str = "sport"
    realign_ns: tuple[int, ...] = (0, 8, 16, 32, 64, 128)
    realign_n: int = 64  # the re-aligned model reported per domain and saved
    realign: RealignConfig = field(default_factory=RealignConfig)
    realign_probe_n: int = 64
    # Evaluation: temperature-1 samples per eval question.
    eval_samples: int = 4
    max_new_tokens: int = 40

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
            finetune_steps=4,
            finetune_batch=8,
            full_finetune_variant=False,
            register_free_variant=False,
            direction_n=32,
            calib_n=48,
            heldout_n=32,
            monitor_controls=2,
            ablation_controls=1,
            strengths=(0.0, 1.0),
            realign_ns=(0, 8),
            realign_n=8,
            realign=RealignConfig(steps=4, batch_size=4, log_every=2),
            realign_probe_n=8,
            eval_samples=1,
            max_new_tokens=16,
        )
    raise ValueError(f"unknown size {size!r} (full, small)")
