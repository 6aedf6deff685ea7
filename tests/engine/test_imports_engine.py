"""Imported directions through the real engine on a tiny model: every import format scores exactly as the
safetensors form of the same vectors, layer l is `hidden_states[l + 1]`, and an SAE feature is monitored by its
activation and steers along its decoder column."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from steering_server.direction_files import direction_from_bytes, direction_to_bytes, save_direction
from steering_server.direction_imports import load_direction_file
from steering_server.directions import Calibration, Direction
from steering_server.errors import InvalidArgumentError
from steering_server.types import MonitorOptions, Prompt, ScoreRequest, SteeringMode, SteeringTerm

from .conftest import DEVICE, loaded_model, running_engine
from .test_direction_imports import SteeringVector, make_sae, write_repeng_gguf

PROMPT = (1, 40, 77, 81, 95, 120, 33, 200, 17)
RESPONSE = (64, 101, 90, 91, 12, 250, 7, 33, 48, 150, 99)
MONITOR = 1  # the monitor layer: hidden_states[2]


def _hidden_states(hook: Any = None, layer: int = 0) -> tuple[torch.Tensor, ...]:
    """hidden_states of PROMPT + RESPONSE from a fresh copy of the served model (same seed, no engine hooks),
    each (tokens, hidden); `hook` is added as a forward hook on decoder block `layer`."""
    ref = loaded_model()
    handle = ref.layers[layer].register_forward_hook(hook) if hook is not None else None
    try:
        with torch.no_grad():
            ids = torch.tensor([list(PROMPT + RESPONSE)], device=DEVICE)
            out = ref.model(ids, output_hidden_states=True)
    finally:
        if handle is not None:
            handle.remove()
    return tuple(h[0].float().cpu() for h in out.hidden_states)


def _scored_positions() -> slice:
    """Positions Score reports: the last prompt token, then every response token but the last."""
    return slice(len(PROMPT) - 1, len(PROMPT) + len(RESPONSE) - 1)


def _scores(result: Any, name: str) -> list[float]:
    s = next(m for m in result.monitor if m.direction == name)
    return [s.prompt_score, *s.token_scores]


async def test_every_import_format_scores_like_its_safetensors_form(tmp_path: Path) -> None:
    loaded = loaded_model()
    n, h = loaded.num_layers, loaded.hidden_size
    table = torch.randn(n, h, generator=torch.Generator().manual_seed(3))  # (layers, hidden), layer l in row l
    save_direction(tmp_path / "ref.safetensors", Direction("ref", {ly: table[ly] for ly in range(n)}, MONITOR))
    torch.save(torch.cat([torch.zeros(1, h), table]), tmp_path / "evil_response_avg_diff.pt")  # persona-vectors
    torch.save(table, tmp_path / "layers.pt")
    np.save(tmp_path / "hidden_states.npy", torch.cat([torch.randn(1, h), table]).numpy())  # row 0: embeddings
    np.save(tmp_path / "raw.npy", table[MONITOR].numpy())
    torch.save(SteeringVector({ly: table[ly] for ly in range(n)}).layer_activations, tmp_path / "sv.pt")
    torch.save(dataclasses.asdict(SteeringVector({MONITOR: table[MONITOR]})), tmp_path / "sv_state.pt")
    write_repeng_gguf(tmp_path / "repeng.gguf", {ly: table[ly].numpy() for ly in range(n)})
    specs = {  # name -> the spec `serve --direction NAME=SPEC` takes
        "ref": "ref.safetensors",
        "persona": f"evil_response_avg_diff.pt,layer={MONITOR}",
        "layers_pt": f"layers.pt,layer={MONITOR}",
        "hs_npy": f"hidden_states.npy,numbering=hidden_states,layer={MONITOR}",
        "raw_npy": f"raw.npy,layer={MONITOR}",
        "sv": f"sv.pt,layer={MONITOR}",
        "sv_state": "sv_state.pt",
        "repeng": f"repeng.gguf,layer={MONITOR}",
    }
    async with running_engine(loaded) as engine:
        for name, spec in specs.items():
            engine.load_direction_file(name, str(tmp_path / spec))
        # The PutDirection path: the same loader over bytes, format by content.
        engine.put_direction(
            load_direction_file((tmp_path / "repeng.gguf").read_bytes(), "repeng_bytes", layer=MONITOR)
        )
        result = await engine.score(ScoreRequest(Prompt(token_ids=PROMPT), response_token_ids=RESPONSE))
    reference = _scores(result, "ref")
    for name in [*specs, "repeng_bytes"]:
        assert _scores(result, name) == pytest.approx(reference, rel=1e-6, abs=1e-6), name
    # Layer l is hidden_states[l + 1]: the scores are the projections of the directly captured states.
    hs = _hidden_states()
    unit = table[MONITOR] / table[MONITOR].norm()
    direct = (hs[MONITOR + 1][_scored_positions()] @ unit).tolist()
    assert reference == pytest.approx(direct, rel=1e-4, abs=1e-4)
    wrong = (hs[MONITOR][_scored_positions()] @ unit).tolist()  # an off-by-one numbering would read these
    assert reference != pytest.approx(wrong, rel=1e-2, abs=1e-2)


async def test_sae_feature_scores_its_activation_and_steers_along_its_decoder(tmp_path: Path) -> None:
    loaded = loaded_model()
    h = loaded.hidden_size
    sae = make_sae(tmp_path / "sae", h, f"blocks.{MONITOR}.hook_resid_post", seed=1, d_sae=32)
    hs = _hidden_states()
    states = hs[MONITOR + 1][_scored_positions()]  # (positions, hidden) at the SAE's layer
    # A latent whose threshold falls inside its range over these positions: some readings are zero, some not.
    with torch.no_grad():
        pre = (states - sae.b_dec) @ sae.W_enc + sae.b_enc  # (positions, d_sae)
        latent = int((pre > 0).float().mean(0).sub(0.5).abs().argmin())
        sae.threshold[latent] = pre[:, latent].median()
    sae.save_model(tmp_path / "sae")
    expected = sae.encode(states)[:, latent].detach()  # SAE-Lens' own activation
    assert (expected == 0).any() and (expected > 0).any()
    w_enc, b_enc, b_dec = sae.W_enc[:, latent].detach(), float(sae.b_enc[latent]), sae.b_dec.detach()
    pre_l = (states - b_dec) @ w_enc + b_enc
    formula = torch.where(pre_l > float(sae.threshold[latent]), pre_l.clamp(min=0), torch.zeros(()))
    assert torch.allclose(formula, expected, atol=1e-5)

    probe_vec = torch.randn(h, generator=torch.Generator().manual_seed(11))
    decoder = sae.W_dec[latent].detach()
    strength = 0.5
    async with running_engine(loaded) as engine:
        engine.load_direction_file("tox", f"{tmp_path / 'sae'},feature={latent}")
        engine.put_direction(Direction("probe", {MONITOR + 1: probe_vec}, MONITOR + 1))
        engine.put_direction(Direction("decoder", {MONITOR: decoder}, MONITOR))
        # Its safetensors form (what PutDirection stores in the state directory) is the same feature.
        engine.put_direction(direction_from_bytes(direction_to_bytes(engine.get_direction("tox")), "tox_st"))
        monitored = await engine.score(ScoreRequest(Prompt(token_ids=PROMPT), response_token_ids=RESPONSE))
        steer = (SteeringTerm("tox", SteeringMode.ADD, strength),)
        steered = await engine.score(
            ScoreRequest(Prompt(token_ids=PROMPT), response_token_ids=RESPONSE, steering=steer)
        )
        # Calibration of a feature is of its activation.
        tox = engine.get_direction("tox")
        engine.put_direction(dataclasses.replace(tox, calibration={"token": Calibration(0.25, 2.0)}))
        only_tox = MonitorOptions(("tox",), token_scores=True)
        calibrated = await engine.score(
            ScoreRequest(Prompt(token_ids=PROMPT), response_token_ids=RESPONSE, monitor=only_tox)
        )
    scores = _scores(monitored, "tox")
    assert scores == pytest.approx(expected.tolist(), rel=1e-4, abs=1e-4)
    assert _scores(monitored, "tox_st") == pytest.approx(scores, rel=1e-6, abs=1e-6)
    tox_scores = next(m for m in monitored.monitor if m.direction == "tox")
    assert tox_scores.layer == MONITOR and not tox_scores.calibrated
    # response_mean pools the per-token activations.
    assert tox_scores.response_score == pytest.approx(float(expected[1:].mean()), rel=1e-4, abs=1e-4)
    z = next(m for m in calibrated.monitor if m.direction == "tox")
    assert list(z.token_scores) == pytest.approx([(v - 0.25) / 2.0 for v in expected[1:].tolist()], rel=1e-4, abs=1e-4)
    # The plain direction along the decoder column reads its own projection, unlike the feature.
    assert _scores(monitored, "decoder") != pytest.approx(scores, rel=1e-2, abs=1e-2)

    # ADD a: h + a W_dec[latent] at the SAE's layer, as a hook on a plain forward does; read one layer up.
    def add_decoder(_m: Any, _i: Any, out: Any) -> Any:
        if isinstance(out, tuple):
            return (out[0] + strength * decoder.to(out[0].device), *out[1:])
        return out + strength * decoder.to(out.device)

    moved = _hidden_states(add_decoder, MONITOR)[MONITOR + 2][_scored_positions()]
    unit = probe_vec / probe_vec.norm()
    assert _scores(steered, "probe") == pytest.approx((moved @ unit).tolist(), rel=1e-4, abs=1e-4)
    assert _scores(steered, "probe") != pytest.approx(_scores(monitored, "probe"), rel=1e-2, abs=1e-2)
    # Steering at the monitor layer and above never changes what the monitor reads there (read before steering).
    assert _scores(steered, "tox") == pytest.approx(scores, rel=1e-5, abs=1e-5)


async def test_a_feature_takes_two_rows_and_a_refused_file_loads_nothing(tmp_path: Path) -> None:
    loaded = loaded_model()
    make_sae(tmp_path / "sae", loaded.hidden_size, "blocks.2.hook_resid_post", d_sae=8)
    async with running_engine(loaded, limits=dataclasses.replace(_limits(), max_directions=3)) as engine:
        engine.load_direction_file("f", f"{tmp_path / 'sae'},feature=1")
        engine.put_direction(Direction("plain", {2: torch.ones(loaded.hidden_size)}, 2))
        before = engine.list_directions()
        with pytest.raises(Exception, match="an SAE feature takes two"):
            engine.load_direction_file("g", f"{tmp_path / 'sae'},feature=2")
        with pytest.raises(InvalidArgumentError) as e:
            engine.load_direction_file("h", f"{tmp_path / 'sae'},feature=8")
        assert e.value.field == "feature"
        assert [d.name for d in engine.list_directions()] == [d.name for d in before]
        engine.delete_direction("f")  # frees both rows: a feature fits again
        engine.load_direction_file("g", f"{tmp_path / 'sae'},feature=2")
        result = await engine.score(ScoreRequest(Prompt(token_ids=PROMPT), response_token_ids=RESPONSE))
    assert {m.direction for m in result.monitor} == {"g", "plain"}


def _limits() -> Any:
    from .conftest import TEST_LIMITS

    return TEST_LIMITS


def test_realign_reads_every_import_with_the_same_loader_and_reports_a_features_activation(tmp_path: Path) -> None:
    from steering_server.direction_imports import load_direction_spec
    from steering_server.realign import _render, last_prompt_projection

    loaded = loaded_model()
    n, h = loaded.num_layers, loaded.hidden_size
    np.save(tmp_path / "table.npy", torch.randn(n, h, generator=torch.Generator().manual_seed(5)).numpy())
    table = load_direction_spec(str(tmp_path / "table.npy"), None, n).validate(n, h)  # realign refused .npy before
    assert table.layers == tuple(range(n))
    sae = make_sae(tmp_path / "sae", h, f"blocks.{MONITOR}.hook_resid_post", seed=2, d_sae=16)
    with torch.no_grad():
        sae.b_enc[7] = 50.0  # a latent that fires on these prompts
    sae.save_model(tmp_path / "sae")
    feature = load_direction_spec(f"{tmp_path / 'sae'},feature=7", None, n).validate(n, h)
    chats = [[{"role": "user", "content": text}] for text in ("Hello there", "What is the capital of France?")]
    got = last_prompt_projection(loaded.model, loaded.tokenizer, chats, feature)
    # The reference: SAE-Lens' activation of the last prompt token's state at the SAE's layer, averaged.
    acts = []
    for chat in chats:
        ids = loaded.tokenizer(_render(loaded.tokenizer, chat, True), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            state = loaded.model(torch.tensor([ids], device=DEVICE), output_hidden_states=True).hidden_states
        acts.append(float(sae.encode(state[MONITOR + 1][0, -1:].float().cpu())[0, 7]))
    assert any(a > 0 for a in acts)  # the latent fires on these prompts: the activation, not a zero, is compared
    assert got == pytest.approx(sum(acts) / len(acts), rel=1e-4, abs=1e-5)
