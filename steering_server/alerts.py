"""Server-wide alert rules (SteeringPolicy.alerts) and the request's own alarm (MonitorOptions.stop_threshold):
validated and resolved here into host-side watches, and, for STEER rules, into conditional steering terms.

A watch compares each reading of its scope with its threshold in raw fp32 projection units (a z threshold is
converted with the calibration of the scope's pooling: `last_prompt` for PROMPT, `token` for RUNNING), so a STEER
rule's recorded alert and its device-side gate (steer.latch_gates) agree on every reading. Each watch fires at most
once per request, at the first reading that reaches it:
    PROMPT   the reading at the last prompt token (the input position of generated token 0)
    RUNNING  the reading at each fed-back generated token j (token_scores[j], the input position of token j + 1)
Actions: RECORD adds an Alert to the result; STEER adds an Alert and its terms steer from that reading on (on the
device, planning.py); STOP ends the generation with MONITOR_ALERT and holds back the tokens that triggered it
(streams.py): for PROMPT, token 0 (sampled from the alarming state), so nothing is returned; for RUNNING at
token_scores[j], tokens j (whose state gave the score) and j + 1 (sampled from that state), so tokens 0..j-1 are
returned. To hold token j back, a request watched by a RUNNING STOP releases each token one step late, once the
reading at its own position is known (its last token, never fed back, is released when generation ends).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .composition import FieldTerm
from .directions import Calibration, Direction, scope_pooling, validate_direction_name
from .errors import InvalidArgumentError
from .registry import DirectionRegistry, RegisteredDirection
from .types import Alert, AlertAction, AlertRule, ConditionScope, SteeringCondition, SteeringMode, SteeringPolicy

__all__ = [
    "MAX_ALERT_RULES",
    "Watch",
    "check_replacement",
    "check_unreferenced",
    "request_watches",
    "resolve_rules",
    "scope_calibration",
    "to_raw",
]

MAX_ALERT_RULES = 16


def scope_calibration(entry: RegisteredDirection, scope: ConditionScope) -> Calibration | None:
    """The calibration a scope's scores are z-scored with: the one the monitor reports them in (an SAE feature's
    too: its calibration is of the activation the watch compares, unlike steering's, composition.calibration)."""
    return entry.direction.calibration_for(scope_pooling(scope))


def to_raw(threshold: float, cal: Calibration | None, direction: Direction) -> float:
    """A z threshold (raw when uncalibrated) as a threshold on the monitor row's projection, rounded to fp32 as the
    device holds it. For an SAE feature the score is its activation, a non-decreasing function of the projection
    (directions.Feature.activation_of): the threshold is the projection where the activation reaches it (any
    projection when it is at most 0, the activation's floor; a JumpReLU's own threshold is compared inclusively)."""
    value = cal.mu + threshold * cal.sigma if cal is not None else threshold
    raw = value
    feature = direction.feature
    if feature is not None:
        if value <= 0:
            raw = -_FP32_MAX
        else:
            pre = max(value, feature.threshold) if feature.activation == "jumprelu" else value
            raw = (pre + feature.b_dec_proj - feature.bias) / feature.encoder_norm
    return float(torch.tensor(max(-_FP32_MAX, min(_FP32_MAX, raw)), dtype=torch.float32))


_FP32_MAX = float(torch.finfo(torch.float32).max)


@dataclass(frozen=True)
class Watch:
    """One threshold a request's readings are checked against on the host (an alert rule or stop_threshold)."""

    name: str
    entry: RegisteredDirection
    layer: int  # the direction's monitor layer
    scope: ConditionScope
    threshold: float  # as given: z units when calibrated
    threshold_raw: float  # fp32 projection units of the monitor row, what readings are compared with
    calibration: Calibration | None  # the scope's, for the reported score
    action: AlertAction
    source: str  # "policy" or "request"

    def fires(self, raw: float) -> bool:
        return raw >= self.threshold_raw  # NaN never fires

    def alert(self, raw: float, token_index: int | None) -> Alert:
        value = self.entry.direction.score_of(raw)  # an SAE feature's activation, else the projection
        score = self.calibration.z(value) if self.calibration is not None else value
        return Alert(self.name, self.scope, score, self.threshold, self.action, token_index, self.source)


def resolve_rules(
    registry: DirectionRegistry, rules: tuple[AlertRule, ...], field: str = "policy.alerts"
) -> tuple[list[Watch], list[FieldTerm]]:
    """Validate the rules against the registry; their watches, and the conditional terms of their STEER actions
    (each conditioned on its rule: the rule's terms, or the direction's removal recipe when it gives none)."""
    if len(rules) > MAX_ALERT_RULES:
        raise InvalidArgumentError(field, f"at most {MAX_ALERT_RULES} alert rules")
    watches: list[Watch] = []
    terms: list[FieldTerm] = []
    for i, rule in enumerate(rules):
        f = f"{field}[{i}]"
        validate_direction_name(rule.direction, f"{f}.direction")
        entry = registry.get(rule.direction, f"{f}.direction")
        if not isinstance(rule.action, AlertAction):
            raise InvalidArgumentError(f"{f}.action", "must be RECORD, STOP or STEER")
        if not isinstance(rule.scope, ConditionScope):
            raise InvalidArgumentError(f"{f}.scope", f"unknown scope {rule.scope!r}")
        cal = scope_calibration(entry, rule.scope)
        threshold = rule.threshold
        if threshold is None:
            if cal is None or cal.threshold is None:
                pooling = scope_pooling(rule.scope)
                raise InvalidArgumentError(
                    f"{f}.threshold",
                    f"direction {rule.direction!r} has no calibrated threshold for {pooling!r} scores: give one",
                )
            threshold = cal.threshold
        elif not math.isfinite(threshold):
            raise InvalidArgumentError(f"{f}.threshold", "must be finite")
        if rule.steering and rule.action != AlertAction.STEER:
            raise InvalidArgumentError(f"{f}.steering", "only a STEER rule steers")
        d = entry.direction
        watches.append(
            Watch(rule.direction, entry, d.monitor_layer, rule.scope, threshold, to_raw(threshold, cal, d), cal,
                  rule.action, "policy")
        )
        if rule.action != AlertAction.STEER:
            continue
        condition = SteeringCondition(rule.direction, threshold, rule.scope)
        if not rule.steering:
            terms.append(FieldTerm(f"{f}.steering", d.removal.term(d.name, condition, from_layer=d.monitor_layer)))
        for j, term in enumerate(rule.steering):
            if term.condition is not None:
                raise InvalidArgumentError(f"{f}.steering[{j}].condition", "is set by the rule; leave it unset")
            terms.append(FieldTerm(f"{f}.steering[{j}]", replace(term, condition=condition)))
    return watches, terms


def request_watches(threshold: float | None, monitored: list[tuple[str, RegisteredDirection]]) -> list[Watch]:
    """MonitorOptions.stop_threshold: a RUNNING STOP watch on every monitored direction (generated tokens only;
    a prompt-score alarm is an AlertRule with PROMPT scope)."""
    if threshold is None:
        return []
    out = []
    for name, entry in monitored:
        cal = scope_calibration(entry, ConditionScope.RUNNING)
        out.append(
            Watch(name, entry, entry.direction.monitor_layer, ConditionScope.RUNNING, threshold,
                  to_raw(threshold, cal, entry.direction), cal, AlertAction.STOP, "request")
        )
    return out


def check_unreferenced(policy: SteeringPolicy, name: str, field: str = "name") -> None:
    """Refuse to delete a direction the policy's alert rules read or steer: every request (ignore_policy ones too)
    would then fail on the rule, and silently dropping a STOP rule would fail open."""
    for i, rule in enumerate(policy.alerts):
        used = rule.direction == name or any(
            t.direction == name or (t.condition is not None and t.condition.direction == name) for t in rule.steering
        )
        if used:
            raise InvalidArgumentError(
                field, f"direction {name!r} is used by policy.alerts[{i}]; change the policy (SetSteering) first"
            )


def check_replacement(policy: SteeringPolicy, direction: Direction, field: str = "calibration") -> None:
    """Refuse a new version of a direction that the policy could no longer run with (every request would then fail
    on it): an alert rule takes its calibrated threshold from it and the new one has none for the rule's scope, or a
    policy term (or an alert rule's STEER, the recipe included) clamps it at a layer the new one has no level for."""
    clamps = [(f"policy.terms[{i}]", t) for i, t in enumerate(policy.terms)]
    for i, rule in enumerate(policy.alerts):
        clamps += [(f"policy.alerts[{i}].steering[{j}]", t) for j, t in enumerate(rule.steering)]
        if rule.action == AlertAction.STEER and not rule.steering and rule.direction == direction.name:
            clamps.append((f"policy.alerts[{i}]'s removal recipe",
                           direction.removal.term(direction.name, from_layer=direction.monitor_layer)))
    for where, t in clamps:
        if t.direction != direction.name or t.mode != SteeringMode.CLAMP:
            continue
        for layer in t.layers or (direction.monitor_layer,):
            if (why := direction.clamp_refusal(layer, t.positions)) is not None:
                raise InvalidArgumentError(field, f"{where} clamps {direction.name!r} at layer {layer}: {why}; "
                                           "change the policy (SetSteering) first")
    for i, rule in enumerate(policy.alerts):
        if rule.direction != direction.name or rule.threshold is not None:
            continue
        pooling = scope_pooling(rule.scope)
        cal = direction.calibration_for(pooling)
        if cal is None or cal.threshold is None:
            raise InvalidArgumentError(
                field,
                f"policy.alerts[{i}] takes its threshold from the {pooling!r} calibration of {direction.name!r}, "
                "which this direction does not have; give the rule a threshold (SetSteering) first",
            )
