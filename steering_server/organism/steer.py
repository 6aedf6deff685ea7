"""Ablation with plain forward hooks, the reference the engine's fused hooks are checked against.

ABLATE: h <- h - a (h.d) d with d = v_l/|v_l| at every steered layer l and every position (DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch

from .capture import decoder_layers

__all__ = ["ablation", "steered_layers"]


def steered_layers(vectors: Mapping[int, torch.Tensor], monitor_layer: int) -> list[int]:
    """The default: the monitor layer and every stored layer above it."""
    return [layer for layer in sorted(vectors) if layer >= monitor_layer]


@contextmanager
def ablation(
    model: torch.nn.Module, vectors: Mapping[int, torch.Tensor], strength: float, layers: Sequence[int]
) -> Iterator[None]:
    """Within the block, every forward of `model` ablates `vectors` at `layers` with `strength`."""
    blocks = decoder_layers(model)
    handles = []

    def make_hook(unit: torch.Tensor):
        def hook(_mod, _inp, out):
            h = out[0] if isinstance(out, tuple) else out  # (batch, seq, hidden)
            d = unit.to(h.dtype)
            h = h - strength * (h @ d).unsqueeze(-1) * d
            return (h, *out[1:]) if isinstance(out, tuple) else h

        return hook

    try:
        if strength != 0.0:
            for layer in layers:
                v = vectors[layer].float()
                handles.append(blocks[layer].register_forward_hook(make_hook(v / v.norm())))
        yield
    finally:
        for h in handles:
            h.remove()
