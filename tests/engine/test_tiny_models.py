"""Tiny seeded models and the byte tokenizer: reproducible, no download, one token per byte."""

from __future__ import annotations

import pytest
import torch

from steering_server.tiny_models import CHAT_TEMPLATE, byte_tokenizer, tiny_config, tiny_model


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_same_seed_same_weights_other_seed_other_weights(arch: str) -> None:
    a, b, c = tiny_model(arch, seed=3), tiny_model(arch, seed=3), tiny_model(arch, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert not a.training


def test_building_a_model_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    tiny_model("llama")
    assert torch.equal(torch.rand(3), want)


def test_config_sizes() -> None:
    c = tiny_config("qwen2", hidden=32, layers=3)
    assert (c.model_type, c.hidden_size, c.num_hidden_layers, c.vocab_size) == ("qwen2", 32, 3, 262)
    g = tiny_config("gpt2", hidden=32, layers=2)
    assert (g.model_type, g.n_embd, g.num_hidden_layers) == ("gpt2", 32, 2)


def test_byte_tokenizer_is_one_token_per_byte_and_round_trips() -> None:
    tok = byte_tokenizer()
    text = "héllo ✓ 日本語 🎉\n\ttabs"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert len(tok) <= tiny_config().vocab_size  # every id fits the tiny models' embedding
    assert max(ids) < tiny_config().vocab_size


def test_byte_tokenizer_specials_and_chat_template() -> None:
    tok = byte_tokenizer()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.chat_template == CHAT_TEMPLATE
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert ids == "<|user|>hi</s><|assistant|>"
    encoded = tok.encode(ids, add_special_tokens=False)
    assert encoded == [
        tok.convert_tokens_to_ids("<|user|>"),
        *tok.encode("hi", add_special_tokens=False),
        2,
        tok.convert_tokens_to_ids("<|assistant|>"),
    ]
