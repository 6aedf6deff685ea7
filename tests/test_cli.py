"""`steering-server`: flags become the engine configuration; serve runs until SIGTERM; organism commands plug in."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import types
from dataclasses import replace

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

    task = asyncio.ensure_future(serve(EngineConfig(model="m"), "127.0.0.1", 0, start_engine, on_serving=ports.append))
    while not ports and not task.done():
        await asyncio.sleep(0.01)
    assert ports, task.result()
    async with AsyncSteeringClient(f"127.0.0.1:{ports[0]}") as client:
        assert (await client.generate("Hi", max_new_tokens=3)).token_ids
    os.kill(os.getpid(), signal.SIGTERM)
    await task
    assert engine.stopping  # shut down after the server stopped


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
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text


def test_a_missing_direction_file_is_reported_not_crashed(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def start_engine(config: EngineConfig) -> FakeEngine:
        from steering_server.direction_files import load_direction

        load_direction(config.directions[0][1])  # what the real engine does first
        raise AssertionError("unreachable")

    monkeypatch.setattr("steering_server.engine.start_engine", start_engine)
    assert main(["serve", "--port", "0", "--direction", "d=/nonexistent/d.safetensors"]) == 2
    assert "cannot start: path: direction file '/nonexistent/d.safetensors' does not exist" in caplog.text


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
