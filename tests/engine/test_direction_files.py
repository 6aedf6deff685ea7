"""Direction files (DESIGN.md "Direction files"), Direction.validate, direction names and provenance hashes."""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save
from transformers import AutoConfig, AutoTokenizer

from steering_server.direction_files import (
    _read_metadata,
    direction_from_bytes,
    direction_to_bytes,
    load_direction,
    save_direction,
)
from steering_server.directions import (
    POOLINGS,
    Calibration,
    Direction,
    Provenance,
    Removal,
    validate_direction_name,
)
from steering_server.errors import InvalidArgumentError
from steering_server.provenance import config_hash, tokenizer_hash
from steering_server.tiny_models import byte_tokenizer, tiny_config, tiny_model
from steering_server.types import SteeringMode, SteeringPositions

N_LAYERS, HIDDEN = 4, 16


def _vec(seed: int, hidden: int = HIDDEN) -> torch.Tensor:
    return torch.randn(hidden, generator=torch.Generator().manual_seed(seed))


def _full_direction(name: str = "toxic_persona") -> Direction:
    cal = {
        "token": Calibration(mu=0.25, sigma=1.5, threshold=3.0, target_fpr=0.01, n=1000),
        "response_mean": Calibration(mu=-0.5, sigma=0.4, threshold=2.5, target_fpr=0.05, n=120),
        "last_prompt": Calibration(mu=1.0, sigma=2.0, n=60),
    }
    return Direction(
        name=name,
        vectors={1: _vec(1), 3: _vec(3)},  # a subset of the model's layers
        monitor_layer=3,
        calibration=cal,
        provenance=Provenance("org/model-7b", "0123456789abcdef", "fedcba9876543210"),
        method="diff_of_means:answers",
        n_examples=240,
        created_at="2025-06-01T12:00:00+00:00",
        description="harmful minus helpful answers",
    )


def _assert_same(a: Direction, b: Direction) -> None:
    assert a.layers == b.layers
    for layer in a.layers:
        assert torch.equal(a.vectors[layer], b.vectors[layer])
    for f in (
        "name",
        "monitor_layer",
        "calibration",
        "provenance",
        "method",
        "n_examples",
        "created_at",
        "description",
        "layer_calibration",
        "removal",
    ):
        assert getattr(a, f) == getattr(b, f), f


def _field(exc: pytest.ExceptionInfo[InvalidArgumentError]) -> str:
    return exc.value.field


# ---------------------------------------------------------------- safetensors


def test_safetensors_round_trip_keeps_everything(tmp_path: Path) -> None:
    d = _full_direction()
    path = tmp_path / "some_file.safetensors"
    save_direction(path, d)
    back = load_direction(path, num_layers=N_LAYERS)
    _assert_same(d, back)  # including the stored name, not the file's stem
    assert back.calibrated
    assert set(back.calibration) == set(POOLINGS)
    assert back.validate(N_LAYERS, HIDDEN).layers == (1, 3)


def test_bytes_round_trip_and_name_override() -> None:
    d = _full_direction()
    data = direction_to_bytes(d)
    _assert_same(d, direction_from_bytes(data))
    assert direction_from_bytes(data, name="other").name == "other"


def test_load_direction_name_argument_wins_and_stem_is_the_last_resort(tmp_path: Path) -> None:
    path = tmp_path / "stem_name.safetensors"
    save_direction(path, _full_direction())
    assert load_direction(path, name="chosen").name == "chosen"
    path.write_bytes(st_save({"direction": torch.stack([_vec(1), _vec(2)])}, metadata={"layers": "[0, 1]"}))
    assert load_direction(path).name == "stem_name"  # no stored name


def test_monitor_layer_override_drops_calibration_made_at_another_layer(tmp_path: Path) -> None:
    data = direction_to_bytes(_full_direction())
    moved = direction_from_bytes(data, monitor_layer=1)
    assert moved.monitor_layer == 1 and moved.calibration == {}
    same = direction_from_bytes(data, monitor_layer=3)
    assert same.calibration == _full_direction().calibration


def test_calibration_at_other_layers_round_trips_and_follows_a_moved_monitor_layer() -> None:
    """A removal that clamps several layers needs each layer's own benign level: the file keeps every layer's
    calibration, and a monitor layer chosen at load takes that layer's (the stored monitor layer's becomes one of
    the others)."""
    layer1 = {"token": Calibration(mu=-2.0, sigma=0.5), "last_prompt": Calibration(mu=4.0, sigma=1.0)}
    d = replace(_full_direction(), layer_calibration={1: layer1},
                removal=Removal(SteeringMode.CLAMP, 0.0, SteeringPositions.PROMPT, (1, 3)))
    back = direction_from_bytes(direction_to_bytes(d)).validate(N_LAYERS, HIDDEN)
    _assert_same(d, back)
    assert back.clamp_refusal(1, SteeringPositions.PROMPT) is None  # layer 1 has its own level
    assert back.clamp_refusal(3, SteeringPositions.ALL) is None  # the monitor layer
    assert back.calibration_at(1, "last_prompt") == layer1["last_prompt"]
    assert back.calibration_at(1, "response_mean") == layer1["token"]  # a pooling not calibrated: the per-token one
    moved = direction_from_bytes(direction_to_bytes(d), monitor_layer=1)
    assert moved.calibration == layer1 and moved.layer_calibration == {3: _full_direction().calibration}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"layer_calibration": {3: {"token": Calibration(0.0, 1.0)}}}, "direction.layer_calibration[3]"),  # monitor
        ({"layer_calibration": {2: {"token": Calibration(0.0, 1.0)}}}, "direction.layer_calibration[2]"),  # no vector
        ({"layer_calibration": {1: {"last_prompt": Calibration(0.0, 1.0)}}}, "direction.layer_calibration[1]"),
        ({"layer_calibration": {1: {"token": Calibration(0.0, -1.0)}}}, "direction.layer_calibration[1]['token']"),
        ({"removal": Removal(SteeringMode.CLAMP, 0.0, layers=(2,))}, "direction.removal.layers"),
        ({"removal": Removal(SteeringMode.CLAMP, 0.0, layers=(1, 1))}, "direction.removal.layers"),
    ],
)
def test_bad_layer_calibration_or_removal_layers_are_refused(change: dict, field: str) -> None:
    with pytest.raises(InvalidArgumentError) as e:
        replace(_full_direction(), **change).validate(N_LAYERS, HIDDEN)
    assert _field(e) == field


def test_created_at_is_filled_in_when_missing() -> None:
    d = Direction("x", {0: _vec(0)}, monitor_layer=0)
    assert direction_from_bytes(direction_to_bytes(d)).created_at != ""


def test_per_layer_tensor_form() -> None:
    data = st_save({"layer.0": _vec(10), "layer.2": _vec(12)}, metadata={"monitor_layer": "2", "name": "per_layer"})
    d = direction_from_bytes(data, num_layers=N_LAYERS)
    assert d.layers == (0, 2) and d.monitor_layer == 2 and d.name == "per_layer"
    assert torch.equal(d.vectors[0], _vec(10)) and torch.equal(d.vectors[2], _vec(12))


def test_single_unnamed_tensor_is_read_as_a_table() -> None:
    table = torch.stack([_vec(i) for i in range(N_LAYERS + 1)])
    data = st_save({"weights": table})
    d = direction_from_bytes(data, num_layers=N_LAYERS, numbering="hidden_states")
    assert d.layers == tuple(range(N_LAYERS))
    assert torch.equal(d.vectors[0], table[1])  # persona-vectors layout
    with pytest.raises(InvalidArgumentError) as e:  # n_layers + 1 rows: ambiguous without a numbering
        direction_from_bytes(data, num_layers=N_LAYERS)
    assert _field(e) == "numbering"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 4,
        b"not a safetensors file at all",
        (10**12).to_bytes(8, "little") + b"{}",
        (8).to_bytes(8, "little") + b"{broken!",
    ],
)
def test_malformed_bytes(data: bytes) -> None:
    with pytest.raises(InvalidArgumentError) as e:
        direction_from_bytes(data)
    assert _field(e) == "safetensors"


def test_truncated_file() -> None:
    data = direction_to_bytes(_full_direction())
    with pytest.raises(InvalidArgumentError) as e:
        direction_from_bytes(data[:-7])
    assert _field(e) == "safetensors"


@pytest.mark.parametrize(
    "meta",
    [
        {"layers": "not json"},
        {"layers": "3"},  # JSON, but not a list
        {"layers": '["a", "b"]'},
        {"layers": "[0, 1]", "calibration": "[1, 2]"},
        {"layers": "[0, 1]", "calibration": json.dumps({"token": {"mu": "high", "sigma": 1.0}})},
        {"layers": "[0, 1]", "calibration": json.dumps({"token": {"sigma": 1.0}})},
        {"layers": "[0, 1]", "calibration": json.dumps({"token": {"mu": 0, "sigma": 1, "colour": "red"}})},
        {"layers": "[0, 1]", "calibration": json.dumps({"token": 3})},
        {"layers": "[0, 1]", "monitor_layer": "middle"},
        {"layers": "[0, 1]", "n_examples": "many"},
        # Issue 8, finding 5: each of these was stored and then broke ListDirections, or crashed the parser.
        {"layers": "[0, 1]", "n_examples": str(1 << 32)},
        {"layers": "[0, 1]", "n_examples": "-1"},
        {"layers": "[0, 1]", "calibration": json.dumps({"token": {"mu": 0, "sigma": 1, "n": -1}})},
        {"layers": "[0, 1]", "calibration": '{"token": {"mu": 1' + "0" * 400 + ', "sigma": 1}}'},
        {"layers": "[0, 1]", "calibration": json.dumps({"token": {"mu": 0, "sigma": 1, "threshold": math.inf}})},
        {"layers": "[0, 1]", "calibration": '{"token": ' * 50_000 + "1" + "}" * 50_000},
        {"layers": "[0, 1]", "monitor_layer": str(1 << 40)},
        {"layers": "[0, 1]", "removal": json.dumps({"mode": "ABLATE", "strength": 2})},
        {"layers": "[0, 1]", "removal": json.dumps({"mode": "CLAMP", "strength": 1})},
        {"layers": "[0, 1]", "removal": json.dumps({"mode": "SCALE", "strength": 1})},
        {"layers": "[0, 1]", "removal": "ablate"},
        {"layers": "[0, 1]", "description": "x" * 5000},
    ],
)
def test_bad_metadata_is_an_invalid_argument(meta: dict[str, str]) -> None:
    """Uploads reach this parser (PutDirection): a malformed header must never surface as an internal error, and
    each field is checked on its own, named in the message."""
    data = st_save({"direction": torch.stack([_vec(1), _vec(2)])}, metadata=meta)
    with pytest.raises(InvalidArgumentError) as e:
        direction_from_bytes(data, num_layers=N_LAYERS).validate(N_LAYERS, HIDDEN)
    field = _field(e)
    assert field.startswith("safetensors") or field.startswith("direction."), field
    bad_key = [k for k in meta if k != "layers"]
    if bad_key:
        assert bad_key[0] in field, field


def test_removal_recipe_round_trips() -> None:
    d = replace(_full_direction(), removal=Removal(SteeringMode.CLAMP, 0.0, SteeringPositions.PROMPT))
    back = direction_from_bytes(direction_to_bytes(d))
    assert back.removal == Removal(SteeringMode.CLAMP, 0.0, SteeringPositions.PROMPT)
    meta = _read_metadata(direction_to_bytes(d))
    assert json.loads(meta["removal"]) == {"mode": "CLAMP", "strength": 0.0, "positions": "PROMPT"}
    # Files written before positions existed steer every position.
    old = st_save({"direction": torch.stack([_vec(1), _vec(2)])},
                  metadata={"layers": "[0, 1]", "removal": json.dumps({"mode": "CLAMP", "strength": 0})})
    assert direction_from_bytes(old).removal == Removal(SteeringMode.CLAMP, 0.0, SteeringPositions.ALL)
    bad = st_save({"direction": torch.stack([_vec(1), _vec(2)])},
                  metadata={"layers": "[0, 1]", "removal": json.dumps({"mode": "CLAMP", "positions": "SOME"})})
    with pytest.raises(InvalidArgumentError) as e:
        direction_from_bytes(bad)
    assert "removal" in _field(e)
    # Absent: the literature's recipe, ABLATE 1.
    plain = st_save({"direction": torch.stack([_vec(1), _vec(2)])}, metadata={"layers": "[0, 1]"})
    assert direction_from_bytes(plain).removal == Removal(SteeringMode.ABLATE, 1.0)


def test_table_rows_must_match_the_layers_metadata() -> None:
    data = st_save({"direction": torch.stack([_vec(1), _vec(2)])}, metadata={"layers": "[0, 1, 2]"})
    with pytest.raises(InvalidArgumentError) as e:
        direction_from_bytes(data)
    assert _field(e) == "safetensors"


def test_unrecognised_tensor_names() -> None:
    with pytest.raises(InvalidArgumentError) as e:
        direction_from_bytes(st_save({"a": _vec(1), "b": _vec(2)}))
    assert _field(e) == "safetensors"


def test_numeric_calibration_strings_are_read_as_numbers() -> None:
    meta = {"layers": "[0]", "calibration": json.dumps({"token": {"mu": "0.5", "sigma": "2", "n": "10"}})}
    d = direction_from_bytes(st_save({"direction": _vec(1)[None]}, metadata=meta))
    assert d.calibration["token"] == Calibration(mu=0.5, sigma=2.0, n=10)
    assert d.calibration["token"].z(4.5) == 2.0


# ---------------------------------------------------------------- .pt and .npy


class _Payload:
    """Unpickling this calls open(marker, "w"): a stand-in for arbitrary code in a malicious .pt file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pt_with_pickled_code_is_refused_not_executed(tmp_path: Path) -> None:
    # Control: a full unpickle of this payload does run it, so the check below is meaningful.
    control = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(_Payload(control))).close()
    assert control.exists()

    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"direction": _Payload(marker)}, path)
    with pytest.raises(InvalidArgumentError) as e:
        load_direction(path, num_layers=N_LAYERS, monitor_layer=1)
    assert _field(e) == "path"
    assert not marker.exists()


def test_pt_raw_vector_needs_a_layer(tmp_path: Path) -> None:
    path = tmp_path / "raw.pt"
    torch.save(_vec(5), path)
    d = load_direction(path, monitor_layer=2)
    assert d.layers == (2,) and d.monitor_layer == 2 and d.name == "raw"
    assert torch.equal(d.vectors[2], _vec(5))
    with pytest.raises(InvalidArgumentError) as e:
        load_direction(path, num_layers=N_LAYERS)
    assert _field(e) == "monitor_layer"


def test_pt_persona_vectors_table_maps_row_l_plus_1_to_layer_l(tmp_path: Path) -> None:
    table = torch.stack([_vec(100 + i) for i in range(N_LAYERS + 1)])  # row 0: embeddings
    path = tmp_path / "persona.pt"
    torch.save(table, path)
    d = load_direction(path, num_layers=N_LAYERS, monitor_layer=2, numbering="hidden_states")
    assert d.layers == tuple(range(N_LAYERS))
    for layer in range(N_LAYERS):
        assert torch.equal(d.vectors[layer], table[layer + 1])
    assert d.validate(N_LAYERS, HIDDEN).monitor_layer == 2


def test_pt_layer_table_and_single_entry_dict(tmp_path: Path) -> None:
    table = torch.stack([_vec(200 + i) for i in range(N_LAYERS)])
    path = tmp_path / "table.pt"
    torch.save({"vectors": table}, path)
    d = load_direction(path, num_layers=N_LAYERS)
    for layer in range(N_LAYERS):
        assert torch.equal(d.vectors[layer], table[layer])
    assert d.monitor_layer in d.layers


def test_pt_that_is_not_a_tensor(tmp_path: Path) -> None:
    path = tmp_path / "two.pt"
    torch.save({"a": _vec(1), "b": _vec(2)}, path)
    with pytest.raises(InvalidArgumentError) as e:
        load_direction(path, num_layers=N_LAYERS)
    assert _field(e) == "path"


def test_npy_persona_vectors_and_raw_vector(tmp_path: Path) -> None:
    table = np.stack([_vec(300 + i).numpy() for i in range(N_LAYERS + 1)]).astype(np.float64)
    path = tmp_path / "persona.npy"
    np.save(path, table)
    d = load_direction(path, num_layers=N_LAYERS, numbering="hidden_states")
    for layer in range(N_LAYERS):
        assert torch.equal(d.vectors[layer], torch.from_numpy(table[layer + 1]).float())
    assert d.method == "file:npy"

    raw = tmp_path / "raw.npy"
    np.save(raw, _vec(9).numpy())
    assert load_direction(raw, monitor_layer=0).layers == (0,)
    with pytest.raises(InvalidArgumentError) as e:
        load_direction(raw)
    assert _field(e) == "monitor_layer"


def test_npy_zero_rows_are_dropped_but_a_nan_row_is_refused(tmp_path: Path) -> None:
    table = np.stack([_vec(400 + i).numpy() for i in range(N_LAYERS + 1)])
    table[1] = 0  # layer 0 not covered by the file
    path = tmp_path / "partial.npy"
    np.save(path, table)
    assert load_direction(path, num_layers=N_LAYERS, numbering="hidden_states").layers == (1, 2, 3)

    table[3] = np.nan  # layer 2 corrupt: refuse the file, never load it without that layer
    np.save(path, table)
    with pytest.raises(InvalidArgumentError) as e:
        load_direction(path, num_layers=N_LAYERS, numbering="hidden_states").validate(N_LAYERS, HIDDEN)
    assert _field(e) == "direction.vectors[2]"


@pytest.mark.parametrize(
    ("arr", "kwargs"),
    [
        (np.zeros((N_LAYERS, HIDDEN), dtype=np.float32), {"num_layers": N_LAYERS}),  # every row zero
        (np.ones((N_LAYERS + 3, HIDDEN), dtype=np.float32), {"num_layers": N_LAYERS}),  # wrong row count
        (np.ones((2, 3, HIDDEN), dtype=np.float32), {"num_layers": N_LAYERS}),  # 3-D
        (np.ones((N_LAYERS, HIDDEN), dtype=np.float32), {}),  # a table without the layer count
        (np.array(["a", "b"]), {"monitor_layer": 0}),  # not numbers
        (np.array([{"a": 1}], dtype=object), {"monitor_layer": 0}),  # needs pickle: refused
    ],
)
def test_npy_bad_contents(tmp_path: Path, arr: np.ndarray, kwargs: dict[str, int]) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, arr, allow_pickle=True)
    with pytest.raises(InvalidArgumentError) as e:
        load_direction(path, **kwargs)
    assert _field(e) == "path"


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".safetensors"])
def test_garbage_files(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"\x93NUMPY garbage \x00\x01\x02" * 3)
    with pytest.raises(InvalidArgumentError) as e:
        load_direction(path, num_layers=N_LAYERS, monitor_layer=0)
    assert _field(e) == ("safetensors" if suffix == ".safetensors" else "path")


def test_missing_file_and_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError) as e:
        load_direction(tmp_path / "absent.safetensors")
    assert _field(e) == "path"
    other = tmp_path / "dir.json"
    other.write_text("[1, 2, 3]")
    with pytest.raises(InvalidArgumentError) as e:
        load_direction(other)
    assert _field(e) == "path"


# ---------------------------------------------------------------- Direction.validate


def test_validate_returns_fp32_contiguous_cpu_vectors() -> None:
    v = torch.randn(HIDDEN * 2, dtype=torch.float64)[::2]  # float64, not contiguous
    d = Direction("x", {0: v}, monitor_layer=0).validate(N_LAYERS, HIDDEN)
    assert d.vectors[0].dtype == torch.float32 and d.vectors[0].is_contiguous()
    torch.testing.assert_close(d.vectors[0], v.float())


@pytest.mark.parametrize(
    ("vectors", "monitor", "calibration", "field"),
    [
        ({0: torch.full((HIDDEN,), math.nan)}, 0, {}, "d.vectors[0]"),
        ({0: _vec(0), 1: torch.tensor([math.inf] + [0.0] * (HIDDEN - 1))}, 0, {}, "d.vectors[1]"),
        ({2: torch.zeros(HIDDEN)}, 2, {}, "d.vectors[2]"),
        ({0: _vec(0, HIDDEN + 1)}, 0, {}, "d.vectors[0]"),  # wrong width
        ({0: _vec(0)[None]}, 0, {}, "d.vectors[0]"),  # wrong shape
        ({N_LAYERS: _vec(0)}, N_LAYERS, {}, f"d.vectors[{N_LAYERS}]"),  # out of range
        ({-1: _vec(0)}, -1, {}, "d.vectors[-1]"),
        ({}, 0, {}, "d.vectors"),
        ({0: _vec(0), 1: _vec(1)}, 2, {}, "d.monitor_layer"),
        ({0: _vec(0)}, 0, {"per_sentence": Calibration(0.0, 1.0)}, "d.calibration['per_sentence']"),
        ({0: _vec(0)}, 0, {"token": Calibration(0.0, 0.0)}, "d.calibration['token']"),
        ({0: _vec(0)}, 0, {"token": Calibration(math.nan, 1.0)}, "d.calibration['token']"),
        ({0: _vec(0)}, 0, {"token": Calibration(0.0, 1.0, n=-1)}, "d.calibration['token'].n"),
        ({0: _vec(0)}, 0, {"token": Calibration(0.0, 1.0, target_fpr=2.0)}, "d.calibration['token'].target_fpr"),
    ],
)
def test_validate_refuses_and_names_the_field(
    vectors: dict[int, torch.Tensor], monitor: int, calibration: dict[str, Calibration], field: str
) -> None:
    d = Direction("x", vectors, monitor_layer=monitor, calibration=calibration)
    with pytest.raises(InvalidArgumentError) as e:
        d.validate(N_LAYERS, HIDDEN, field_name="d")
    assert _field(e) == field


def test_validate_checks_the_name() -> None:
    with pytest.raises(InvalidArgumentError) as e:
        Direction("../x", {0: _vec(0)}, monitor_layer=0).validate(N_LAYERS, HIDDEN, field_name="d")
    assert _field(e) == "d.name"


def test_wrong_width_file_is_refused_by_validate() -> None:
    d = direction_from_bytes(direction_to_bytes(_full_direction()))
    with pytest.raises(InvalidArgumentError) as e:
        d.validate(N_LAYERS, HIDDEN * 2)
    assert _field(e) == "direction.vectors[1]"


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["a", "misalignment", "toxic_persona.v2-1", "0day", "A" * 64, "x..y"])
def test_valid_names(name: str) -> None:
    assert validate_direction_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "../x",
        "..",
        ".hidden",
        "-x",
        "_x",
        "a/b",
        "a\\b",
        "has space",
        "A" * 65,
        "é",
        "日本",
        "tab\t",
        "newline\n",
        "nul\x00",
        "emoji🎉",
    ],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidArgumentError) as e:
        validate_direction_name(name, "steering[0].direction")
    assert _field(e) == "steering[0].direction"


# ---------------------------------------------------------------- provenance hashes


def test_config_hash_is_stable_across_save_and_load(tmp_path: Path) -> None:
    model = tiny_model("llama", hidden=32, layers=2)
    before = config_hash(model.config)
    model.save_pretrained(tmp_path)
    assert config_hash(AutoConfig.from_pretrained(tmp_path)) == before
    assert config_hash(model.config) == before  # save_pretrained edits the config in place


def test_config_hash_changes_with_the_architecture_of_the_model() -> None:
    base = config_hash(tiny_config("llama", hidden=64))
    assert config_hash(tiny_config("llama", hidden=64)) == base
    assert config_hash(tiny_config("llama", hidden=32)) != base
    assert config_hash(tiny_config("llama", hidden=64, layers=3)) != base
    assert config_hash(tiny_config("qwen2", hidden=64)) != base


def test_tokenizer_hash_is_stable_across_save_and_load(tmp_path: Path) -> None:
    tok = byte_tokenizer()
    before = tokenizer_hash(tok)
    tok.save_pretrained(tmp_path)
    assert tokenizer_hash(AutoTokenizer.from_pretrained(tmp_path)) == before
    other = byte_tokenizer()
    other.chat_template = "{{ messages[0]['content'] }}"
    assert tokenizer_hash(other) != before
