"""PutDirection `file` over real gRPC against the real engine: imported files score as their vectors do, an SAE
feature arrives with its monitor part, and a refused file leaves the registry as it was."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import pytest_asyncio
import torch
from steering_client import pb, pb_grpc

from steering_server.config import EngineConfig
from steering_server.engine import Engine, start_engine
from steering_server.models import wrap_model
from steering_server.tiny_models import byte_tokenizer, tiny_model
from steering_server.types import EngineLimits

from ..engine.test_direction_imports import make_sae
from .helpers import expect_status, serving

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMPT = [1, 40, 77, 81, 95, 120, 33]
RESPONSE = [64, 101, 90, 91, 12, 250, 7]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stub() -> AsyncIterator[pb_grpc.SteeringServiceStub]:
    loaded = wrap_model(tiny_model("llama"), byte_tokenizer(), "tiny-llama")
    engine: Engine = await start_engine(EngineConfig(limits=EngineLimits(allow_red_team=True)), loaded=loaded)
    try:
        async with serving(engine) as srv, grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            yield pb_grpc.SteeringServiceStub(channel)
    finally:
        await engine.shutdown()


async def _scores(stub: pb_grpc.SteeringServiceStub, *names: str) -> dict[str, list[float]]:
    reply = await stub.Score(
        pb.ScoreRequest(
            prompt_token_ids=PROMPT,
            response_token_ids=RESPONSE,
            monitor=pb.MonitorOptions(directions=list(names), token_scores=True),
        )
    )
    return {s.direction: [s.prompt_score, *s.token_scores] for s in reply.monitor}


async def test_an_uploaded_table_scores_as_its_vectors(stub: pb_grpc.SteeringServiceStub) -> None:
    table = torch.randn(5, 64, generator=torch.Generator().manual_seed(2))  # persona-vectors: row l + 1 is layer l
    buf = io.BytesIO()
    np.save(buf, table.numpy())
    vectors = [pb.LayerVector(layer=layer, values=table[layer + 1].tolist()) for layer in range(4)]
    await stub.PutDirection(pb.PutDirectionRequest(name="by_vectors", vectors=vectors, monitor_layer=2))
    stored = await stub.PutDirection(
        pb.PutDirectionRequest(name="by_file", file=buf.getvalue(), numbering="hidden_states", monitor_layer=2)
    )
    assert list(stored.direction.layers) == [0, 1, 2, 3] and stored.direction.method == "file:npy"
    scores = await _scores(stub, "by_vectors", "by_file")
    assert scores["by_file"] == pytest.approx(scores["by_vectors"], rel=1e-6, abs=1e-6)
    # Without the numbering the same bytes are ambiguous: refused, and "by_file" is unchanged.
    await expect_status(
        stub.PutDirection(pb.PutDirectionRequest(name="by_file", file=buf.getvalue(), monitor_layer=1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "numbering",
    )
    kept = await stub.GetDirection(pb.GetDirectionRequest(name="by_file"))
    assert kept.monitor_layer == 2
    for name in ("by_vectors", "by_file"):
        await stub.DeleteDirection(pb.DeleteDirectionRequest(name=name))


async def test_an_uploaded_sae_feature(stub: pb_grpc.SteeringServiceStub, tmp_path: Path) -> None:
    sae = make_sae(tmp_path / "sae", 64, "blocks.1.hook_resid_post", d_sae=16)
    weights = (tmp_path / "sae" / "sae_weights.safetensors").read_bytes()
    cfg = (tmp_path / "sae" / "cfg.json").read_text()
    stored = await stub.PutDirection(pb.PutDirectionRequest(name="tox", file=weights, sae_config=cfg, feature=3))
    f = stored.direction.feature
    assert stored.direction.HasField("feature") and (f.index, f.activation) == (3, "jumprelu")
    assert f.threshold == pytest.approx(float(sae.threshold[3])) and f.bias == pytest.approx(float(sae.b_enc[3]))
    assert list(stored.direction.layers) == [1] and stored.direction.monitor_layer == 1
    full = await stub.GetDirection(pb.GetDirectionRequest(name="tox", include_vectors=True))
    assert full.feature.encoder == pytest.approx(sae.W_enc[:, 3].tolist())
    assert full.vectors[0].values == pytest.approx(sae.W_dec[3].tolist())
    # Scores are activations: never negative, zero below the threshold.
    scores = (await _scores(stub, "tox"))["tox"]
    assert len(scores) == len(RESPONSE) and all(s >= 0 for s in scores)
    await expect_status(
        stub.PutDirection(pb.PutDirectionRequest(name="tox2", file=weights, sae_config=cfg, feature=16)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "feature",
    )
    listed = await stub.ListDirections(pb.ListDirectionsRequest())
    assert "tox2" not in [d.name for d in listed.directions]
    await stub.DeleteDirection(pb.DeleteDirectionRequest(name="tox"))
