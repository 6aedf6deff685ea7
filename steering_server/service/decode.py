"""Protobuf requests -> the engine's plain types, validating what the message itself shows.

Checked here: which input is set, numbers finite and in range, enums known, names safe, sizes against the
server's limits, layers inside the model. Errors name the request field (`sampling.temperature: ...`). What needs
the engine's state (a direction exists, covers a layer, the policy allows a request) is checked by the engine.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from steering_client import pb

from ..direction_files import direction_from_bytes
from ..directions import POOLINGS, Calibration, Direction, validate_direction_name
from ..errors import InvalidArgumentError, ResourceExhaustedError
from ..types import (
    ChatMessage,
    CompareRequest,
    EngineLimits,
    GenerationRequest,
    MonitorOptions,
    Prompt,
    SamplingParams,
    ScoreRequest,
    SteeringMode,
    SteeringPolicy,
    SteeringTerm,
    Variant,
)

__all__ = [
    "MAX_ABS_STRENGTH",
    "Bounds",
    "compare_request",
    "direction_name",
    "generate_request",
    "put_direction",
    "score_request",
    "steering_policy",
    "tokenize_text",
]

MAX_ABS_STRENGTH = 1000.0  # far beyond any useful steering; larger values only produce NaNs
MAX_TEMPERATURE = 100.0
MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 256
MAX_TERMS = 64
# A text prompt longer than this many characters per allowed token cannot fit; refused before tokenizing it.
MAX_CHARS_PER_TOKEN = 64
CHAT_ROLES = ("system", "user", "assistant")
DEFAULT_MAX_NEW_TOKENS = 64
_MODES = {pb.ABLATE: SteeringMode.ABLATE, pb.ADD: SteeringMode.ADD, pb.CLAMP: SteeringMode.CLAMP}


@dataclass(frozen=True)
class Bounds:
    """What validation needs to know about the served model and the server's limits."""

    limits: EngineLimits
    num_layers: int
    hidden_size: int
    vocab_size: int


def generate_request(msg: pb.GenerateRequest, bounds: Bounds) -> GenerationRequest:
    return GenerationRequest(
        prompt=_prompt(msg, bounds),
        sampling=_sampling(msg.sampling, bounds),
        steering=_steering(msg.steering, "steering", bounds),
        monitor=_monitor(msg.monitor, "monitor") if msg.HasField("monitor") else MonitorOptions(),
        ignore_policy=msg.ignore_policy,
    )


def compare_request(msg: pb.CompareRequest, bounds: Bounds) -> CompareRequest:
    if len(msg.variants) > bounds.limits.max_variants:
        raise InvalidArgumentError(
            "variants", f"at most {bounds.limits.max_variants} variants are allowed (got {len(msg.variants)})"
        )
    seen: set[str] = set()
    variants = []
    for i, v in enumerate(msg.variants):
        if not v.name or len(v.name) > 64:
            raise InvalidArgumentError(f"variants[{i}].name", "must be 1 to 64 characters")
        if v.name in seen:
            raise InvalidArgumentError(f"variants[{i}].name", f"{v.name!r} is used twice")
        seen.add(v.name)
        variants.append(Variant(v.name, _steering(v.steering, f"variants[{i}].steering", bounds)))
    return CompareRequest(
        prompt=_prompt(msg, bounds),
        sampling=_sampling(msg.sampling, bounds),
        variants=tuple(variants),
        monitor=_monitor(msg.monitor, "monitor") if msg.HasField("monitor") else MonitorOptions(),
    )


def score_request(msg: pb.ScoreRequest, bounds: Bounds) -> ScoreRequest:
    if msg.response and msg.response_token_ids:
        raise InvalidArgumentError("response", "set at most one of response and response_token_ids")
    return ScoreRequest(
        prompt=_prompt(msg, bounds),
        response_text=msg.response or None,
        response_token_ids=_token_ids(msg.response_token_ids, "response_token_ids", bounds),
        steering=_steering(msg.steering, "steering", bounds),
        # Unset: every direction, with per-token scores (what Score is usually asked for).
        monitor=_monitor(msg.monitor, "monitor") if msg.HasField("monitor") else MonitorOptions(token_scores=True),
        ignore_policy=msg.ignore_policy,
    )


def steering_policy(msg: pb.SteeringPolicy, bounds: Bounds, field: str = "policy") -> SteeringPolicy:
    return SteeringPolicy(terms=_steering(msg.terms, f"{field}.terms", bounds), enforced=msg.enforced)


def direction_name(name: str, field: str = "name") -> str:
    return validate_direction_name(name, field)


def tokenize_text(text: str, bounds: Bounds) -> str:
    if len(text) > bounds.limits.max_prompt_tokens * MAX_CHARS_PER_TOKEN:
        raise ResourceExhaustedError(f"text: {len(text)} characters is more than this server tokenizes at once")
    return text


def put_direction(msg: pb.PutDirectionRequest, bounds: Bounds) -> Direction:
    """The uploaded direction, checked against the model's shape (nothing is half-stored on failure)."""
    if bool(msg.vectors) == bool(msg.safetensors):
        raise InvalidArgumentError("vectors", "set exactly one of vectors and safetensors")
    monitor_layer = msg.monitor_layer if msg.HasField("monitor_layer") else None
    if monitor_layer is not None:
        _layer(monitor_layer, "monitor_layer", bounds)
    if msg.safetensors:
        direction = direction_from_bytes(msg.safetensors, msg.name or None, bounds.num_layers, monitor_layer)
        direction = direction.validate(bounds.num_layers, bounds.hidden_size, field_name="safetensors")
    else:
        direction = _direction_from_vectors(msg, monitor_layer, bounds)
    validate_direction_name(direction.name, "name")
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
    if not given:
        raise InvalidArgumentError("prompt", "is empty: set prompt, messages or prompt_token_ids")
    if len(given) > 1:
        raise InvalidArgumentError(given[1], f"set only one of prompt, messages and prompt_token_ids (got {given})")
    max_chars = bounds.limits.max_prompt_tokens * MAX_CHARS_PER_TOKEN
    if msg.prompt:
        if len(msg.prompt) > max_chars:
            raise ResourceExhaustedError(
                f"prompt: {len(msg.prompt)} characters cannot fit in max_prompt_tokens "
                f"({bounds.limits.max_prompt_tokens} tokens)"
            )
        return Prompt(text=msg.prompt)
    if msg.messages:
        messages = []
        for i, m in enumerate(msg.messages):
            if m.role not in CHAT_ROLES:
                raise InvalidArgumentError(f"messages[{i}].role", f"{m.role[:32]!r} is not one of {CHAT_ROLES}")
            messages.append(ChatMessage(role=m.role, content=m.content))
        if sum(len(m.content) for m in messages) > max_chars:
            raise ResourceExhaustedError(
                f"messages: too long for max_prompt_tokens ({bounds.limits.max_prompt_tokens} tokens)"
            )
        return Prompt(messages=tuple(messages))
    if len(msg.prompt_token_ids) > bounds.limits.max_prompt_tokens:
        raise ResourceExhaustedError(
            f"prompt_token_ids: {len(msg.prompt_token_ids)} tokens exceed max_prompt_tokens "
            f"({bounds.limits.max_prompt_tokens})"
        )
    return Prompt(token_ids=_token_ids(msg.prompt_token_ids, "prompt_token_ids", bounds))


def _token_ids(ids: Sequence[int], field: str, bounds: Bounds) -> tuple[int, ...]:
    for i, token in enumerate(ids):
        if token >= bounds.vocab_size:
            raise InvalidArgumentError(
                f"{field}[{i}]", f"token id {token} is outside the vocabulary (size {bounds.vocab_size})"
            )
    return tuple(ids)


def _sampling(msg: pb.SamplingParams, bounds: Bounds) -> SamplingParams:
    limit = bounds.limits.max_new_tokens
    max_new = msg.max_new_tokens if msg.HasField("max_new_tokens") else min(DEFAULT_MAX_NEW_TOKENS, limit)
    if not 1 <= max_new <= limit:
        raise InvalidArgumentError("sampling.max_new_tokens", f"must be between 1 and {limit} (the server limit)")
    if not (math.isfinite(msg.temperature) and 0 <= msg.temperature <= MAX_TEMPERATURE):
        raise InvalidArgumentError("sampling.temperature", f"must be finite, >= 0 and <= {MAX_TEMPERATURE:g}")
    top_p = msg.top_p if msg.HasField("top_p") else 1.0
    if not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise InvalidArgumentError("sampling.top_p", "must be in (0, 1]")
    seed = msg.seed if msg.HasField("seed") else secrets.randbits(63)  # echoed in the response
    if len(msg.stop) > MAX_STOP_SEQUENCES:
        raise InvalidArgumentError("sampling.stop", f"at most {MAX_STOP_SEQUENCES} stop sequences")
    for i, s in enumerate(msg.stop):
        if not 1 <= len(s) <= MAX_STOP_CHARS:
            raise InvalidArgumentError(f"sampling.stop[{i}]", f"must be 1 to {MAX_STOP_CHARS} characters")
    return SamplingParams(
        max_new_tokens=max_new,
        temperature=msg.temperature,
        top_p=top_p,
        top_k=msg.top_k,
        seed=seed,
        stop=tuple(msg.stop),
    )


def _steering(terms: Sequence[pb.SteeringTerm], field: str, bounds: Bounds) -> tuple[SteeringTerm, ...]:
    if len(terms) > MAX_TERMS:
        raise InvalidArgumentError(field, f"at most {MAX_TERMS} steering terms")
    return tuple(_term(t, f"{field}[{i}]", bounds) for i, t in enumerate(terms))


def _term(term: pb.SteeringTerm, field: str, bounds: Bounds) -> SteeringTerm:
    validate_direction_name(term.direction, f"{field}.direction")
    mode = _MODES.get(term.mode)
    if mode is None:
        raise InvalidArgumentError(f"{field}.mode", "must be ABLATE, ADD or CLAMP")
    strength = term.strength if term.HasField("strength") else 1.0
    if not (math.isfinite(strength) and abs(strength) <= MAX_ABS_STRENGTH):
        raise InvalidArgumentError(f"{field}.strength", f"must be finite with |strength| <= {MAX_ABS_STRENGTH:g}")
    layers: list[int] = []
    for i, layer in enumerate(term.layers):
        _layer(layer, f"{field}.layers[{i}]", bounds)
        if layer in layers:
            raise InvalidArgumentError(f"{field}.layers[{i}]", f"layer {layer} appears twice")
        layers.append(layer)
    return SteeringTerm(direction=term.direction, mode=mode, strength=strength, layers=tuple(layers))


def _monitor(msg: pb.MonitorOptions, field: str) -> MonitorOptions:
    for i, name in enumerate(msg.directions):
        validate_direction_name(name, f"{field}.directions[{i}]")
    if msg.disabled and msg.directions:
        raise InvalidArgumentError(f"{field}.directions", "must be empty when monitoring is disabled")
    threshold = msg.stop_threshold if msg.HasField("stop_threshold") else None
    if threshold is not None and not math.isfinite(threshold):
        raise InvalidArgumentError(f"{field}.stop_threshold", "must be finite")
    return MonitorOptions(
        directions=tuple(msg.directions),
        enabled=not msg.disabled,
        token_scores=msg.token_scores,
        stop_threshold=threshold,
    )


def _layer(layer: int, field: str, bounds: Bounds) -> int:
    if not 0 <= layer < bounds.num_layers:
        raise InvalidArgumentError(field, f"layer {layer} is outside 0..{bounds.num_layers - 1}")
    return layer
