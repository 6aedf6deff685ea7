"""Load the served model: a Hugging Face hub id or a local directory, or the built-in default."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .layers import resolve_layers

__all__ = ["BUILTIN_MODEL_ID", "LoadedModel", "default_device", "default_dtype", "load_model", "wrap_model"]

log = logging.getLogger(__name__)
BUILTIN_MODEL_ID = "steering-server/builtin"
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: Any
    model_id: str
    layers: nn.ModuleList  # decoder blocks; layer l of DESIGN.md's numbering is layers[l]'s output
    layer_path: str

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def _parse_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if dtype is None:
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} (one of {sorted(_DTYPES)})")
    return _DTYPES[dtype]


def load_model(
    model: str | None = None, device: str | None = None, dtype: str | torch.dtype | None = None
) -> LoadedModel:
    """`model`: a local directory or a hub id (downloaded by transformers when the machine can reach the hub);
    None loads the built-in default (the shipped model organism, or a tiny seeded model if it is absent)."""
    device = device or default_device()
    torch_dtype = _parse_dtype(dtype, device)
    if model is None:
        model_dir = _builtin_dir()
        if model_dir is None:
            from .tiny_models import byte_tokenizer, tiny_model

            log.info("built-in model: tiny seeded Llama (no organism assets found)")
            model_obj = tiny_model("llama").to(device, torch_dtype)  # type: ignore[arg-type]
            return wrap_model(model_obj, byte_tokenizer(), BUILTIN_MODEL_ID)
        model = str(model_dir)
    local = Path(model).expanduser()
    source = str(local) if local.is_dir() else model
    if not local.is_dir() and (local.is_absolute() or model.startswith((".", "~"))):
        raise FileNotFoundError(f"model directory {model!r} does not exist")
    hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(source)
    model_id = getattr(hf_model.config, "_name_or_path", "") or source
    hf_model = hf_model.to(device)  # type: ignore[arg-type]
    return wrap_model(hf_model.eval(), tokenizer, _model_id(source, model_id))


def wrap_model(model: PreTrainedModel, tokenizer: Any, model_id: str) -> LoadedModel:
    path, layers = resolve_layers(model)
    return LoadedModel(model=model.eval(), tokenizer=tokenizer, model_id=model_id, layers=layers, layer_path=path)


def _model_id(source: str, fallback: str) -> str:
    p = Path(source)
    if p.is_dir():
        meta = p / "steering_model_id.txt"  # written next to shipped models to keep a stable id
        return meta.read_text().strip() if meta.is_file() else p.resolve().name
    return fallback


def _builtin_dir() -> Path | None:
    try:
        from .organism.assets import default_model_dir
    except ImportError:
        return None
    d = default_model_dir()
    return d if (d / "config.json").is_file() else None
