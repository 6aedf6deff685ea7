"""`steering-client`: every RPC of steering-server from the shell.

    steering-client generate "Hi" --steer misalignment        # text to stdout, stop reason and scores to stderr
    steering-client stream "Hi" --token-scores                  # tokens as they come (coloured by score on a tty)
    steering-client compare "Hi" --variant plain --variant off=misalignment:clamp:0
    steering-client score "Hi" --response "Hello"
    steering-client direction list|get|put|delete|compute ...
    steering-client policy get|set ...
    steering-client info | tokenize TEXT | health
    steering-client watch --min-score 3                         # the live monitor feed (observers)

`--json` prints the whole response message, every field included. Exit codes: 0 done, 1 the call failed (or
health is not SERVING), 2 bad flags or connection settings, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from . import __version__, builders, compute_cli
from ._channel import DEFAULT_TARGET, HEALTH_SERVICE
from ._proto.steering.v1 import steering_pb2 as pb
from ._render import Printer, term_spec, to_json
from .connect import TOKEN_ENV, Connection, open_channel, read_token
from .sync import SteeringClient

__all__ = ["UsageError", "build_parser", "main"]

# Commands: name -> handler(client, args, printer, options) -> exit code. Filled below the handlers.
Handler = Callable[[SteeringClient, argparse.Namespace, Printer, dict[str, Any]], int]
# Details grpc gives a call whose server stopped or vanished under it (after the server's --grace ran out, or a
# crash): the call was accepted, so "retry later" would be the wrong advice on its own.
_WENT_AWAY = ("Cancelling all calls", "Socket closed", "Connection reset", "GOAWAY", "Broken pipe", "Stream removed")


# PutDirection `format` values (docs/directions.md "Direction files and imports").
_FORMATS = ("safetensors", "pt", "npy", "persona-vectors", "steering-vectors", "repeng-gguf", "sae-lens")
# The server refuses larger requests (grpc's receive limit there); a bigger file is registered at start-up.
_MAX_UPLOAD = 16 * 1024 * 1024


class UsageError(ValueError):
    """A flag value the parser could not check by itself (a duplicate variant, an unreadable file)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steering-client",
        description="Call a steering-server over gRPC.",
        epilog=f"Credentials: --token, --token-file or ${TOKEN_ENV} (sent as `authorization: Bearer ...`).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_connection(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, parent: Any = commands) -> argparse.ArgumentParser:
        sub = parent.add_parser(name, help=help_text, description=help_text)
        _add_connection(sub, top=False)
        return sub

    for name, help_text in (("generate", "generate text"), ("stream", "generate, printing tokens as they come")):
        sub = command(name, help_text)
        _add_input(sub)
        _add_sampling(sub)
        _add_steering(sub)
        _add_monitor(sub)
        sub.add_argument("--ignore-policy", action="store_true", help="apply no server policy")
        if name == "stream":
            sub.add_argument("--colour-by", "--color-by", default=None, metavar="NAME",
                             help="on a terminal, colour tokens by this direction's score (default: the first)")
    compare = command("compare", "run steering variants side by side with shared sampling noise")
    _add_input(compare)
    _add_sampling(compare)
    _add_monitor(compare)
    compare.add_argument(
        "--variant", action="append", default=[], metavar="NAME[=SPEC[+SPEC...]]",
        help="a named variant and its steering specs (none: unsteered); names must be unique; "
        "default: the server's variants (unsteered and policy)",
    )
    score = command("score", "the monitor scores Generate would give for a response")
    _add_input(score)
    score.add_argument("--response", default="", help="the response text to score")
    score.add_argument("--response-token-ids", default=None, metavar="IDS",
                       help="the response as comma-separated token ids (exact; instead of --response)")
    _add_steering(score)
    _add_monitor(score)
    score.add_argument("--ignore-policy", action="store_true", help="apply no server policy")

    directions = commands.add_parser("direction", help="the direction registry (list, get, put, delete, compute)")
    dsub = directions.add_subparsers(dest="action", required=True, metavar="ACTION")
    command("list", "list the registered directions", dsub)
    get = command("get", "show one direction", dsub)
    get.add_argument("name")
    get.add_argument("--vectors", action="store_true", help="include the vectors (observers and administrators)")
    put = command("put", "register a direction from a file (administrators); any import format", dsub)
    put.add_argument("file", help="a direction file (.safetensors, .pt, .npy, persona-vectors, steering-vectors, "
                     "repeng .gguf, an SAE-Lens sae_weights.safetensors or its directory; docs/directions.md)")
    put.add_argument("--format", default="", choices=("", "auto", *_FORMATS), metavar="FORMAT",
                     help=f"the file's format: {', '.join(_FORMATS)} (default: recognised from the file)")
    put.add_argument("--feature", type=int, default=None, help="SAE-Lens: the latent to import")
    put.add_argument("--sae-config", default=None, metavar="CFG_JSON",
                     help="SAE-Lens: the SAE's cfg.json (default: cfg.json beside the weights)")
    put.add_argument("--numbering", default="", choices=("", "layers", "hidden_states"),
                     help="tables: row l is layer l (layers) or row l + 1 is (hidden_states, persona-vectors)")
    put.add_argument("--name", default="", help="the name to store it under (default: the file's own, else its stem)")
    put.add_argument("--monitor-layer", type=int, default=None, help="overrides the file's monitor layer")
    put.add_argument("--description", default="", help="free text shown by `direction list`")
    put.add_argument("--strict", action="store_true",
                     help="refuse a file made for another model instead of storing it uncalibrated")
    put.add_argument("--removal", default=None, metavar="MODE:STRENGTH[:POSITIONS[:LAYERS]]",
                     help="its removal recipe (Compare's default), e.g. clamp:0:prompt or clamp:0:prompt:0,1,2 "
                     "(default: the file's, else ablate:1)")
    delete = command("delete", "remove a direction (administrators)", dsub)
    delete.add_argument("name")
    compute = command("compute", "compute a direction from labelled examples on the served model, through its "
                      "serving path (administrators; docs/directions.md)", dsub)
    compute_cli.add_arguments(compute)

    policy = commands.add_parser("policy", help="the server-wide default steering (get, set)")
    psub = policy.add_subparsers(dest="action", required=True, metavar="ACTION")
    command("get", "show the policy", psub)
    pset = command("set", "replace the policy (administrators)", psub)
    _add_steering(pset)
    pset.add_argument("--enforced", action="store_true",
                      help="every request gets these terms first and cannot opt out")
    pset.add_argument("--alert", action="append", default=[], metavar="NAME:ACTION[:THRESHOLD[:SCOPE]]",
                      help="a server-wide alert rule: ACTION record, stop or steer (the direction's removal); "
                      "THRESHOLD in z (default: the calibration's); SCOPE prompt (default) or running (repeatable)")
    pset.add_argument("--file", default=None, metavar="JSON",
                      help="the policy as JSON (what `policy get --json` prints), instead of the flags")
    pset.add_argument("--clear", action="store_true", help="set the empty policy (default steering off)")

    command("info", "the served model, the server's limits and its serving settings")
    tokenize = command("tokenize", "token ids of a text with the served model's tokenizer")
    tokenize.add_argument("text", help="the text ('-' reads stdin)")
    health = command("health", "the gRPC health status (exit 0 when SERVING)")
    health.add_argument("--service", default=HEALTH_SERVICE,
                        help=f"the service to check ('' for the whole server; default {HEALTH_SERVICE})")
    _add_watch(command("watch", "print the live monitor feed, one line per finished request (observers)"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _main(parser, args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `steering-client stream ... | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        options = _options(args)
        connection = Connection(
            target=args.target, token=read_token(args.token, args.token_file), tls=args.tls, tls_ca=args.tls_ca,
            tls_cert=args.tls_cert, tls_key=args.tls_key, tls_server_name=args.tls_server_name,
        )
        channel = open_channel(connection)
    except (ValueError, OSError) as exc:  # UsageError, SettingsError, a bad steering spec, an unreadable file
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)  # one line: the usage block would bury it
        return 2
    colour = args.colour == "always" or (args.colour == "auto" and sys.stdout.isatty() and not args.json)
    printer = Printer(as_json=args.json, colour=colour)
    with SteeringClient(channel=channel, timeout=args.timeout, metadata=connection.metadata()) as client:
        try:
            grpc.channel_ready_future(channel).result(timeout=args.connect_timeout)
        except grpc.FutureTimeoutError:
            hint = "check the TLS flags" if connection.secure else "is it a TLS server? then add --tls-ca"
            print(f"error: cannot reach steering-server at {args.target} within {args.connect_timeout:g} s "
                  f"(is it running? check --target; {hint})", file=sys.stderr)
            return 1
        try:
            return _handler(args)(client, args, printer, options)
        except grpc.RpcError as exc:
            print(_rpc_error(exc), file=sys.stderr)
            return 1


def _handler(args: argparse.Namespace) -> Handler:
    key = f"{args.command} {args.action}" if getattr(args, "action", None) else args.command
    return _COMMANDS[key]


def _rpc_error(exc: grpc.RpcError) -> str:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = (exc.details() if isinstance(exc, grpc.Call) else str(exc)) or ""
    name = code.name if code else "UNKNOWN"
    if code == grpc.StatusCode.UNAVAILABLE and any(marker in details for marker in _WENT_AWAY):
        return f"error: the server went away during the call (it stopped or restarted; retry): {name}: {details}"
    hint = {
        grpc.StatusCode.UNAVAILABLE: " (the server is starting, stopping or unreachable: retry later)",
        grpc.StatusCode.UNAUTHENTICATED: f" (send a token: --token-file PATH or ${TOKEN_ENV})",
        grpc.StatusCode.DEADLINE_EXCEEDED: " (raise --timeout)",
    }.get(code, "") if code else ""
    return f"error: {name}: {details}{hint}"


# ------------------------------------------------------------------------------------------------ flags
def _add_connection(parser: argparse.ArgumentParser, top: bool) -> None:
    """The connection and output flags, accepted before or after the command (a command's copy defaults to
    SUPPRESS so that it never overwrites what was given before the command)."""

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("connection and output")
    group.add_argument("--target", default=default(DEFAULT_TARGET),
                       help=f"server address, e.g. host:50051 or dns:///host:50051 (default {DEFAULT_TARGET})")
    group.add_argument("--timeout", type=float, default=default(None), metavar="S",
                       help="deadline of the call in seconds (default: none)")
    group.add_argument("--connect-timeout", type=float, default=default(10.0), metavar="S",
                       help="how long to wait for the server to accept the connection (default 10)")
    group.add_argument("--json", action="store_true", default=default(False),
                       help="print the response message as JSON, every field included")
    group.add_argument("--colour", "--color", choices=("auto", "always", "never"), default=default("auto"),
                       help="colour scores by size (default auto: on a terminal)")
    group.add_argument("--token", default=default(None),
                       help=f"bearer token (visible to other users in `ps`: prefer --token-file or ${TOKEN_ENV})")
    group.add_argument("--token-file", default=default(None), metavar="PATH", help="read the bearer token from PATH")
    group.add_argument("--tls", action="store_true", default=default(False),
                       help="connect with TLS, trusting the system's CAs (implied by --tls-ca/--tls-cert)")
    group.add_argument("--tls-ca", default=default(None), metavar="PEM",
                       help="the CA that signed the server's certificate")
    group.add_argument("--tls-cert", default=default(None), metavar="PEM", help="mutual TLS: this client's certificate")
    group.add_argument("--tls-key", default=default(None), metavar="PEM", help="mutual TLS: the key of --tls-cert")
    group.add_argument("--tls-server-name", default=default(None), metavar="NAME",
                       help="the name the server's certificate must carry (default: the target's host)")


def _add_input(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("prompt", help="the prompt (raw text; with --chat, the user message; '-' reads stdin)")
    sub.add_argument("--chat", action="store_true", help="send the prompt as a user message (chat template)")
    sub.add_argument("--system", default=None, help="with --chat: a system message first")


def _add_sampling(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--max-new-tokens", type=int, help="tokens to generate (server default 64)")
    sub.add_argument("--temperature", type=float, help="0 (the server's default) is greedy")
    sub.add_argument("--top-p", type=float, help="nucleus sampling, in (0, 1] (default 1)")
    sub.add_argument("--top-k", type=int, help="keep the k most likely tokens (default 0: no cut)")
    sub.add_argument("--seed", type=int, help="sampling seed (default: the server picks one and reports it)")
    sub.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable)")


def _add_steering(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--steer", action="append", default=[], metavar="NAME[:MODE[:STRENGTH[:LAYERS[:POSITIONS]]]]",
        help="steer along a direction, e.g. misalignment (ablate 1), misalignment:add:-2:3,4 or "
        "misalignment:clamp:0::prompt (repeatable)",
    )


def _add_monitor(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--monitor", action="append", default=[], metavar="NAME",
                     help="direction to monitor (repeatable; default all)")
    sub.add_argument("--token-scores", action="store_true", help="return per-token scores")
    sub.add_argument("--stop-threshold", type=float, default=None, metavar="Z",
                     help="stop with MONITOR_ALERT when a generated token's score reaches Z (default: never)")
    sub.add_argument("--no-monitor", action="store_true", help="read no direction at all (the cheapest request)")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The builder keyword arguments the parsed flags stand for (absent flags leave server defaults)."""
    options: dict[str, Any] = {}
    if getattr(args, "prompt", None) == "-":
        args.prompt = sys.stdin.read()
    if getattr(args, "text", None) == "-":
        args.text = sys.stdin.read()
    if getattr(args, "chat", False):
        system = [pb.ChatMessage(role="system", content=args.system)] if args.system else []
        options["messages"] = [*system, pb.ChatMessage(role="user", content=args.prompt)]
        args.prompt = None
    for flag in ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop_threshold"):
        if getattr(args, flag, None) is not None:
            options[flag] = getattr(args, flag)
    if getattr(args, "stop", None):
        options["stop"] = args.stop
    if getattr(args, "steer", None):
        options["steering"] = [builders.parse_steering(spec) for spec in args.steer]
    if getattr(args, "monitor", None):
        options["monitor"] = args.monitor
    for flag in ("token_scores", "ignore_policy"):
        if getattr(args, flag, False):
            options[flag] = True
    if getattr(args, "no_monitor", False):
        options["monitor_disabled"] = True
    if getattr(args, "variant", None):
        options["variants"] = _variants(args.variant)
    if getattr(args, "response", ""):
        options["response"] = args.response
    if getattr(args, "response_token_ids", None):
        options["response_token_ids"] = _ids(args.response_token_ids, "--response-token-ids")
    if args.command == "policy" and args.action == "set":
        options["policy"] = _policy_from_args(args)
    if args.command == "direction" and args.action == "put":
        options["put"] = _put_options(args)
    if args.command == "direction" and args.action == "compute":
        try:
            options["compute"] = compute_cli.options_from_args(args)
        except OSError as exc:
            raise UsageError(f"direction compute: cannot read {exc.filename}: {exc.strerror or exc}") from exc
    return options


def _put_options(args: argparse.Namespace) -> dict[str, Any]:
    """PutDirection's `file` and what describes it: the server's one loader reads every import format."""
    path = Path(args.file)
    fmt = args.format
    sae_config = Path(args.sae_config) if args.sae_config else None
    if path.is_dir():  # an SAE-Lens directory: its weights and cfg.json
        path, sae_config, fmt = path / "sae_weights.safetensors", sae_config or path / "cfg.json", fmt or "sae-lens"
    elif sae_config is None and fmt == "sae-lens":
        sae_config = path.with_name("cfg.json")
    data = _read(path, "direction put")
    if len(data) > _MAX_UPLOAD:
        raise UsageError(f"direction put: {path} is {len(data) / 2**20:.0f} MiB, above the server's 16 MiB request "
                         "limit (register it at start-up: steering-server serve --direction NAME=PATH)")
    put: dict[str, Any] = {"file": data, "format": "" if fmt == "auto" else fmt, "numbering": args.numbering,
                           "description": args.description, "strict": args.strict}
    if sae_config is not None:
        put["sae_config"] = _read(sae_config, "--sae-config").decode("utf-8", errors="replace")
    if args.feature is not None:
        put["feature"] = args.feature
    if args.monitor_layer is not None:
        put["monitor_layer"] = args.monitor_layer
    if args.removal is not None:
        put["removal"] = _removal(args.removal)
    return put


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{what}: cannot read {path}: {exc.strerror or exc}") from exc


def _variants(specs: Sequence[str]) -> dict[str, list[pb.SteeringTerm]]:
    variants: dict[str, list[pb.SteeringTerm]] = {}
    for spec in specs:
        name, _, steering = spec.partition("=")
        if not name:
            raise UsageError(f"--variant {spec!r}: the variant needs a name (NAME[=SPEC[+SPEC...]])")
        if name in variants:
            raise UsageError(f"--variant: the name {name!r} is given twice (variant names must be unique)")
        variants[name] = [builders.parse_steering(s) for s in steering.split("+") if s]
    return variants


def _ids(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise UsageError(f"{flag}: expected comma-separated token ids, got {text!r}") from None


def _removal(spec: str) -> pb.Removal:
    parts = spec.split(":")
    if not 1 <= len(parts) <= 4:
        raise UsageError(f"--removal {spec!r}: expected MODE:STRENGTH[:POSITIONS[:LAYERS]], e.g. clamp:0:prompt")
    mode, strength, positions, layers = [*parts, "", "", ""][:4]
    term = builders.parse_steering(f"removal:{mode}:{strength}:{layers}:{positions}")
    return pb.Removal(mode=term.mode, strength=term.strength if term.HasField("strength") else 1.0,
                      positions=term.positions, layers=term.layers)


_ACTIONS = {"record": pb.RECORD, "stop": pb.STOP, "steer": pb.STEER}
_SCOPES = {"prompt": pb.PROMPT_SCORE, "running": pb.RUNNING_SCORE}


def _alert(spec: str) -> pb.AlertRule:
    parts = spec.split(":")
    if len(parts) < 2 or len(parts) > 4 or not parts[0] or parts[1].lower() not in _ACTIONS:
        raise UsageError(f"--alert {spec!r}: expected NAME:ACTION[:THRESHOLD[:SCOPE]], ACTION record, stop or steer")
    rule = pb.AlertRule(direction=parts[0], action=_ACTIONS[parts[1].lower()])
    if len(parts) > 2 and parts[2]:
        rule.threshold = float(parts[2])
    if len(parts) > 3 and parts[3]:
        if parts[3].lower() not in _SCOPES:
            raise UsageError(f"--alert {spec!r}: SCOPE is prompt or running")
        rule.scope = _SCOPES[parts[3].lower()]
    return rule


def _policy_from_args(args: argparse.Namespace) -> pb.SteeringPolicy:
    from google.protobuf import json_format

    flags = bool(args.steer or args.alert or args.enforced)
    if sum((flags, args.file is not None, args.clear)) != 1:
        raise UsageError("policy set: give the policy as flags (--steer, --alert, --enforced), as --file JSON, "
                         "or --clear, exactly one of them")
    if args.clear:
        return pb.SteeringPolicy()
    if args.file is not None:
        try:
            return json_format.Parse(Path(args.file).read_text(), pb.SteeringPolicy())
        except OSError as exc:
            raise UsageError(f"--file: cannot read {args.file}: {exc.strerror or exc}") from exc
        except json_format.ParseError as exc:
            raise UsageError(f"--file: {args.file} is not a SteeringPolicy: {exc}") from exc
    return pb.SteeringPolicy(terms=[builders.parse_steering(s) for s in args.steer],
                             alerts=[_alert(s) for s in args.alert], enforced=args.enforced)


# ------------------------------------------------------------------------------------------------ commands
def _generate(client: SteeringClient, args: argparse.Namespace, out: Printer, options: dict[str, Any]) -> int:
    out.generate(client.generate(args.prompt, **options))
    return 0


def _stream(client: SteeringClient, args: argparse.Namespace, out: Printer, options: dict[str, Any]) -> int:
    events = client.generate_stream(args.prompt, **options)
    try:
        for event in events:
            out.stream_event(event, args.colour_by)
    finally:
        events.close()  # cancels the call on the server when we leave early (Ctrl-C)
    return 0


def _compare(client: SteeringClient, args: argparse.Namespace, out: Printer, options: dict[str, Any]) -> int:
    out.compare(client.compare(args.prompt, **options))
    return 0


def _score(client: SteeringClient, args: argparse.Namespace, out: Printer, options: dict[str, Any]) -> int:
    out.score(client.score(args.prompt, **options))
    return 0


def _direction_list(client: SteeringClient, args: argparse.Namespace, out: Printer, _: dict[str, Any]) -> int:
    out.directions(client.list_directions())
    return 0


def _direction_get(client: SteeringClient, args: argparse.Namespace, out: Printer, _: dict[str, Any]) -> int:
    out.direction(client.get_direction(args.name, include_vectors=args.vectors))
    return 0


def _direction_put(client: SteeringClient, args: argparse.Namespace, out: Printer, options: dict[str, Any]) -> int:
    out.put(client.put_direction(args.name, **options["put"]))
    return 0


def _direction_delete(client: SteeringClient, args: argparse.Namespace, out: Printer, _: dict[str, Any]) -> int:
    response = client.delete_direction(args.name)
    if not out.message(response):
        out.line(f"deleted {args.name}")
    return 0


def _direction_compute(client: SteeringClient, args: argparse.Namespace, out: Printer, options: dict[str, Any]) -> int:
    try:
        return compute_cli.run(client, args, out.as_json, out.out, options["compute"], progress=out.compute_progress)
    finally:
        out.progress_done()


def _policy_get(client: SteeringClient, args: argparse.Namespace, out: Printer, _: dict[str, Any]) -> int:
    out.policy(client.get_steering())
    return 0


def _policy_set(client: SteeringClient, args: argparse.Namespace, out: Printer, options: dict[str, Any]) -> int:
    out.policy(client.set_steering(policy=options["policy"]))
    return 0


def _info(client: SteeringClient, args: argparse.Namespace, out: Printer, _: dict[str, Any]) -> int:
    out.info(client.model_info())
    return 0


def _tokenize(client: SteeringClient, args: argparse.Namespace, out: Printer, _: dict[str, Any]) -> int:
    out.tokens(client.tokenize(args.text))
    return 0


def _health(client: SteeringClient, args: argparse.Namespace, out: Printer, _: dict[str, Any]) -> int:
    response = client.health(args.service)
    if not out.message(response):
        out.line(type(response).ServingStatus.Name(response.status))
    return 0 if response.status == type(response).SERVING else 1


# ------------------------------------------------------------------------------------------------ watch
def _add_watch(watch: argparse.ArgumentParser) -> None:
    watch.add_argument("--direction", action="append", default=[], metavar="NAME",
                       help="only events that scored or alerted on this direction (repeatable; default all)")
    watch.add_argument("--min-score", type=float, default=None, metavar="Z",
                       help="only events with a prompt, response or max score >= Z (default: no floor)")
    watch.add_argument("--alerts-only", action="store_true", help="only events that raised an alert")
    watch.add_argument("--buffer-size", type=int, default=None, metavar="N",
                       help="events the server holds for you while you lag (1-4096; default 256)")
    watch.add_argument("--count", type=int, default=None, metavar="N", help="stop after N events (default: never)")


def _watch(client: SteeringClient, args: argparse.Namespace, out: Printer, _: dict[str, Any]) -> int:
    """One line per event (`--json`: one JSON object per line) until Ctrl-C or `--count` events."""
    events = client.watch_monitor(args.direction, args.min_score, args.alerts_only, args.buffer_size)
    try:
        for seen, event in enumerate(events, 1):
            if out.as_json:
                out.line(to_json(event, indent=None))
            else:  # on a terminal, an event that raised an alert stands out
                out.styled(_event_line(event), "bold red" if event.alerts else "", out.out)
            if args.count is not None and seen >= args.count:
                break
    finally:
        events.close()  # cancels the call on the server
    return 0


def _event_line(e: pb.MonitorEvent) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(e.time))
    call = f"{e.rpc}/{e.variant}" if e.variant else e.rpc
    stop = pb.StopReason.Name(e.stop_reason) if e.stop_reason else "-"
    parts = [f"{when} {e.request_id} {call} {stop} {e.usage.prompt_tokens}+{e.usage.completion_tokens} tokens"]
    for s in e.monitor:
        scores = [f"prompt {s.prompt_score:.2f}"]
        scores += [f"{f.split('_')[0]} {getattr(s, f):.2f}" for f in ("response_score", "max_score") if s.HasField(f)]
        parts.append(f"{s.direction}: {', '.join(scores)}")
    if e.steering:
        policy = (" (policy, enforced)" if e.policy_enforced else " (policy)") if e.policy_applied else ""
        parts.append("steering " + " ".join(term_spec(t) for t in e.steering) + policy)
    for a in e.alerts:
        parts.append(f"ALERT {a.direction} {a.score:.2f} >= {a.threshold:.2f} {pb.AlertAction.Name(a.action)}")
    if e.dropped:
        parts.append(f"[{e.dropped} dropped before this]")
    return " | ".join(parts)


_COMMANDS: dict[str, Handler] = {
    "generate": _generate,
    "stream": _stream,
    "compare": _compare,
    "score": _score,
    "direction list": _direction_list,
    "direction get": _direction_get,
    "direction put": _direction_put,
    "direction delete": _direction_delete,
    "direction compute": _direction_compute,
    "policy get": _policy_get,
    "policy set": _policy_set,
    "info": _info,
    "tokenize": _tokenize,
    "health": _health,
    "watch": _watch,
}

if __name__ == "__main__":
    sys.exit(main())
