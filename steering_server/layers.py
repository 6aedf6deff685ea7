"""Find the decoder blocks of a causal LM: the ModuleList whose length is num_hidden_layers."""

from __future__ import annotations

from torch import nn

__all__ = ["SUPPORTED_ARCHITECTURES", "resolve_layers"]

# Architectures with a steering test in tests/test_layers.py; others are resolved the same way when they can be.
SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "mistral", "gemma", "gpt2")

# Known paths first (cheap, unambiguous), then a search for the one ModuleList of the right length.
_KNOWN_PATHS = ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers", "transformer.layers")


def resolve_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return (dotted path, decoder ModuleList). Layer l of the project's numbering is the output of element l."""
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    n = getattr(text_config, "num_hidden_layers", None) or getattr(text_config, "n_layer", None)
    if not isinstance(n, int) or n <= 0:
        raise ValueError("model config has no num_hidden_layers")
    for path in _KNOWN_PATHS:
        mod = _get(model, path)
        if isinstance(mod, nn.ModuleList) and len(mod) == n:
            return path, mod
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if len(found) != 1:
        names = [name for name, _ in found]
        raise ValueError(f"cannot find the decoder layers: {len(found)} ModuleLists of length {n} ({names[:4]})")
    return found[0]


def _get(model: nn.Module, path: str) -> nn.Module | None:
    mod: nn.Module | None = model
    for part in path.split("."):
        mod = getattr(mod, part, None)
        if mod is None:
            return None
    return mod
