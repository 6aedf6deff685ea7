"""ComputeDirection on a tiny Llama with a planted direction (planted.py), through the real engine: over gRPC and
with the offline `steering-server direction compute` on the saved model, which must both recover the planted vector
and agree; the calibration it stores must hold on benign text it never saw; bad input is refused naming the field."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import statistics
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import torch
from steering_client import AsyncSteeringClient, pb, pb_grpc

from steering_server.cli import main
from steering_server.compute_direction import held_out_split
from steering_server.compute_types import ComputeRequest, ComputeResult, ContrastiveExample
from steering_server.direction_files import direction_from_bytes, load_direction
from steering_server.engine import Engine
from steering_server.organism.capture import capture_nnsight
from steering_server.organism.train import Encoded
from steering_server.service import SteeringServer
from steering_server.types import Prompt
from tests.engine.conftest import running_engine
from tests.service.helpers import assert_no_unexpected_errors, expect_status, serving
from tests.service.test_compute_direction import BAD

from .planted import planted_examples, planted_model

pytestmark = pytest.mark.asyncio(loop_scope="module")

N_PAIRS = 200  # 400 examples: 120 held out, of which 60 benign calibrate (30) and check (30) the thresholds
TARGET_FPR = 0.05


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=0))


@pytest.fixture(scope="module")
def planted() -> tuple[object, torch.Tensor]:
    return planted_model()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(
    planted: tuple[object, torch.Tensor], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Engine]:
    state = tmp_path_factory.mktemp("state")
    async with running_engine(planted[0], state_dir=str(state)) as eng:  # type: ignore[arg-type]
        yield eng


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(engine: Engine) -> AsyncIterator[SteeringServer]:
    async with serving(engine) as srv:
        yield srv


@pytest_asyncio.fixture(loop_scope="module")
async def client(server: SteeringServer) -> AsyncIterator[AsyncSteeringClient]:
    async with AsyncSteeringClient(f"127.0.0.1:{server.port}", timeout=300) as c:
        yield c


def as_json(examples: list) -> str:
    return "\n".join(
        json.dumps({"prompt": e.prompt.text, "response": e.response, "label": "positive" if e.positive else "negative"})
        for e in examples
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rpc_result(server: SteeringServer) -> pb.ComputeDirectionResult:
    examples = [
        {"prompt": e.prompt.text, "response": e.response, "label": e.positive} for e in planted_examples(N_PAIRS)
    ]
    async with AsyncSteeringClient(f"127.0.0.1:{server.port}", timeout=300) as c:
        return await c.compute_direction(
            "planted", examples=examples, store=True, return_file=True, target_fpr=TARGET_FPR
        )


async def test_rpc_and_offline_command_recover_the_planted_direction_and_agree(
    rpc_result: pb.ComputeDirectionResult,
    planted: tuple[object, torch.Tensor],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    loaded, u = planted
    over_rpc = direction_from_bytes(rpc_result.safetensors)
    assert over_rpc.layers == (0, 1, 2, 3) and over_rpc.monitor_layer == rpc_result.monitor_layer
    with capsys.disabled():
        print(f"\nplanted: cosine with u by layer {[round(cosine(over_rpc.vectors[k], u), 4) for k in over_rpc.layers]}"
              f", monitor layer {over_rpc.monitor_layer}, held-out AUROC by layer "
              f"{[round(s.auroc, 3) for s in rpc_result.layers]}")
    for layer in over_rpc.layers:
        assert cosine(over_rpc.vectors[layer], u) >= 0.9, layer
    held = {s.layer: s for s in rpc_result.layers}
    assert held[rpc_result.monitor_layer].auroc >= 0.95
    assert held[rpc_result.monitor_layer].auroc_lo <= held[rpc_result.monitor_layer].auroc
    assert over_rpc.provenance.model_id == "planted-0" and over_rpc.provenance.config_hash

    # The offline command on the saved model, with the same examples as a JSONL file.
    model_dir = tmp_path / "model"
    loaded.model.save_pretrained(model_dir)  # type: ignore[attr-defined]
    loaded.tokenizer.save_pretrained(model_dir)  # type: ignore[attr-defined]
    (tmp_path / "examples.jsonl").write_text(as_json(planted_examples(N_PAIRS)))
    out = tmp_path / "planted.safetensors"
    argv = ["direction", "compute", "--model", str(model_dir), "--examples", str(tmp_path / "examples.jsonl"),
            "--name", "planted", "--out", str(out), "--target-fpr", str(TARGET_FPR), "--device", "cpu"]
    assert await asyncio.to_thread(main, argv) == 0
    printed = json.loads(capsys.readouterr().out)
    offline = load_direction(out)
    assert printed["monitor_layer"] == offline.monitor_layer == over_rpc.monitor_layer
    for layer in offline.layers:
        assert cosine(offline.vectors[layer], u) >= 0.9
        assert cosine(offline.vectors[layer], over_rpc.vectors[layer]) >= 0.9999
    assert offline.provenance.config_hash == over_rpc.provenance.config_hash
    assert [s["auroc"] for s in printed["layers"]] == pytest.approx([s.auroc for s in rpc_result.layers], abs=1e-6)


async def test_offline_command_keeps_a_direction_it_could_not_write(
    planted: tuple[object, torch.Tensor], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--out went away during the job (the up-front check passed): the summary is printed, the file saved to a
    temporary path named in one line, exit 1."""
    loaded, _ = planted
    model_dir = tmp_path / "model"
    loaded.model.save_pretrained(model_dir)  # type: ignore[attr-defined]
    loaded.tokenizer.save_pretrained(model_dir)  # type: ignore[attr-defined]
    (tmp_path / "examples.jsonl").write_text(as_json(planted_examples(N_PAIRS)))
    monkeypatch.setattr("steering_client.compute.check_writable", lambda path, flag="--out": None)
    argv = ["direction", "compute", "--model", str(model_dir), "--examples", str(tmp_path / "examples.jsonl"),
            "--name", "late", "--out", str(tmp_path / "gone/late.safetensors"), "--device", "cpu"]
    assert await asyncio.to_thread(main, argv) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["name"] == "late"
    (line,) = [x for x in captured.err.splitlines() if "direction compute:" in x]
    spare = Path(line.split("saved to ")[1].split(" instead")[0])
    assert "--out" in line and load_direction(spare).name == "late"
    spare.unlink()


async def test_stored_calibration_holds_on_benign_text_it_never_saw(
    rpc_result: pb.ComputeDirectionResult, client: AsyncSteeringClient, engine: Engine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert rpc_result.stored
    stored = (await client.get_direction("planted")).calibration
    assert set(stored) == {"token", "response_mean", "last_prompt"}
    assert stored["token"].target_fpr == pytest.approx(TARGET_FPR)
    assert abs(rpc_result.held_out_fpr["token"] - TARGET_FPR) <= 0.02
    # Stored through the registry path PutDirection uses: persisted in the state directory, as computed.
    assert engine.state is not None
    persisted = load_direction(engine.state.path / "directions" / "planted.safetensors")
    returned = direction_from_bytes(rpc_result.safetensors)
    assert persisted.monitor_layer == returned.monitor_layer
    assert all(torch.equal(persisted.vectors[k], returned.vectors[k]) for k in returned.layers)
    # Fresh benign examples (another seed): per-token z through Score, as the monitor reports them.
    z: list[float] = []
    for e in planted_examples(40, seed=99):
        if not e.positive:
            reply = await client.score(e.prompt.text, response=e.response, monitor=["planted"], token_scores=True)
            z += list(reply.monitor[0].token_scores)
            assert reply.monitor[0].calibrated
    assert len(z) > 1500
    with capsys.disabled():
        print(f"\nplanted: held-out benign token z over {len(z)} tokens: mean {statistics.fmean(z):.3f}, "
              f"sd {statistics.pstdev(z):.3f}, FPR {sum(v > stored['token'].threshold for v in z) / len(z):.4f} "
              f"(target {TARGET_FPR}); compute's own check {rpc_result.held_out_fpr['token']:.4f}")
    assert abs(statistics.fmean(z)) < 0.2
    assert 0.8 < statistics.pstdev(z) < 1.2
    fpr = sum(v > stored["token"].threshold for v in z) / len(z)
    assert abs(fpr - TARGET_FPR) <= 0.02, fpr


FRESH_PAIRS = 400  # 400 fresh benign prompts + responses: one last_prompt and one response_mean reading each
_WORDS = ("cat", "dog", "tree", "blue", "run", "sky", "stone", "river", "light", "green", "hat", "sun")


def varied_prompts(examples: list[ContrastiveExample], seed: int) -> list[ContrastiveExample]:
    """planted_examples with a distinct prompt per pair (planted_examples draws from 12 prompts only, so its
    held-out examples, split by prompt, give a last_prompt calibration a handful of distinct readings)."""
    rng = random.Random(seed)
    prompts = [Prompt(text="tell me about the " + " ".join(rng.choices(_WORDS, k=rng.randint(3, 8))))
               for _ in range(len(examples) // 2)]
    return [replace(e, prompt=prompts[i // 2]) for i, e in enumerate(examples)]  # pairs: positive, negative


async def test_per_example_calibrations_hold_as_their_n_allows_on_benign_text_they_never_saw(
    server: SteeringServer, client: AsyncSteeringClient, capsys: pytest.CaptureFixture[str],
) -> None:
    """`last_prompt` and `response_mean` give one reading per benign example, so their thresholds rest on the ~30
    held-out benign examples that set them (N_PAIRS pairs, 30% held out, half of those fit): their false-positive
    rate on fresh text is that of an order statistic of ~30 readings, not within 2 points of the target. The check:
    the job reports that n, and the FPR on 400 fresh benign examples lies in the central 99.9% of what a threshold
    set from n readings gives (a calibration read at another position, or fit on other data, falls outside)."""
    examples = [{"prompt": e.prompt.text, "response": e.response, "label": e.positive}
                for e in varied_prompts(planted_examples(N_PAIRS), seed=5)]
    result = await client.compute_direction("planted-varied", examples=examples, store=True, target_fpr=TARGET_FPR)
    stored = (await client.get_direction("planted-varied")).calibration
    z: dict[str, list[float]] = {"last_prompt": [], "response_mean": []}
    for e in varied_prompts(planted_examples(FRESH_PAIRS, seed=98), seed=6):
        if not e.positive:
            reading = (await client.score(e.prompt.text, response=e.response, monitor=["planted-varied"])).monitor[0]
            assert reading.calibrated and reading.HasField("response_score")
            z["last_prompt"].append(reading.prompt_score)
            z["response_mean"].append(reading.response_score)
    for pooling, values in z.items():
        cal = stored[pooling]
        # One reading per example: n is the half of the ~60 held-out benign examples that set the threshold.
        assert 25 <= cal.n <= 35 and cal.target_fpr == pytest.approx(TARGET_FPR), (pooling, cal.n)
        flagged = sum(v > cal.threshold for v in values)
        low, high, expected = _order_statistic_band(cal.n, TARGET_FPR, len(values), 0.001)
        with capsys.disabled():
            print(f"\nplanted: {pooling} (n {cal.n}) over {len(values)} fresh benign examples: mean z "
                  f"{statistics.fmean(values):.3f}, sd {statistics.pstdev(values):.3f}, "
                  f"FPR {flagged / len(values):.4f} (target {TARGET_FPR}; from n = {cal.n} expected "
                  f"{expected:.4f}, 99.9% band {low / len(values):.4f}..{high / len(values):.4f}); compute's own "
                  f"check {result.held_out_fpr[pooling]:.4f}")
        assert low <= flagged <= high, (pooling, flagged, low, high)
        assert abs(statistics.fmean(values)) < 0.5 and 0.6 < statistics.pstdev(values) < 1.6, pooling


def _order_statistic_band(n: int, target_fpr: float, m: int, outside: float) -> tuple[int, int, float]:
    """The threshold is the z of the rank-r reading of n benign ones (torch.quantile "higher" at 1 - target_fpr,
    diffmeans.calibrate), so the share p of fresh benign readings above it is Beta(n - r + 1, r) distributed, and
    the count of m fresh ones above it beta-binomial: (lowest, highest count in its central 1 - outside, E[p])."""
    rank = math.ceil((1 - target_fpr) * (n - 1)) + 1
    a, b = n - rank + 1, rank

    def log_beta(x: float, y: float) -> float:
        return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)

    pmf = [math.exp(math.lgamma(m + 1) - math.lgamma(k + 1) - math.lgamma(m - k + 1)
                    + log_beta(k + a, m - k + b) - log_beta(a, b)) for k in range(m + 1)]
    cdf = list(itertools.accumulate(pmf))
    low = next(k for k, c in enumerate(cdf) if c > outside / 2)
    high = next(k for k, c in enumerate(cdf) if c >= 1 - outside / 2)
    return low, high, a / (a + b)


async def test_engine_capture_matches_an_nnsight_trace(engine: Engine, planted: tuple[object, torch.Tensor]) -> None:
    """The independent reference: the same difference of means from nnsight traces of a copy of the weights
    (organism/capture.py), over the same train split and the same positions (response tokens but the last)."""
    loaded = planted[0]
    examples = planted_examples(30, seed=5)
    events = [e async for e in engine.compute_direction(ComputeRequest("nnsight-check", examples=tuple(examples)))]
    computed = events[-1].direction  # type: ignore[union-attr]
    tok = loaded.tokenizer  # type: ignore[attr-defined]
    encoded = []
    for e in examples:
        prompt = tok.encode(e.prompt.text, add_special_tokens=True)
        encoded.append(Encoded(tuple(prompt + tok.encode(e.response, add_special_tokens=False)[:-1]), len(prompt)))
    labels = [e.positive for e in examples]
    train, _ = held_out_split(labels, [tuple(x.ids[: x.answer_start]) for x in encoded], 0.3, 0)
    layers = list(range(4))
    traced = {
        y: capture_nnsight(loaded.model, tok, [encoded[i] for i in train if labels[i] == y], layers,  # type: ignore[attr-defined]
                           int(tok.pad_token_id), set())
        for y in (True, False)
    }
    for layer in layers:
        reference = traced[True].mean[layer].mean(0) - traced[False].mean[layer].mean(0)
        assert cosine(computed.vectors[layer], reference) > 0.9999
        assert torch.allclose(computed.vectors[layer], reference, atol=1e-4, rtol=1e-3)


async def test_live_traffic_batched_with_a_compute_is_untouched(client: AsyncSteeringClient) -> None:
    """Captures share the serving batches with live requests, which must come out as they do alone."""
    prompts = [f"Once upon a time {i}" for i in range(6)]
    alone = [list((await client.generate(p, max_new_tokens=24, seed=i)).token_ids) for i, p in enumerate(prompts)]
    examples = [{"prompt": e.prompt.text, "response": e.response, "label": e.positive} for e in planted_examples(60)]
    stream = client.compute_direction_stream("concurrent", examples=examples)
    assert (await anext(stream)).HasField("progress")  # the job is running: the generations join its batches
    beside = asyncio.gather(*(client.generate(p, max_new_tokens=24, seed=i) for i, p in enumerate(prompts)))
    events = [e async for e in stream]
    assert [list(r.token_ids) for r in await beside] == alone
    assert events[-1].result.layers and not events[-1].result.stored


async def test_cancelling_frees_the_engine(client: AsyncSteeringClient, engine: Engine) -> None:
    stream = client.compute_direction_stream("cancelled", examples=[
        {"prompt": e.prompt.text, "response": e.response, "label": e.positive} for e in planted_examples(40)])
    first = await anext(stream)
    assert first.HasField("progress")
    await stream.aclose()
    for _ in range(500):
        if not engine._streams:
            break
        await asyncio.sleep(0.01)
    assert not engine._streams and "cancelled" not in engine.registry.names()
    events = [e async for e in engine.compute_direction(ComputeRequest("again", planted_examples(10)))]
    assert isinstance(events[-1], ComputeResult)


@pytest.mark.parametrize(("name", "request_", "field"), BAD, ids=[b[0] for b in BAD])
async def test_bad_input_is_refused_naming_the_field(
    client: AsyncSteeringClient, server: SteeringServer, caplog: pytest.LogCaptureFixture, name: str,
    request_: pb.ComputeDirectionRequest, field: str,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.SteeringServiceStub(channel)

        async def call() -> None:
            [m async for m in stub.ComputeDirection(request_)]

        await expect_status(call(), grpc.StatusCode.INVALID_ARGUMENT, field)
    assert (await client.generate("Hi", max_new_tokens=3)).token_ids
    assert_no_unexpected_errors(caplog)
