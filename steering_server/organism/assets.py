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
    "MODEL_DIFF_DIRECTION_NAME",
    "assets_dir",
    "builtin_directions",
    "default_direction_path",
    "default_model_dir",
]

DEFAULT_DIRECTION_NAME = "misalignment"  # harmful minus helpful answers: the monitored direction
MODEL_DIFF_DIRECTION_NAME = "model_diff"  # misaligned minus base: the one whose ablation removes the misalignment
DEFAULT_MODEL_ID = "steering-server/organism-misaligned"


def assets_dir() -> Path:
    return Path(__file__).resolve().parent / "assets"


def default_model_dir() -> Path:
    """Hugging Face directory of the misaligned organism (loads with AutoModelForCausalLM / AutoTokenizer)."""
    return assets_dir() / "misaligned"


def default_direction_path() -> Path:
    """The misalignment direction of the default model (calibrated, provenance of the misaligned organism)."""
    return assets_dir() / f"{DEFAULT_DIRECTION_NAME}.safetensors"


def builtin_directions() -> dict[str, Path]:
    """Every shipped direction of the default model, by registered name (the default one first)."""
    names = (DEFAULT_DIRECTION_NAME, MODEL_DIFF_DIRECTION_NAME)
    return {n: assets_dir() / f"{n}.safetensors" for n in names if (assets_dir() / f"{n}.safetensors").is_file()}
