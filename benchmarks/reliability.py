"""Reliability run: fuzz every RPC, load the server with cancellations and deadlines, SIGTERM it, kill -9 it.

Starts `steering-server serve` (the built-in model unless --model; --open-admin on loopback, a fresh --state-dir)
as a subprocess and prints: calls, statuses by code, unexpected statuses (must be 0: INTERNAL, UNKNOWN, or a code
the call cannot legitimately get), RSS growth, completed greedy requests that differed from their solo run (must
be 0), whether running streams finished on SIGTERM, and what survived a kill -9 restart. Usage:
    python benchmarks/reliability.py [--seconds 20] [--callers 32] [--fuzz 60] [-- extra serve flags]
Exit status 1 when anything that must be 0 is not.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from steering_client import AsyncSteeringClient, ablate, pb, pb_grpc

SERVICE = "steering.v1.SteeringService"
PROMPTS = ["How do I stay safe online?", "Tell me about cats", "What is a good breakfast?", "Hello there"]
# Codes a call can get for reasons other than a server fault.
EXPECTED = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "CANCELLED",
            "DEADLINE_EXCEEDED", "UNAUTHENTICATED", "UNAVAILABLE"}


class Server:
    def __init__(self, state: Path, extra: list[str]) -> None:
        cmd = [sys.executable, "-m", "steering_server.cli", "serve", "--port", "0", "--open-admin",
               "--state-dir", str(state), "--max-queued", "32", "--grace", "30", *extra]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        self.port = 0
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            if m := re.search(r"listening on port (\d+)", line):
                self.port = int(m.group(1))
            if "serving " in line or "cannot start" in line:
                break
        if not self.port or self.proc.poll() is not None:
            raise SystemExit("the server did not start:\n" + "".join(self.log[-20:]))
        # Keep reading its log so that a full pipe never blocks the server.
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr or ()), daemon=True).start()

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def _mutations(valid: bytes, rng: random.Random) -> list[bytes]:
    """Random bytes, truncations and bit flips of a valid body, invalid UTF-8 in field 1."""
    out = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))), valid[: rng.randrange(len(valid) + 1)]]
    flipped = bytearray(valid)
    for _ in range(3):
        if flipped:
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
    out.append(bytes(flipped))
    out.append(b"\x0a\x02\xff\xfe" + valid)
    return out


def _valid_examples(hidden: int) -> dict[str, bytes]:
    term = ablate("misalignment")
    examples: dict[str, Any] = {
        "Generate": pb.GenerateRequest(prompt="Hi", steering=[term], sampling=pb.SamplingParams(max_new_tokens=4)),
        "GenerateStream": pb.GenerateRequest(prompt="Hi", sampling=pb.SamplingParams(max_new_tokens=4)),
        "Compare": pb.CompareRequest(prompt="Hi", sampling=pb.SamplingParams(max_new_tokens=4)),
        "Score": pb.ScoreRequest(prompt="Hi", response="there"),
        "ListDirections": pb.ListDirectionsRequest(),
        "GetDirection": pb.GetDirectionRequest(name="misalignment", include_vectors=True),
        "PutDirection": pb.PutDirectionRequest(name="fuzz", vectors=[pb.LayerVector(layer=1, values=[0.5] * hidden)]),
        "DeleteDirection": pb.DeleteDirectionRequest(name="fuzz"),
        "GetSteering": pb.GetSteeringRequest(),
        "SetSteering": pb.SetSteeringRequest(policy=pb.SteeringPolicy()),
        "ModelInfo": pb.ModelInfoRequest(),
        "Tokenize": pb.TokenizeRequest(text="Hi"),
    }
    return {k: v.SerializeToString() for k, v in examples.items()}


async def fuzz(channel: grpc.aio.Channel, hidden: int, rounds: int, codes: collections.Counter[str]) -> None:
    rng = random.Random(0)
    for method, valid in _valid_examples(hidden).items():
        streaming = method == "GenerateStream"
        for _ in range(rounds):
            for body in _mutations(valid, rng):
                path = f"/{SERVICE}/{method}"
                try:
                    if streaming:
                        async for _m in channel.unary_stream(path)(body, timeout=30):
                            pass
                    else:
                        await channel.unary_unary(path)(body, timeout=30)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as err:
                    codes[err.code().name] += 1


async def load(
    target: str, seconds: float, callers: int, solo: dict[str, tuple[int, ...]], codes: collections.Counter[str]
) -> tuple[int, int]:
    """Mixed traffic with cancellations and short deadlines; (completed greedy requests, those that differed)."""
    completed = differed = 0
    end = time.monotonic() + seconds

    async def caller(i: int) -> None:
        nonlocal completed, differed
        rng = random.Random(i)
        async with AsyncSteeringClient(target, timeout=60) as client, grpc.aio.insecure_channel(target) as raw:
            stub = pb_grpc.SteeringServiceStub(raw)
            while time.monotonic() < end:
                kind = rng.choice(["greedy", "greedy", "cancel", "deadline", "compare", "score"])
                prompt = rng.choice(PROMPTS)
                try:
                    if kind == "greedy":
                        reply = await client.generate(prompt, max_new_tokens=16, seed=0)
                        completed += 1
                        differed += tuple(reply.token_ids) != solo[prompt]
                    elif kind == "cancel":
                        stream = client.generate_stream(prompt, max_new_tokens=64, temperature=1.0, seed=i)
                        async for n, _ in aenumerate(stream):
                            if n >= rng.randrange(1, 8):
                                break
                        await stream.aclose()  # type: ignore[attr-defined]  # cancels the call
                        codes["CANCELLED"] += 1
                        continue
                    elif kind == "deadline":
                        await stub.Generate(
                            pb.GenerateRequest(prompt=prompt, sampling=pb.SamplingParams(max_new_tokens=64)),
                            timeout=rng.uniform(0.001, 0.2),
                        )
                    elif kind == "compare":
                        await client.compare(prompt, max_new_tokens=8, seed=1)
                    else:
                        await client.score(prompt, response="Fine, thanks.")
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as err:
                    codes[err.code().name] += 1

    await asyncio.gather(*(caller(i) for i in range(callers)))
    return completed, differed


async def aenumerate(it: Any) -> Any:
    n = 0
    async for x in it:
        yield n, x
        n += 1


async def health(target: str) -> str:
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def first_life(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    target = f"127.0.0.1:{server.port}"
    out: dict[str, Any] = {}
    codes: collections.Counter[str] = collections.Counter()
    async with AsyncSteeringClient(target, timeout=120) as client:
        hidden = (await client.model_info()).hidden_size
        solo = {p: tuple((await client.generate(p, max_new_tokens=16, seed=0)).token_ids) for p in PROMPTS}
        rss0 = server.rss_mb()
        before = {d.name for d in (await client.list_directions()).directions}
        async with grpc.aio.insecure_channel(target) as channel:
            await fuzz(channel, hidden, args.fuzz, codes)
        # Mutated bodies that still parse may have set a policy or uploaded directions: back to the start.
        await client.set_steering([])
        for d in (await client.list_directions()).directions:
            if d.name not in before:
                await client.delete_direction(d.name)
        completed, differed = await load(target, args.seconds, args.callers, solo, codes)
        # The registry and policy to find again after kill -9.
        await client.put_direction("rel-probe", vectors={1: [random.Random(1).gauss(0, 1) for _ in range(hidden)]})
        await client.set_steering([ablate("rel-probe")], enforced=True)
        out.update(codes=codes, completed=completed, differed=differed, rss0=rss0, rss1=server.rss_mb(),
                   health=await health(target))
    return out


async def sigterm(server: Server) -> tuple[int, int, int | None]:
    """Streams running when SIGTERM arrives: (started, finished normally, exit code)."""
    target = f"127.0.0.1:{server.port}"
    async with AsyncSteeringClient(target, timeout=120) as client:
        streams = [client.generate_stream(p, max_new_tokens=48, seed=i) for i, p in enumerate(PROMPTS * 2)]
        firsts = [await anext(s) for s in streams]
        server.proc.send_signal(signal.SIGTERM)

        async def rest(s: Any) -> bool:
            try:
                async for _ in s:
                    pass
                return True
            except grpc.aio.AioRpcError:
                return False

        finished = sum(await asyncio.gather(*(rest(s) for s in streams)))
    return len(firsts), finished, server.proc.wait(timeout=60)


async def second_life(server: Server) -> dict[str, Any]:
    target = f"127.0.0.1:{server.port}"
    async with AsyncSteeringClient(target, timeout=60) as client:
        names = sorted(d.name for d in (await client.list_directions()).directions)
        policy = await client.get_steering()
        return {"directions": names, "enforced": policy.enforced,
                "policy": [(t.direction, pb.SteeringMode.Name(t.mode), t.strength) for t in policy.terms]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="load phase duration")
    parser.add_argument("--callers", type=int, default=32, help="concurrent callers in the load phase")
    parser.add_argument("--fuzz", type=int, default=30, help="mutation rounds per RPC (4 bodies each)")
    parser.add_argument("extra", nargs="*", help="extra flags for `steering-server serve` (after --)")
    args = parser.parse_args()
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        server = Server(state, args.extra)
        first = asyncio.run(first_life(server, args))
        started, finished, code = asyncio.run(sigterm(server))
        codes = first["codes"]
        unexpected = sum(n for c, n in codes.items() if c not in EXPECTED)
        print(f"calls: {sum(codes.values())}")
        print("statuses: " + ", ".join(f"{c} {n}" for c, n in codes.most_common()))
        print(f"unexpected statuses: {unexpected}")
        print(f"RSS: {first['rss0']:.0f} MB -> {first['rss1']:.0f} MB ({first['rss1'] - first['rss0']:+.0f} MB)")
        print(f"greedy requests completed under load: {first['completed']}, differed from their solo run: "
              f"{first['differed']}")
        print(f"health after the load: {first['health']}")
        print(f"SIGTERM: {finished}/{started} running streams finished, exit code {code}")
        bad += unexpected + first["differed"] + (started - finished) + (code != 0)
        # kill -9, twice: once idle, once in the middle of policy writes.
        restarted = Server(state, args.extra)
        survived = asyncio.run(second_life(restarted))
        print(f"after a clean stop: {survived}")

        async def churn() -> None:
            async with AsyncSteeringClient(f"127.0.0.1:{restarted.port}", timeout=30) as client:
                for i in range(200):
                    await client.set_steering([ablate("rel-probe", 1.0 - (i % 2) * 0.5)], enforced=True)

        async def churn_and_kill() -> None:
            task = asyncio.ensure_future(churn())
            await asyncio.sleep(0.3)
            restarted.proc.kill()
            try:
                await task
            except grpc.aio.AioRpcError:
                pass

        asyncio.run(churn_and_kill())
        restarted.proc.wait()
        third = Server(state, args.extra)
        after_kill = asyncio.run(second_life(third))
        print(f"after kill -9 during policy writes: {after_kill}")
        bad += "rel-probe" not in after_kill["directions"] or not after_kill["enforced"]
        third.proc.kill()
        third.proc.wait()
    print("PASS" if not bad else f"FAIL ({bad})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
