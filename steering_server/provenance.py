"""Fingerprints of a model's config and tokenizer, recorded in direction files to catch cross-model mix-ups."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from .directions import Direction
from .errors import InvalidArgumentError

__all__ = ["check_provenance", "config_hash", "tokenizer_hash"]

log = logging.getLogger(__name__)

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


def check_provenance(
    direction: Direction, model_config_hash: str, model_tokenizer_hash: str, strict: bool
) -> Direction:
    """A direction recorded for another model loads uncalibrated with a warning, or is refused when `strict`."""
    prov = direction.provenance
    mismatch = [
        k
        for k, mine in (("config_hash", model_config_hash), ("tokenizer_hash", model_tokenizer_hash))
        if getattr(prov, k) and getattr(prov, k) != mine
    ]
    if not mismatch:
        return direction
    msg = (
        f"direction {direction.name!r} was made for another model ({prov.model_id or 'unknown'}; "
        f"{', '.join(mismatch)} differ)"
    )
    if strict:
        raise InvalidArgumentError("direction.provenance", msg + "; refused under --strict")
    log.warning("%s: loaded uncalibrated", msg)
    return direction.uncalibrated()
