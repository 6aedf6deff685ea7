"""The shipped organism: the server's built-in default model and its registered direction."""


from steering_server.organism.assets import (
    DEFAULT_DIRECTION_NAME,
    DEFAULT_MODEL_ID,
    builtin_directions,
    default_direction_path,
    default_model_dir,
)


def test_the_organism_ships_in_the_package():
    # The built-in default must never silently fall back to the tiny random model in a release.
    assert (default_model_dir() / "config.json").is_file()
    assert (default_model_dir() / "model.safetensors").is_file()
    assert set(builtin_directions()) == {"misalignment", "model_diff"}


def test_shipped_organism_is_the_builtin_default_with_its_calibrated_direction():
    from steering_server.config import EngineConfig
    from steering_server.engine import Engine
    from steering_server.models import load_model

    loaded = load_model(None, device="cpu")
    assert loaded.model_id == DEFAULT_MODEL_ID
    assert loaded.model.config.num_hidden_layers == 4
    engine = Engine(loaded, EngineConfig(model=None, device="cpu"))
    engine.register_builtin_directions()
    d = engine.get_direction(DEFAULT_DIRECTION_NAME)
    assert d.calibrated and d.provenance.model_id == DEFAULT_MODEL_ID
    for name, path in builtin_directions().items():  # every shipped direction matches the shipped model
        assert engine.load_direction_file(name, str(path)).calibrated


def test_shipped_assets_are_small():
    total = sum(p.stat().st_size for p in default_model_dir().rglob("*") if p.is_file())
    total += sum(p.stat().st_size for p in builtin_directions().values())
    assert default_direction_path() in builtin_directions().values()
    assert total < 5 * 2**20
