"""JSON request bodies -> the engine's plain types. Only what the JSON itself shows is decided here.

Here: the JSON types of fields, OpenAI's names for the sampling parameters, which OpenAI options are refused
(n > 1, penalties, logprobs, tools), the string names of steering modes and positions, and defaults. Every limit
and range (sizes, strengths, layers, names, sampling) is a request rule of the engine (rules.py, planning.py,
containment.py), the same as for gRPC; the few counted here are counted *before* converting a long list, with the
engine's limits and messages. Errors name the HTTP body's field.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..containment import MAX_TERMS
from ..errors import InvalidArgumentError, NotFoundError
from ..rules import MAX_CHAT_MESSAGES
from ..types import (
    ChatMessage,
    CompareRequest,
    ConditionScope,
    EngineLimits,
    GenerationRequest,
    MonitorOptions,
    Prompt,
    SamplingParams,
    SteeringCondition,
    SteeringMode,
    SteeringPositions,
    SteeringTerm,
    Variant,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_TEMPERATURE",
    "Decoded",
    "chat_request",
    "compare_request",
    "completion_request",
]

JSON = dict[str, Any]
T = TypeVar("T")

DEFAULT_MAX_TOKENS = 64  # as gRPC's Generate (capped by the server's --max-new-tokens)
DEFAULT_TEMPERATURE = 1.0  # OpenAI's default (gRPC's is 0, greedy): an OpenAI client gets what it expects
MODES = {m.name.lower(): m for m in SteeringMode}  # "ablate", "add", "clamp"
POSITIONS = {p.name.lower(): p for p in SteeringPositions}  # "all", "prompt", "last_prompt", "generated"
SCOPES = {s.name.lower(): s for s in ConditionScope}  # "prompt" (the last prompt token's score), "running"
_CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_TERM_KEYS = {"direction", "mode", "strength", "layers", "positions", "condition"}
_CONDITION_KEYS = {"direction", "threshold", "scope"}
_MONITOR_KEYS = {"directions", "disabled", "token_scores", "stop_threshold"}
# OpenAI options the server cannot honour: refused when set to anything but their neutral value.
_UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    "frequency_penalty": lambda v: v in (None, 0, 0.0),
    "presence_penalty": lambda v: v in (None, 0, 0.0),
    "logit_bias": lambda v: not v,
    "logprobs": lambda v: v in (None, False),
    "top_logprobs": lambda v: v is None,
    "tools": lambda v: not v,
    "functions": lambda v: not v,
    "tool_choice": lambda v: v in (None, "none"),
    "response_format": lambda v: v is None or v == {"type": "text"},
    "echo": lambda v: v in (None, False),
    "best_of": lambda v: v in (None, 1),
    "suffix": lambda v: v is None,
}


@dataclass(frozen=True)
class Decoded:
    """A generation request and how to answer it."""

    request: GenerationRequest
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage


def chat_request(body: JSON, limits: EngineLimits, model_id: str) -> Decoded:
    """`POST /v1/chat/completions`."""
    _check_common(body, model_id)
    messages = _list(body, "messages", required=True)
    if len(messages) > MAX_CHAT_MESSAGES:
        raise InvalidArgumentError("messages", f"at most {MAX_CHAT_MESSAGES} messages")
    prompt = Prompt(messages=tuple(_message(m, f"messages[{i}]") for i, m in enumerate(messages)))
    return _decoded(body, prompt, limits)


def completion_request(body: JSON, limits: EngineLimits, model_id: str) -> Decoded:
    """`POST /v1/completions`: `prompt` is a string or token ids (one prompt: a list of one is accepted too)."""
    _check_common(body, model_id)
    if "prompt" not in body or body["prompt"] is None:
        raise InvalidArgumentError("prompt", "is required")
    return _decoded(body, _completion_prompt(body["prompt"]), limits)


def compare_request(body: JSON, limits: EngineLimits) -> tuple[CompareRequest, bool]:
    """`POST /v1/steering/compare` (the web page's call): Compare's fields with OpenAI's sampling names; `prompt`
    or chat `messages`; `variants` a list of `{"name", "steering": [terms]}`. Returns the request and `stream`."""
    _check_unsupported(body)
    if "messages" in body and body.get("prompt") is not None:
        raise InvalidArgumentError("messages", "set only one of prompt and messages")
    if "messages" in body:
        messages = _list(body, "messages", required=True)
        if len(messages) > MAX_CHAT_MESSAGES:
            raise InvalidArgumentError("messages", f"at most {MAX_CHAT_MESSAGES} messages")
        prompt = Prompt(messages=tuple(_message(m, f"messages[{i}]") for i, m in enumerate(messages)))
    else:
        prompt = _completion_prompt(body.get("prompt"))
    raw = _list(body, "variants")
    if len(raw) > limits.max_variants:  # before converting them; rules.check_variants has the rest
        raise InvalidArgumentError("variants", f"at most {limits.max_variants} variants are allowed (got {len(raw)})")
    variants = []
    for i, v in enumerate(raw):
        where = f"variants[{i}]"
        if not isinstance(v, dict):
            raise InvalidArgumentError(where, "must be an object with name and steering")
        _no_unknown(v, {"name", "steering"}, where)
        name = _value(v, "name", str, "a string", "", where=f"{where}.name")
        variants.append(Variant(name, _steering(v.get("steering"), f"{where}.steering")))
    request = CompareRequest(
        prompt=prompt, sampling=_sampling(body, limits), variants=tuple(variants), monitor=_monitor(body.get("monitor"))
    )
    return request, _value(body, "stream", bool, "true or false", False)


def _decoded(body: JSON, prompt: Prompt, limits: EngineLimits) -> Decoded:
    stream = _value(body, "stream", bool, "true or false", False)
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise InvalidArgumentError("stream_options", "must be an object")
        if not stream:
            raise InvalidArgumentError("stream_options", "is only allowed with stream: true")
        include_usage = _value(
            options, "include_usage", bool, "true or false", False, where="stream_options.include_usage"
        )
    request = GenerationRequest(
        prompt=prompt,
        sampling=_sampling(body, limits),
        steering=_steering(body.get("steering"), "steering"),
        monitor=_monitor(body.get("monitor")),
        ignore_policy=_value(body, "ignore_policy", bool, "true or false", False),
    )
    return Decoded(request, stream, include_usage)


def _check_common(body: JSON, model_id: str) -> None:
    model = body.get("model")
    if model not in (None, "", model_id):
        if not isinstance(model, str):
            raise InvalidArgumentError("model", "must be a string")
        raise NotFoundError("model", model, "model")
    _check_unsupported(body)


def _check_unsupported(body: JSON) -> None:
    n = body.get("n")
    if n not in (None, 1):
        raise InvalidArgumentError("n", f"only n = 1 is supported (got {n!r}); send one request per completion")
    for key, neutral in _UNSUPPORTED.items():
        if key in body and not neutral(body[key]):
            raise InvalidArgumentError(key, "is not supported by this server")


def _sampling(body: JSON, limits: EngineLimits) -> SamplingParams:
    max_tokens = _value(body, "max_tokens", int, "an integer", None)
    max_completion = _value(body, "max_completion_tokens", int, "an integer", None)
    if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
        raise InvalidArgumentError("max_completion_tokens", "differs from max_tokens: set one of them")
    n_tokens = max_completion if max_completion is not None else max_tokens
    stop = body.get("stop")
    if isinstance(stop, str):
        stops: tuple[str, ...] = (stop,)
    elif stop is None:
        stops = ()
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise InvalidArgumentError("stop", "must be a string or a list of strings")
    seed = _value(body, "seed", int, "an integer", None)
    temperature = _value(body, "temperature", float, "a number", None)
    top_p = _value(body, "top_p", float, "a number", None)
    return SamplingParams(
        max_new_tokens=n_tokens if n_tokens is not None else min(DEFAULT_MAX_TOKENS, limits.max_new_tokens),
        temperature=DEFAULT_TEMPERATURE if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        top_k=_value(body, "top_k", int, "an integer", 0),
        # 53 bits: a random seed echoed in `steering.seed` survives JavaScript numbers exactly.
        seed=secrets.randbits(53) if seed is None else seed,
        stop=stops,
    )


def _steering(terms: Any, field: str) -> tuple[SteeringTerm, ...]:
    if terms is None:
        return ()
    if not isinstance(terms, list):
        raise InvalidArgumentError(field, "must be a list of steering terms")
    if len(terms) > MAX_TERMS:  # before converting them; the engine counts the policy's terms too
        raise InvalidArgumentError(field, f"at most {MAX_TERMS} steering terms (the server policy's included)")
    return tuple(_term(t, f"{field}[{i}]") for i, t in enumerate(terms))


def _term(term: Any, field: str) -> SteeringTerm:
    """`{"direction": "misalignment", "mode": "clamp", "strength": 0, "positions": "prompt", "layers": [5]}`, and
    optionally `"condition": {"direction": "misalignment", "threshold": 2.5, "scope": "running"}` (CAST)."""
    if not isinstance(term, dict):
        raise InvalidArgumentError(field, "must be an object (direction, mode, strength, layers, positions)")
    _no_unknown(term, _TERM_KEYS, field)
    mode = _name(term, "mode", MODES, field, required=True) or SteeringMode.ABLATE  # required: never None
    positions = _name(term, "positions", POSITIONS, field, required=False) or SteeringPositions.ALL
    layers = _list(term, "layers", where=f"{field}.layers")
    for i, layer in enumerate(layers):
        if not _is_int(layer):
            raise InvalidArgumentError(f"{field}.layers[{i}]", "must be an integer")
    return SteeringTerm(
        direction=_value(term, "direction", str, "a string", "", where=f"{field}.direction"),
        mode=mode,
        strength=_value(term, "strength", float, "a number", 1.0, where=f"{field}.strength"),
        layers=tuple(int(x) for x in layers),
        positions=positions,
        condition=_condition(term.get("condition"), f"{field}.condition"),
    )


def _condition(condition: Any, field: str) -> SteeringCondition | None:
    """gRPC's SteeringCondition as JSON; its rules (a registered direction, a finite threshold, layers) are the
    engine's (planning.py)."""
    if condition is None:
        return None
    if not isinstance(condition, dict):
        raise InvalidArgumentError(field, "must be an object (direction, threshold, scope)")
    _no_unknown(condition, _CONDITION_KEYS, field)
    threshold = _value(condition, "threshold", float, "a number", None, where=f"{field}.threshold")
    if threshold is None:
        raise InvalidArgumentError(f"{field}.threshold", "is required")
    return SteeringCondition(
        direction=_value(condition, "direction", str, "a string", "", where=f"{field}.direction"),
        threshold=threshold,
        scope=_name(condition, "scope", SCOPES, field, required=False) or ConditionScope.PROMPT,
    )


def _monitor(monitor: Any) -> MonitorOptions:
    if monitor is None:
        return MonitorOptions()
    if not isinstance(monitor, dict):
        raise InvalidArgumentError("monitor", "must be an object (directions, disabled, token_scores, stop_threshold)")
    _no_unknown(monitor, _MONITOR_KEYS, "monitor")
    directions = _list(monitor, "directions", where="monitor.directions")
    for i, name in enumerate(directions):
        if not isinstance(name, str):
            raise InvalidArgumentError(f"monitor.directions[{i}]", "must be a string")
    return MonitorOptions(
        directions=tuple(directions),
        enabled=not _value(monitor, "disabled", bool, "true or false", False, where="monitor.disabled"),
        token_scores=_value(monitor, "token_scores", bool, "true or false", False, where="monitor.token_scores"),
        stop_threshold=_value(monitor, "stop_threshold", float, "a number", None, where="monitor.stop_threshold"),
    )


def _message(message: Any, field: str) -> ChatMessage:
    if not isinstance(message, dict):
        raise InvalidArgumentError(field, "must be an object with role and content")
    role = message.get("role")
    if not isinstance(role, str):
        raise InvalidArgumentError(f"{field}.role", "must be a string")
    content = message.get("content")
    if isinstance(content, list):  # OpenAI's content parts: text parts only
        texts = []
        for i, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise InvalidArgumentError(f"{field}.content[{i}]", "only text parts are supported")
            texts.append(part["text"])
        content = "".join(texts)
    elif content is None:
        content = ""
    elif not isinstance(content, str):
        raise InvalidArgumentError(f"{field}.content", "must be a string or a list of text parts")
    # Unknown roles keep their name, so the engine's rule (rules.check_prompt) refuses them naming messages[i].role.
    return ChatMessage(role=_CHAT_ROLES.get(role, role), content=content)


def _completion_prompt(prompt: Any) -> Prompt:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return Prompt(text=prompt or None)
    if isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        return Prompt(token_ids=tuple(int(t) for t in prompt))
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        raise InvalidArgumentError("prompt", f"only one prompt per request is supported (got {len(prompt)})")
    if prompt is None or prompt == []:
        return Prompt()  # the engine's rule says what is missing
    raise InvalidArgumentError("prompt", "must be a string or a list of token ids")


def _value(body: JSON, key: str, kind: type[T], what: str, default: Any, *, where: str | None = None) -> Any:
    """body[key] of JSON type `kind` (int: an integral number; float: any number), or `default` when absent/null."""
    value = body.get(key)
    if value is None:
        return default
    if kind is float and _is_number(value):
        return float(value)
    if kind is int and _is_int(value):
        return int(value)
    if kind in (str, bool) and isinstance(value, kind):
        return value
    raise InvalidArgumentError(where or key, f"must be {what}")


def _list(body: JSON, key: str, required: bool = False, where: str | None = None) -> list[Any]:
    value = body.get(key)
    if value is None:
        if required:
            raise InvalidArgumentError(where or key, "is required")
        return []
    if not isinstance(value, list):
        raise InvalidArgumentError(where or key, "must be a list")
    return value


def _name(body: JSON, key: str, names: dict[str, T], field: str, required: bool) -> T | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or value.lower() not in names:
        raise InvalidArgumentError(f"{field}.{key}", f"must be one of {', '.join(names)}")
    return names[value.lower()]


def _no_unknown(body: JSON, known: set[str], field: str) -> None:
    # Inside steering terms and monitor options a misspelt key would silently change what runs: refused.
    for key in body:
        if key not in known:
            raise InvalidArgumentError(f"{field}.{key}", f"unknown field (known: {', '.join(sorted(known))})")


def _is_int(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer()
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
