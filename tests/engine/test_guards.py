"""Guards judge the effect (issue 8, findings 2, 3 and 8): terms on one direction compose into one net effect, the
red-team rule looks at that effect along every registered direction (near-copies included), and Compare's variants
are what their labels say."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from safetensors.torch import save_file

from steering_server.composition import Affine, ResolvedTerm, combine
from steering_server.directions import Calibration, Direction, Removal
from steering_server.engine import Engine
from steering_server.errors import InvalidArgumentError, PermissionDeniedError
from steering_server.types import (
    CompareRequest,
    GenerationRequest,
    MonitorOptions,
    Prompt,
    SamplingParams,
    SteeringMode,
    SteeringPolicy,
    SteeringTerm,
    Variant,
)

from .conftest import TEST_LIMITS, loaded_model, random_direction, running_engine

ABLATE, ADD, CLAMP = SteeringMode.ABLATE, SteeringMode.ADD, SteeringMode.CLAMP
NO_RED_TEAM = replace(TEST_LIMITS, allow_red_team=False)
QUIET = MonitorOptions(enabled=False)
INDUCES_D = r"along 'd' .* would induce"


def _req(*terms: SteeringTerm, ignore_policy: bool = False) -> GenerationRequest:
    return GenerationRequest(Prompt(text="Tell me about cats"), SamplingParams(max_new_tokens=10), terms, QUIET,
                             ignore_policy)


async def _tokens(engine: Engine, *terms: SteeringTerm) -> tuple[int, ...]:
    return (await engine.generate(_req(*terms))).token_ids


def _term(mode: SteeringMode, strength: float, direction: str = "d") -> SteeringTerm:
    return SteeringTerm(direction, mode, strength)


def _calibrated(d: Direction) -> Direction:
    return replace(d, calibration={"token": Calibration(mu=-5.0, sigma=2.0)})


def test_composition_is_in_order_and_acts_once() -> None:
    class Entry:  # the parts of RegisteredDirection that composition reads
        row = 3
        norms: ClassVar[dict[int, float]] = {0: 2.0}
        direction = Direction("d", {0: torch.ones(4)}, 0, calibration={"token": Calibration(mu=1.0, sigma=0.5)})

    def t(mode: SteeringMode, s: float) -> ResolvedTerm:
        return ResolvedTerm("steering[0]", Entry(), mode, s, (0,))  # type: ignore[arg-type]

    def net(*terms: ResolvedTerm) -> Affine:
        return combine(list(terms))[(3, 0)][0]

    assert net(t(ABLATE, 1), t(ABLATE, 1), t(ABLATE, 1), t(ABLATE, 1)) == Affine(0.0, 0.0)  # acts once
    assert net(t(ABLATE, 0.5), t(ABLATE, 0.5)) == Affine(0.25, 0.0)
    assert net(t(ADD, 1.5)) == Affine(1.0, 3.0)  # a |v|
    assert net(t(ADD, 1.5), t(ABLATE, 1)) == Affine(0.0, 0.0)  # ablating after a push removes it
    assert net(t(CLAMP, 2.0)) == Affine(0.0, 2.0)  # mu + c sigma
    assert net(t(CLAMP, 0.0), t(ADD, -1.0)) == Affine(0.0, -1.0)


async def test_ablate_totals_above_one_are_refused_and_repeats_act_once() -> None:
    loaded = loaded_model()
    async with running_engine(loaded, limits=NO_RED_TEAM) as engine:
        engine.put_direction(random_direction("d", loaded))
        once = await _tokens(engine, _term(ABLATE, 1))
        assert await _tokens(engine) != once  # the ablation does something here
        for bad in ((_term(ABLATE, 2),), (_term(ABLATE, 3),), (_term(ABLATE, 1.5), _term(ABLATE, -0.5))):
            with pytest.raises(InvalidArgumentError, match="reflects"):
                engine.generate_stream(_req(*bad))
        # Four ABLATE 1 (which used to add up to ABLATE 4, a reflection) act once.
        assert await _tokens(engine, *[_term(ABLATE, 1)] * 4) == once
        # An enforced policy ABLATE 1 plus a request's own ABLATE 1 is ablation, not ABLATE 2.
        engine.set_policy(SteeringPolicy((_term(ABLATE, 1),), enforced=True))
        assert await _tokens(engine, _term(ABLATE, 1)) == once
        assert await _tokens(engine) == once


async def test_inducing_is_judged_on_the_net_effect() -> None:
    loaded = loaded_model()
    async with running_engine(loaded, limits=NO_RED_TEAM) as engine:
        d = _calibrated(random_direction("d", loaded))
        engine.put_direction(d)
        denied = [
            (_term(ADD, 1),),
            (_term(ABLATE, -0.5),),  # amplifies
            (_term(CLAMP, 1),),  # above the benign mean
            (_term(ADD, -1), _term(ADD, 2)),  # net +1
            (_term(CLAMP, -1), _term(ADD, 3)),  # clamps, then pushes above the mean
        ]
        for terms in denied:
            with pytest.raises(PermissionDeniedError, match=INDUCES_D):
                engine.generate_stream(_req(*terms))
        allowed = [(_term(ADD, -1),), (_term(ABLATE, 1),), (_term(CLAMP, 0),), (_term(CLAMP, -1), _term(ADD, -0.5)),
                   (_term(ADD, 1), _term(ADD, -1)), (_term(ADD, 2), _term(ABLATE, 1))]
        for terms in allowed:
            assert await _tokens(engine, *terms)


async def test_uploaded_copies_cannot_bypass_the_guard() -> None:
    """Finding 3: the negation of the direction uploaded under another name, then ADD -k on it, is ADD +k."""
    loaded = loaded_model()
    async with running_engine(loaded, limits=NO_RED_TEAM) as engine:
        d = random_direction("d", loaded)
        engine.put_direction(d)
        g = torch.Generator().manual_seed(3)
        negated = Direction("helpfulness", {k: -v for k, v in d.vectors.items()}, d.monitor_layer)
        near = Direction(
            "near", {k: v + 0.5 * v.norm() * torch.randn(v.shape, generator=g) / v.shape[0] ** 0.5
                     for k, v in d.vectors.items()}, d.monitor_layer)
        other = random_direction("other", loaded, seed=99)
        for copy in (negated, near, other):
            engine.put_direction(copy)
        with pytest.raises(PermissionDeniedError, match=INDUCES_D):
            engine.generate_stream(_req(_term(ADD, -1, "helpfulness")))
        with pytest.raises(PermissionDeniedError, match=INDUCES_D):
            engine.generate_stream(_req(_term(ADD, 1, "near")))
        with pytest.raises(PermissionDeniedError, match=INDUCES_D):  # ablate, then push via a copy
            engine.generate_stream(_req(_term(ABLATE, 1), _term(ADD, -0.5, "helpfulness")))
        assert await _tokens(engine, _term(ABLATE, 1, "helpfulness"))  # removing a copy removes d: fine
        assert await _tokens(engine, _term(ADD, -1, "other"))  # an unrelated direction is not a copy
        # A policy is judged the same way.
        with pytest.raises(PermissionDeniedError):
            engine.set_policy(SteeringPolicy((_term(ADD, -1, "helpfulness"),), enforced=True))


async def test_a_near_copy_clamped_to_its_own_benign_level_is_a_removal() -> None:
    """A near-copy with its own calibration (the organism's model_diff beside its persona direction): CLAMP 0 on it
    sets the copy to its own benign mean, which is not a push along the registered direction; CLAMP +5 is."""
    loaded = loaded_model()
    async with running_engine(loaded, limits=NO_RED_TEAM) as engine:
        d = _calibrated(random_direction("d", loaded))  # benign mean -5 (sigma 2)
        g = torch.Generator().manual_seed(4)
        near = Direction("near", {k: v + 0.3 * v.norm() * torch.randn(v.shape, generator=g) / v.shape[0] ** 0.5
                                  for k, v in d.vectors.items()}, d.monitor_layer,
                         calibration={"token": Calibration(mu=40.0, sigma=3.0)})  # far above d's benign mean
        engine.put_direction(d)
        engine.put_direction(near)
        assert await _tokens(engine, _term(CLAMP, 0, "near"))
        assert await _tokens(engine, _term(CLAMP, -1, "near"))
        with pytest.raises(PermissionDeniedError, match=INDUCES_D):
            engine.generate_stream(_req(_term(CLAMP, 5, "near")))


async def test_compare_labels_say_what_runs() -> None:
    """Finding 8: under an enforced policy "unsteered" ran the policy and "policy" ran it twice."""
    loaded = loaded_model()
    async with running_engine(loaded) as engine:
        d = replace(random_direction("d", loaded), removal=Removal(CLAMP, 0.0))
        engine.put_direction(_calibrated(d))
        prompt, sampling = Prompt(text="Tell me about cats"), SamplingParams(max_new_tokens=10)
        plain = await _tokens(engine)
        clamped = await _tokens(engine, _term(CLAMP, 0))
        ablated = await _tokens(engine, _term(ABLATE, 0.5))
        assert len({plain, clamped, ablated}) == 3

        async def compare() -> dict[str, tuple[int, ...]]:
            result = await engine.compare(CompareRequest(prompt, sampling, monitor=QUIET))
            return {v.name: v.result.token_ids for v in result.variants}

        # No policy: unsteered, and the direction's own removal recipe (here CLAMP 0, not ABLATE 1).
        assert await compare() == {"unsteered": plain, "clamp-d": clamped}
        engine.set_policy(SteeringPolicy((_term(ABLATE, 0.5),)))
        assert await compare() == {"unsteered": plain, "policy": ablated}
        engine.set_policy(SteeringPolicy((_term(ABLATE, 0.5),), enforced=True))
        both = await _tokens(engine, _term(CLAMP, 0))  # the policy, then the removal
        assert await compare() == {"policy": ablated, "policy+clamp-d": both}
        # Explicit variants under an enforced policy: each runs the policy, then its own terms.
        result = await engine.compare(CompareRequest(prompt, sampling, (Variant("x", ()),), QUIET))
        assert result.variants[0].result.token_ids == ablated


async def test_smaller_contract_faults() -> None:
    """Finding 10: advertised limits fit the context; a float32-max vector is not 'all zeros'; with the table full a
    direction can still be replaced."""
    loaded = loaded_model()
    huge = replace(TEST_LIMITS, max_new_tokens=10**6, max_prompt_tokens=10**6, max_directions=3)
    async with running_engine(loaded, limits=huge) as engine:
        assert engine.limits.max_new_tokens == engine.max_context - 1 == engine.limits.max_prompt_tokens
        big = Direction("big", {1: torch.full((engine.hidden_size,), torch.finfo(torch.float32).max)}, 1)
        with pytest.raises(InvalidArgumentError, match="overflows float32"):
            engine.put_direction(big)
        for name in ("a", "b", "c"):
            engine.put_direction(random_direction(name, loaded, seed=len(name) + ord(name)))
        engine.put_direction(random_direction("b", loaded, seed=42))  # full, but b's row is free to reuse
        assert torch.equal(engine.get_direction("b").vectors[1], random_direction("b", loaded, seed=42).vectors[1])
        assert await _tokens(engine, _term(ABLATE, 1, "b"))
        with pytest.raises(Exception, match="direction table full: 3 directions registered"):
            engine.put_direction(random_direction("d", loaded))


async def test_a_start_up_direction_with_bad_metadata_stops_the_start(tmp_path: Path) -> None:
    """Finding 5: given with --direction, such a file was stored and the server said SERVING with ListDirections
    answering INTERNAL for good. Now it is refused, naming the field, before anything is served."""
    loaded = loaded_model()
    d = random_direction("d", loaded)
    table = torch.stack([d.vectors[layer] for layer in d.layers])
    path = tmp_path / "bad.safetensors"
    meta = {"layers": json.dumps(list(d.layers)), "monitor_layer": "1", "n_examples": str(1 << 32)}
    save_file({"direction": table}, str(path), metadata=meta)
    with pytest.raises(InvalidArgumentError, match=r"safetensors.metadata.n_examples"):
        async with running_engine(loaded, directions=(("d", str(path)),)):
            pass
