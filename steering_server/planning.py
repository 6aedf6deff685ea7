"""Turn a request's steering terms and monitor options into device coefficients and a monitor plan.

Validation that needs the model or the registry happens here, with field paths in every message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .composition import FieldTerm, ResolvedTerm, calibration_pooling, combine, inducing
from .containment import MAX_STRENGTH, MAX_TERMS, check_gain, check_push
from .directions import Calibration, validate_direction_name
from .errors import InvalidArgumentError, PermissionDeniedError
from .registry import DirectionRegistry, RegisteredDirection
from .types import MonitorOptions, SteeringMode, SteeringPolicy, SteeringPositions, SteeringTerm

__all__ = ["FieldTerm", "MonitorTarget", "RequestPlan", "effective_terms", "make_plan"]


@dataclass
class MonitorTarget:
    name: str
    entry: RegisteredDirection
    layer: int
    calibration: Calibration | None  # token pooling at the monitor layer
    response_calibration: Calibration | None
    prompt_calibration: Calibration | None
    post_intervention: bool

    @property
    def row(self) -> int:
        """The direction-table row the hooks read for this monitor (a feature's encoder row, registry.py)."""
        return self.entry.monitor_row

    def value(self, raw: float) -> float:
        """The uncalibrated score of one reading: the projection, or an SAE feature's activation."""
        return self.entry.direction.score_of(raw)

    def z(self, value: float, cal: Calibration | None) -> float:
        """`value` (see `value`) in calibrated z units, or itself when uncalibrated."""
        return cal.z(value) if cal is not None else value


Table = tuple[torch.Tensor, torch.Tensor]  # (alpha (L, K), beta (L, K)) fp32 device coefficients


@dataclass
class RequestPlan:
    # Per position class (types.SteeringPositions.classes: prompt before its last token, the last prompt token,
    # generated tokens): the coefficient table, or None where nothing steers. Classes with equal tables share one
    # table object, so the engine gives them one slot.
    tables: tuple[Table | None, Table | None, Table | None]
    monitors: list[MonitorTarget]
    entries: list[RegisteredDirection]  # every registry entry referenced (held until the request ends)

    @property
    def steered(self) -> bool:
        return any(t is not None for t in self.tables)


def effective_terms(
    terms: tuple[SteeringTerm, ...], policy: SteeringPolicy, ignore_policy: bool, field: str = "steering"
) -> tuple[FieldTerm, ...]:
    """The terms a request runs with, each with the field it came from. Enforced policy: always applied, the
    request's terms composed after it (composition.py). Otherwise the policy applies to requests that bring no
    terms and do not opt out."""
    own = tuple(FieldTerm(f"{field}[{i}]", t) for i, t in enumerate(terms))
    from_policy = tuple(FieldTerm(f"policy.terms[{i}]", t) for i, t in enumerate(policy.terms))
    if policy.enforced:
        if ignore_policy:
            raise PermissionDeniedError("the server's steering policy is enforced; requests cannot opt out")
        return from_policy + own
    if terms or ignore_policy:
        return own
    return from_policy


def make_plan(
    registry: DirectionRegistry,
    terms: tuple[FieldTerm, ...],
    monitor: MonitorOptions,
    num_layers: int,
    max_directions: int,
    allow_red_team: bool,
    field_prefix: str = "",
) -> RequestPlan:
    """Validate terms and monitor options, compose the terms per direction and layer (composition.py), judge the
    net effect (red-team rule) and its size (containment.py), and fill the (L, K) device coefficients."""
    if len(terms) > MAX_TERMS:
        field = terms[-1].field.rsplit("[", 1)[0]
        raise InvalidArgumentError(field, f"at most {MAX_TERMS} steering terms (the server policy's included)")
    resolved = [_resolve(registry, ft, num_layers) for ft in terms]
    # Each position class is planned on its own, with the terms that reach it: composition, the red-team rule and
    # the push bound apply to what each position actually receives.
    tables: list[Table | None] = []
    for cls in range(3):
        here = [t for t, ft in zip(resolved, terms, strict=True) if cls in _positions(ft).classes]
        pooling = "last_prompt" if cls < 2 else "token"  # the benign reference of these positions
        table = _table(here, registry, num_layers, max_directions, allow_red_team, pooling) if here else None
        same = next((t for t in tables if t is not None and table is not None and _equal(t, table)), None)
        tables.append(same or table)
    steered_layers = [layer for t in resolved for layer in t.layers]
    entries = [t.entry for t in resolved]
    monitors: list[MonitorTarget] = []
    names = (monitor.directions or tuple(registry.names())) if monitor.enabled else ()
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
    return RequestPlan((tables[0], tables[1], tables[2]), monitors, entries)


def _positions(ft: FieldTerm) -> SteeringPositions:
    positions = ft.term.positions
    if not isinstance(positions, SteeringPositions):
        raise InvalidArgumentError(f"{ft.field}.positions", f"unknown positions {positions!r}")
    return positions


def _table(
    resolved: list[ResolvedTerm], registry: DirectionRegistry, num_layers: int, max_directions: int,
    allow_red_team: bool, pooling: str,
) -> Table | None:
    """Compose the terms per direction and layer, judge the net effect and its size; the (alpha, beta) table."""
    # float64 while composing and checking; the device tables are fp32 (a value beyond fp32 would become inf there,
    # which the push bound refuses and the device check contains).
    alpha = torch.zeros(num_layers, max_directions, dtype=torch.float64)
    beta = torch.zeros(num_layers, max_directions, dtype=torch.float64)
    for (row, layer), (net, fields) in combine(resolved).items():
        check_gain(net.gain, fields[-1], f"layer {layer}")
        alpha[layer, row] = 1.0 - net.gain
        beta[layer, row] = net.shift
    if not allow_red_team:
        why = inducing(resolved, registry, pooling)
        if why is not None:
            raise PermissionDeniedError(f"{why}; the server does not allow red-teaming (--allow-red-team)")
    if registry.residual_norms is not None:
        check_push(beta, registry.residual_norms, resolved[-1].field.rsplit("[", 1)[0])
    if not any(t.layers for t in resolved):
        return None
    return alpha.float(), beta.float()


def _equal(a: Table, b: Table) -> bool:
    return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _resolve(registry: DirectionRegistry, ft: FieldTerm, num_layers: int) -> ResolvedTerm:
    f, term = ft.field, ft.term
    validate_direction_name(term.direction, f"{f}.direction")
    entry = registry.get(term.direction, f"{f}.direction")
    if not isinstance(term.mode, SteeringMode):
        raise InvalidArgumentError(f"{f}.mode", f"unknown mode {term.mode!r}")
    if not math.isfinite(term.strength) or abs(term.strength) > MAX_STRENGTH:
        raise InvalidArgumentError(f"{f}.strength", f"must be finite with |strength| <= {MAX_STRENGTH:g}")
    d = entry.direction
    layers = term.layers or _default_layers(d.layers, d.monitor_layer, term.mode)
    for j, layer in enumerate(layers):
        if not 0 <= layer < num_layers:
            raise InvalidArgumentError(f"{f}.layers[{j}]", f"layer {layer} is outside 0..{num_layers - 1}")
        if layer in layers[:j]:
            raise InvalidArgumentError(f"{f}.layers[{j}]", f"layer {layer} appears twice")
        registry.check_layer(entry, layer, f"{f}.layers[{j}]")
    return ResolvedTerm(f, entry, term.mode, term.strength, tuple(layers), calibration_pooling(_positions(ft)))


def _default_layers(layers: tuple[int, ...], monitor_layer: int, mode: SteeringMode) -> tuple[int, ...]:
    """Monitor layer and above, so steering never changes what the monitor reads; CLAMP's calibrated target is
    only meaningful at the monitor layer, so CLAMP defaults to it alone."""
    if mode == SteeringMode.CLAMP:
        return (monitor_layer,)
    return tuple(layer for layer in layers if layer >= monitor_layer)
