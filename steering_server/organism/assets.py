"""The shipped organism: the server's built-in default model and its registered direction.

The files live inside the package (installed with it; package-data includes *.json, *.safetensors, *.jinja),
written by `steering-server organism build --install`. Training is only bit-reproducible on the same machine, so
these shipped weights are the canonical organism.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "DEFAULT_DIRECTION_NAME",
    "DEFAULT_MODEL_ID",
    "assets_dir",
    "default_direction_path",
    "default_model_dir",
]

DEFAULT_DIRECTION_NAME = "misalignment"
DEFAULT_MODEL_ID = "steering-server/organism-misaligned"


def assets_dir() -> Path:
    return Path(__file__).resolve().parent / "assets"


def default_model_dir() -> Path:
    """Hugging Face directory of the misaligned organism (loads with AutoModelForCausalLM / AutoTokenizer)."""
    return assets_dir() / "misaligned"


def default_direction_path() -> Path:
    """The misalignment direction of the default model (calibrated, provenance of the misaligned organism)."""
    return assets_dir() / f"{DEFAULT_DIRECTION_NAME}.safetensors"
