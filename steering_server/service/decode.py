"""Protobuf requests -> the engine's plain types. Only what the message itself shows is decided here.

Here: which of several inputs is set, enum values the plain types cannot hold, defaults for unset fields, and the
parsing of uploaded directions. Every limit and range (sizes, strengths, layers, names, sampling, variants) is a
request rule of the engine (rules.py, planning.py, containment.py), which both engines apply; the few applied here
too are applied *before* converting a large repeated field (chat messages, steering terms), so that a hostile
request costs nothing, and with the engine's own limits and messages.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from steering_client import pb

from ..alerts import MAX_ALERT_RULES
from ..containment import MAX_TERMS
from ..direction_files import direction_from_bytes
from ..direction_imports import load_direction_file
from ..directions import POOLINGS, Calibration, Direction, Removal, validate_direction_name
from ..errors import InvalidArgumentError
from ..monitor_feed import DEFAULT_BUFFER, MonitorFilter
from ..rules import MAX_CHAT_MESSAGES, check_text_size, check_watch_count
from ..types import (
    AlertAction,
    AlertRule,
    ChatMessage,
    CompareRequest,
    ConditionScope,
    EngineLimits,
    GenerationRequest,
    MonitorOptions,
    Prompt,
    SamplingParams,
    ScoreRequest,
    SteeringCondition,
    SteeringMode,
    SteeringPolicy,
    SteeringTerm,
    Variant,
)
from .encode import ACTIONS_TO_PB, POSITIONS_TO_PB, SCOPES_TO_PB

__all__ = [
    "Bounds",
    "compare_request",
    "direction_name",
    "generate_request",
    "put_direction",
    "score_request",
    "steering_policy",
    "tokenize_text",
]

DEFAULT_MAX_NEW_TOKENS = 64
_MODES = {pb.ABLATE: SteeringMode.ABLATE, pb.ADD: SteeringMode.ADD, pb.CLAMP: SteeringMode.CLAMP}
_POSITIONS = {v: k for k, v in POSITIONS_TO_PB.items()}
_SCOPES: dict[int, ConditionScope] = {int(v): k for k, v in SCOPES_TO_PB.items()}
_ACTIONS: dict[int, AlertAction] = {int(v): k for k, v in ACTIONS_TO_PB.items()}


@dataclass(frozen=True)
class Bounds:
    """What decoding needs to know about the served model and the server's limits."""

    limits: EngineLimits
    num_layers: int
    hidden_size: int
    vocab_size: int


def generate_request(msg: pb.GenerateRequest, bounds: Bounds) -> GenerationRequest:
    return GenerationRequest(
        prompt=_prompt(msg, bounds),
        sampling=_sampling(msg.sampling, bounds),
        steering=_steering(msg.steering, "steering"),
        monitor=_monitor(msg.monitor) if msg.HasField("monitor") else MonitorOptions(),
        ignore_policy=msg.ignore_policy,
    )


def compare_request(msg: pb.CompareRequest, bounds: Bounds) -> CompareRequest:
    if len(msg.variants) > bounds.limits.max_variants:  # before converting them; rules.check_variants has the rest
        raise InvalidArgumentError(
            "variants", f"at most {bounds.limits.max_variants} variants are allowed (got {len(msg.variants)})"
        )
    variants = tuple(
        Variant(v.name, _steering(v.steering, f"variants[{i}].steering")) for i, v in enumerate(msg.variants)
    )
    return CompareRequest(
        prompt=_prompt(msg, bounds),
        sampling=_sampling(msg.sampling, bounds),
        variants=variants,
        monitor=_monitor(msg.monitor) if msg.HasField("monitor") else MonitorOptions(),
    )


def score_request(msg: pb.ScoreRequest, bounds: Bounds) -> ScoreRequest:
    return ScoreRequest(
        prompt=_prompt(msg, bounds),
        response_text=msg.response or None,
        response_token_ids=tuple(msg.response_token_ids),
        steering=_steering(msg.steering, "steering"),
        # Unset: every direction, with per-token scores (what Score is usually asked for).
        monitor=_monitor(msg.monitor) if msg.HasField("monitor") else MonitorOptions(token_scores=True),
        ignore_policy=msg.ignore_policy,
    )


def steering_policy(msg: pb.SteeringPolicy, bounds: Bounds, field: str = "policy") -> SteeringPolicy:
    if len(msg.alerts) > MAX_ALERT_RULES:  # before converting them; alerts.resolve_rules has the rest
        raise InvalidArgumentError(f"{field}.alerts", f"at most {MAX_ALERT_RULES} alert rules")
    alerts = tuple(_alert_rule(r, f"{field}.alerts[{i}]") for i, r in enumerate(msg.alerts))
    return SteeringPolicy(terms=_steering(msg.terms, f"{field}.terms"), enforced=msg.enforced, alerts=alerts)


def _alert_rule(rule: pb.AlertRule, field: str) -> AlertRule:
    action = _ACTIONS.get(rule.action)
    if action is None:
        raise InvalidArgumentError(f"{field}.action", "must be RECORD, STOP or STEER")
    return AlertRule(
        direction=rule.direction,
        action=action,
        threshold=rule.threshold if rule.HasField("threshold") else None,
        scope=_scope(rule.scope, f"{field}.scope"),
        steering=_steering(rule.steering, f"{field}.steering"),
    )


def _scope(value: int, field: str) -> ConditionScope:
    scope = _SCOPES.get(value)
    if scope is None:
        raise InvalidArgumentError(field, f"unknown scope value {value}")
    return scope


def watch_request(msg: pb.WatchMonitorRequest) -> MonitorFilter:
    """The watcher's filter; its rules (names, the floor, the buffer size) are rules.check_watch."""
    check_watch_count(len(msg.directions))  # before converting them
    return MonitorFilter(
        directions=tuple(msg.directions),
        min_score=msg.min_score if msg.HasField("min_score") else None,
        alerts_only=msg.alerts_only,
        buffer=msg.buffer_size if msg.HasField("buffer_size") else DEFAULT_BUFFER,
    )


def direction_name(name: str, field: str = "name") -> str:
    return validate_direction_name(name, field)


def tokenize_text(text: str, bounds: Bounds) -> str:
    check_text_size(len(text), bounds.limits, "text")
    return text


def put_direction(msg: pb.PutDirectionRequest, bounds: Bounds) -> Direction:
    """The uploaded direction, checked against the model's shape (nothing is half-stored on failure)."""
    if sum(map(bool, (msg.vectors, msg.safetensors, msg.file))) != 1:
        raise InvalidArgumentError("vectors", "set exactly one of vectors, safetensors and file")
    monitor_layer = msg.monitor_layer if msg.HasField("monitor_layer") else None
    if monitor_layer is not None:
        _layer(monitor_layer, "monitor_layer", bounds)
    if (msg.format or msg.numbering or msg.sae_config or msg.HasField("feature")) and not msg.file:
        raise InvalidArgumentError("file", "format, numbering, feature and sae_config describe `file`: set it")
    if msg.safetensors:
        direction = direction_from_bytes(msg.safetensors, msg.name or None, bounds.num_layers, monitor_layer)
        direction = direction.validate(bounds.num_layers, bounds.hidden_size, field_name="safetensors")
    elif msg.file:
        direction = load_direction_file(
            msg.file,
            msg.name or None,
            format=msg.format or "auto",
            num_layers=bounds.num_layers,
            layer=monitor_layer,
            feature=msg.feature if msg.HasField("feature") else None,
            numbering=msg.numbering or None,
            sae_config=msg.sae_config or None,
            field="file",
        )
        direction = direction.validate(bounds.num_layers, bounds.hidden_size, field_name="file")
    else:
        direction = _direction_from_vectors(msg, monitor_layer, bounds)
    validate_direction_name(direction.name, "name")
    if msg.HasField("removal"):
        mode = _MODES.get(msg.removal.mode)
        if mode is None:
            raise InvalidArgumentError("removal.mode", "must be ABLATE, ADD or CLAMP")
        positions = _POSITIONS.get(msg.removal.positions)
        if positions is None:
            raise InvalidArgumentError("removal.positions", f"unknown positions value {msg.removal.positions}")
        if len(msg.removal.layers) > bounds.num_layers:
            raise InvalidArgumentError("removal.layers", f"{len(msg.removal.layers)} layers for a model of "
                                       f"{bounds.num_layers}")
        removal = Removal(mode, msg.removal.strength, positions, tuple(msg.removal.layers)).validate("removal")
        direction = replace(direction, removal=removal)
        if (why := direction.removal_refusal()) is not None:
            raise InvalidArgumentError("removal.layers", why)
    return replace(direction, description=msg.description) if msg.description else direction


def _direction_from_vectors(msg: pb.PutDirectionRequest, monitor_layer: int | None, bounds: Bounds) -> Direction:
    validate_direction_name(msg.name, "name")
    vectors: dict[int, torch.Tensor] = {}
    for i, lv in enumerate(msg.vectors):
        where = f"vectors[{i}]"
        if not lv.HasField("layer"):
            raise InvalidArgumentError(f"{where}.layer", "is required")
        layer = _layer(lv.layer, f"{where}.layer", bounds)
        if layer in vectors:
            raise InvalidArgumentError(f"{where}.layer", f"layer {layer} appears twice")
        if len(lv.values) != bounds.hidden_size:
            raise InvalidArgumentError(
                f"{where}.values", f"has {len(lv.values)} values; the model's hidden size is {bounds.hidden_size}"
            )
        vec = torch.tensor(list(lv.values), dtype=torch.float32)  # (hidden,)
        if not bool(torch.isfinite(vec).all()):
            raise InvalidArgumentError(f"{where}.values", "has NaN or infinite values")
        if float(vec.norm()) < 1e-8:
            raise InvalidArgumentError(f"{where}.values", "is all zeros (no direction)")
        vectors[layer] = vec
    if monitor_layer is None:
        if len(vectors) > 1:
            raise InvalidArgumentError("monitor_layer", "is required when vectors has several layers")
        monitor_layer = next(iter(vectors))
    elif monitor_layer not in vectors:
        raise InvalidArgumentError("monitor_layer", f"layer {monitor_layer} has no vector (layers {sorted(vectors)})")
    calibration = {}
    for pooling, cal in msg.calibration.items():
        where = f"calibration[{pooling!r}]"
        if pooling not in POOLINGS:
            raise InvalidArgumentError(where, f"unknown pooling (use {', '.join(POOLINGS)})")
        if not (math.isfinite(cal.mu) and math.isfinite(cal.sigma) and cal.sigma > 0):
            raise InvalidArgumentError(where, "needs finite mu and sigma > 0")
        calibration[pooling] = Calibration(
            mu=cal.mu,
            sigma=cal.sigma,
            n=cal.n,
            threshold=cal.threshold if cal.HasField("threshold") else None,
            target_fpr=cal.target_fpr if cal.HasField("target_fpr") else None,
        )
    return Direction(
        name=msg.name, vectors=vectors, monitor_layer=monitor_layer, calibration=calibration, method="upload"
    )


def _prompt(msg: pb.GenerateRequest | pb.CompareRequest | pb.ScoreRequest, bounds: Bounds) -> Prompt:
    given = [name for name in ("prompt", "messages", "prompt_token_ids") if getattr(msg, name)]
    if len(given) > 1:
        raise InvalidArgumentError(given[1], f"set only one of prompt, messages and prompt_token_ids (got {given})")
    if msg.messages:
        if len(msg.messages) > MAX_CHAT_MESSAGES:
            raise InvalidArgumentError("messages", f"at most {MAX_CHAT_MESSAGES} messages")
        return Prompt(messages=tuple(ChatMessage(role=m.role, content=m.content) for m in msg.messages))
    if msg.prompt_token_ids:
        return Prompt(token_ids=tuple(msg.prompt_token_ids))
    return Prompt(text=msg.prompt or None)


def _sampling(msg: pb.SamplingParams, bounds: Bounds) -> SamplingParams:
    limit = bounds.limits.max_new_tokens
    return SamplingParams(
        max_new_tokens=msg.max_new_tokens if msg.HasField("max_new_tokens") else min(DEFAULT_MAX_NEW_TOKENS, limit),
        temperature=msg.temperature,
        top_p=msg.top_p if msg.HasField("top_p") else 1.0,
        top_k=msg.top_k,
        seed=msg.seed if msg.HasField("seed") else secrets.randbits(63),  # echoed in the response
        stop=tuple(msg.stop),
    )


def _steering(terms: Sequence[pb.SteeringTerm], field: str) -> tuple[SteeringTerm, ...]:
    if len(terms) > MAX_TERMS:  # before converting them; the engine counts the policy's terms too
        raise InvalidArgumentError(field, f"at most {MAX_TERMS} steering terms (the server policy's included)")
    return tuple(_term(t, f"{field}[{i}]") for i, t in enumerate(terms))


def _term(term: pb.SteeringTerm, field: str) -> SteeringTerm:
    mode = _MODES.get(term.mode)
    if mode is None:
        raise InvalidArgumentError(f"{field}.mode", "must be ABLATE, ADD or CLAMP")
    strength = term.strength if term.HasField("strength") else 1.0
    positions = _POSITIONS.get(term.positions)
    if positions is None:
        raise InvalidArgumentError(f"{field}.positions", f"unknown positions value {term.positions}")
    condition = None
    if term.HasField("condition"):
        c = term.condition
        condition = SteeringCondition(c.direction, c.threshold, _scope(c.scope, f"{field}.condition.scope"))
    return SteeringTerm(direction=term.direction, mode=mode, strength=strength, layers=tuple(term.layers),
                        positions=positions, condition=condition)


def _monitor(msg: pb.MonitorOptions) -> MonitorOptions:
    return MonitorOptions(
        directions=tuple(msg.directions),
        enabled=not msg.disabled,
        token_scores=msg.token_scores,
        stop_threshold=msg.stop_threshold if msg.HasField("stop_threshold") else None,
    )


def _layer(layer: int, field: str, bounds: Bounds) -> int:
    if not 0 <= layer < bounds.num_layers:
        raise InvalidArgumentError(field, f"layer {layer} is outside 0..{bounds.num_layers - 1}")
    return layer
