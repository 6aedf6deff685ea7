"""The sync client and the CLI against a running server (fake engine)."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from steering_client import AsyncSteeringClient, SteeringClient, ablate, pb
from steering_client.cli import main

from steering_server.service import SteeringServer


def _sync_calls(port: int) -> dict:
    with SteeringClient(f"127.0.0.1:{port}", timeout=30) as client:
        reply = client.generate("Hello", max_new_tokens=8, seed=2)
        stream = list(client.generate_stream("Hello", max_new_tokens=8, seed=2))
        compared = client.compare("Hello", max_new_tokens=8, seed=2)
        scored = client.score("Hello", response_token_ids=list(reply.token_ids))
        info = client.model_info()
        tokens = client.tokenize("ab")
        put = client.put_direction("extra", vectors={1: [1.0] * 8})
        listed = client.list_directions()
        got = client.get_direction("extra")
        client.delete_direction("extra")
        policy = client.set_steering([ablate("misalignment")])
        current = client.get_steering()
        client.set_steering([])
        with pytest.raises(grpc.RpcError) as info_error:
            client.generate("")
        # Leaving a stream early cancels it.
        first = next(iter(client.generate_stream("Hello", max_new_tokens=8)))
    return locals()


async def test_sync_client_covers_every_rpc(server: SteeringServer) -> None:
    r = await asyncio.to_thread(_sync_calls, server.port)
    assert r["stream"][-1].final.token_ids == r["reply"].token_ids
    assert r["compared"].variants[0].result.token_ids == r["reply"].token_ids
    assert r["scored"].monitor[0].prompt_score == r["reply"].monitor[0].prompt_score
    assert r["info"].num_layers == 4 and list(r["tokens"].token_ids) == [97, 98]
    assert r["put"].direction.name == "extra" and "extra" in [d.name for d in r["listed"].directions]
    assert r["got"].name == "extra" and r["policy"] == r["current"]
    assert r["info_error"].value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert r["first"].HasField("token")


async def test_async_client_stream_equals_generate(client: AsyncSteeringClient) -> None:
    reply = await client.generate("Hello", max_new_tokens=8, seed=2)
    final = [m async for m in client.generate_stream("Hello", max_new_tokens=8, seed=2)][-1]
    assert final.final.token_ids == reply.token_ids


def _cli(port: int, *args: str) -> int:
    return main(["--target", f"127.0.0.1:{port}", *args])


async def test_cli_generate_stream_compare_score(server: SteeringServer, capsys: pytest.CaptureFixture[str]) -> None:
    port = server.port
    assert await asyncio.to_thread(_cli, port, "generate", "Hello", "--max-new-tokens", "8", "--seed", "2") == 0
    generated = capsys.readouterr()
    async with AsyncSteeringClient(f"127.0.0.1:{port}") as client:
        reply = await client.generate("Hello", max_new_tokens=8, seed=2)
    assert generated.out == reply.text + "\n"
    assert "misalignment @ layer 2: prompt" in generated.err and "seed 2" in generated.err

    assert await asyncio.to_thread(_cli, port, "stream", "Hello", "--max-new-tokens", "8", "--seed", "2") == 0
    assert capsys.readouterr().out == reply.text + "\n"

    assert (
        await asyncio.to_thread(
            _cli,
            port,
            "compare",
            "Hello",
            "--seed",
            "2",
            "--max-new-tokens",
            "8",
            "--variant",
            "plain",
            "--variant",
            "ablated=misalignment:ablate:1",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "== plain (reference) ==" in out and "== ablated (" in out

    assert await asyncio.to_thread(_cli, port, "--json", "score", "Hello", "--response", "abc", "--token-scores") == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["response_token_ids"] == [97, 98, 99] and len(scored["monitor"][0]["token_scores"]) == 2


async def test_cli_reports_errors_with_their_status(server: SteeringServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert await asyncio.to_thread(_cli, server.port, "generate", "Hi", "--steer", "nope") == 1
    assert "error: NOT_FOUND: steering[0].direction: direction 'nope' not found" in capsys.readouterr().err
    assert main(["generate", "Hi", "--steer", "m:shift"]) == 2  # refused before connecting
    assert "bad steering mode 'shift'" in capsys.readouterr().err


def test_chat_flag_sends_messages() -> None:
    from steering_client.cli import _options, build_parser

    args = build_parser().parse_args(["generate", "Hi", "--chat", "--system", "Be kind"])
    options = _options(args)
    assert [(m.role, m.content) for m in options["messages"]] == [("system", "Be kind"), ("user", "Hi")]
    assert args.prompt is None and isinstance(options["messages"][0], pb.ChatMessage)
