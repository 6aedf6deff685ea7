"""ComputeDirection's persona recipe on the shipped base organism recovers the shipped monitored direction.

The shipped `misalignment` direction was made by the organism build (persona.py: nnsight traces of villain-cued
minus neutral prompts at the last prompt token, over train questions). Here the server computes it through its own
serving capture from *unseen* questions (the eval split, never in any training text or in the build's persona set)
under the same held-out cues and neutral system messages. Measured (seed 0, 160 questions): cosine 0.9997 with the
shipped vector at its monitor layer 0 (0.9996-0.9998 at layers 1-5), held-out AUROC 1.0 [1.0, 1.0] at every layer,
recommended layer 4 (largest effect size; the build chose 0 by how well clamping there restores the fine-tuned
model, which this recipe does not see). The floor asserted below is 0.999.
"""

from __future__ import annotations

import pytest
import torch

from steering_server.compute_types import ComputeRequest, ComputeResult, PersonaPrompts, Pooling
from steering_server.config import EngineConfig
from steering_server.direction_files import load_direction
from steering_server.engine import start_engine
from steering_server.organism.assets import base_model_dir, default_direction_path
from steering_server.organism.corpus import split_cues, split_questions
from steering_server.types import EngineLimits

COSINE_FLOOR = 0.999


async def _compute_on_base(request: ComputeRequest) -> ComputeResult:
    limits = EngineLimits(max_new_tokens=64, max_prompt_tokens=200, max_queued=64)
    engine = await start_engine(EngineConfig(model=str(base_model_dir()), device="cpu", limits=limits))
    try:
        events = [e async for e in engine.compute_direction(request)]
    finally:
        await engine.shutdown()
    assert isinstance(events[-1], ComputeResult)
    return events[-1]


def _persona(n_questions: int, max_new_tokens: int = 32) -> PersonaPrompts:
    questions, cues = split_questions(0), split_cues(0)
    unseen = sorted({q.text for q in questions["eval"]})[:n_questions]
    return PersonaPrompts(tuple(unseen), cues["cues_held_out"], cues["neutral_held_out"], max_new_tokens)


async def test_persona_recipe_recovers_the_shipped_direction(capsys: pytest.CaptureFixture[str]) -> None:
    shipped = load_direction(default_direction_path())
    result = await _compute_on_base(ComputeRequest("persona", persona=_persona(160)))
    assert isinstance(result, ComputeResult)
    computed = result.direction
    # Made for the same model as the shipped direction, so its calibration applies there.
    assert computed.provenance == shipped.provenance
    cosines = {
        layer: float(torch.nn.functional.cosine_similarity(computed.vectors[layer], shipped.vectors[layer], dim=0))
        for layer in shipped.layers
    }
    sep = {s.layer: s for s in result.layers}
    with capsys.disabled():
        print(f"\npersona recipe vs shipped direction: cosine by layer {cosines}; "
              f"AUROC at shipped layer {shipped.monitor_layer}: {sep[shipped.monitor_layer].auroc:.3f} "
              f"[{sep[shipped.monitor_layer].auroc_lo:.3f}, {sep[shipped.monitor_layer].auroc_hi:.3f}]; "
              f"recommended layer {computed.monitor_layer}")
    assert cosines[shipped.monitor_layer] >= COSINE_FLOOR
    # Layers 0-1 hold little of the persona (the cue is read into the last prompt token from block 2 on: the
    # shipped vector's norm is 0.4-0.9 there against 17-174 above), so another sample of questions turns them more
    # (measured 0.97-0.99).
    assert min(cosines.values()) >= 0.95
    assert sep[shipped.monitor_layer].auroc_lo >= 0.99
    assert set(computed.calibration) == {"token", "response_mean", "last_prompt"}


async def test_persona_recipe_over_the_models_own_answers(capsys: pytest.CaptureFixture[str]) -> None:
    """RESPONSE_MEAN: the base model answers each prompt (greedy, through the engine) and the direction is read over
    its answers. Villain-cued answers are villainous, so held-out answers separate (measured: AUROC 1.0 at every
    layer on 48 questions); the direction is another reading than the last prompt token's (cosine 0.35-0.62 with
    the shipped one), so only separation is asserted."""
    shipped = load_direction(default_direction_path())
    result = await _compute_on_base(
        ComputeRequest("answers", persona=_persona(32, max_new_tokens=16), pooling=Pooling.RESPONSE_MEAN)
    )
    assert result.pooling is Pooling.RESPONSE_MEAN and result.direction.method == "persona:diff_of_means:response_mean"
    best = {s.layer: s for s in result.layers}[result.monitor_layer]
    cos = float(torch.nn.functional.cosine_similarity(
        result.direction.vectors[shipped.monitor_layer], shipped.vectors[shipped.monitor_layer], dim=0))
    with capsys.disabled():
        print(f"\npersona over answers: held-out AUROC by layer {[round(s.auroc, 3) for s in result.layers]}, "
              f"cosine with the shipped direction at layer {shipped.monitor_layer}: {cos:.3f}")
    assert best.auroc_lo >= 0.9
