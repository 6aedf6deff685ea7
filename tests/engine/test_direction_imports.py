"""Direction imports (docs/directions.md "Direction files and imports"): each format read from files written the
way its tool writes them, layer numbering, SAE-Lens features, and refusals that load nothing."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import save as st_save

from steering_server.direction_files import direction_from_bytes, direction_to_bytes
from steering_server.direction_imports import detect_format, load_direction_file, split_direction_spec
from steering_server.errors import InvalidArgumentError

N_LAYERS, HIDDEN, D_SAE = 4, 16, 12


def _table(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, HIDDEN, generator=torch.Generator().manual_seed(seed))


def _field(exc: pytest.ExceptionInfo[InvalidArgumentError]) -> str:
    return exc.value.field


def write_repeng_gguf(path: Path, directions: dict[int, np.ndarray], model_hint: str = "llama") -> None:
    """What repeng's ControlVector.export_gguf writes (repeng/extract.py), with the gguf package it uses."""
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", model_hint)
    writer.add_uint32("controlvector.layer_count", len(directions))
    for layer, v in directions.items():
        writer.add_tensor(f"direction.{layer}", v)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def make_sae(
    path: Path, d_in: int, hook: str, seed: int = 0, jumprelu: bool = True, d_sae: int = D_SAE
) -> JumpReLUSAE | StandardSAE:
    """An SAE-Lens SAE with random weights, saved by SAE-Lens itself (cfg.json + sae_weights.safetensors)."""
    meta = SAEMetadata(hook_name=hook, model_name="tiny-llama")
    sae: JumpReLUSAE | StandardSAE
    if jumprelu:
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            r = torch.randn(p.shape, generator=g)
            p.copy_(r.abs() * 0.5 if name == "threshold" else r * 0.3)
    sae.save_model(path)
    return sae


# ---------------------------------------------------------------- tables and numbering


def test_persona_vectors_file_is_numbered_by_hidden_states(tmp_path: Path) -> None:
    table = _table(N_LAYERS + 1)  # what persona_vectors' generate_vec.py saves: row 0 the embeddings
    path = tmp_path / "evil_response_avg_diff.pt"
    torch.save(table, path)
    d = load_direction_file(path, num_layers=N_LAYERS)
    assert d.method == "persona-vectors" and d.name == "evil_response_avg_diff"
    assert d.layers == tuple(range(N_LAYERS))
    for layer in range(N_LAYERS):
        assert torch.equal(d.vectors[layer], table[layer + 1])
    # The same bytes under another name are ambiguous: refused until the numbering is said.
    other = tmp_path / "table.pt"
    torch.save(table, other)
    with pytest.raises(InvalidArgumentError) as e:
        load_direction_file(other, num_layers=N_LAYERS)
    assert _field(e) == "numbering" and "ambiguous" in str(e.value)
    explicit = load_direction_file(other, num_layers=N_LAYERS, numbering="hidden_states")
    assert all(torch.equal(explicit.vectors[ly], d.vectors[ly]) for ly in d.layers)
    by_format = load_direction_file(other.read_bytes(), "x", format="persona-vectors", num_layers=N_LAYERS)
    assert torch.equal(by_format.vectors[0], table[1])


@pytest.mark.parametrize(
    ("rows", "numbering", "field"),
    [
        (N_LAYERS + 1, "layers", "path"),  # one row too many for layers numbering
        (N_LAYERS, "hidden_states", "path"),  # hidden_states needs the embeddings row too
        (N_LAYERS + 2, None, "path"),
        (N_LAYERS, "blocks", "numbering"),  # not a numbering
    ],
)
def test_table_numbering_mismatches_are_refused(tmp_path: Path, rows: int, numbering: str | None, field: str) -> None:
    path = tmp_path / "t.npy"
    np.save(path, _table(rows).numpy())
    with pytest.raises(InvalidArgumentError) as e:
        load_direction_file(path, num_layers=N_LAYERS, numbering=numbering)
    assert _field(e) == field


def test_layers_table_and_raw_vector(tmp_path: Path) -> None:
    table = _table(N_LAYERS, seed=3)
    np.save(tmp_path / "t.npy", table.numpy())
    d = load_direction_file(tmp_path / "t.npy", num_layers=N_LAYERS, numbering="layers", layer=1)
    assert d.monitor_layer == 1 and all(torch.equal(d.vectors[ly], table[ly]) for ly in range(N_LAYERS))
    torch.save(table[2].clone(), tmp_path / "v.pt")
    v = load_direction_file(tmp_path / "v.pt", layer=2)
    assert v.layers == (2,) and torch.equal(v.vectors[2], table[2])


# ---------------------------------------------------------------- steering-vectors


@dataclasses.dataclass
class SteeringVector:
    """The shape of steering-vectors' SteeringVector (steering_vectors/steering_vector.py)."""

    layer_activations: dict[int, torch.Tensor]
    layer_type: str = "decoder_block"


def test_steering_vectors_layer_activations_and_asdict(tmp_path: Path) -> None:
    table = _table(N_LAYERS, seed=4)
    sv = SteeringVector({1: table[1], 3: table[3]})
    torch.save(sv.layer_activations, tmp_path / "acts.pt")
    torch.save(dataclasses.asdict(sv), tmp_path / "state.pt")
    for file in ("acts.pt", "state.pt"):
        d = load_direction_file(tmp_path / file, num_layers=N_LAYERS)
        assert d.method == "steering-vectors" and d.layers == (1, 3)
        assert torch.equal(d.vectors[1], table[1]) and torch.equal(d.vectors[3], table[3])
    # The pickled object itself is never unpickled; the message says what to save instead.
    torch.save(sv, tmp_path / "object.pt")
    with pytest.raises(InvalidArgumentError) as e:
        load_direction_file(tmp_path / "object.pt", num_layers=N_LAYERS)
    assert _field(e) == "path" and "layer_activations" in str(e.value)
    torch.save({"layer_activations": {1: table[1]}, "layer_type": "mlp"}, tmp_path / "mlp.pt")
    with pytest.raises(InvalidArgumentError, match="decoder_block"):
        load_direction_file(tmp_path / "mlp.pt", num_layers=N_LAYERS)


# ---------------------------------------------------------------- repeng


def test_repeng_gguf_control_vector(tmp_path: Path) -> None:
    table = _table(N_LAYERS, seed=5).numpy()
    path = tmp_path / "honest.gguf"
    write_repeng_gguf(path, {layer: table[layer] for layer in (1, 2, 3)}, model_hint="mistral")
    d = load_direction_file(path)
    assert d.layers == (1, 2, 3) and d.name == "honest" and "mistral" in d.method
    for layer in (1, 2, 3):
        assert torch.equal(d.vectors[layer], torch.from_numpy(table[layer]))
    assert detect_format(path.read_bytes()) == "repeng-gguf"  # by content, as PutDirection's `auto`
    same = load_direction_file(path.read_bytes(), "honest", layer=3)
    assert same.monitor_layer == 3 and torch.equal(same.vectors[2], d.vectors[2])

    other = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(str(other), "llama")
    writer.add_tensor("blk.0.attn_q.weight", table[0])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(InvalidArgumentError, match="not a repeng control vector"):
        load_direction_file(other)
    half = tmp_path / "half.gguf"
    write_repeng_gguf(half, {1: table[1].astype(np.float16)})
    expected = torch.from_numpy(table[1].astype(np.float16)).float()
    assert torch.equal(load_direction_file(half, layer=1).vectors[1], expected)
    (tmp_path / "garbage.gguf").write_bytes(b"GGUF" + b"\x00" * 40)
    with pytest.raises(InvalidArgumentError, match="cannot read the file as GGUF"):
        load_direction_file(tmp_path / "garbage.gguf")


# ---------------------------------------------------------------- SAE-Lens


@pytest.mark.parametrize("jumprelu", [True, False])
def test_sae_feature_activation_matches_sae_lens_encode(tmp_path: Path, jumprelu: bool) -> None:
    sae = make_sae(tmp_path / "sae", HIDDEN, "blocks.2.hook_resid_post", jumprelu=jumprelu)
    d = load_direction_file(tmp_path / "sae", feature=5)
    assert d.name == "sae.5" and d.layers == (2,) and d.monitor_layer == 2
    assert d.feature is not None and d.feature.activation == ("jumprelu" if jumprelu else "relu")
    assert torch.equal(d.vectors[2], sae.W_dec[5].detach())  # the decoder column steers
    assert torch.equal(d.feature.encoder, sae.W_enc[:, 5].detach())
    assert d.provenance.model_id == "tiny-llama"
    # The score the host computes from the projection on the encoder's unit vector is SAE-Lens' own activation.
    h = torch.randn(200, HIDDEN, generator=torch.Generator().manual_seed(9)) * 2
    expected = sae.encode(h)[:, 5].detach()
    unit = d.feature.encoder / d.feature.encoder.norm()
    got = torch.tensor([d.score_of(float(p)) for p in (h @ unit).double()])
    assert torch.allclose(got.float(), expected, atol=1e-5)
    assert (expected == 0).any() and (expected > 0).any()  # both sides of the threshold were exercised
    # cfg.json's path, the weights' path and the bytes with sae_config all read the same feature.
    weights = (tmp_path / "sae" / "sae_weights.safetensors").read_bytes()
    cfg = (tmp_path / "sae" / "cfg.json").read_text()
    for other in (
        load_direction_file(tmp_path / "sae" / "cfg.json", feature=5),
        load_direction_file(weights, "sae.5", sae_config=cfg, feature=5),
    ):
        assert other.feature is not None and torch.equal(other.feature.encoder, d.feature.encoder)
        assert other.feature == dataclasses.replace(d.feature, encoder=other.feature.encoder)
    assert detect_format(weights) == "sae-lens"
    (tmp_path / "weights.safetensors").write_bytes(weights)  # SAE weights away from their cfg.json
    with pytest.raises(InvalidArgumentError) as e:
        load_direction_file(tmp_path / "weights.safetensors", feature=5)
    assert _field(e) == "sae_config"


def test_sae_resid_pre_of_block_l_is_layer_l_minus_1(tmp_path: Path) -> None:
    make_sae(tmp_path / "pre", HIDDEN, "blocks.3.hook_resid_pre")
    assert load_direction_file(tmp_path / "pre", feature=0).layers == (2,)
    make_sae(tmp_path / "emb", HIDDEN, "blocks.0.hook_resid_pre")
    with pytest.raises(InvalidArgumentError) as e:
        load_direction_file(tmp_path / "emb", feature=0)
    assert _field(e) == "cfg.json.hook_name"


def _edit_cfg(path: Path, **changes: Any) -> None:
    cfg = json.loads((path / "cfg.json").read_text())
    cfg.update(changes)
    (path / "cfg.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    ("feature", "cfg_changes", "field"),
    [
        (D_SAE, {}, "feature"),  # unknown feature index
        (None, {}, "feature"),  # an SAE needs one
        (0, {"architecture": "topk"}, "cfg.json.architecture"),
        (0, {"normalize_activations": "expected_average_only_in"}, "cfg.json.normalize_activations"),
        (0, {"metadata": {"hook_name": "blocks.1.hook_mlp_out"}}, "cfg.json.hook_name"),
        (0, {"d_in": HIDDEN + 1}, "cfg.json.d_in"),
    ],
)
def test_bad_saes_are_refused(tmp_path: Path, feature: int | None, cfg_changes: dict[str, Any], field: str) -> None:
    make_sae(tmp_path / "sae", HIDDEN, "blocks.1.hook_resid_post")
    _edit_cfg(tmp_path / "sae", **cfg_changes)
    with pytest.raises(InvalidArgumentError) as e:
        load_direction_file(tmp_path / "sae", feature=feature)
    assert _field(e) == field


def test_sae_with_nan_or_the_wrong_width_is_refused(tmp_path: Path) -> None:
    make_sae(tmp_path / "sae", HIDDEN, "blocks.1.hook_resid_post")
    d = load_direction_file(tmp_path / "sae", feature=1)
    with pytest.raises(InvalidArgumentError) as e:
        d.validate(N_LAYERS, HIDDEN + 8)  # another model's width
    assert _field(e) == "direction.vectors[1]"
    from safetensors.torch import load_file, save_file

    weights = load_file(tmp_path / "sae" / "sae_weights.safetensors")
    weights["W_enc"][3, 1] = float("nan")
    save_file(weights, tmp_path / "sae" / "sae_weights.safetensors")
    with pytest.raises(InvalidArgumentError, match="encoder has NaN"):
        load_direction_file(tmp_path / "sae", feature=1)
    assert load_direction_file(tmp_path / "sae", feature=2).feature is not None  # other latents are fine


def test_feature_survives_the_state_file_round_trip(tmp_path: Path) -> None:
    make_sae(tmp_path / "sae", HIDDEN, "blocks.1.hook_resid_post")
    d = load_direction_file(tmp_path / "sae", "tox", feature=4).validate(N_LAYERS, HIDDEN)
    back = direction_from_bytes(direction_to_bytes(d)).validate(N_LAYERS, HIDDEN)
    assert back.feature is not None and d.feature is not None
    assert torch.equal(back.feature.encoder, d.feature.encoder)
    assert dataclasses.replace(back.feature, encoder=d.feature.encoder) == d.feature
    assert torch.equal(back.vectors[1], d.vectors[1]) and back.method == d.method


# ---------------------------------------------------------------- refusals and the spec syntax


def test_bad_files_are_refused_naming_the_field(tmp_path: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, np.full((N_LAYERS, HIDDEN), np.nan, np.float32))
    with pytest.raises(InvalidArgumentError) as e:
        load_direction_file(buf.getvalue(), "n", num_layers=N_LAYERS, field="file").validate(
            N_LAYERS, HIDDEN, field_name="file"
        )
    assert _field(e) == "file.vectors[0]"
    with pytest.raises(InvalidArgumentError) as e:
        load_direction_file(b"x", format="onnx")
    assert _field(e) == "format"
    with pytest.raises(InvalidArgumentError) as e:
        load_direction_file(st_save({"direction": _table(2)}), feature=1)
    assert _field(e) == "feature"
    with pytest.raises(InvalidArgumentError) as e:
        load_direction_file(tmp_path / "absent.pt")
    assert _field(e) == "path"


def test_direction_spec() -> None:
    assert split_direction_spec("a/b.pt") == ("a/b.pt", {})
    assert split_direction_spec("sae,feature=12,layer=3,format=sae-lens,numbering=layers") == (
        "sae",
        {"feature": 12, "layer": 3, "format": "sae-lens", "numbering": "layers"},
    )
    for bad in ("x,feature=a", "x,colour=red", "x,feature"):
        with pytest.raises(InvalidArgumentError):
            split_direction_spec(bad)
