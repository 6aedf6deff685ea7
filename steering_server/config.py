"""Engine start-up configuration (what `steering-server serve` flags fill in)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .types import EngineLimits

__all__ = ["EngineConfig"]


@dataclass(frozen=True)
class EngineConfig:
    # Hugging Face hub id or local directory; None means the built-in default model.
    model: str | None = None
    device: str | None = None  # None: cuda when available, else cpu
    dtype: str | None = None  # None: bfloat16 on cuda, float32 on cpu
    # (name, path) of direction files to register at start-up.
    directions: tuple[tuple[str, str], ...] = ()
    strict_provenance: bool = False  # refuse directions made for another model instead of dropping calibration
    limits: EngineLimits = field(default_factory=EngineLimits)
    max_batch_tokens: int = 256  # tokens per forward pass (chunked prefill above this)
    max_requests_per_batch: int = 32
    num_blocks: int | None = None  # KV pages; None sizes from max_batch_tokens and limits
    page_size: int = 32  # tokens per KV page
    run_canary: bool = True
    # Directions and the policy persist here and are restored at start (state.py); None: nothing persists.
    state_dir: str | None = None
