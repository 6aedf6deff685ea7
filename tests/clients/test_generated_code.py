"""The generated code in the client package is exactly what scripts/gen_proto.sh makes from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "clients/python/steering_client/_proto"


def test_generated_code_is_in_sync_with_the_proto(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(ROOT / "scripts/gen_proto.sh"), str(tmp_path)],
        check=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    fresh = {
        p.relative_to(tmp_path / "steering_client/_proto"): p.read_bytes()
        for p in (tmp_path / "steering_client/_proto").rglob("*")
        if p.is_file()
    }
    committed = {
        p.relative_to(GENERATED): p.read_bytes()
        for p in GENERATED.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert sorted(fresh) == sorted(committed), "files differ: run bash scripts/gen_proto.sh"
    stale = [str(name) for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated files {stale}: run bash scripts/gen_proto.sh"


def test_generated_imports_are_package_absolute() -> None:
    grpc_module = (GENERATED / "steering/v1/steering_pb2_grpc.py").read_text()
    assert "from steering_client._proto.steering.v1 import steering_pb2" in grpc_module


def test_the_proto_declares_the_api_clients_rely_on() -> None:
    from steering_client import pb

    service = pb.DESCRIPTOR.services_by_name["SteeringService"]
    assert service.full_name == "steering.v1.SteeringService"
    assert {m.name for m in service.methods} >= {
        "Generate",
        "GenerateStream",
        "Compare",
        "Score",
        "ListDirections",
        "GetDirection",
        "PutDirection",
        "DeleteDirection",
        "GetSteering",
        "SetSteering",
        "ModelInfo",
        "Tokenize",
    }
    assert service.methods_by_name["GenerateStream"].server_streaming
    fields = pb.GenerateRequest.DESCRIPTOR.fields_by_name
    assert {"prompt", "messages", "sampling", "steering", "monitor"} <= set(fields)
    assert set(pb.SamplingParams.DESCRIPTOR.fields_by_name) >= {
        "max_new_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "stop",
    }
    assert set(pb.SteeringTerm.DESCRIPTOR.fields_by_name) >= {"direction", "mode", "strength", "layers"}
    assert set(pb.SteeringMode.keys()) >= {"ABLATE", "ADD", "CLAMP"}
    assert set(pb.GenerateResponse.DESCRIPTOR.fields_by_name) >= {
        "text",
        "token_ids",
        "stop_reason",
        "usage",
        "monitor",
    }
    assert set(pb.DirectionScores.DESCRIPTOR.fields_by_name) >= {
        "direction",
        "layer",
        "response_score",
        "prompt_score",
        "token_scores",
        "calibrated",
        "post_intervention",
    }
    assert set(pb.StopReason.keys()) >= {"MAX_TOKENS", "EOS_TOKEN", "STOP_SEQUENCE", "CANCELLED", "MONITOR_ALERT"}
