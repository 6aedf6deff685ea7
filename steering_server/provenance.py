"""Fingerprints of a model's config and tokenizer, recorded in direction files to catch cross-model mix-ups."""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["config_hash", "tokenizer_hash"]

# Keys that change with how a model was saved or loaded, not with what it computes.
# `architectures` is None on a model built from a config and set by save_pretrained, so the same weights would hash
# differently before and after a save.
_VOLATILE = {
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "_attn_implementation",
    "_attn_implementation_autoset",
    "attn_implementation",
    "_commit_hash",
    "use_cache",
    "architectures",
}


def config_hash(config: Any) -> str:
    d = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tokenizer_hash(tokenizer: Any) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    payload = json.dumps([vocab, getattr(tokenizer, "chat_template", None) or ""], default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
