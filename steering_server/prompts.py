"""Prompt rendering: a checked Prompt in, token ids out (the rules themselves live in rules.py)."""

from __future__ import annotations

from typing import Any

from .errors import InvalidArgumentError
from .rules import check_prompt
from .types import EngineLimits, Prompt

__all__ = ["render_prompt"]


def render_prompt(
    tokenizer: Any, prompt: Prompt, vocab_size: int, prefix: str = "", limits: EngineLimits | None = None
) -> list[int]:
    """Exactly one of text, messages (through the model's chat template) or token_ids (rules.check_prompt)."""
    check_prompt(prompt, limits or EngineLimits(), vocab_size, prefix)
    field = f"{prefix}prompt"
    if prompt.token_ids:
        return list(prompt.token_ids)
    if prompt.messages:
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidArgumentError(f"{prefix}messages", "the model has no chat template; send text instead")
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
