"""`steering-client` against a real server over the fake engine: every RPC, --json with every field, tokens, TLS,
refused flags, Ctrl-C and a server that goes away mid-call."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from steering_client.cli import main

from steering_server.direction_files import save_direction
from steering_server.service import SteeringServer, Tls

from ..service.fake_engine import HIDDEN, LAYERS, FakeEngine, make_direction
from ..service.helpers import serving
from ..service.test_auth import _certificates

ROOT = Path(__file__).resolve().parents[2]


async def cli(capsys: pytest.CaptureFixture[str], port: int | str, *args: str) -> tuple[int, str, str]:
    """Run the command in a thread (the server runs on this event loop); its exit code, stdout and stderr."""
    target = port if isinstance(port, str) else f"127.0.0.1:{port}"
    code = await asyncio.to_thread(main, ["--target", target, "--connect-timeout", "20", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def cli_json(capsys: pytest.CaptureFixture[str], port: int, *args: str) -> Any:
    code, out, err = await cli(capsys, port, "--json", *args)
    assert code == 0, err
    return json.loads(out)


async def test_every_rpc_is_a_command(
    server: SteeringServer, engine: FakeEngine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    port = server.port
    info = await cli_json(capsys, port, "info")
    assert info["num_layers"] == 4 and info["limits"]["allow_red_team"] is False
    assert (await cli_json(capsys, port, "tokenize", "ab"))["token_ids"] == [97, 98]
    assert (await cli_json(capsys, port, "health"))["status"] == "SERVING"
    assert await cli(capsys, port, "health", "--service", "") == (0, "SERVING\n", "")

    save_direction(tmp_path / "extra.safetensors", make_direction("extra", monitor_layer=1))
    put = await cli_json(capsys, port, "direction", "put", str(tmp_path / "extra.safetensors"), "--name", "extra",
                         "--description", "from a file", "--removal", "clamp:0:prompt:1")
    assert put["direction"]["monitor_layer"] == 1 and put["direction"]["removal"]["mode"] == "CLAMP"
    assert put["direction"]["removal"]["layers"] == [1]
    names = [d["name"] for d in (await cli_json(capsys, port, "direction", "list"))["directions"]]
    assert names == ["extra", "misalignment"]
    got = await cli_json(capsys, port, "direction", "get", "extra", "--vectors")
    assert got["description"] == "from a file" and len(got["vectors"]) == 4
    code, out, _ = await cli(capsys, port, "direction", "get", "extra")
    assert code == 0 and "monitor layer: 1" in out and "removal: extra:clamp:0:1:prompt" in out
    assert (await cli(capsys, port, "direction", "delete", "extra"))[:2] == (0, "deleted extra\n")
    assert "extra" not in engine.directions

    policy = await cli_json(capsys, port, "policy", "set", "--steer", "misalignment:clamp:0::prompt", "--enforced",
                            "--alert", "misalignment:record:3:running")
    assert policy["enforced"] is True and policy["terms"][0]["positions"] == "PROMPT_POSITIONS"
    (rule,) = policy["alerts"]
    assert (rule["action"], rule["scope"], rule["threshold"]) == ("RECORD", "RUNNING_SCORE", 3.0)
    assert await cli_json(capsys, port, "policy", "get") == policy
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    assert (await cli(capsys, port, "policy", "set", "--clear"))[0] == 0
    assert await cli_json(capsys, port, "policy", "set", "--file", str(tmp_path / "policy.json")) == policy
    assert (await cli(capsys, port, "policy", "set", "--clear"))[0] == 0
    assert "no policy" in (await cli(capsys, port, "policy", "get"))[1]

    reply = await cli_json(capsys, port, "generate", "Hello", "--max-new-tokens", "6", "--seed", "2")
    events = (await cli(capsys, port, "--json", "stream", "Hello", "--max-new-tokens", "6", "--seed", "2"))[1]
    assert json.loads(events.splitlines()[-1])["final"]["token_ids"] == reply["token_ids"]
    compared = await cli_json(capsys, port, "compare", "Hello", "--max-new-tokens", "6", "--variant", "plain",
                              "--variant", "off=misalignment:clamp:0")
    assert [v["name"] for v in compared["variants"]] == ["plain", "off"]
    scored = await cli_json(capsys, port, "score", "Hello", "--response-token-ids", "97,98,99")
    assert scored["response_token_ids"] == [97, 98, 99]


async def test_direction_put_reads_every_import_format_through_the_server(
    server: SteeringServer, engine: FakeEngine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import numpy as np

    table = np.random.default_rng(0).standard_normal((LAYERS + 1, HIDDEN)).astype(np.float32)
    np.save(tmp_path / "persona.npy", table)  # persona-vectors numbering: row l + 1 is layer l
    put = await cli_json(capsys, server.port, "direction", "put", str(tmp_path / "persona.npy"), "--name", "pv",
                         "--numbering", "hidden_states", "--monitor-layer", "2")
    assert put["direction"]["layers"] == list(range(LAYERS)) and put["direction"]["monitor_layer"] == 2
    stored = engine.directions["pv"].vectors[0]
    assert np.allclose(stored.numpy() / np.linalg.norm(stored.numpy()), table[1] / np.linalg.norm(table[1]),
                       atol=1e-6)
    code, _, err = await cli(capsys, server.port, "direction", "put", str(tmp_path / "persona.npy"), "--name", "x")
    assert code == 1 and "INVALID_ARGUMENT" in err and "numbering" in err  # ambiguous without it: the server says
    code, _, err = await cli(capsys, server.port, "direction", "put", str(tmp_path / "missing.npy"))
    assert code == 2 and "direction put: cannot read" in err and err.count("\n") == 1


async def test_direction_compute_reports_progress_and_writes_the_file(
    server: SteeringServer, engine: FakeEngine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rows = [{"prompt": f"question {i}", "response": f"well {'zz this is zz' if pos else 'so this is an'} answer {i}",
             "label": "positive" if pos else "negative"} for i in range(12) for pos in (True, False)]
    (tmp_path / "examples.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "computed.safetensors"
    code, text, err = await cli(capsys, server.port, "direction", "compute", "computed", "--examples",
                                str(tmp_path / "examples.jsonl"), "--store", "--out", str(out))
    assert code == 0, err
    assert "[compute] capture: 24/24 (100%)" in err  # progress lines (not a terminal), the last of each stage
    assert text.startswith("computed: monitor layer ") and "stored" in text and "auroc" in text
    assert out.read_bytes()[:8] and "computed" in engine.directions
    result = await cli_json(capsys, server.port, "direction", "compute", "again", "--examples",
                            str(tmp_path / "examples.jsonl"), "--layers", "0,1")
    assert [s["layer"] for s in result["layers"]] == [0, 1] and result["stored"] is False
    assert result["safetensors"] == ""  # not asked for


async def test_direction_compute_refuses_bad_flags_in_one_line_before_any_work(
    server: SteeringServer, engine: FakeEngine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "examples.jsonl").write_text(json.dumps({"prompt": "q", "response": "a", "label": "positive"}) + "\n")
    (tmp_path / "persona.json").write_text('["q"]')
    examples = ("--examples", str(tmp_path / "examples.jsonl"))
    for args, expected in (
        ((*examples, "--out", str(tmp_path / "missing/d.safetensors")), "--out"),
        ((*examples, "--out", str(tmp_path)), "is a directory"),
        (("--persona", str(tmp_path / "persona.json")),
         f"--persona {tmp_path / 'persona.json'}: expected a JSON object"),
        ((*examples, "--layers", "1,x"), "--layers 1,x: expected comma-separated layer numbers"),
    ):
        code, _, err = await cli(capsys, server.port, "direction", "compute", "bad", *args)
        assert code == 2 and expected in err and err.count("\n") == 1, err  # one line, no traceback
    assert "bad" not in engine.directions and not (tmp_path / "missing").exists()


async def test_direction_compute_keeps_a_result_it_could_not_write(
    server: SteeringServer, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--out went away during the job (the up-front check passed): the file is saved elsewhere, said in one line."""
    rows = [{"prompt": f"q {i}", "response": f"a {i}", "label": "positive" if i % 2 else "negative"}
            for i in range(24)]
    (tmp_path / "examples.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.setattr("steering_client.compute.check_writable", lambda path, flag="--out": None)
    code, text, err = await cli(capsys, server.port, "direction", "compute", "late", "--examples",
                                str(tmp_path / "examples.jsonl"), "--out", str(tmp_path / "gone/d.safetensors"))
    assert code == 1 and text.startswith("late: monitor layer "), err  # the result is still printed
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    spare = Path(line.split("saved to ")[1].split(" instead")[0])
    assert "--out" in line and spare.read_bytes()[:8]
    spare.unlink()


async def test_json_prints_every_field_zeros_included(
    server: SteeringServer, engine: FakeEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    engine.registry.put(make_direction("first", monitor_layer=0))
    reply = await cli_json(capsys, server.port, "generate", "Hi", "--max-new-tokens", "3", "--monitor", "first",
                           "--temperature", "0")
    (scores,) = reply["monitor"]
    assert scores["layer"] == 0 and scores["post_intervention"] is False and scores["token_scores"] == []
    assert reply["text_tail"] == "" and reply["alerts"] == []
    listed = await cli_json(capsys, server.port, "direction", "list")
    first = next(d for d in listed["directions"] if d["name"] == "first")
    assert first["monitor_layer"] == 0 and first["description"] == "" and first["vectors"] == []


async def test_stop_threshold_and_no_monitor(server: SteeringServer, capsys: pytest.CaptureFixture[str]) -> None:
    stopped = await cli_json(capsys, server.port, "generate", "Hello", "--max-new-tokens", "20",
                             "--stop-threshold", "-1000")
    assert stopped["stop_reason"] == "MONITOR_ALERT"
    quiet = await cli_json(capsys, server.port, "generate", "Hello", "--max-new-tokens", "3", "--no-monitor")
    assert quiet["monitor"] == []


async def test_duplicate_or_unnamed_variants_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for variants, message in (
        (["a=misalignment:clamp:0", "a"], "--variant: the name 'a' is given twice"),
        (["=misalignment"], "the variant needs a name"),
    ):
        args = ["compare", "Hi", *[f"--variant={v}" for v in variants]]
        code, _, err = await cli(capsys, "127.0.0.1:1", *args)  # refused before connecting anywhere
        assert code == 2 and err.count("\n") == 1 and message in err


async def test_tokens_from_flag_file_or_environment(
    engine: FakeEngine, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    async with serving(engine, admin_token="s3cret") as srv:
        code, _, err = await cli(capsys, srv.port, "policy", "set", "--clear")
        assert code == 1 and "UNAUTHENTICATED" in err and "--token-file" in err
        assert (await cli(capsys, srv.port, "--token", "s3cret", "policy", "set", "--clear"))[0] == 0
        token_file = str(tmp_path / "token")
        assert (await cli(capsys, srv.port, "policy", "set", "--clear", "--token-file", token_file))[0] == 0
        monkeypatch.setenv("STEERING_TOKEN", "s3cret")
        assert (await cli(capsys, srv.port, "policy", "set", "--clear"))[0] == 0
        monkeypatch.setenv("STEERING_TOKEN", "wrong")
        assert (await cli(capsys, srv.port, "policy", "set", "--clear"))[0] == 1


async def test_tls_and_mutual_tls(engine: FakeEngine, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    c = _certificates(tmp_path)
    ca, cert, key = (str(tmp_path / n) for n in ("ca.pem", "client.pem", "client.key"))
    async with serving(engine, tls=Tls(c["server.pem"], c["server.key"], client_ca=c["ca.pem"])) as srv:
        target = f"localhost:{srv.port}"
        assert (await cli(capsys, target, "--tls-ca", ca, "--tls-cert", cert, "--tls-key", key, "info"))[0] == 0
        code, _, err = await cli(capsys, target, "--connect-timeout", "1", "--tls-ca", ca, "info")  # no client cert
        assert code == 1 and "cannot reach steering-server" in err
    code, _, err = await cli(capsys, "localhost:1", "--tls-ca", str(tmp_path / "missing.pem"), "info")
    assert code == 2 and err.count("\n") == 1 and "--tls-ca: cannot read" in err
    code, _, err = await cli(capsys, "localhost:1", "--tls-ca", ca, "--tls-cert", cert, "info")
    assert code == 2 and "--tls-cert and --tls-key go together" in err


async def test_an_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await cli(capsys, "127.0.0.1:1", "--connect-timeout", "0.5", "info")
    assert (code, out) == (1, "") and err.count("\n") == 1 and "cannot reach steering-server at 127.0.0.1:1" in err


async def test_scores_are_coloured_only_when_asked_or_on_a_terminal(
    server: SteeringServer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("stream", "Hello", "--max-new-tokens", "8", "--seed", "2", "--token-scores")
    code, plain, plain_err = await cli(capsys, server.port, *args)  # captured: not a terminal
    assert code == 0 and "\x1b[" not in plain + plain_err
    code, coloured, _ = await cli(capsys, server.port, "--colour", "always", *args)
    assert code == 0 and "\x1b[" in coloured
    assert _strip_ansi(coloured) == plain


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


async def test_the_server_going_away_mid_call_is_named(engine: FakeEngine, capsys: pytest.CaptureFixture[str]) -> None:
    engine.hold()  # the stream stops after its first token until released
    async with serving(engine) as srv:
        call = asyncio.ensure_future(
            cli(capsys, srv.port, "stream", "Hello", "--max-new-tokens", "8")
        )
        while not engine.active:
            await asyncio.sleep(0.01)
        await srv.stop(0.1)  # the grace runs out: grpc cancels the running call
        code, _, err = await call
    assert code == 1 and "the server went away during the call" in err and err.count("\n") == 1


async def test_ctrl_c_mid_stream_prints_one_line(engine: FakeEngine) -> None:
    engine.hold()
    async with serving(engine) as srv:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'clients/python'}"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "steering_client.cli", "--target", f"127.0.0.1:{srv.port}", "stream", "Hello",
            "--max-new-tokens", "8", stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        assert proc.stdout is not None and proc.stderr is not None
        assert await asyncio.wait_for(proc.stdout.read(1), 60)  # the first token arrived; the rest is held
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 30)
        err = (await proc.stderr.read()).decode()
        while engine.active:  # the interrupted call was cancelled on the server
            await asyncio.sleep(0.01)
    assert code == 130 and err == "interrupted\n"


def test_help_is_complete_and_fast_to_load() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from steering_client import cli\n"
         "try: cli.main(['--help'])\nexcept SystemExit: pass\n"
         "print('rich' in sys.modules, 'torch' in sys.modules)"],
        capture_output=True, text=True, check=True, cwd=ROOT / "clients/python",
    ).stdout
    for command in ("generate", "stream", "compare", "score", "watch", "direction", "policy", "info", "tokenize",
                    "health"):
        assert command in out
    assert out.strip().endswith("False False")  # rich is loaded only to colour a terminal
