"""Engine start-up configuration (what `steering-server serve` flags fill in)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .types import EngineLimits

__all__ = ["CPU_KV_TOKENS_PER_REQUEST", "EngineConfig"]

# The CPU's default KV cache: this many tokens for each request of a full batch (32 x 256 = 8192 tokens, 128 MiB
# for a Llama of hidden 512, 8 layers, 4 KV heads, fp32). Longer requests still run; under pressure the scheduler
# holds some back.
CPU_KV_TOKENS_PER_REQUEST = 256


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
    # KV cache size. num_blocks (pages of page_size tokens) wins when set; else kv_cache_tokens; else on a GPU
    # kv_memory_fraction of the free memory (transformers' default 0.9 when None), and on the CPU
    # max_requests_per_batch * CPU_KV_TOKENS_PER_REQUEST. Never less than one request of the longest admitted length.
    num_blocks: int | None = None
    kv_cache_tokens: int | None = None
    kv_memory_fraction: float | None = None
    page_size: int = 32  # tokens per KV page
    # Fast paths. attn_implementation None: flash attention on a GPU when installed (else sdpa), sdpa on the CPU.
    # compile: a torch.compile backend ("inductor") for the batched forward, hooks included; None: eager.
    # cuda_graphs None: transformers decides (on with flash attention on a GPU; no graph backend on the CPU).
    attn_implementation: str | None = None
    compile: str | None = None
    cuda_graphs: bool | None = None
    run_canary: bool = True
    # Directions and the policy persist here and are restored at start (state.py); None: nothing persists.
    state_dir: str | None = None
