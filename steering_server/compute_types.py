"""Plain request, progress and result types of ComputeDirection (the engine's side; the service converts them).

Two recipes (docs/directions.md):
- contrastive answers (Soligo et al.): labelled prompt + response examples, read over the response tokens;
- persona prompts (persona vectors, Chen et al.): the same questions under a trait-eliciting and a neutral system
  prompt, read at the last prompt token (or over the answers the model generates).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .directions import Calibration, Direction
from .types import Prompt

__all__ = [
    "DEFAULT_BOOTSTRAP",
    "DEFAULT_HELD_OUT_SHARE",
    "DEFAULT_PERSONA_TOKENS",
    "DEFAULT_TARGET_FPR",
    "ComputeEvent",
    "ComputeProgress",
    "ComputeRequest",
    "ComputeResult",
    "ContrastiveExample",
    "LayerSeparation",
    "PersonaPrompts",
    "Pooling",
]

DEFAULT_TARGET_FPR = 0.01
DEFAULT_HELD_OUT_SHARE = 0.3
DEFAULT_BOOTSTRAP = 1000
DEFAULT_PERSONA_TOKENS = 32


class Pooling(enum.Enum):
    """Where an example's activations are read. The calibration key of each is directions.POOLINGS'."""

    LAST_PROMPT = "last_prompt"  # the last prompt token
    RESPONSE_MEAN = "response_mean"  # mean over the response tokens Generate would score (all but the last)


@dataclass(frozen=True)
class ContrastiveExample:
    prompt: Prompt
    response: str = ""
    positive: bool = False  # True: shows the trait; False: benign


@dataclass(frozen=True)
class PersonaPrompts:
    questions: tuple[str, ...]
    positive_systems: tuple[str, ...]
    negative_systems: tuple[str, ...]
    max_new_tokens: int = DEFAULT_PERSONA_TOKENS


@dataclass(frozen=True)
class ComputeRequest:
    """Exactly one of `examples` and `persona`. `pooling` None: the recipe's default (RESPONSE_MEAN for examples,
    LAST_PROMPT for persona prompts). `layers` empty: every layer."""

    name: str
    examples: tuple[ContrastiveExample, ...] = ()
    persona: PersonaPrompts | None = None
    pooling: Pooling | None = None
    layers: tuple[int, ...] = ()
    target_fpr: float = DEFAULT_TARGET_FPR
    held_out_share: float = DEFAULT_HELD_OUT_SHARE
    seed: int = 0
    store: bool = False
    return_file: bool = False
    description: str = ""
    bootstrap_resamples: int = DEFAULT_BOOTSTRAP

    @property
    def resolved_pooling(self) -> Pooling:
        if self.pooling is not None:
            return self.pooling
        return Pooling.LAST_PROMPT if self.persona is not None else Pooling.RESPONSE_MEAN


@dataclass(frozen=True)
class ComputeProgress:
    stage: str  # "capture", "generate", "calibrate"
    done: int
    total: int
    eta_seconds: float


@dataclass(frozen=True)
class LayerSeparation:
    """Held-out separation of one layer's direction (projections of the pooled activations onto it)."""

    layer: int
    auroc: float
    auroc_lo: float  # 95% stratified bootstrap interval
    auroc_hi: float
    cohens_d: float
    norm: float  # |v| of the train split's difference of means


@dataclass(frozen=True)
class ComputeResult:
    direction: Direction
    layers: tuple[LayerSeparation, ...]
    pooling: Pooling
    n_train: int
    n_held_out: int
    # pooling -> share of benign held-out scores (not used to calibrate) whose z exceeds the threshold
    held_out_fpr: dict[str, float]
    stored: bool = False
    safetensors: bytes = b""

    @property
    def monitor_layer(self) -> int:
        return self.direction.monitor_layer

    @property
    def calibration(self) -> dict[str, Calibration]:
        return self.direction.calibration


ComputeEvent = ComputeProgress | ComputeResult
