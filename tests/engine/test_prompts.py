"""render_prompt and validate_sampling: every bad input is an InvalidArgumentError naming its field."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from steering_server.errors import InvalidArgumentError
from steering_server.prompts import render_prompt
from steering_server.rules import MAX_STOP_SEQUENCES
from steering_server.rules import check_sampling as validate_sampling
from steering_server.tiny_models import byte_tokenizer
from steering_server.types import ChatMessage, EngineLimits, Prompt, SamplingParams

VOCAB = 262
LIMITS = EngineLimits(max_new_tokens=100)


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def _bytes(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


# ---------------------------------------------------------------- render_prompt


def test_text_prompt(tok) -> None:
    assert render_prompt(tok, Prompt(text="héllo"), VOCAB) == tok.encode("héllo", add_special_tokens=True)
    assert tok.decode(render_prompt(tok, Prompt(text="héllo"), VOCAB)) == "héllo"


def test_token_ids_pass_through(tok) -> None:
    assert render_prompt(tok, Prompt(token_ids=(0, 5, VOCAB - 1)), VOCAB) == [0, 5, VOCAB - 1]


def test_messages_go_through_the_chat_template(tok) -> None:
    msgs = (ChatMessage("system", "Be kind."), ChatMessage("user", "hi ✓"))
    ids = render_prompt(tok, Prompt(messages=msgs), VOCAB)
    special = tok.convert_tokens_to_ids
    want = [special("<|system|>"), *_bytes(tok, "Be kind."), tok.eos_token_id,
            special("<|user|>"), *_bytes(tok, "hi ✓"), tok.eos_token_id, special("<|assistant|>")]  # fmt: skip
    assert ids == want


def test_messages_without_a_chat_template_are_refused() -> None:
    tok = byte_tokenizer()
    tok.chat_template = None
    with pytest.raises(InvalidArgumentError) as e:
        render_prompt(tok, Prompt(messages=(ChatMessage("user", "hi"),)), VOCAB)
    assert e.value.field == "messages"


# Errors name the API's fields (prompt, messages, prompt_token_ids), whichever engine reports them.
@pytest.mark.parametrize(
    ("prompt", "field"),
    [
        (Prompt(), "prompt"),
        (Prompt(text=""), "prompt"),
        (Prompt(text="a", token_ids=(1,)), "prompt_token_ids"),
        (Prompt(text="a", messages=(ChatMessage("user", "b"),)), "messages"),
        (Prompt(messages=(ChatMessage("user", "b"),), token_ids=(1,)), "prompt_token_ids"),
        (Prompt(token_ids=(1, VOCAB)), "prompt_token_ids[1]"),
        (Prompt(token_ids=(-1,)), "prompt_token_ids[0]"),
        (Prompt(messages=(ChatMessage("user", "a"), ChatMessage("tool", "b"))), "messages[1].role"),
        (Prompt(messages=(ChatMessage("", "a"),)), "messages[0].role"),
        (Prompt(messages=(ChatMessage("user", ""),) * 1025), "messages"),
        (Prompt(token_ids=(1,) * 5000), "prompt_token_ids"),
        (Prompt(text="x" * 64 * 4096 + "x"), "prompt"),
    ],
)
def test_bad_prompts(tok, prompt: Prompt, field: str) -> None:
    with pytest.raises(InvalidArgumentError) as e:
        render_prompt(tok, prompt, VOCAB)
    assert e.value.field == field


def test_field_prefix_is_used(tok) -> None:
    with pytest.raises(InvalidArgumentError) as e:
        render_prompt(tok, Prompt(token_ids=(VOCAB + 5,)), VOCAB, prefix="variants[2].")
    assert e.value.field == "variants[2].prompt_token_ids[0]"


# ---------------------------------------------------------------- validate_sampling


def test_good_sampling_is_returned_unchanged() -> None:
    s = SamplingParams(max_new_tokens=100, temperature=0.7, top_p=1.0, top_k=40, seed=2**64 - 1,
                       stop=tuple(f"s{i}" for i in range(MAX_STOP_SEQUENCES)))  # fmt: skip
    assert validate_sampling(s, LIMITS) is s
    assert validate_sampling(SamplingParams(max_new_tokens=1, temperature=0.0, seed=-(2**63)), LIMITS)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": -3}, "max_new_tokens"),
        ({"max_new_tokens": LIMITS.max_new_tokens + 1}, "max_new_tokens"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 1e9}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.0001}, "top_p"),
        ({"top_p": math.nan}, "top_p"),
        ({"top_p": -0.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"seed": 2**64}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"stop": tuple(f"s{i}" for i in range(MAX_STOP_SEQUENCES + 1))}, "stop"),
        ({"stop": ("ok", "")}, "stop[1]"),
        ({"stop": ("x" * 257,)}, "stop[0]"),
    ],
)
def test_bad_sampling(change: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgumentError) as e:
        validate_sampling(replace(SamplingParams(), **change), LIMITS)  # type: ignore[arg-type]
    assert e.value.field == f"sampling.{field}"
    with pytest.raises(InvalidArgumentError) as e:
        validate_sampling(replace(SamplingParams(), **change), LIMITS, field_prefix="variants[1].")  # type: ignore[arg-type]
    assert e.value.field == f"variants[1].sampling.{field}"
