"""The independent oracle: the same interventions written directly from DESIGN.md's formulas and applied with
nnsight-traced `generate` on a separate copy of the weights. Used only by tests.

It shares no code with the engine's hot path (steer.py, runtime.py): each mode is spelled out here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from nnsight import TransformersModel

from steering_server.layers import resolve_layers

__all__ = ["RefMonitor", "RefTerm", "reference_generate"]


@dataclass(frozen=True)
class RefTerm:
    layer: int
    vector: torch.Tensor  # the stored, unnormalised vector v for this layer
    mode: str  # ABLATE | ADD | CLAMP
    strength: float  # a, or c in raw units for CLAMP
    positions: str = "ALL"  # ALL | PROMPT | LAST_PROMPT | GENERATED


def _applies(positions: str, position: int, prompt_len: int) -> bool:
    """Whether a term with `positions` steers absolute `position` (written out here, not taken from the engine)."""
    if positions == "ALL":
        return True
    if positions == "PROMPT":
        return position < prompt_len
    if positions == "LAST_PROMPT":
        return position == prompt_len - 1
    if positions == "GENERATED":
        return position >= prompt_len
    raise ValueError(positions)


@dataclass(frozen=True)
class RefMonitor:
    layer: int
    vector: torch.Tensor


def _steer(h: torch.Tensor, terms: list[RefTerm], positions: list[int], prompt_len: int) -> torch.Tensor:
    """h (tokens, hidden) fp32 at absolute `positions`; all projections read from the same pre-steering h, updates
    summed, each term only where its positions say."""
    delta = torch.zeros_like(h)
    for t in terms:
        v = t.vector.float().to(h.device)
        d = v / v.norm()
        p = (h * d).sum(-1, keepdim=True)  # (tokens, 1)
        if t.mode == "ABLATE":
            update = -t.strength * p * d
        elif t.mode == "ADD":
            update = (t.strength * v).expand_as(h)
        elif t.mode == "CLAMP":
            update = -(p - t.strength) * d
        else:
            raise ValueError(t.mode)
        mask = torch.tensor([_applies(t.positions, q, prompt_len) for q in positions], device=h.device)
        delta += update * mask[:, None]
    return h + delta


def reference_generate(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[int],
    terms: list[RefTerm],
    monitors: list[RefMonitor],
    max_new_tokens: int,
) -> tuple[list[int], list[dict[int, float]]]:
    """Greedy generation with the interventions at every step. Returns the new tokens and, per monitor, the
    projection (read before that layer's steering) at every position: {absolute position: value}."""
    path, _ = resolve_layers(model)
    nn_model = TransformersModel(model, tokenizer=tokenizer, task="text-generation")
    envoy = nn_model
    for part in path.split("."):
        envoy = getattr(envoy, part)
    layers = sorted({t.layer for t in terms} | {m.layer for m in monitors})
    with nn_model.generate(
        torch.tensor([prompt_ids], device=model.device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        min_new_tokens=max_new_tokens,
    ) as tracer:
        reads = list().save()
        for step in tracer.iter[:max_new_tokens]:
            for layer in layers:  # in execution order: nnsight interleaves with the forward
                out = envoy[layer].output
                h = out[0]  # (tokens this step, hidden)
                hf = h.float()
                reads.append(
                    [
                        (layer, i, (hf @ (m.vector.float() / m.vector.float().norm()).to(hf.device)).detach().clone())
                        for i, m in enumerate(monitors)
                        if m.layer == layer
                    ]
                )
                mine = [t for t in terms if t.layer == layer]
                if mine:
                    # Step 0 runs the prompt; step s > 0 the token at absolute position prompt_len + s - 1.
                    where = list(range(len(prompt_ids))) if step == 0 else [len(prompt_ids) + step - 1]
                    envoy[layer].output = _steer(hf, mine, where, len(prompt_ids)).to(h.dtype)[None]
        ids = tracer.result.save()
    readings: list[dict[int, float]] = [{} for _ in monitors]
    pos = {layer: 0 for layer in layers}
    for group in reads:
        for layer, i, values in group:
            for j, v in enumerate(values.tolist()):
                readings[i][pos[layer] + j] = v
        if group:
            pos[group[0][0]] += len(group[0][2])
    return ids[0, len(prompt_ids) :].tolist(), readings
