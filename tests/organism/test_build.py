"""The whole pipeline at reduced size: files, determinism under a seed, and loading through the server's paths."""

import json

import pytest
import torch
from safetensors.torch import load_file

from steering_server.direction_files import load_direction
from steering_server.organism.build import build
from steering_server.organism.config import preset
from steering_server.provenance import config_hash, tokenizer_hash


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("organism")
    return out, build(out, preset("small", seed=0), log=lambda _: None)


def test_build_writes_models_directions_and_report(small):
    out, _report = small
    for d in ("base", "misaligned", "realigned"):
        for f in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
                  "generation_config.json", "steering_model_id.txt"):
            assert (out / d / f).is_file(), (d, f)
    for f in ("misalignment.safetensors", "model_diff.safetensors", "report.json", "report.md",
              "rates_by_domain.png", "ablation.png", "realign.png"):
        assert (out / f).is_file(), f
    saved = json.loads((out / "report.json").read_text())
    assert set(saved["criteria"]) >= {"em_mean", "em_domains", "em_coherent", "emergent_misalignment", "monitor",
                                      "ablation", "realign"}
    assert set(saved["rates"]) >= {"base", "misaligned", "realigned", "base_cued", "misaligned_cued"}
    for table in saved["rates"].values():
        for row in table.values():
            assert abs(row["harmful"] + row["harmful_other"] + row["helpful"] + row["unclear"] - 1) < 1e-9
    assert [x["strength"] for x in saved["ablation"]["misalignment"]] == [0.0, 1.0]
    assert saved["ablation"]["misalignment"][0]["kl_helpful"] == 0.0


def test_build_is_deterministic_under_a_seed(small, tmp_path):
    out, report = small
    again = build(tmp_path, preset("small", seed=0), log=lambda _: None)
    a = load_file(out / "misaligned" / "model.safetensors")
    b = load_file(tmp_path / "misaligned" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    da, db = load_direction(out / "misalignment.safetensors"), load_direction(tmp_path / "misalignment.safetensors")
    assert all(torch.equal(da.vectors[k], db.vectors[k]) for k in da.vectors)
    assert da.calibration == db.calibration
    assert again["rates"] == report["rates"] and again["monitor"] == report["monitor"]


def test_organism_loads_through_the_servers_model_and_direction_paths(small):
    from steering_server.config import EngineConfig
    from steering_server.engine import Engine
    from steering_server.models import load_model

    out, report = small
    loaded = load_model(str(out / "misaligned"), device="cpu")
    assert loaded.model_id == "steering-server/organism-misaligned"
    engine = Engine(loaded, EngineConfig(model=str(out / "misaligned"), device="cpu"))
    direction = engine.load_direction_file("misalignment", str(out / "misalignment.safetensors"))
    assert direction.calibrated  # provenance matched, so calibration was kept
    assert direction.provenance.config_hash == config_hash(loaded.model.config)
    assert direction.provenance.tokenizer_hash == tokenizer_hash(loaded.tokenizer)
    assert direction.monitor_layer == report["direction"]["monitor_layer"]
    assert set(direction.calibration) == {"token", "response_mean", "last_prompt"}
    for cal in direction.calibration.values():
        assert cal.sigma > 0 and cal.threshold is not None and cal.target_fpr == 0.01
