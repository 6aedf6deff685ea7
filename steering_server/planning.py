"""Turn a request's steering terms and monitor options into device coefficients and a monitor plan.

Validation that needs the model or the registry happens here, with field paths in every message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .directions import Calibration
from .errors import InvalidArgumentError, PermissionDeniedError
from .registry import DirectionRegistry, RegisteredDirection
from .steer import mode_coefficients
from .types import MonitorOptions, SteeringMode, SteeringPolicy, SteeringTerm

__all__ = ["MAX_STRENGTH", "MonitorTarget", "RequestPlan", "effective_terms", "make_plan"]

MAX_STRENGTH = 1000.0  # beyond this no steering is meaningful; it is a typo or an attack


@dataclass
class MonitorTarget:
    name: str
    entry: RegisteredDirection
    layer: int
    calibration: Calibration | None  # token pooling at the monitor layer
    response_calibration: Calibration | None
    prompt_calibration: Calibration | None
    post_intervention: bool

    def z(self, raw: float, cal: Calibration | None) -> float:
        return cal.z(raw) if cal is not None else raw


@dataclass
class RequestPlan:
    alpha: torch.Tensor | None  # (L, K) or None when unsteered
    beta: torch.Tensor | None
    monitors: list[MonitorTarget]
    entries: list[RegisteredDirection]  # every registry entry referenced (held until the request ends)

    @property
    def steered(self) -> bool:
        return self.alpha is not None


def effective_terms(
    terms: tuple[SteeringTerm, ...], policy: SteeringPolicy, ignore_policy: bool
) -> tuple[SteeringTerm, ...]:
    """Enforced policy: always applied, request terms added. Otherwise: the policy applies to requests that bring
    no terms and do not opt out."""
    if policy.enforced:
        if ignore_policy:
            raise PermissionDeniedError("the server's steering policy is enforced; requests cannot opt out")
        return policy.terms + terms
    if terms or ignore_policy:
        return terms
    return policy.terms


def _inducing(term: SteeringTerm) -> bool:
    s = term.strength
    return (
        (term.mode == SteeringMode.ADD and s > 0)
        or (term.mode == SteeringMode.CLAMP and s > 0)
        or (term.mode == SteeringMode.ABLATE and s < 0)
    )


def make_plan(
    registry: DirectionRegistry,
    terms: tuple[SteeringTerm, ...],
    monitor: MonitorOptions,
    num_layers: int,
    max_directions: int,
    allow_red_team: bool,
    field_prefix: str = "",
    terms_field: str = "steering",
) -> RequestPlan:
    alpha = torch.zeros(num_layers, max_directions)
    beta = torch.zeros(num_layers, max_directions)
    entries: list[RegisteredDirection] = []
    steered_layers: list[int] = []
    for i, term in enumerate(terms):
        f = f"{field_prefix}{terms_field}[{i}]"
        entry = registry.get(term.direction, f"{f}.direction")
        if not isinstance(term.mode, SteeringMode):
            raise InvalidArgumentError(f"{f}.mode", f"unknown mode {term.mode!r}")
        if not math.isfinite(term.strength) or abs(term.strength) > MAX_STRENGTH:
            raise InvalidArgumentError(f"{f}.strength", f"must be finite with |strength| <= {MAX_STRENGTH:g}")
        if _inducing(term) and not allow_red_team:
            raise PermissionDeniedError(
                f"{f}: {term.mode.name} {term.strength:g} would induce {term.direction!r}; the server does not allow "
                "red-teaming (--allow-red-team)"
            )
        d = entry.direction
        layers = term.layers or _default_layers(d.layers, d.monitor_layer, term.mode)
        if len(set(layers)) != len(layers):
            raise InvalidArgumentError(f"{f}.layers", "layers repeat")
        for j, layer in enumerate(layers):
            if not 0 <= layer < num_layers:
                raise InvalidArgumentError(f"{f}.layers[{j}]", f"layer {layer} is outside 0..{num_layers - 1}")
            registry.check_layer(entry, layer, f"{f}.layers[{j}]")
            cal = d.calibration.get("token")
            target = (
                cal.mu + term.strength * cal.sigma
                if (cal is not None and term.mode == SteeringMode.CLAMP)
                else term.strength
            )
            a, b = mode_coefficients(term.mode.name, term.strength, entry.norms[layer], target)
            alpha[layer, entry.row] += a
            beta[layer, entry.row] += b
            steered_layers.append(layer)
        entries.append(entry)
    monitors: list[MonitorTarget] = []
    names = (monitor.directions or tuple(registry.names())) if monitor.enabled else ()
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"{field_prefix}monitor.directions", "directions repeat")
    for j, name in enumerate(names):
        entry = registry.get(name, f"{field_prefix}monitor.directions[{j}]" if monitor.directions else "")
        d = entry.direction
        monitors.append(
            MonitorTarget(
                name=name,
                entry=entry,
                layer=d.monitor_layer,
                calibration=d.calibration.get("token"),
                # A pooling without its own statistics falls back to the per-token ones, so that every score of
                # a direction reported as calibrated is a z-score.
                response_calibration=d.calibration.get("response_mean", d.calibration.get("token")),
                prompt_calibration=d.calibration.get("last_prompt", d.calibration.get("token")),
                post_intervention=any(layer < d.monitor_layer for layer in steered_layers),
            )
        )
        entries.append(entry)
    if monitor.stop_threshold is not None and not math.isfinite(monitor.stop_threshold):
        raise InvalidArgumentError(f"{field_prefix}monitor.stop_threshold", "must be finite")
    steered = bool(steered_layers)
    return RequestPlan(alpha if steered else None, beta if steered else None, monitors, entries)


def _default_layers(layers: tuple[int, ...], monitor_layer: int, mode: SteeringMode) -> tuple[int, ...]:
    """Monitor layer and above, so steering never changes what the monitor reads; CLAMP's calibrated target is
    only meaningful at the monitor layer, so CLAMP defaults to it alone."""
    if mode == SteeringMode.CLAMP:
        return (monitor_layer,)
    return tuple(layer for layer in layers if layer >= monitor_layer)
