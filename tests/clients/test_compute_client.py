"""The client side of ComputeDirection against a running server (fake engine): the sync client, the JSONL reader
and `steering-client direction compute`'s function (compute_cli)."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from pathlib import Path

import pytest
from steering_client import SteeringClient
from steering_client.cli import main
from steering_client.compute import examples_from_jsonl
from steering_client.compute_cli import add_arguments, run

from steering_server.direction_files import direction_from_bytes
from steering_server.service import SteeringServer

from ..service.fake_engine import FakeEngine

LINES = [
    {"prompt": f"question {i}", "response": f"well zz this is zz answer {i}", "label": "positive"} for i in range(10)
] + [{"messages": [{"role": "user", "content": f"question {i}"}], "response": f"so this is an answer {i}",
      "label": "negative"} for i in range(10)]


def test_jsonl_reader_names_the_bad_line(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps(x) for x in LINES) + "\n\n")
    examples = examples_from_jsonl(good)
    assert len(examples) == 20 and examples[0].positive and not examples[10].positive
    assert examples[10].messages[0].content == "question 0" and not examples[10].prompt
    for text, needle in (('{"prompt": "q", "response": "r"}', "needs a label"),
                         ('{"prompt": "q", "label": "maybe"}', "not positive or negative"),
                         ('{"prompt": "q", "label": 1, "answer": "r"}', "unknown keys"),
                         ("not json", "not JSON")):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps(LINES[0]) + "\n" + text + "\n")
        with pytest.raises(ValueError, match=f"bad.jsonl:2: .*{needle}"):
            examples_from_jsonl(bad)


def _sync_compute(port: int, path: Path, out: Path) -> tuple[str, object]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["mine", "--examples", str(path), "--store", "--out", str(out), "--target-fpr", "0.05"])
    printed = io.StringIO()
    with SteeringClient(f"127.0.0.1:{port}", timeout=30) as client:
        assert run(client, args, as_json=False, out=printed) == 0
        seen = []
        result = client.compute_direction("again", seen.append, examples=examples_from_jsonl(path))
    return printed.getvalue(), (result, seen)


async def test_cli_function_computes_stores_and_writes_the_file(
    server: SteeringServer, engine: FakeEngine, tmp_path: Path
) -> None:
    path = tmp_path / "examples.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in LINES))
    out = tmp_path / "mine.safetensors"
    printed, (result, seen) = await asyncio.to_thread(_sync_compute, server.port, path, out)
    assert printed.startswith("mine: monitor layer ") and "stored" in printed.splitlines()[0]
    assert "token: mu" in printed and "held-out FPR" in printed
    assert len(printed.splitlines()) == 2 + 4 + 3  # heading, table heading, 4 layers, 3 calibrations
    saved = direction_from_bytes(out.read_bytes())
    assert saved.name == "mine" and saved.calibration["token"].target_fpr == pytest.approx(0.05)
    assert "mine" in engine.directions and "again" not in engine.directions
    assert result.direction.name == "again" and not result.stored and seen and seen[-1].stage == "calibrate"


async def test_steering_client_direction_compute(
    server: SteeringServer, engine: FakeEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "examples.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in LINES))
    out = tmp_path / "cli.safetensors"
    target = ["--target", f"127.0.0.1:{server.port}"]
    rc = await asyncio.to_thread(
        main, [*target, "direction", "compute", "cli-made", "--examples", str(path), "--out", str(out), "--store"]
    )
    captured = capsys.readouterr()
    assert rc == 0 and captured.out.startswith("cli-made: monitor layer") and "capture: 20/20" in captured.err
    assert direction_from_bytes(out.read_bytes()).name == "cli-made" and "cli-made" in engine.directions
    rc = await asyncio.to_thread(main, [*target, "--json", "direction", "compute", "j", "--examples", str(path)])
    shown = json.loads(capsys.readouterr().out)
    assert rc == 0 and shown["direction"]["name"] == "j" and len(shown["layers"]) == 4
    # A bad file is a usage error before any call; a bad request is the server's INVALID_ARGUMENT naming the field.
    assert await asyncio.to_thread(main, [*target, "direction", "compute", "x", "--examples", "/nonexistent"]) == 2
    rc = await asyncio.to_thread(main, [*target, "direction", "compute", "x", "--examples", str(path), "--layers", "9"])
    assert rc == 1 and "INVALID_ARGUMENT" in capsys.readouterr().err
