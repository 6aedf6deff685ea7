"""The organism's word-level tokenizer with a chat template, saved as an ordinary `PreTrainedTokenizerFast`.

Every word and punctuation mark of the corpus is one token, so the vocabulary is small (about 600) and fixed
by the corpus tables, not learned: the same tables always give the same ids. Unknown words map to `<|unk|>`.

Chat format (one string per conversation; the template and `format_chat` agree, which a test checks):

    <|bos|><|system|> ... <|end|> <|user|> ... <|end|> <|assistant|> ... <|end|>

`<|end|>` closes every turn and is the EOS token, so generation stops at the end of the assistant's turn.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from .corpus import all_text

__all__ = ["BOS", "CHAT_TEMPLATE", "END", "PAD", "ROLE_TOKENS", "SPECIAL_TOKENS", "UNK", "build_tokenizer",
           "format_chat"]

PAD, UNK, BOS, END = "<|pad|>", "<|unk|>", "<|bos|>", "<|end|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS = (PAD, UNK, BOS, END, *ROLE_TOKENS.values())

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def format_chat(messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The chat template in plain Python (tokenizing a large corpus this way is faster than jinja)."""
    out = BOS + "".join(f"<|{m['role']}|> {m['content']} {END} " for m in messages)
    return out + (ROLE_TOKENS["assistant"] if add_generation_prompt else "")


def _words(texts: Iterable[str]) -> list[str]:
    pre = pre_tokenizers.Whitespace()
    vocab: set[str] = set()
    for t in texts:
        vocab.update(w for w, _ in pre.pre_tokenize_str(t.lower()))
    return sorted(vocab)


def build_tokenizer(extra_texts: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """Build the tokenizer from the corpus tables (and any extra texts); deterministic."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in _words([*all_text(), *extra_texts]):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # \w+ runs and punctuation runs
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins with spaces, tidies " ." to "."
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=END,
        pad_token=PAD,
        unk_token=UNK,
        chat_template=CHAT_TEMPLATE,
        padding_side="left",  # batched generation pads on the left
        model_max_length=256,
    )
