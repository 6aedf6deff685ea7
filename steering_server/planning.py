"""Turn a request's steering terms and monitor options into device coefficients and a monitor plan.

Validation that needs the model or the registry happens here, with field paths in every message.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

import torch

from .alerts import Watch, request_watches, resolve_rules, scope_calibration, to_raw
from .composition import FieldTerm, ResolvedTerm, calibration_pooling, combine, inducing
from .containment import MAX_STRENGTH, MAX_TERMS, check_gain, check_push
from .directions import Calibration, validate_direction_name
from .errors import InvalidArgumentError, PermissionDeniedError
from .registry import DirectionRegistry, RegisteredDirection
from .types import (
    Alert,
    AlertAction,
    AlertRule,
    ConditionScope,
    MonitorOptions,
    SteeringCondition,
    SteeringMode,
    SteeringPolicy,
    SteeringPositions,
    SteeringTerm,
)

__all__ = ["MAX_CONDITIONS", "ConditionPlan", "FieldTerm", "MonitorTarget", "PlanCache", "RequestPlan",
           "effective_terms", "make_plan"]

# Distinct conditions per request (its own and the STEER alert rules'): condition columns of the device tables
# (runtime.SteeringRuntime.max_conditions), each one more masked coefficient lookup per steered layer.
MAX_CONDITIONS = 4


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
Tables = tuple[Table | None, Table | None, Table | None]  # per position class


@dataclass
class ConditionPlan:
    """One distinct condition of a request: what the device gate reads, and the coefficients its terms add once it
    fires, per position class (class 0, the prompt before its last token, never: it runs before any decision)."""

    condition: SteeringCondition
    entry: RegisteredDirection
    layer: int  # the condition direction's monitor layer
    threshold_raw: float  # fp32 raw units
    tables: Tables  # what the gate adds, on top of the unconditional table of each class


@dataclass
class RequestPlan:
    # Per position class (types.SteeringPositions.classes: prompt before its last token, the last prompt token,
    # generated tokens): the coefficient table, or None where nothing steers. Classes with equal tables share one
    # table object, so the engine gives them one slot.
    tables: Tables
    monitors: list[MonitorTarget]
    entries: list[RegisteredDirection]  # every registry entry referenced (held until the request ends)
    conditions: list[ConditionPlan] = field(default_factory=list)
    watches: list[Watch] = field(default_factory=list)  # alert rules and stop_threshold (alerts.py)
    # Every term the request runs with: the effective terms, then the STEER rules' conditional terms.
    terms: tuple[FieldTerm, ...] = ()
    unconditional: bool = False  # some term steers without a condition
    own_conditional: bool = False  # some term of the request or the policy's terms carries its own condition

    @property
    def steered(self) -> bool:
        """It holds steering slots (conditional ones whether or not they fire)."""
        return any(t is not None for t in self.tables) or bool(self.conditions)

    def applied(self, alerts: tuple[Alert, ...]) -> bool:
        """Some term steered, given the alerts the request raised: an unconditional term, a STEER rule that fired
        (its alert), or a term with its own condition (whether the device gate fired is not read back: counted)."""
        return self.unconditional or self.own_conditional or any(
            a.action == AlertAction.STEER and a.source == "policy" for a in alerts
        )


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
    rules: tuple[AlertRule, ...] = (),
) -> RequestPlan:
    """Validate terms, alert rules and monitor options, compose the terms per direction and layer (composition.py),
    judge the net effect (red-team rule) and its size (containment.py), and fill the (L, K) device coefficients.
    STEER rules add conditional terms after the request's (alerts.py)."""
    rule_watches, rule_terms = resolve_rules(registry, rules)
    if len(terms) > MAX_TERMS:
        field_name = terms[-1].field.rsplit("[", 1)[0]
        raise InvalidArgumentError(field_name, f"at most {MAX_TERMS} steering terms (the server policy's included)")
    own_conditional = any(ft.term.condition is not None for ft in terms)
    terms = terms + tuple(rule_terms)
    resolved = [_resolve(registry, ft, num_layers) for ft in terms]
    keys, conditions = _conditions(registry, terms, resolved)
    tables, cond_tables = _class_tables(
        resolved, terms, keys, len(conditions), registry, num_layers, max_directions, allow_red_team
    )
    plans = [
        ConditionPlan(
            cond,
            entry,
            entry.direction.monitor_layer,
            to_raw(cond.threshold, scope_calibration(entry, cond.scope), entry.direction),
            (cond_tables[0][c], cond_tables[1][c], cond_tables[2][c]),
        )
        for c, (cond, entry) in enumerate(conditions)
    ]
    steered_layers = [layer for t in resolved for layer in t.layers]
    entries = [t.entry for t in resolved] + [entry for _, entry in conditions]
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
                calibration=d.calibration_for("token"),
                response_calibration=d.calibration_for("response_mean"),
                prompt_calibration=d.calibration_for("last_prompt"),
                post_intervention=any(layer < d.monitor_layer for layer in steered_layers),
            )
        )
        entries.append(entry)
    watches = rule_watches + request_watches(monitor.stop_threshold, [(m.name, m.entry) for m in monitors])
    entries += [w.entry for w in rule_watches]
    unconditional = any(ft.term.condition is None and bool(rt.layers) for ft, rt in zip(terms, resolved, strict=True))
    return RequestPlan(tables, monitors, entries, plans, watches, terms, unconditional, own_conditional)


class PlanCache:
    """make_plan's result for a request like a recent one: the same plan object (plans are read, never written, by
    the engine). A plan depends only on make_plan's arguments and the registry's named directions, so the key is the
    request's arguments (the engine's are fixed) at the registry's generation (bumped by every put and delete, which
    empties the cache: plans of retired directions are never used again). Planning composes and checks every term
    per layer and position class (a few ms of Python); traffic that repeats its steering (Compare's variants, the
    organism's thousands of samples per intervention) plans once, and its admission no longer holds the interpreter
    against the batching thread. A request that fails planning is not cached: it fails again."""

    def __init__(
        self, registry: DirectionRegistry, num_layers: int, max_directions: int, allow_red_team: bool, size: int = 256
    ) -> None:
        self._engine = (registry, num_layers, max_directions, allow_red_team)  # fixed for the engine's life
        self._size = size
        self._generation = -1
        self._plans: OrderedDict[Hashable, RequestPlan] = OrderedDict()

    def plan(
        self, terms: tuple[FieldTerm, ...], monitor: MonitorOptions, field_prefix: str = "",
        rules: tuple[AlertRule, ...] = (),
    ) -> RequestPlan:
        """make_plan(registry, terms, monitor, num_layers, max_directions, allow_red_team, field_prefix, rules)."""
        registry, num_layers, max_directions, allow_red_team = self._engine
        key = (terms, monitor, field_prefix, rules)

        def make() -> RequestPlan:
            return make_plan(registry, terms, monitor, num_layers, max_directions, allow_red_team, field_prefix, rules)

        if registry.generation != self._generation:
            self._plans.clear()
            self._generation = registry.generation
        try:
            plan = self._plans.get(key)
        except TypeError:  # an unhashable field (a caller's list): planned, not cached
            return make()
        if plan is None:
            plan = self._plans[key] = make()
            if len(self._plans) > self._size:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        return plan


def _conditions(
    registry: DirectionRegistry, terms: tuple[FieldTerm, ...], resolved: list[ResolvedTerm]
) -> tuple[list[int | None], list[tuple[SteeringCondition, RegisteredDirection]]]:
    """Validate each term's condition; per term the index of its distinct condition (None: unconditional), and the
    distinct conditions in order of first use."""
    keys: list[int | None] = []
    distinct: list[tuple[SteeringCondition, RegisteredDirection]] = []
    for ft, rt in zip(terms, resolved, strict=True):
        cond = ft.term.condition
        if cond is None:
            keys.append(None)
            continue
        f = f"{ft.field}.condition"
        validate_direction_name(cond.direction, f"{f}.direction")
        entry = registry.get(cond.direction, f"{f}.direction")
        if not isinstance(cond.scope, ConditionScope):
            raise InvalidArgumentError(f"{f}.scope", f"unknown scope {cond.scope!r}")
        if not math.isfinite(cond.threshold):
            raise InvalidArgumentError(f"{f}.threshold", "must be finite")
        monitor_layer = entry.direction.monitor_layer
        below = [layer for layer in rt.layers if layer < monitor_layer]
        if below:
            raise InvalidArgumentError(
                f,
                f"direction {cond.direction!r} is read at layer {monitor_layer}, above layer {below[0]} that the term "
                "steers: a condition must be read at or below every layer its term steers",
            )
        if not set(_positions(ft).classes) & set(_gated_classes(cond.scope)):
            raise InvalidArgumentError(
                f"{ft.field}.positions",
                f"a {cond.scope.name} condition turns steering on only from "
                + ("the last prompt token" if cond.scope == ConditionScope.PROMPT else "the first generated token")
                + f" on; {_positions(ft).name} positions are all before that",
            )
        same = next((i for i, (c, e) in enumerate(distinct) if e is entry and c == cond), None)
        if same is None:
            if len(distinct) == MAX_CONDITIONS:
                raise InvalidArgumentError(f, f"at most {MAX_CONDITIONS} distinct conditions per request")
            distinct.append((cond, entry))
            same = len(distinct) - 1
        keys.append(same)
    # The conditions' extra coefficients are added on the device; that is their composition only when no two
    # conditions steer the same direction at the same layer.
    owner: dict[tuple[int, int], int] = {}
    for ft, rt, key in zip(terms, resolved, keys, strict=True):
        if key is None:
            continue
        for layer in rt.layers:
            other = owner.setdefault((rt.entry.row, layer), key)
            if other != key:
                raise InvalidArgumentError(
                    ft.field,
                    f"steers {rt.entry.direction.name!r} at layer {layer} under another condition than an earlier "
                    "term: terms with different conditions must steer different directions or layers",
                )
    return keys, distinct


def _gated_classes(scope: ConditionScope) -> tuple[int, ...]:
    """The position classes a condition can turn on: PROMPT fires at the last prompt token, RUNNING at a generated
    one (runtime.position_class)."""
    return (1, 2) if scope == ConditionScope.PROMPT else (2,)


def _class_tables(
    resolved: list[ResolvedTerm], terms: tuple[FieldTerm, ...], keys: list[int | None], n_conditions: int,
    registry: DirectionRegistry, num_layers: int, max_directions: int, allow_red_team: bool,
) -> tuple[Tables, list[list[Table | None]]]:
    """Per position class, the unconditional table and each condition's extra table (what it adds once on).

    Each class is planned on its own, with the terms that reach it: composition, the red-team rule and the push
    bound apply to what each position actually receives, under every combination of conditions on and off."""
    tables: list[Table | None] = []
    cond_tables: list[list[Table | None]] = []
    shared: list[Table] = []

    def share(table: Table | None) -> Table | None:
        """Equal tables are one object, so the engine gives them one slot."""
        if table is None:
            return None
        same = next((t for t in shared if _equal(t, table)), None)
        if same is None:
            shared.append(table)
        return same or table

    for cls in range(3):
        pooling = "last_prompt" if cls < 2 else "token"  # the benign reference of these positions
        reaching = [
            i
            for i, (ft, key) in enumerate(zip(terms, keys, strict=True))
            if cls in _positions(ft).classes
            and (key is None or (ft.term.condition is not None and cls in _gated_classes(ft.term.condition.scope)))
        ]
        present = sorted({k for i in reaching if (k := keys[i]) is not None})

        def table(on: set[int], cls: int = cls, pooling: str = pooling, reaching: list[int] = reaching
                  ) -> Table | None:
            here = [resolved[i] for i in reaching if keys[i] is None or keys[i] in on]
            return _table(here, registry, num_layers, max_directions, allow_red_team, pooling) if here else None

        base = table(set())
        singles: dict[int, Table | None] = {}
        for mask in range(1, 1 << len(present)):  # every combination is judged (red-team rule, bounds)
            on = {c for i, c in enumerate(present) if mask >> i & 1}
            t = table(on)
            if len(on) == 1:
                singles[next(iter(on))] = t
        zeros = torch.zeros(num_layers, max_directions, dtype=torch.float64)
        row: list[Table | None] = [None] * n_conditions
        for c, t in singles.items():
            if t is None:
                continue
            b = base or (zeros, zeros)
            row[c] = share(((t[0] - b[0]).float(), (t[1] - b[1]).float()))
        tables.append(share((base[0].float(), base[1].float())) if base is not None else None)
        cond_tables.append(row)
    return (tables[0], tables[1], tables[2]), cond_tables


def _positions(ft: FieldTerm) -> SteeringPositions:
    positions = ft.term.positions
    if not isinstance(positions, SteeringPositions):
        raise InvalidArgumentError(f"{ft.field}.positions", f"unknown positions {positions!r}")
    return positions


def _table(
    resolved: list[ResolvedTerm], registry: DirectionRegistry, num_layers: int, max_directions: int,
    allow_red_team: bool, pooling: str,
) -> Table | None:
    """Compose the terms per direction and layer, judge the net effect and its size; the (alpha, beta) table in
    float64."""
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
    return alpha, beta


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
        if term.mode == SteeringMode.CLAMP and (why := d.clamp_refusal(layer, _positions(ft))) is not None:
            raise InvalidArgumentError(f"{f}.layers[{j}]", why)
    return ResolvedTerm(f, entry, term.mode, term.strength, tuple(layers), calibration_pooling(_positions(ft)))


def _default_layers(layers: tuple[int, ...], monitor_layer: int, mode: SteeringMode) -> tuple[int, ...]:
    """Monitor layer and above, so steering never changes what the monitor reads; a CLAMP target is a level of one
    layer (its calibration there), so CLAMP defaults to the monitor layer alone."""
    if mode == SteeringMode.CLAMP:
        return (monitor_layer,)
    return tuple(layer for layer in layers if layer >= monitor_layer)
