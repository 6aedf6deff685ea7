"""Request rules: every limit and check on a request's plain fields, in one place, for every engine.

The service decodes only what the protobuf alone shows (which fields are set, enum values, defaults); everything
else is checked here (sizes, ranges, names, the shape of a prompt, Compare's variants) or, where it needs the
registry, in planning.py (steering terms, monitored directions) and composition.py (policy and the red-team rule).
Both the real engine and the service tests' fake engine call these functions, so they cannot drift apart.
Every error is an InvalidArgumentError naming the request field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .directions import validate_direction_name
from .errors import InvalidArgumentError
from .monitor_feed import MAX_BUFFER, MonitorFilter
from .types import EngineLimits, MonitorOptions, Prompt, SamplingParams, ScoreRequest, Variant

__all__ = [
    "CHAT_ROLES",
    "MAX_CHARS_PER_TOKEN",
    "MAX_CHAT_MESSAGES",
    "MAX_STOP_CHARS",
    "MAX_STOP_SEQUENCES",
    "MAX_TEMPERATURE",
    "MAX_VARIANT_NAME",
    "MAX_WATCH_DIRECTIONS",
    "check_monitor",
    "check_prompt",
    "check_sampling",
    "check_score_response",
    "check_text_size",
    "check_variants",
    "check_watch",
    "check_watch_count",
]

MAX_TEMPERATURE = 100.0
MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 256
MAX_VARIANT_NAME = 64
MAX_WATCH_DIRECTIONS = 64
# A prompt longer than this many characters per allowed token cannot fit: refused before it is tokenized.
MAX_CHARS_PER_TOKEN = 64
# Far more turns than any context holds; 500k empty messages took 20 s to render (issue 8, finding 4).
MAX_CHAT_MESSAGES = 1024
CHAT_ROLES = ("system", "user", "assistant")


def check_text_size(n_chars: int, limits: EngineLimits, field: str) -> None:
    """Text that cannot fit in max_prompt_tokens whatever the tokenizer does (checked before tokenizing)."""
    limit = limits.max_prompt_tokens * MAX_CHARS_PER_TOKEN
    if n_chars > limit:
        raise InvalidArgumentError(
            field, f"{n_chars} characters cannot fit in max_prompt_tokens ({limits.max_prompt_tokens} tokens)"
        )


def check_prompt(prompt: Prompt, limits: EngineLimits, vocab_size: int, prefix: str = "") -> None:
    """Exactly one of text, messages or token_ids; sizes within the limits; roles and token ids valid. Errors name
    the API's fields (`prompt`, `messages[i].role`, `prompt_token_ids[i]`) after `prefix`."""
    given = [
        name
        for name, v in (("prompt", prompt.text), ("messages", prompt.messages), ("prompt_token_ids", prompt.token_ids))
        if v
    ]
    if len(given) != 1:
        what = "is empty: set" if not given else f"sets {' and '.join(given)}: set only"
        raise InvalidArgumentError(f"{prefix}{given[1] if given else 'prompt'}",
                                   f"{what} one of prompt, messages and prompt_token_ids")
    if prompt.token_ids:
        f = f"{prefix}prompt_token_ids"
        if len(prompt.token_ids) > limits.max_prompt_tokens:
            raise InvalidArgumentError(
                f, f"{len(prompt.token_ids)} tokens exceed max_prompt_tokens ({limits.max_prompt_tokens})"
            )
        for i, t in enumerate(prompt.token_ids):
            if not 0 <= t < vocab_size:
                raise InvalidArgumentError(f"{f}[{i}]", f"token id {t} is outside 0..{vocab_size - 1}")
    elif prompt.messages:
        f = f"{prefix}messages"
        if len(prompt.messages) > MAX_CHAT_MESSAGES:
            raise InvalidArgumentError(f, f"at most {MAX_CHAT_MESSAGES} messages")
        for i, m in enumerate(prompt.messages):
            if m.role not in CHAT_ROLES:
                raise InvalidArgumentError(f"{f}[{i}].role", f"role {m.role[:40]!r} is not one of {CHAT_ROLES}")
        check_text_size(sum(len(m.content) for m in prompt.messages), limits, f)
    else:
        check_text_size(len(prompt.text or ""), limits, f"{prefix}prompt")


def check_sampling(s: SamplingParams, limits: EngineLimits, field_prefix: str = "") -> SamplingParams:
    f = f"{field_prefix}sampling"
    if not 1 <= s.max_new_tokens <= limits.max_new_tokens:
        raise InvalidArgumentError(
            f"{f}.max_new_tokens", f"must be in 1..{limits.max_new_tokens}, got {s.max_new_tokens}"
        )
    if not (math.isfinite(s.temperature) and 0 <= s.temperature <= MAX_TEMPERATURE):
        raise InvalidArgumentError(f"{f}.temperature", f"must be finite and in 0..{MAX_TEMPERATURE:g} (0 is greedy)")
    if not (math.isfinite(s.top_p) and 0 < s.top_p <= 1):
        raise InvalidArgumentError(f"{f}.top_p", "must be in (0, 1]")
    if s.top_k < 0:
        raise InvalidArgumentError(f"{f}.top_k", "must be >= 0 (0 disables top-k)")
    if not -(2**63) <= s.seed < 2**64:
        raise InvalidArgumentError(f"{f}.seed", "must fit in 64 bits")
    if len(s.stop) > MAX_STOP_SEQUENCES:
        raise InvalidArgumentError(f"{f}.stop", f"at most {MAX_STOP_SEQUENCES} stop sequences")
    for i, stop in enumerate(s.stop):
        if not stop or len(stop) > MAX_STOP_CHARS:
            raise InvalidArgumentError(f"{f}.stop[{i}]", f"must be 1..{MAX_STOP_CHARS} characters")
    return s


def check_monitor(m: MonitorOptions, field_prefix: str = "") -> None:
    f = f"{field_prefix}monitor"
    seen: set[str] = set()  # a set: 100k names took 134 s on the event loop with a list scan per name
    for i, name in enumerate(m.directions):
        validate_direction_name(name, f"{f}.directions[{i}]")
        if name in seen:
            raise InvalidArgumentError(f"{f}.directions[{i}]", f"{name!r} appears twice")
        seen.add(name)
    if not m.enabled and m.directions:
        raise InvalidArgumentError(f"{f}.directions", "must be empty when monitoring is disabled")
    if m.stop_threshold is not None and not math.isfinite(m.stop_threshold):
        raise InvalidArgumentError(f"{f}.stop_threshold", "must be finite")


def check_variants(variants: Sequence[Variant], limits: EngineLimits) -> None:
    if len(variants) > limits.max_variants:
        raise InvalidArgumentError(
            "variants", f"at most {limits.max_variants} variants are allowed (got {len(variants)})"
        )
    seen: set[str] = set()
    for i, v in enumerate(variants):
        if not 1 <= len(v.name) <= MAX_VARIANT_NAME:
            raise InvalidArgumentError(f"variants[{i}].name", f"must be 1 to {MAX_VARIANT_NAME} characters")
        if v.name in seen:
            raise InvalidArgumentError(f"variants[{i}].name", f"{v.name!r} is used twice")
        seen.add(v.name)


def check_score_response(request: ScoreRequest, vocab_size: int) -> None:
    if request.response_text is not None and request.response_token_ids:
        raise InvalidArgumentError("response", "set at most one of response and response_token_ids")
    for i, t in enumerate(request.response_token_ids):
        if not 0 <= t < vocab_size:
            raise InvalidArgumentError(f"response_token_ids[{i}]", f"token id {t} is outside 0..{vocab_size - 1}")


def check_watch_count(count: int) -> None:
    """At most MAX_WATCH_DIRECTIONS watched directions: the front ends check the count before they convert the names
    (a huge list costs nothing to refuse), and check_watch again on the filter they built."""
    if count > MAX_WATCH_DIRECTIONS:
        raise InvalidArgumentError("directions", f"at most {MAX_WATCH_DIRECTIONS} directions")


def check_watch(f: MonitorFilter) -> MonitorFilter:
    """A WatchMonitor filter: direction names (registered or not: a watcher may wait for one), a finite floor, a
    buffer of 1 to MAX_BUFFER events."""
    check_watch_count(len(f.directions))
    for i, name in enumerate(f.directions):
        validate_direction_name(name, f"directions[{i}]")
    if f.min_score is not None and not math.isfinite(f.min_score):
        raise InvalidArgumentError("min_score", "must be finite")
    if not 1 <= f.buffer <= MAX_BUFFER:
        raise InvalidArgumentError("buffer_size", f"must be in 1..{MAX_BUFFER}")
    return f
