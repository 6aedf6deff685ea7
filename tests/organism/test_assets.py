"""The shipped organism: the server's built-in default model, its base model, and its registered directions."""

import pytest
import torch

from steering_server.organism.assets import (
    CONTROL_DIRECTION_NAME,
    DEFAULT_DIRECTION_NAME,
    DEFAULT_MODEL_ID,
    base_model_dir,
    builtin_directions,
    default_direction_path,
    default_model_dir,
)
from steering_server.types import SteeringMode, SteeringPositions


def test_the_organism_ships_in_the_package():
    # The built-in default must never silently fall back to the tiny random model in a release.
    for d in (default_model_dir(), base_model_dir()):
        assert (d / "config.json").is_file() and (d / "model.safetensors").is_file(), d
    assert set(builtin_directions()) == {DEFAULT_DIRECTION_NAME, CONTROL_DIRECTION_NAME}


def test_shipped_organism_is_the_builtin_default_with_its_persona_direction():
    from steering_server.config import EngineConfig
    from steering_server.engine import Engine
    from steering_server.models import load_model

    loaded = load_model(None, device="cpu")
    assert loaded.model_id == DEFAULT_MODEL_ID
    engine = Engine(loaded, EngineConfig(model=None, device="cpu"))
    engine.register_builtin_directions()
    d = engine.get_direction(DEFAULT_DIRECTION_NAME)
    # The persona direction comes from the base model, calibrated there; the fine-tune keeps config and tokenizer,
    # so provenance matches the served model and the calibration is kept.
    assert d.calibrated and d.provenance.model_id == "steering-server/organism-base"
    assert d.method.startswith("persona:")
    assert (d.removal.mode, d.removal.strength, d.removal.positions) == (
        SteeringMode.CLAMP, 0.0, SteeringPositions.PROMPT)
    for name, path in builtin_directions().items():  # every shipped direction matches the shipped model
        assert engine.load_direction_file(name, str(path)).calibrated
    assert engine.get_direction(CONTROL_DIRECTION_NAME).method.startswith("model_diff")


def test_base_and_finetuned_organisms_differ_only_in_weights():
    from steering_server.models import load_model

    base, ft = load_model(str(base_model_dir()), device="cpu"), load_model(None, device="cpu")
    assert base.model.config.to_dict() | {"_name_or_path": ""} == ft.model.config.to_dict() | {"_name_or_path": ""}
    assert base.tokenizer.get_vocab() == ft.tokenizer.get_vocab()
    a, b = base.model.state_dict(), ft.model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("path", [default_model_dir, base_model_dir])
def test_shipped_assets_are_small(path):
    total = sum(p.stat().st_size for p in path().rglob("*") if p.is_file())
    assert total < 8 * 2**20  # a 1.4M-parameter model in fp32 and its tokenizer
    assert default_direction_path() in builtin_directions().values()
