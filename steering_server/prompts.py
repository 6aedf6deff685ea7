"""Prompt rendering and sampling validation: request fields in, token ids and checked parameters out."""

from __future__ import annotations

import math
from typing import Any

from .errors import InvalidArgumentError
from .types import EngineLimits, Prompt, SamplingParams

__all__ = ["MAX_STOP_SEQUENCES", "render_prompt", "validate_sampling"]

MAX_STOP_SEQUENCES = 16
_MAX_STOP_CHARS = 256
_ROLES = ("system", "user", "assistant")


def render_prompt(tokenizer: Any, prompt: Prompt, vocab_size: int, field: str = "prompt") -> list[int]:
    """Exactly one of text, messages (through the model's chat template) or token_ids."""
    given = [
        name for name, v in (("text", prompt.text), ("messages", prompt.messages), ("token_ids", prompt.token_ids)) if v
    ]
    if len(given) != 1:
        what = "is empty" if not given else f"sets {' and '.join(given)}"
        raise InvalidArgumentError(field, f"{what}: give exactly one of text, messages or token_ids")
    if prompt.token_ids:
        ids = list(prompt.token_ids)
        for i, t in enumerate(ids):
            if not 0 <= t < vocab_size:
                raise InvalidArgumentError(f"{field}.token_ids[{i}]", f"token id {t} is outside 0..{vocab_size - 1}")
        return ids
    if prompt.messages:
        for i, m in enumerate(prompt.messages):
            if m.role not in _ROLES:
                raise InvalidArgumentError(
                    f"{field}.messages[{i}].role", f"role {m.role[:40]!r} is not one of {_ROLES}"
                )
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidArgumentError(f"{field}.messages", "the model has no chat template; send text instead")
        rendered = tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in prompt.messages],
            add_generation_prompt=True,
            tokenize=False,
        )
        ids = tokenizer.encode(rendered, add_special_tokens=False)
    else:
        ids = tokenizer.encode(prompt.text, add_special_tokens=True)
    if not ids:
        raise InvalidArgumentError(field, "renders to no tokens")
    return list(ids)


def validate_sampling(s: SamplingParams, limits: EngineLimits, field_prefix: str = "") -> SamplingParams:
    f = f"{field_prefix}sampling"
    if not 1 <= s.max_new_tokens <= limits.max_new_tokens:
        raise InvalidArgumentError(
            f"{f}.max_new_tokens", f"must be in 1..{limits.max_new_tokens}, got {s.max_new_tokens}"
        )
    if not (math.isfinite(s.temperature) and 0 <= s.temperature <= 100):
        raise InvalidArgumentError(f"{f}.temperature", "must be finite and in 0..100 (0 is greedy)")
    if not (math.isfinite(s.top_p) and 0 < s.top_p <= 1):
        raise InvalidArgumentError(f"{f}.top_p", "must be in (0, 1]")
    if s.top_k < 0:
        raise InvalidArgumentError(f"{f}.top_k", "must be >= 0 (0 disables top-k)")
    if not -(2**63) <= s.seed < 2**64:
        raise InvalidArgumentError(f"{f}.seed", "must fit in 64 bits")
    if len(s.stop) > MAX_STOP_SEQUENCES:
        raise InvalidArgumentError(f"{f}.stop", f"at most {MAX_STOP_SEQUENCES} stop sequences")
    for i, stop in enumerate(s.stop):
        if not stop or len(stop) > _MAX_STOP_CHARS:
            raise InvalidArgumentError(f"{f}.stop[{i}]", f"must be 1..{_MAX_STOP_CHARS} characters")
    return s
