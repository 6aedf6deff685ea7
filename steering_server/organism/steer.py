"""Steering with plain forward hooks: the reference the engine's fused hooks are checked against.

Written from the definitions (DESIGN.md "Steering and monitoring semantics"), at every position of every steered
layer l, with d = v_l/|v_l|:

    ABLATE a: h <- h - a (h.d) d
    ADD    a: h <- h + a v_l
    CLAMP  c: h <- h - ((h.d) - t) d,  t = mu + c sigma with the direction's token calibration (else t = c)

The build uses these hooks only where the engine has nothing to return (next-token distributions for KL costs);
every judged answer is sampled through the engine (`served.py`), and a test checks the two agree.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .capture import decoder_layers

__all__ = ["RefTerm", "ablation", "steered_layers", "steering"]


@dataclass(frozen=True)
class RefTerm:
    vectors: Mapping[int, torch.Tensor]  # layer -> stored vector (hidden,)
    mode: str  # ABLATE, ADD or CLAMP
    strength: float
    layers: Sequence[int]
    clamp_mu: float = 0.0  # token calibration of the direction (CLAMP targets mu + strength * sigma)
    clamp_sigma: float = 1.0


def steered_layers(vectors: Mapping[int, torch.Tensor], monitor_layer: int) -> list[int]:
    """The default: the monitor layer and every stored layer above it."""
    return [layer for layer in sorted(vectors) if layer >= monitor_layer]


def _update(h: torch.Tensor, term: RefTerm, v: torch.Tensor) -> torch.Tensor:
    """The change one term makes to h (batch, seq, hidden), read from the pre-steering state."""
    d = v / v.norm()
    proj = (h @ d).unsqueeze(-1)  # (batch, seq, 1)
    if term.mode == "ABLATE":
        return -term.strength * proj * d
    if term.mode == "ADD":
        return term.strength * v.expand_as(h)
    if term.mode == "CLAMP":
        return -(proj - (term.clamp_mu + term.strength * term.clamp_sigma)) * d
    raise ValueError(f"unknown mode {term.mode!r}")


@contextmanager
def steering(model: torch.nn.Module, terms: Sequence[RefTerm]) -> Iterator[None]:
    """Within the block, every forward of `model` applies `terms` (simultaneously, in fp32) at their layers."""
    blocks = decoder_layers(model)
    by_layer: dict[int, list[RefTerm]] = {}
    for t in terms:
        for layer in t.layers:
            by_layer.setdefault(layer, []).append(t)

    def make_hook(layer: int, here: list[RefTerm]):
        def hook(_mod, _inp, out):
            h = out[0] if isinstance(out, tuple) else out  # (batch, seq, hidden)
            h32 = h.float()
            delta = sum((_update(h32, t, t.vectors[layer].float().to(h.device)) for t in here), torch.zeros_like(h32))
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


@contextmanager
def ablation(
    model: torch.nn.Module, vectors: Mapping[int, torch.Tensor], strength: float, layers: Sequence[int]
) -> Iterator[None]:
    """ABLATE `strength` along `vectors` at `layers` (no hooks at all at strength 0)."""
    terms = [RefTerm(vectors, "ABLATE", strength, layers)] if strength != 0.0 else []
    with steering(model, terms):
        yield
