"""Containment: bound, at admission, everything one request can write into the hidden state (DESIGN.md "Trust model").

The residual stream of a model has a typical size, measured once at start-up (`measure_residual_norms`). Every
magnitude a caller controls is bounded relative to it, so that no admitted request can push a state towards the
dtype's range; the per-request non-finite check on the device (steer.steer_contained) catches what still slips
through (compounding amplification over many layers, overflow inside a layer).

    calibration  |mu| and sigma at most MAX_CALIBRATION_RATIO residual norms of the layer calibrated (a CLAMP target
                 is mu + c sigma: a finite but huge mu, 1e300, is +inf once it reaches fp32)
    push         per layer and request, the sum over directions of |beta| (the part of the update that does not
                 depend on h: ADD's a|v|, CLAMP's target) at most MAX_PUSH_RATIO residual norms of that layer
    gain         the net factor on a projection, 1 - alpha, within [MIN_GAIN, MAX_GAIN] (MIN_GAIN 0: an ABLATE
                 total above 1 reflects the direction instead of removing it, and is refused)
    terms        at most MAX_TERMS terms per request (policy included), strengths finite with |s| <= MAX_STRENGTH
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .directions import Direction
from .errors import InvalidArgumentError

__all__ = [
    "MAX_CALIBRATION_RATIO",
    "MAX_GAIN",
    "MAX_PUSH_RATIO",
    "MAX_STRENGTH",
    "MAX_TERMS",
    "MIN_GAIN",
    "check_calibration",
    "check_gain",
    "check_push",
    "measure_residual_norms",
]

MAX_TERMS = 64  # per request, the server policy's terms included
MAX_STRENGTH = 1000.0  # beyond this no steering is meaningful; it is a typo or an attack
# Persona-vector steering pushes by about one residual norm (coherence is gone by a few); ten leaves room for
# red-team experiments and keeps a push orders of magnitude inside fp16's range (65504) for real models, whose
# residual norms are in the tens to thousands.
MAX_PUSH_RATIO = 10.0
# Benign projections lie within a few residual norms of zero (|h.d| <= |h|); a hundred is a wide margin for
# statistics pooled over unusual text, and rules out the values that only serve to overflow.
MAX_CALIBRATION_RATIO = 100.0
MIN_GAIN = 0.0  # ABLATE totals above 1 reflect the direction: refused for everyone
MAX_GAIN = 4.0  # amplifying (ABLATE < 0, red-team only) by at most 4x per layer; it compounds over layers


def measure_residual_norms(model: nn.Module, layers: nn.ModuleList, prompt: Sequence[int]) -> list[float]:
    """Mean L2 norm of each decoder layer's output over `prompt`, the first position excluded (it often carries
    outsized "attention sink" activations). One plain forward: outside a batching step, so the engine's hooks pass
    through it. Returns one float per layer."""
    norms: list[float] = [0.0] * len(layers)

    def make_hook(i: int):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: object, output: object) -> None:
            hidden = output[0] if isinstance(output, tuple) else output  # (1, tokens, H)
            assert isinstance(hidden, torch.Tensor)
            norms[i] = float(hidden[0, 1:].float().norm(dim=-1).mean())

        return hook

    handles = [layer.register_forward_hook(make_hook(i)) for i, layer in enumerate(layers)]
    try:
        device = next(model.parameters()).device
        with torch.inference_mode():
            model(torch.tensor([list(prompt)], device=device))
    finally:
        for h in handles:
            h.remove()
    if not all(math.isfinite(n) and n > 0 for n in norms):
        raise RuntimeError(f"the model's residual norms are not finite and positive: {norms}")
    return norms


def check_calibration(direction: Direction, norms: Sequence[float], field_name: str = "calibration") -> None:
    """Refuse calibration statistics far outside what the model's residual stream can produce."""
    tables = [(direction.monitor_layer, field_name, direction.calibration)]
    tables += [(layer, f"layer_{field_name}[{layer}]", t) for layer, t in sorted(direction.layer_calibration.items())]
    for layer, where, table in tables:
        limit = MAX_CALIBRATION_RATIO * norms[layer]
        for pooling, cal in table.items():
            if not (abs(cal.mu) <= limit and cal.sigma <= limit):
                raise InvalidArgumentError(
                    f"{where}[{pooling!r}]",
                    f"|mu| and sigma must be at most {limit:.4g} ({MAX_CALIBRATION_RATIO:g} times the model's residual "
                    f"norm at layer {layer}); got mu={cal.mu:.4g}, sigma={cal.sigma:.4g}",
                )


def check_push(beta: torch.Tensor, norms: Sequence[float], field_name: str) -> None:
    """beta: (L, K) one request's net per-layer coefficients. Refuse a push beyond MAX_PUSH_RATIO residual norms."""
    push = beta.abs().sum(dim=1)  # (L,)
    for layer, value in enumerate(push.tolist()):
        limit = MAX_PUSH_RATIO * norms[layer]
        if not value <= limit:  # NaN fails too
            raise InvalidArgumentError(
                field_name,
                f"the steering adds {value:.4g} at layer {layer}, more than {MAX_PUSH_RATIO:g} times the model's "
                f"residual norm there ({limit:.4g}); lower the strengths",
            )


def check_gain(gain: float, field_name: str, where: str) -> None:
    """`gain` = 1 - alpha: the factor the steering leaves on one direction's projection."""
    if gain < MIN_GAIN - 1e-9:
        raise InvalidArgumentError(
            field_name, f"{where}: the ABLATE strengths total {1 - gain:g}; above 1 ablation reflects the direction"
        )
    if gain > MAX_GAIN + 1e-9:
        raise InvalidArgumentError(
            field_name, f"{where}: amplifies the projection {gain:g}x per layer (at most {MAX_GAIN:g}x)"
        )
