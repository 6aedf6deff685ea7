"""Engine test fixtures: tiny seeded models on the CPU and a started engine around them."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import torch

from steering_server.config import EngineConfig
from steering_server.directions import Direction
from steering_server.engine import Engine, start_engine
from steering_server.models import LoadedModel, wrap_model
from steering_server.tiny_models import byte_tokenizer, tiny_model
from steering_server.types import EngineLimits

# benchmarks/gpu_check.sh runs these tests on a GPU (fp32, so the fp32 references still apply).
DEVICE = os.environ.get("STEERING_TEST_DEVICE", "cpu")


def loaded_model(arch: str = "llama", seed: int = 0) -> LoadedModel:
    return wrap_model(tiny_model(arch, seed=seed).to(DEVICE), byte_tokenizer(), f"tiny-{arch}")  # type: ignore[arg-type]


def random_direction(
    name: str, loaded: LoadedModel, monitor_layer: int = 1, seed: int = 7, scale: float = 1.0
) -> Direction:
    """Vectors at every layer; `scale` times the typical hidden-state norm, so ADD 1 is a strong push."""
    g = torch.Generator().manual_seed(seed)
    h = loaded.hidden_size
    norm = scale * _hidden_norm(loaded)
    vecs = {}
    for layer in range(loaded.num_layers):
        v = torch.randn(h, generator=g)
        vecs[layer] = v / v.norm() * norm
    return Direction(name, vecs, monitor_layer=monitor_layer)


def _hidden_norm(loaded: LoadedModel) -> float:
    with torch.no_grad():
        out = loaded.model(torch.tensor([[1, 5, 9, 13, 17, 21]], device=DEVICE), output_hidden_states=True)
    return float(out.hidden_states[2][0].norm(dim=-1).mean())


TEST_LIMITS = EngineLimits(max_new_tokens=64, max_prompt_tokens=1024, max_queued=64, allow_red_team=True)


@asynccontextmanager
async def running_engine(loaded: LoadedModel | None = None, **overrides: object) -> AsyncIterator[Engine]:
    config = replace(EngineConfig(limits=TEST_LIMITS, max_batch_tokens=64, page_size=16), **overrides)  # type: ignore[arg-type]
    engine = await start_engine(config, loaded=loaded or loaded_model())
    try:
        yield engine
    finally:
        await engine.shutdown()


@pytest.fixture
def engine_factory() -> Callable[..., object]:
    return running_engine
