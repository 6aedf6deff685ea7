"""Tiny models and a byte-level tokenizer built in code from a fixed seed: no download ever.

Used by the tests (one per supported architecture) and as the fallback built-in model.
"""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

__all__ = ["CHAT_TEMPLATE", "byte_tokenizer", "tiny_config", "tiny_model"]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_SPECIALS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per byte (so multi-byte UTF-8 characters span several tokens) plus chat specials."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(_SPECIALS)}
    vocab.update({ch: len(_SPECIALS) + i for i, ch in enumerate(alphabet)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(_SPECIALS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=4096
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(arch: str = "llama", vocab_size: int = 262, hidden: int = 64, layers: int = 4) -> Any:
    """A small config of `arch` (llama, qwen2, mistral, gemma, gpt2) sized for 2 CPU cores."""
    common: dict[str, Any] = {"vocab_size": vocab_size, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if arch == "gpt2":
        return AutoConfig.for_model("gpt2", n_embd=hidden, n_layer=layers, n_head=4, n_positions=2048, **common)
    extra: dict[str, Any] = {}
    if arch == "gemma":
        extra = {"head_dim": hidden // 4}
    return AutoConfig.for_model(
        arch,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        **extra,
        **common,
    )


def tiny_model(arch: str = "llama", seed: int = 0, **kwargs: Any) -> PreTrainedModel:
    """Random weights from `seed`; hidden states are scaled up (std 1 embeddings) so steering has visible effects."""
    config = tiny_config(arch, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
        # Default init (std 0.02) gives near-uniform logits; a larger spread makes greedy text less degenerate.
        for p in model.parameters():
            if p.ndim >= 2:
                torch.nn.init.normal_(p, std=0.3 / p.shape[-1] ** 0.5 * 4)
    return model.eval()
