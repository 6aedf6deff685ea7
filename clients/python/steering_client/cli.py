"""`steering-client`: generate, stream, compare and score from the shell, and watch the live monitor feed.

Text goes to stdout and the summary (stop reason, usage, monitor scores) to stderr, so the text pipes cleanly;
`--json` prints the whole response message as JSON instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

import grpc
from google.protobuf.json_format import MessageToJson

from . import builders
from ._channel import DEFAULT_TARGET
from ._proto.steering.v1 import steering_pb2 as pb
from .sync import SteeringClient

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steering-client", description="Call a steering-server over gRPC.")
    parser.add_argument("--target", default=DEFAULT_TARGET, help=f"server address (default {DEFAULT_TARGET})")
    parser.add_argument("--timeout", type=float, default=None, help="deadline of the call in seconds")
    parser.add_argument("--json", action="store_true", help="print the response message as JSON")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("generate", "generate text"), ("stream", "generate, printing tokens as they come")):
        sub = commands.add_parser(name, help=help_text)
        _add_input(sub)
        _add_sampling(sub)
        _add_steering(sub)
        _add_monitor(sub)
        sub.add_argument("--ignore-policy", action="store_true", help="apply no server policy")
    compare = commands.add_parser("compare", help="run steering variants side by side with shared sampling noise")
    _add_input(compare)
    _add_sampling(compare)
    _add_monitor(compare)
    compare.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME[=SPEC[+SPEC...]]",
        help="a named variant and its steering specs (none: unsteered); default: the server's variants",
    )
    score = commands.add_parser("score", help="the monitor scores Generate would give for a response")
    _add_input(score)
    score.add_argument("--response", default="", help="the response text to score")
    _add_steering(score)
    _add_monitor(score)
    _add_watch(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is not None:  # commands that run themselves (watch)
        return int(args.handler(args))
    try:
        options = _options(args)
    except ValueError as exc:
        parser.error(str(exc))
    with SteeringClient(args.target, timeout=args.timeout) as client:
        try:
            if args.command == "generate":
                _print_generate(client.generate(args.prompt, **options), args.json)
            elif args.command == "stream":
                _run_stream(client, args.prompt, options, args.json)
            elif args.command == "compare":
                _print_compare(client.compare(args.prompt, **options), args.json)
            else:
                _print_score(client.score(args.prompt, **options), args.json)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            print(f"error: {code.name if code else 'UNKNOWN'}: {details}", file=sys.stderr)
            return 1
    return 0


def _add_input(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("prompt", help="the prompt (raw text; with --chat, the user message)")
    sub.add_argument("--chat", action="store_true", help="send the prompt as a user message (chat template)")
    sub.add_argument("--system", default=None, help="with --chat: a system message first")


def _add_sampling(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--max-new-tokens", type=int)
    sub.add_argument("--temperature", type=float, help="0 (default) is greedy")
    sub.add_argument("--top-p", type=float)
    sub.add_argument("--top-k", type=int)
    sub.add_argument("--seed", type=int)
    sub.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable)")


def _add_steering(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--steer",
        action="append",
        default=[],
        metavar="NAME[:MODE[:STRENGTH[:LAYERS]]]",
        help="steer along a direction, e.g. misalignment (ablate 1) or misalignment:add:-2:3,4 (repeatable)",
    )


def _add_monitor(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--monitor", action="append", default=[], metavar="NAME", help="direction to monitor (default all)"
    )
    sub.add_argument("--token-scores", action="store_true", help="return per-token scores")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The builder keyword arguments the parsed flags stand for (absent flags leave server defaults)."""
    options: dict[str, Any] = {}
    if args.chat:
        system = [pb.ChatMessage(role="system", content=args.system)] if args.system else []
        options["messages"] = [*system, pb.ChatMessage(role="user", content=args.prompt)]
        args.prompt = None
    for flag in ("max_new_tokens", "temperature", "top_p", "top_k", "seed"):
        if getattr(args, flag, None) is not None:
            options[flag] = getattr(args, flag)
    if getattr(args, "stop", None):
        options["stop"] = args.stop
    if getattr(args, "steer", None):
        options["steering"] = [builders.parse_steering(spec) for spec in args.steer]
    if args.monitor:
        options["monitor"] = args.monitor
    if args.token_scores:
        options["token_scores"] = True
    if getattr(args, "ignore_policy", False):
        options["ignore_policy"] = True
    if getattr(args, "variant", None):
        options["variants"] = dict(_variant(spec) for spec in args.variant)
    if getattr(args, "response", ""):
        options["response"] = args.response
    return options


def _variant(spec: str) -> tuple[str, list[pb.SteeringTerm]]:
    name, _, steering = spec.partition("=")
    return name, [builders.parse_steering(s) for s in steering.split("+") if s]


def _print_generate(response: pb.GenerateResponse, as_json: bool) -> None:
    if as_json:
        print(MessageToJson(response, preserving_proto_field_name=True))
        return
    print(response.text)
    _summary(response, sys.stderr)


def _run_stream(client: SteeringClient, prompt: str | None, options: dict[str, Any], as_json: bool) -> None:
    for message in client.generate_stream(prompt, **options):
        if as_json:
            print(MessageToJson(message, preserving_proto_field_name=True, indent=None), flush=True)
        elif message.HasField("token"):
            print(message.token.text_delta, end="", flush=True)
        else:
            print()
            _summary(message.final, sys.stderr)


def _print_compare(response: pb.CompareResponse, as_json: bool) -> None:
    if as_json:
        print(MessageToJson(response, preserving_proto_field_name=True))
        return
    for i, variant in enumerate(response.variants):
        if i == 0:
            where = "reference"
        elif variant.HasField("diverges_at"):
            where = f"diverges at token {variant.diverges_at}"
        else:
            where = "identical"
        print(f"== {variant.name} ({where}) ==")
        print(variant.result.text)
        _summary(variant.result, sys.stdout)


def _print_score(response: pb.ScoreResponse, as_json: bool) -> None:
    if as_json:
        print(MessageToJson(response, preserving_proto_field_name=True))
        return
    print(f"tokens: {response.usage.prompt_tokens} prompt + {response.usage.completion_tokens} response")
    _print_scores(response.monitor, sys.stdout)


def _summary(response: pb.GenerateResponse, out: TextIO) -> None:
    usage = response.usage
    print(
        f"[{pb.StopReason.Name(response.stop_reason)}; {usage.prompt_tokens} prompt + {usage.completion_tokens} "
        f"generated tokens; seed {response.seed}]",
        file=out,
    )
    _print_scores(response.monitor, out)


def _print_scores(scores: Iterable[pb.DirectionScores], out: TextIO) -> None:
    for s in scores:
        parts = [f"prompt {s.prompt_score:.3f}"]
        if s.HasField("response_score"):
            parts.append(f"response {s.response_score:.3f}")
        if s.HasField("max_score"):
            parts.append(f"max {s.max_score:.3f}")
        flags = ["z" if s.calibrated else "raw"] + (["post-intervention"] if s.post_intervention else [])
        print(f"{s.direction} @ layer {s.layer}: {', '.join(parts)} ({', '.join(flags)})", file=out)
        if s.token_scores:
            print("  tokens: " + " ".join(f"{x:.2f}" for x in s.token_scores), file=out)


def _add_watch(commands: argparse._SubParsersAction) -> None:
    watch = commands.add_parser(
        "watch", help="print the live monitor feed: one line per finished request (observer credentials)"
    )
    watch.add_argument("--direction", action="append", default=[], metavar="NAME", help="only these directions")
    watch.add_argument("--min-score", type=float, default=None, help="only events with a score >= this")
    watch.add_argument("--alerts-only", action="store_true", help="only events that raised an alert")
    watch.add_argument("--buffer-size", type=int, default=None, help="events the server holds while you lag")
    watch.add_argument("--count", type=int, default=None, help="stop after this many events")
    watch.add_argument(
        "--token-file", default=None, metavar="PATH", help="send `authorization: Bearer <token in PATH>`"
    )
    watch.set_defaults(handler=_run_watch)


def _run_watch(args: argparse.Namespace) -> int:
    """One line per event (`--json`: one JSON object per line) until interrupted or `--count` events."""
    metadata = []
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
            metadata.append(("authorization", f"Bearer {f.read().strip()}"))
    with SteeringClient(args.target, timeout=args.timeout, metadata=metadata) as client:
        seen = 0
        try:
            for event in client.watch_monitor(args.direction, args.min_score, args.alerts_only, args.buffer_size):
                if args.json:
                    print(MessageToJson(event, preserving_proto_field_name=True, indent=None), flush=True)
                else:
                    print(_event_line(event), flush=True)
                seen += 1
                if args.count is not None and seen >= args.count:
                    break
        except KeyboardInterrupt:
            return 0
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            print(f"error: {code.name if code else 'UNKNOWN'}: {details}", file=sys.stderr)
            return 1
    return 0


def _event_line(e: pb.MonitorEvent) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(e.time))
    rpc = f"{e.rpc}/{e.variant}" if e.variant else e.rpc
    stop = pb.StopReason.Name(e.stop_reason).removeprefix("STOP_REASON_") if e.stop_reason else "-"
    parts = [f"{when} {e.request_id} {rpc} {stop} {e.usage.prompt_tokens}+{e.usage.completion_tokens} tokens"]
    for s in e.monitor:
        scores = [f"prompt {s.prompt_score:.2f}"]
        scores += [f"{f.split('_')[0]} {getattr(s, f):.2f}" for f in ("response_score", "max_score") if s.HasField(f)]
        parts.append(f"{s.direction}: {', '.join(scores)}")
    if e.steering:
        policy = " (policy" + (", enforced)" if e.policy_enforced else ")") if e.policy_applied else ""
        parts.append(f"steering {len(e.steering)} terms{policy}")
    for a in e.alerts:
        parts.append(f"ALERT {a.direction} {a.score:.2f} >= {a.threshold:.2f} {pb.AlertAction.Name(a.action)}")
    if e.dropped:
        parts.append(f"[{e.dropped} dropped before this]")
    return " | ".join(parts)
