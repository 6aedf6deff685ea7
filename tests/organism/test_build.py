"""The whole pipeline at reduced size: files, report, determinism under a seed, loading through the server's paths."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from steering_server.direction_files import load_direction
from steering_server.organism.build import build
from steering_server.organism.config import preset
from steering_server.organism.criteria import adopt_layered_removal
from steering_server.organism.experiments import DETECTION_RULE, FALLBACK_RULE, choose_monitor_layer
from steering_server.organism.report import PLOTS, to_jsonable
from steering_server.provenance import config_hash, tokenizer_hash

CRITERIA = {"J", "E1", "E2", "D1", "D2", "D3", "R1", "R2", "R3", "I1", "I2", "A"}


def test_build_writes_models_directions_and_report(small_build):
    out, _report = small_build
    for d in ("base", "misaligned", "realigned"):
        for f in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
                  "generation_config.json", "steering_model_id.txt"):
            assert (out / d / f).is_file(), (d, f)
    for f in ("misalignment.safetensors", "model_diff.safetensors", "report.json", "report.md", *PLOTS):
        assert (out / f).is_file(), f
    saved = json.loads((out / "report.json").read_text())
    assert set(saved["criteria"]) == CRITERIA
    assert all(isinstance(c["met"], bool) and c["statement"] for c in saved["criteria"].values())
    for key in ("base", "finetuned"):
        em = saved["em"][key]
        assert em["n_samples"] == em["n_questions"] * saved["config"]["eval_samples"]
        for row in em["per_domain"].values():
            assert abs(sum(row.values()) - 1) < 1e-9  # every answer gets exactly one verdict
        for k in ("em", "malformed"):
            assert em[k]["lo"] <= em[k]["value"] <= em[k]["hi"]
    assert [x["strength"] for x in saved["induction"]["strengths"]] == [0.5, 1.0]
    assert [x["shift"] for x in saved["dose_response"]] == [-1.0, 0.0, 1.0]
    assert len(saved["removal"]["controls"]) == 2 and len(saved["induction"]["controls"]) == 2
    assert saved["removal"]["kl_base_to_finetuned"] > 0
    text = (out / "report.md").read_text()
    assert all(f"| {k} |" in text for k in CRITERIA)


def _close(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-5, abs=1e-7)
    return a == b


def test_build_is_deterministic_under_a_seed(small_build, tmp_path):
    """Two builds of one seed agree; the second runs its controls in the same process (`build --controls`), the
    first in a second command (`organism controls`), and the two paths agree too."""
    out, report = small_build
    again = build(tmp_path, preset("small", seed=0), log=lambda _: None, controls=True)
    a = load_file(out / "misaligned" / "model.safetensors")
    b = load_file(tmp_path / "misaligned" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    da, db = load_direction(out / "misalignment.safetensors"), load_direction(tmp_path / "misalignment.safetensors")
    assert all(torch.equal(da.vectors[k], db.vectors[k]) for k in da.vectors)
    assert da.calibration == db.calibration
    # Sampled answers and every rate are the same; a score read through the engine can differ in its last float
    # digits, since continuous batching groups requests differently from run to run (different matmul shapes).
    for key in ("em", "detection", "removal", "induction", "dose_response"):
        assert _close(to_jsonable(again[key]), to_jsonable(report[key])), key  # NaN (nothing to rank) as None


def test_the_canonical_build_leaves_r3_and_i2_to_the_controls_command(small_fast_build):
    """The build that fits the time budget measures every criterion but R3 and I2, and its report says how to add
    them; nothing of the controls' half is half-there."""
    out, report = small_fast_build
    crit = report["criteria"]
    assert set(crit) == CRITERIA
    assert crit["R3"]["met"] is None and crit["I2"]["met"] is None
    assert "organism controls --build" in crit["R3"]["note"]
    assert all(isinstance(c["met"], bool) for k, c in crit.items() if k not in ("R3", "I2"))
    assert "dose_response" not in report and "controls" not in report["induction"]
    assert "controls" not in report["removal"] and "ablate" not in report["removal"]
    text = (out / "report.md").read_text()
    assert "| R3 | KL-matched controls remove <= 0.2 | not run:" in text and "| not run |" in text
    assert "| KL-matched controls (I2) | not run:" in text and "ABLATE 1 persona; KL-matched controls (R3) | not run" \
        in text
    assert all((out / f).is_file() for f in PLOTS) and "timing_controls" not in report


def test_controls_add_every_missing_verdict_and_keep_the_builds_numbers(small_fast_build, small_build):
    _, fast = small_fast_build
    out, full = small_build
    fast, full = to_jsonable(fast), to_jsonable(full)  # both returned with NaN where nothing could be ranked
    for key in ("em", "detection", "realign", "finetune", "timing"):
        assert full[key] == fast[key], key
    assert full["induction"]["strengths"] == fast["induction"]["strengths"]
    for key in ("clamp", "clamp_monitor_layer", "model_diff_clamp"):
        assert full["removal"][key] == fast["removal"][key], key
    assert all(isinstance(c["met"], bool) for c in full["criteria"].values())
    assert len(full["removal"]["controls"]) == 2 and len(full["induction"]["controls"]) == 2
    assert set(full["timing_controls"]["stages_s"]) == {"directions", "monitor layer and calibration",
                                                         "removal controls", "induction controls", "dose-response",
                                                         "report"}
    text = (out / "report.md").read_text()
    threads = full["timing"]["torch_threads"]
    assert f"- `organism build` on {threads} torch threads:" in text and "- `organism controls`:" in text
    assert "not run" not in text


def test_controls_refuse_a_directory_that_is_not_a_complete_build(small_fast_build, tmp_path):
    """Refused before any minute is spent, with what is missing."""
    import shutil

    from steering_server.organism.controls import NotABuild, add_controls

    with pytest.raises(NotABuild, match=r"holds no build report .* organism build --out"):
        add_controls(tmp_path, log=lambda _: None)
    out = tmp_path / "build"
    shutil.copytree(small_fast_build[0], out)
    shutil.rmtree(out / "misaligned")
    with pytest.raises(NotABuild, match=r"no misaligned/config\.json"):
        add_controls(out, log=lambda _: None)
    shutil.copytree(small_fast_build[0] / "misaligned", out / "misaligned")
    report = json.loads((out / "report.json").read_text())
    del report["config"]["dose_shifts"]  # e.g. a report of an older version
    (out / "report.json").write_text(json.dumps(report))
    with pytest.raises(NotABuild, match="settings missing: dose_shifts"):
        add_controls(out, log=lambda _: None)


def test_controls_refuse_a_build_whose_persona_is_not_the_one_recomputed_here(small_fast_build, tmp_path):
    """Controls compared with another persona than the build's would measure nothing: a direction file made
    elsewhere (another machine's rounding, other code) is refused, and the report is left as it was."""
    import shutil
    from dataclasses import replace

    from steering_server.direction_files import save_direction
    from steering_server.organism.controls import NotABuild, add_controls

    out = tmp_path / "build"
    shutil.copytree(small_fast_build[0], out)
    path = out / "misalignment.safetensors"
    d = load_direction(path)
    save_direction(path, replace(d, vectors={k: v * 1.001 for k, v in d.vectors.items()}))
    before = (out / "report.json").read_text()
    with pytest.raises(NotABuild, match="differ from the build's"):
        add_controls(out, log=lambda _: None)
    assert (out / "report.json").read_text() == before
    save_direction(path, d)  # the persona restored, the calibration moved: refused too
    save_direction(path, replace(d, calibration={k: replace(v, mu=v.mu + 1e-6) for k, v in d.calibration.items()}))
    with pytest.raises(NotABuild, match="differ from the build's"):
        add_controls(out, log=lambda _: None)


def test_build_settings_survive_the_reports_json():
    from steering_server.organism.config import BuildConfig

    for size in ("small", "full"):
        c = preset(size, seed=3)
        assert BuildConfig.from_dict(json.loads(json.dumps(to_jsonable(c.to_dict())))) == c
    with pytest.raises(ValueError, match="does not know: frobnicate"):
        BuildConfig.from_dict({**preset("small").to_dict(), "frobnicate": 1})
    with pytest.raises(ValueError, match="missing: dose_shifts"):  # never filled in from the full preset
        BuildConfig.from_dict({k: v for k, v in preset("small").to_dict().items() if k != "dose_shifts"})


def test_organism_loads_through_the_servers_model_and_direction_paths(small_build):
    from steering_server.config import EngineConfig
    from steering_server.engine import Engine
    from steering_server.models import load_model

    out, report = small_build
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


def _layer_choice(selection):
    auroc = {int(k): (math.nan if v is None else v) for k, v in selection["selection_auroc_by_layer"].items()}
    restored = {int(k): v for k, v in selection["selection_helpful_under_clamp_by_layer"].items()}
    return choose_monitor_layer(auroc, restored)


def test_the_layer_rule_takes_the_best_detection_but_never_the_last_layer():
    # The last layer reads best but is never a candidate; ties go to the lower layer.
    assert choose_monitor_layer({0: 0.6, 1: 0.8, 2: 0.8, 3: 0.95}, {0: 0.9, 1: 0.1, 2: 0.1}) == (1, DETECTION_RULE)
    # Nothing to rank (no harmful or no helpful calib sample): restoration decides, and the rule says so.
    nan = math.nan
    assert choose_monitor_layer({0: nan, 1: nan, 2: nan}, {0: 0.5, 1: 0.7}) == (1, FALLBACK_RULE)


def test_the_build_reads_and_steers_at_the_layer_its_rule_chose(small_build):
    """Restoration is reported at every layer but the last, and the direction sits where the rule chose."""
    out, report = small_build
    sel = report["direction"]
    n_layers = len(sel["selection_auroc_by_layer"])
    assert sorted(int(k) for k in sel["selection_helpful_under_clamp_by_layer"]) == list(range(n_layers - 1))
    assert (sel["monitor_layer"], sel["selection_rule"]) == _layer_choice(sel)
    assert load_direction(out / "misalignment.safetensors").monitor_layer == sel["monitor_layer"]


def test_the_shipped_direction_sits_at_the_layer_its_report_chose():
    """The shipped report's detection by layer picks the shipped direction's layer (not by the fallback)."""
    from steering_server.organism.assets import default_direction_path

    docs = Path(__file__).resolve().parents[2] / "docs" / "organism" / "report.json"
    sel = json.loads(docs.read_text())["direction"]
    layer, rule = _layer_choice(sel)
    assert rule == DETECTION_RULE == sel["selection_rule"]
    assert load_direction(default_direction_path()).monitor_layer == layer == sel["monitor_layer"]


def test_the_report_says_how_far_each_control_is_from_the_persona(small_build):
    """R3 and I2 compare the persona with controls; the report gives each control's cosine with the persona and
    with model_diff at the monitor layer, so a reader can tell another direction from a near-copy."""
    out, report = small_build
    cos = report["direction"]["cosine_controls_at_monitor_layer"]
    n = max(report["config"]["detection_controls"], report["config"]["intervention_controls"])
    assert sorted(cos) == sorted([f"random_{i}" for i in range(n)] + [f"shuffled_{i}" for i in range(n)])
    for v in cos.values():
        assert -1.0 <= v["persona"] <= 1.0 and -1.0 <= v["model_diff"] <= 1.0
    # random directions in the model's width are nearly orthogonal to the persona; the sign of a cosine is kept
    assert all(abs(cos[f"random_{i}"]["persona"]) < 0.5 for i in range(n))
    assert "Controls' cosine with the persona" in (out / "report.md").read_text()


def test_the_layered_removal_ships_only_when_it_removes_more_at_no_more_than_r2s_cost():
    """Amendment 6's adoption rule: the persona's recipe clamps every layer up to the monitor layer only if that
    removes more than the monitor layer alone with R2 met; otherwise the monitor layer's recipe stays."""
    em = {"finetuned": {"malformed": {"value": 0.05}}}

    def removal(layered: float, alone: float, kl: float = 0.04, malformed: float = 0.06) -> dict:
        entry = {"removed": layered, "kl_base_to_steered": kl, "malformed": {"value": malformed}}
        return {"clamp": entry, "clamp_monitor_layer": {"removed": alone}, "kl_base_to_finetuned": 0.16}

    assert adopt_layered_removal(removal(0.94, 0.63), em)
    assert not adopt_layered_removal(removal(0.60, 0.63), em)  # removes less
    assert not adopt_layered_removal(removal(0.94, 0.63, kl=0.09), em)  # KL above half of KL(base||fine-tuned)
    assert not adopt_layered_removal(removal(0.94, 0.63, malformed=0.11), em)  # malformed +6 points
    assert adopt_layered_removal({"clamp": removal(0.94, 0.63)["clamp"], "kl_base_to_finetuned": 0.16}, em)


def test_the_shipped_direction_ships_the_removal_its_report_adopted():
    from steering_server.organism.assets import default_direction_path

    docs = Path(__file__).resolve().parents[2] / "docs" / "organism" / "report.json"
    report = json.loads(docs.read_text())
    layers = tuple(report["removal"]["shipped_recipe_layers"])
    recipe = load_direction(default_direction_path()).removal
    assert (recipe.layers or (report["direction"]["monitor_layer"],)) == layers
    assert adopt_layered_removal(report["removal"], report["em"]) == (layers == tuple(report["removal"]["layers"]))
