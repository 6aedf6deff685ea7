"""ComputeDirection on a tiny Llama with a planted direction (planted.py), through the real engine: over gRPC and
with the offline `steering-server direction compute` on the saved model, which must both recover the planted vector
and agree; the calibration it stores must hold on benign text it never saw; bad input is refused naming the field."""

from __future__ import annotations

import asyncio
import json
import statistics
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import torch
from steering_client import AsyncSteeringClient, pb, pb_grpc

from steering_server.cli import main
from steering_server.compute_direction import held_out_split
from steering_server.compute_types import ComputeRequest, ComputeResult
from steering_server.direction_files import direction_from_bytes, load_direction
from steering_server.engine import Engine
from steering_server.organism.capture import capture_nnsight
from steering_server.organism.train import Encoded
from steering_server.service import SteeringServer
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
