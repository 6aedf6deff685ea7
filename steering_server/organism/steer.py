"""Steering with plain forward hooks: the reference the engine's fused hooks are checked against.

Written from the definitions (DESIGN.md "Steering and monitoring semantics"), at every position of every steered
layer l, with d = v_l/|v_l|:

    ABLATE a: h <- h - a (h.d) d
    ADD    a: h <- h + a v_l
    CLAMP  c: h <- h - ((h.d) - t) d,  t = mu + c sigma with the direction's calibration (else t = c)
at the positions each term names (all, the prompt, the last prompt token, or generated tokens).

The build uses these hooks only where the engine has nothing to return (next-token distributions for KL costs);
every judged answer is sampled through the engine (`served.py`), and a test checks the two agree.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .capture import decoder_layers

__all__ = ["RefTerm", "steered_layers", "steering"]


@dataclass(frozen=True)
class RefTerm:
    vectors: Mapping[int, torch.Tensor]  # layer -> stored vector (hidden,)
    mode: str  # ABLATE, ADD or CLAMP
    strength: float
    layers: Sequence[int]
    # layer -> (mu, sigma): CLAMP at that layer targets mu + strength * sigma (a layer not named: raw units)
    clamp_calibration: Mapping[int, tuple[float, float]] = field(default_factory=dict)
    positions: str = "ALL"  # ALL, PROMPT, LAST_PROMPT or GENERATED (types.SteeringPositions)


def _position_mask(positions: str, at: torch.Tensor, prompt_lens: torch.Tensor) -> torch.Tensor:
    """(batch, seq, 1) mask of the positions a term steers; at: (seq,) absolute positions; prompt_lens: (batch,)."""
    p, n = at[None, :], prompt_lens[:, None]  # (1, seq), (batch, 1)
    masks = {"ALL": torch.ones_like(p - n, dtype=torch.bool), "PROMPT": p < n, "LAST_PROMPT": p == n - 1,
             "GENERATED": p >= n}
    return masks[positions].unsqueeze(-1).float()


def steered_layers(vectors: Mapping[int, torch.Tensor], monitor_layer: int) -> list[int]:
    """The default: the monitor layer and every stored layer above it."""
    return [layer for layer in sorted(vectors) if layer >= monitor_layer]


def _update(h: torch.Tensor, term: RefTerm, layer: int, v: torch.Tensor) -> torch.Tensor:
    """The change one term makes to h (batch, seq, hidden) at `layer`, read from the pre-steering state."""
    d = v / v.norm()
    proj = (h @ d).unsqueeze(-1)  # (batch, seq, 1)
    if term.mode == "ABLATE":
        return -term.strength * proj * d
    if term.mode == "ADD":
        return term.strength * v.expand_as(h)
    if term.mode == "CLAMP":
        mu, sigma = term.clamp_calibration.get(layer, (0.0, 1.0))
        return -(proj - (mu + term.strength * sigma)) * d
    raise ValueError(f"unknown mode {term.mode!r}")


@contextmanager
def steering(
    model: torch.nn.Module, terms: Sequence[RefTerm], prompt_lens: Sequence[int] | None = None
) -> Iterator[None]:
    """Within the block, every forward of `model` applies `terms` (simultaneously, in fp32) at their layers.

    Terms restricted to some positions need each row's prompt length (`prompt_lens`, rows right-padded from
    position 0). A forward of one token continues the previous one (cached generation), a longer one starts again
    at position 0."""
    blocks = decoder_layers(model)
    by_layer: dict[int, list[RefTerm]] = {}
    for t in terms:
        for layer in t.layers:
            by_layer.setdefault(layer, []).append(t)
    if prompt_lens is None and any(t.positions != "ALL" for t in terms):
        raise ValueError("terms restricted to positions need prompt_lens")
    lens = torch.tensor(list(prompt_lens or [0]))
    cursor = {"next": 0, "layer": -1}  # absolute position of the next forward's first token

    def make_hook(layer: int, here: list[RefTerm]):
        def hook(_mod, _inp, out):
            h = out[0] if isinstance(out, tuple) else out  # (batch, seq, hidden)
            if layer <= cursor["layer"] or cursor["layer"] < 0:  # the first steered layer of a new forward
                cursor["start"] = 0 if h.shape[1] > 1 else cursor["next"]
                cursor["next"] = cursor["start"] + h.shape[1]
            cursor["layer"] = layer
            at = torch.arange(cursor["start"], cursor["start"] + h.shape[1], device=h.device)
            h32 = h.float()
            delta = torch.zeros_like(h32)
            for t in here:
                update = _update(h32, t, layer, t.vectors[layer].float().to(h.device))
                delta += update if t.positions == "ALL" else update * _position_mask(t.positions, at, lens.to(h.device))
            h = (h32 + delta).to(h.dtype)
            return (h, *out[1:]) if isinstance(out, tuple) else h

        return hook

    handles = []
    try:
        for layer, here in by_layer.items():
            handles.append(blocks[layer].register_forward_hook(make_hook(layer, here)))
        yield
    finally:
        for h in handles:
            h.remove()
