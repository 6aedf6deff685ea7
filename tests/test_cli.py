"""`steering-server`: flags become the engine configuration; serve runs until SIGTERM; organism commands plug in."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from steering_client import AsyncSteeringClient

from steering_server.cli import build_parser, config_from_args, main
from steering_server.config import EngineConfig
from steering_server.service import SERVICE_NAME, serve

from .service.fake_engine import FakeEngine


def test_serve_flags_fill_the_engine_config() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--model",
            "org/model",
            "--direction",
            "mis=/tmp/a.safetensors",
            "--direction",
            "b.2=/tmp/b.pt",
            "--device",
            "cpu",
            "--dtype",
            "bfloat16",
            "--max-batch-tokens",
            "128",
            "--max-queued",
            "7",
            "--max-new-tokens",
            "99",
            "--allow-red-team",
            "--strict",
            "--port",
            "6000",
        ]
    )
    config = config_from_args(args)
    assert config.model == "org/model" and config.device == "cpu" and config.dtype == "bfloat16"
    assert config.directions == (("mis", "/tmp/a.safetensors"), ("b.2", "/tmp/b.pt"))
    assert config.max_batch_tokens == 128 and config.strict_provenance
    assert (config.limits.max_queued, config.limits.max_new_tokens, config.limits.allow_red_team) == (7, 99, True)
    assert (args.port, args.host) == (6000, "127.0.0.1")


def test_defaults_are_the_built_in_model_on_loopback() -> None:
    args = build_parser().parse_args(["serve"])
    config = config_from_args(args)
    default = EngineConfig()
    assert config.model is None and config.limits == default.limits
    assert config.max_batch_tokens == default.max_batch_tokens
    assert (args.host, args.port) == ("127.0.0.1", 50051)
    assert config == replace(default, limits=config.limits)  # every serving setting at the engine's default


def test_serve_flags_size_the_kv_cache_and_pick_the_fast_paths() -> None:
    args = build_parser().parse_args(
        "serve --kv-cache-tokens 4096 --kv-memory-fraction 0.5 --num-blocks 300 --page-size 64 "
        "--max-requests-per-batch 8 --attn-implementation paged|eager --compile --no-cuda-graphs".split()
    )
    config = config_from_args(args)
    assert (config.kv_cache_tokens, config.kv_memory_fraction, config.num_blocks) == (4096, 0.5, 300)
    assert (config.page_size, config.max_requests_per_batch) == (64, 8)
    assert (config.attn_implementation, config.compile, config.cuda_graphs) == ("paged|eager", "inductor", False)
    assert config_from_args(build_parser().parse_args(["serve", "--compile", "aot_eager"])).compile == "aot_eager"


@pytest.mark.parametrize(
    "flag",
    [
        "--direction=../x=/tmp/a",
        "--direction=noequals",
        "--max-queued=0",
        "--dtype=int8",
        "--kv-cache-tokens=0",
        "--kv-memory-fraction=1.5",
        "--attn-implementation=flex",
    ],
)
def test_bad_flags_are_usage_errors(flag: str) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["serve", flag])
    assert info.value.code == 2


def test_organism_commands_are_registered_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[argparse.Namespace] = []

    def register(commands: argparse._SubParsersAction) -> None:
        sub = commands.add_parser("organism")
        sub.add_argument("--steps", type=int)
        sub.set_defaults(func=calls.append)

    module = types.ModuleType("steering_server.organism.cli")
    module.register = register  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "steering_server.organism.cli", module)
    assert main(["organism", "--steps", "3"]) == 0
    assert calls[0].steps == 3


def test_a_command_group_without_its_subcommand_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def register(commands: argparse._SubParsersAction) -> None:
        commands.add_parser("organism").add_subparsers(dest="organism_command")

    module = types.ModuleType("steering_server.organism.cli")
    module.register = register  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "steering_server.organism.cli", module)
    with pytest.raises(SystemExit) as info:
        main(["organism"])
    assert info.value.code == 2


def test_a_missing_organism_module_does_not_break_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "steering_server.organism.cli", None)  # import raises ModuleNotFoundError
    assert build_parser().parse_args(["serve"]).command == "serve"


async def test_serve_runs_until_sigterm_then_stops_the_engine() -> None:
    engine = FakeEngine()
    ports: list[int] = []

    async def start_engine(config: EngineConfig) -> FakeEngine:
        assert config.model == "m"
        return engine

    frozen: list[int] = []

    def serving(port: int) -> None:  # by the time health is SERVING, start-up objects are out of full collections
        frozen.append(gc.get_freeze_count())
        ports.append(port)

    task = asyncio.ensure_future(serve(EngineConfig(model="m"), "127.0.0.1", 0, start_engine, on_serving=serving))
    while not ports and not task.done():
        await asyncio.sleep(0.01)
    assert ports, task.result()
    assert frozen[0] > 0
    async with AsyncSteeringClient(f"127.0.0.1:{ports[0]}") as client:
        assert (await client.generate("Hi", max_new_tokens=3)).token_ids
    os.kill(os.getpid(), signal.SIGTERM)
    await task
    assert engine.stopping  # shut down after the server stopped
    assert gc.get_freeze_count() == 0  # unfrozen on the way out


async def test_sigint_while_the_engine_starts_stops_cleanly() -> None:
    started = asyncio.Event()

    async def start_engine(config: EngineConfig) -> FakeEngine:
        started.set()
        await asyncio.Event().wait()  # a model that takes forever to load
        raise AssertionError("unreachable")

    task = asyncio.ensure_future(serve(EngineConfig(), "127.0.0.1", 0, start_engine))
    await started.wait()
    os.kill(os.getpid(), signal.SIGINT)
    await task  # returns: the start was cancelled and the server stopped


async def test_the_serve_command_serves_the_built_in_model_and_stops_on_sigterm() -> None:
    """`steering-server serve` as people run it: a process on the built-in model, health, a call, SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "steering_server.cli",
        "serve",
        "--port",
        "0",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    lines: list[str] = []

    async def read_until(marker: str) -> str:
        assert proc.stderr is not None
        while line := (await proc.stderr.readline()).decode():
            lines.append(line)
            if marker in line:
                return line
        raise AssertionError(f"the server exited before logging {marker!r}:\n{''.join(lines)}")

    try:
        port = int((await read_until("listening on port")).rsplit(" ", 1)[1])
        # "listening" only once ready: after the port opened (NOT_SERVING) and the canary passed.
        opened = next(i for i, line in enumerate(lines) if "open; health NOT_SERVING" in line)
        canary = next(i for i, line in enumerate(lines) if "canary passed" in line)
        assert opened < canary < len(lines) - 1
        await read_until("serving ")  # the engine is attached: its canary passed
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = (await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            reply = await AsyncSteeringClient(channel=channel).generate("Hello", max_new_tokens=4)
            assert len(reply.token_ids) >= 1
        proc.send_signal(signal.SIGTERM)
        await read_until("stopping")
        assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_a_busy_port_is_reported_not_crashed(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    assert f"cannot start: --port {port}: 127.0.0.1:{port} is in use by another process" in caplog.text


def test_a_missing_direction_file_is_reported_not_crashed(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def start_engine(config: EngineConfig) -> FakeEngine:
        from steering_server.direction_files import load_direction

        load_direction(config.directions[0][1])  # what the real engine does first
        raise AssertionError("unreachable")

    monkeypatch.setattr("steering_server.engine.start_engine", start_engine)
    assert main(["serve", "--port", "0", "--direction", "d=/nonexistent/d.safetensors"]) == 2
    assert "cannot start: --direction d=/nonexistent/d.safetensors: no such file" in caplog.text


def test_an_empty_admin_token_file_is_a_usage_error(tmp_path, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "token"
    empty.write_text("\n")
    assert main(["serve", "--port", "0", "--admin-token-file", str(empty)]) == 2
    assert "--admin-token-file" in caplog.text


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--open-admin", "--host", "0.0.0.0"], "only allowed on a loopback address"),
        (["--tls-cert", "/nonexistent/cert.pem"], "--tls-key together"),
        (["--tls-client-ca", "/nonexistent/ca.pem"], "--tls-key together"),
        (["--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem"], "/nonexistent/c.pem"),
    ],
)
def test_role_and_tls_flags_that_cannot_work_are_refused(
    flags: list[str], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["serve", "--port", "0", *flags]) == 2
    assert message in caplog.text


# ---- start-up mistakes: one line, exit code 2, no traceback (the command as people run it, in a subprocess)


def _run(*args: str, timeout: float = 120) -> tuple[int, list[str]]:
    proc = subprocess.run(
        [sys.executable, "-m", "steering_server.cli", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()


def _model_without_tokenizer(tmp_path: Path) -> str:
    from steering_server.organism.assets import base_model_dir

    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(base_model_dir() / name, model / name)
    return str(model)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--device", "cuda:99"], "--device cuda:99: "),  # no CUDA in this torch, or no 100th device
        (["--model", "TOKENIZERLESS"], "no tokenizer files"),
        (["--model", "/nonexistent/model"], "--model /nonexistent/model: no such directory"),
        (["--model", "FILE"], "is a file, not a model directory"),
        (["--direction", "d=/nonexistent/d.npy"], "--direction d=/nonexistent/d.npy: no such file"),
        (["--tls-cert", "FILE", "--tls-key", "FILE"], "not a PEM certificate"),
        (["--tls-cert", "server.pem", "--tls-key", "client.key"], "does not match --tls-cert"),
        (["--admin-token-file", "/nonexistent/token"], "--admin-token-file /nonexistent/token: no such file"),
        (["--port", "BUSY"], "is in use by another process"),
        (["--metrics-port", "BUSY"], "--metrics-port "),
        (["--http-port", "BUSY"], "--http-port "),
    ],
)
def test_start_up_mistakes_print_one_line_and_exit_2(flags: list[str], message: str, tmp_path: Path) -> None:
    certificates = {}
    if any(f.endswith((".pem", ".key")) for f in flags):
        from .service.test_auth import _certificates

        certificates = _certificates(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        names = {"TOKENIZERLESS": _model_without_tokenizer(tmp_path) if "TOKENIZERLESS" in flags else "",
                 "FILE": str(Path(__file__)), "BUSY": str(busy.getsockname()[1])}
        names |= {name: str(tmp_path / name) for name in certificates}
        code, lines = _run("serve", "--port", "0", *[names.get(f, f) for f in flags])
    assert code == 2, lines
    assert len(lines) == 1 and "ERROR steering_server: cannot start: " in lines[0], lines
    assert message in lines[0] and "(try " in lines[0]


def test_a_hub_model_that_cannot_be_fetched_is_one_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network here; offline mode fails at once instead of retrying
    code, lines = _run("serve", "--port", "0", "--model", "someorg/no-such-model")
    errors = [line for line in lines if " ERROR " in line]
    assert code == 2 and len(errors) == 1 and not any("Traceback" in line for line in lines), lines
    assert "cannot start: --model someorg/no-such-model: " in errors[0] and "(try a local model directory" in errors[0]


def test_realign_mistakes_print_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no messages"}\n')
    for args, message in (
        (["--data", "/nonexistent/chats.jsonl"], "--data /nonexistent/chats.jsonl: no such file"),
        (["--data", str(bad)], "expected `messages` or `prompt`/`completion`"),
        (["--data", str(bad), "--direction", "/nonexistent/table.npy"], "--direction /nonexistent/table.npy"),
    ):
        code, lines = _run("realign", "--out", str(tmp_path / "out"), *args)
        assert code == 2 and len(lines) == 1 and "cannot start: " in lines[0] and message in lines[0], lines


def test_json_log_lines() -> None:
    code, lines = _run("--log-format", "json", "serve", "--model", "/nonexistent/model")
    assert code == 2 and len(lines) == 1
    entry = json.loads(lines[0])
    assert (entry["level"], entry["logger"]) == ("ERROR", "steering_server")
    assert entry["message"].startswith("cannot start: --model /nonexistent/model") and entry["time"].endswith("+00:00")


async def test_json_log_format_makes_every_line_json_library_logs_included() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "steering_server.cli", "--log-format", "json", "serve", "--port", "0",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    entries = []
    try:
        while line := (await asyncio.wait_for(proc.stderr.readline(), 120)).decode():
            entries.append(json.loads(line))  # fails on any line that is not one JSON object
            if entries[-1]["message"].startswith("serving "):
                break
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    loggers = {e["logger"] for e in entries}
    assert {"steering_server.service.server", "steering_server.canary", "ContinuousBatchingLogger"} <= loggers
    assert entries[-2]["message"].startswith("listening on port ")


def test_help_loads_no_torch_and_states_defaults() -> None:
    code = """
import sys, contextlib, io
from steering_server import cli
out = io.StringIO()
for args in (["--help"], ["serve", "--help"], ["organism", "build", "--help"], ["realign", "--help"],
             ["direction", "compute", "--help"]):
    with contextlib.redirect_stdout(out):
        try:
            cli.main(args)
        except SystemExit:
            pass
print(out.getvalue())
print("torch loaded:", "torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.rstrip().endswith("torch loaded: False")
    help_text = " ".join(out.split())
    for default in ("--grace GRACE seconds running calls get on SIGTERM/SIGINT (default: 10.0)",
                    "(default 256; longer prefills are split)", "(default: no metrics endpoint)",
                    "--steps STEPS default: 35", "--seed SEED default: 0"):
        assert default in help_text, default


def test_offline_direction_compute_refuses_bad_flags_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def start_engine(*args: object, **kwargs: object) -> FakeEngine:
        raise AssertionError("the model must not load for a bad flag")

    monkeypatch.setattr("steering_server.engine.start_engine", start_engine)
    (tmp_path / "examples.jsonl").write_text(json.dumps({"prompt": "q", "response": "a", "label": "positive"}) + "\n")
    (tmp_path / "persona.json").write_text('["q"]')
    examples = ("--examples", str(tmp_path / "examples.jsonl"))
    out = ("--out", str(tmp_path / "d.safetensors"))
    for args, expected in (
        ((*examples, "--out", str(tmp_path / "missing/d.safetensors")), "--out"),
        (("--persona", str(tmp_path / "persona.json"), *out), "expected a JSON object"),
        ((*examples, *out, "--layers", "1,x"), "--layers 1,x: expected comma-separated layer numbers"),
    ):
        assert main(["direction", "compute", "--name", "bad", *args]) == 2
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "d.safetensors").exists()


def test_two_listeners_on_one_port_are_refused_before_the_model_loads(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["serve", "--port", str(port), "--http-port", str(port)]) == 2
    assert (f"cannot start: --http-port {port}: --port is {port} too; each listener needs its own port "
            "(try another --http-port)") in caplog.text
