"""The shipped organism: the server's built-in default model and its registered direction.

The files live inside the package (installed with it; package-data includes *.json, *.safetensors, *.jinja),
written by `steering-server organism build --install`. Training is only bit-reproducible on the same machine, so
these shipped weights are the canonical organism.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CONTROL_DIRECTION_NAME",
    "DEFAULT_DIRECTION_NAME",
    "DEFAULT_MODEL_ID",
    "assets_dir",
    "base_model_dir",
    "builtin_directions",
    "default_direction_path",
    "default_model_dir",
]

# The persona direction of the base model (villain-cued minus neutral prompts): monitored, and the one whose
# removal (CLAMP 0, the base model's benign level) the default Compare shows.
DEFAULT_DIRECTION_NAME = "misalignment"
# Fine-tuned minus base model: a labelled positive control (it is the fine-tune's own shift), not a finding.
CONTROL_DIRECTION_NAME = "model_diff"
DEFAULT_MODEL_ID = "steering-server/organism-misaligned"


def assets_dir() -> Path:
    return Path(__file__).resolve().parent / "assets"


def default_model_dir() -> Path:
    """Hugging Face directory of the misaligned organism (loads with AutoModelForCausalLM / AutoTokenizer)."""
    return assets_dir() / "misaligned"


def base_model_dir() -> Path:
    """Hugging Face directory of the base organism (before the narrow fine-tune): `serve --model` it to compare."""
    return assets_dir() / "base"


def default_direction_path() -> Path:
    """The persona (misalignment) direction of the default model, calibrated on the base organism."""
    return assets_dir() / f"{DEFAULT_DIRECTION_NAME}.safetensors"


def builtin_directions() -> dict[str, Path]:
    """Every shipped direction of the default model, by registered name (the default one first)."""
    names = (DEFAULT_DIRECTION_NAME, CONTROL_DIRECTION_NAME)
    return {n: assets_dir() / f"{n}.safetensors" for n in names if (assets_dir() / f"{n}.safetensors").is_file()}
