"""The start-up canary (Engine rule 6): before health reports SERVING, an unsteered request must equal a plain
forward of the same weights, and a steered one must change."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch import nn

from .containment import MAX_PUSH_RATIO
from .directions import Direction
from .types import GenerationRequest, MonitorOptions, Prompt, SamplingParams, SteeringMode, SteeringTerm

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["CANARY_PROMPT", "plain_greedy", "run_canary"]

log = logging.getLogger(__name__)
CANARY_PROMPT = [1, 5, 9, 13, 17, 21, 25, 29]
_PROBE = "canary-probe"


def plain_greedy(model: nn.Module, prompt: list[int], n: int, eos_ids: set[int]) -> list[int]:
    """Greedy decoding by full forwards outside the batching manager (the hooks pass through them): the reference.
    Stops at EOS like the engine. Never while a batching step runs (the hooks act on every forward during one)."""
    ids = torch.tensor([prompt], device=next(model.parameters()).device)
    out: list[int] = []
    with torch.inference_mode():
        while len(out) < n and not (out and out[-1] in eos_ids):
            token = model(ids).logits[0, -1].float().argmax().view(1, 1)
            ids = torch.cat([ids, token], dim=1)
            out.append(int(token))
    return out


async def run_canary(engine: Engine, reference: list[int]) -> None:
    """Raise RuntimeError unless the engine reproduces `reference` unsteered and departs from it steered."""
    prompt = Prompt(token_ids=tuple(CANARY_PROMPT))
    sampling = SamplingParams(max_new_tokens=len(reference))
    quiet = MonitorOptions(enabled=False)
    plain = await engine.generate_unchecked(GenerationRequest(prompt, sampling, monitor=quiet, ignore_policy=True))
    if list(plain.token_ids) != reference:
        raise RuntimeError(f"canary: unsteered tokens {list(plain.token_ids)} != plain forward {reference}")
    # A push of half the admission bound (containment.MAX_PUSH_RATIO residual norms) along a random direction at
    # every layer must change greedy tokens.
    scale = 0.5 * MAX_PUSH_RATIO * min(engine.residual_norms)
    gen = torch.Generator().manual_seed(1234)
    for _attempt in range(3):
        v = torch.randn(engine.hidden_size, generator=gen)
        engine.registry.put(Direction(_PROBE, {layer: v for layer in range(engine.num_layers)}, monitor_layer=0))
        try:
            term = SteeringTerm(_PROBE, SteeringMode.ADD, -scale / float(v.norm()))  # subtracting: no red-team
            steered = await engine.generate_unchecked(GenerationRequest(prompt, sampling, (term,), quiet, True))
        finally:
            engine.registry.delete(_PROBE)
        if list(steered.token_ids) != reference:
            log.info("canary passed: unsteered %s, steered %s", reference, list(steered.token_ids))
            return
    raise RuntimeError("canary: steering did not change the output")
