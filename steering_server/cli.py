"""`steering-server`: `serve` starts the gRPC server; the organism package adds its own commands when present."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from . import direction_cli
from .config import CPU_KV_TOKENS_PER_REQUEST, EngineConfig
from .errors import InvalidArgumentError, SteeringError
from .logs import adopt_library_loggers, configure_logging
from .names import validate_direction_name
from .preflight import (
    StartupError,
    check_device,
    check_direction_files,
    check_distinct_ports,
    check_model,
    check_port,
    check_tls,
    one_line,
    read_token,
)
from .types import EngineLimits

__all__ = ["audit_log_path", "build_parser", "config_from_args", "main"]

log = logging.getLogger("steering_server")
_ENGINE = EngineConfig()
_LIMITS = EngineLimits()


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that states each option's default (argparse's ArgumentDefaultsHelpFormatter, without "default: None"
    for options that have none and without repeating a default the help text already states)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = (action.help or "").strip()
        default = action.default
        if (
            "default" in text
            or _no_default(default)
            or not action.option_strings
            or isinstance(action, argparse._HelpAction | argparse._VersionAction)
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steering-server", description="gRPC inference server that monitors and steers a misalignment direction."
    )
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument("--log-format", default="text", choices=("text", "json"),
                        help="json: one JSON object per line (time, level, logger, message)")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve(commands)
    direction_cli.register(commands)
    _register_organism(commands)
    _use_formatter(parser, DefaultsFormatter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    # Commands set `run` (or `func`, argparse's usual name): a callable taking the parsed args, returning an exit code.
    run = getattr(args, "run", None) or getattr(args, "func", None)
    if run is None:  # a command group without its subcommand
        parser.error(f"{args.command}: a subcommand is required (see steering-server {args.command} --help)")
    try:
        return int(run(args) or 0)
    except StartupError as exc:  # any command's flag that cannot work: one line, not a traceback
        log.error("cannot start: %s", exc)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while loading or training (serve itself stops gracefully on SIGINT)
        print("interrupted", file=sys.stderr)
        return 130


def _no_default(value: object) -> bool:
    # Identity, not equality: a default of 0 is a default to state (0 == False).
    return value is None or value is False or value is argparse.SUPPRESS or value == []


def _use_formatter(parser: argparse.ArgumentParser, formatter: type[argparse.HelpFormatter]) -> None:
    """Every (sub)command's help through `formatter` (subparsers do not inherit their parent's)."""
    parser.formatter_class = formatter
    for action in parser._actions:
        if action.help is None and action.option_strings and not _no_default(action.default):
            action.help = "default: %(default)s"  # argparse prints no help line at all for None
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _use_formatter(sub, formatter)


def config_from_args(args: argparse.Namespace) -> EngineConfig:
    defaults = EngineConfig()
    limits = replace(
        EngineLimits(),
        **{
            k: v for k, v in (("max_queued", args.max_queued), ("max_new_tokens", args.max_new_tokens)) if v is not None
        },
        allow_red_team=args.allow_red_team,
    )
    return replace(
        defaults,
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        directions=tuple(args.direction),
        strict_provenance=args.strict,
        limits=limits,
        max_batch_tokens=args.max_batch_tokens or defaults.max_batch_tokens,
        max_requests_per_batch=args.max_requests_per_batch or defaults.max_requests_per_batch,
        num_blocks=args.num_blocks,
        kv_cache_tokens=args.kv_cache_tokens,
        kv_memory_fraction=args.kv_memory_fraction,
        page_size=args.page_size or defaults.page_size,
        attn_implementation=args.attn_implementation,
        compile=args.compile,
        cuda_graphs=args.cuda_graphs,
        state_dir=args.state_dir,
    )


def _add_serve(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="start the gRPC server (the built-in model unless --model)")
    serve.add_argument("--model", default=None, help="Hugging Face id or local directory (default: built-in model)")
    serve.add_argument(
        "--direction",
        action="append",
        default=[],
        type=_direction_arg,
        metavar="NAME=PATH[,key=value...]",
        help="register a direction file at start-up (repeatable): safetensors, .pt, .npy, persona-vectors, "
        "steering-vectors, repeng .gguf or an SAE-Lens directory; options format=, layer=, feature= (an SAE's "
        "latent), numbering=layers|hidden_states (docs/directions.md)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=50051, help="gRPC port (default 50051; 0 picks a free one)")
    serve.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: cuda when available)")
    serve.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16", "float16"),
        help="default: bfloat16 on cuda, float32 on cpu",
    )
    serve.add_argument("--max-batch-tokens", type=_positive, default=None,
                       help=f"tokens per forward pass (default {_ENGINE.max_batch_tokens}; longer prefills are split)")
    serve.add_argument(
        "--max-requests-per-batch", type=_positive, default=None,
        help=f"requests per forward pass (default {_ENGINE.max_requests_per_batch})"
    )
    serve.add_argument(
        "--kv-cache-tokens",
        type=_positive,
        default=None,
        help=f"KV cache size in tokens (default on the CPU: {CPU_KV_TOKENS_PER_REQUEST} per request of a full batch; "
        "on a GPU: --kv-memory-fraction of the free memory); never less than the longest admitted request",
    )
    serve.add_argument(
        "--kv-memory-fraction",
        type=_fraction,
        default=None,
        help="GPU: fraction of the free memory after loading the model that the KV cache may take (default 0.9)",
    )
    serve.add_argument("--num-blocks", type=_positive, default=None,
                       help="KV pages (overrides --kv-cache-tokens; default: from the KV cache size)")
    serve.add_argument("--page-size", type=_positive, default=None,
                       help=f"tokens per KV page (default {_ENGINE.page_size})")
    serve.add_argument(
        "--attn-implementation",
        default=None,
        choices=("sdpa", "paged|eager", "flash_attention_2", "flash_attention_3"),
        help="default: flash attention on a GPU when installed, else sdpa",
    )
    serve.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        default=None,
        metavar="BACKEND",
        help="torch.compile the batched forward, steering hooks included (default: eager; backend: inductor)",
    )
    serve.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="CUDA graphs for the batched forward (default: on with flash attention on a GPU)",
    )
    serve.add_argument(
        "--max-queued",
        type=_positive,
        default=None,
        help=f"admitted, unfinished requests; one more gets RESOURCE_EXHAUSTED (default {_LIMITS.max_queued})",
    )
    serve.add_argument("--max-new-tokens", type=_positive, default=None,
                       help=f"limit on a request's max_new_tokens (default {_LIMITS.max_new_tokens}, at most the "
                       "model's context - 1)")
    serve.add_argument("--metrics-port", type=int, default=None,
                       help="serve Prometheus metrics on this port (default: no metrics endpoint)")
    serve.add_argument(
        "--http-port", type=int, default=None, metavar="PORT",
        help="also serve the OpenAI-compatible HTTP API and the web page on this port (plaintext; off by default)",
    )
    serve.add_argument(
        "--allow-red-team",
        action="store_true",
        help="allow ADD with positive strength along a registered direction (inducing it)",
    )
    serve.add_argument(
        "--strict",
        action="store_true",
        help="refuse direction files made for another model instead of dropping their calibration",
    )
    serve.add_argument(
        "--state-dir", default=None, metavar="DIR",
        help="persist uploaded and deleted directions and the policy here (atomic writes) and restore them at start "
        "(default: nothing persists); "
        "an enforced policy that cannot be restored stops the server from starting",
    )
    serve.add_argument(
        "--audit-log", default=None, metavar="PATH",
        help="append every alert and every policy and registry change (with who made it) to this JSON-lines file "
        "(default: DIR/audit.jsonl with --state-dir; none without)",
    )
    serve.add_argument("--grace", type=float, default=10.0, help="seconds running calls get on SIGTERM/SIGINT")
    serve.add_argument(
        "--admin-token-file", default=None, metavar="PATH",
        help="administrators send `authorization: Bearer <token in PATH>` for PutDirection, DeleteDirection, "
        "SetSteering and ComputeDirection (without it, or --open-admin, those RPCs are refused)",
    )
    serve.add_argument(
        "--observer-token-file", default=None, metavar="PATH",
        help="observers send `authorization: Bearer <token in PATH>` to read vectors (GetDirection include_vectors) "
        "and to follow WatchMonitor",
    )
    serve.add_argument(
        "--open-admin", action="store_true",
        help="every caller may administer and observe; only with a loopback --host (tests, a laptop)",
    )
    serve.add_argument("--tls-cert", default=None, metavar="PEM",
                       help="serve TLS with this certificate chain (default: plaintext)")
    serve.add_argument("--tls-key", default=None, metavar="PEM", help="the private key of --tls-cert")
    serve.add_argument(
        "--tls-client-ca", default=None, metavar="PEM",
        help="mutual TLS: clients must present a certificate signed by this CA",
    )
    serve.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    # Flags that cannot work are refused before the model loads (preflight.py), each as one line.
    check_model(args.model)
    check_direction_files(config.directions)
    check_tls(args.tls_cert, args.tls_key, args.tls_client_ca)
    check_distinct_ports((("--port", args.port), ("--metrics-port", args.metrics_port),
                          ("--http-port", args.http_port)))
    check_port(args.host, args.port)
    for flag, port in (("--metrics-port", args.metrics_port), ("--http-port", args.http_port)):
        if port:
            check_port(args.host, port, flag)
    token = read_token(args.admin_token_file, "--admin-token-file") if args.admin_token_file else None
    observer = read_token(args.observer_token_file, "--observer-token-file") if args.observer_token_file else None
    check_device(args.device)
    # Imported here so that `--help` and the organism commands do not load grpc, torch and the engine.
    from .engine import start_engine
    from .service import Tls, serve
    from .state import StateError

    adopt_library_loggers(args.log_format)
    try:
        tls = Tls.from_files(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
        asyncio.run(
            serve(
                config,
                args.host,
                args.port,
                start_engine,
                args.metrics_port,
                args.grace,
                admin_token=token,
                observer_token=observer,
                open_admin=args.open_admin,
                tls=tls,
                http_port=args.http_port,
                audit_log=audit_log_path(args),
            )
        )
    except (SteeringError, StateError, OSError, ValueError) as exc:  # a bad file, flag or state; a busy port
        message = one_line(exc)
        if isinstance(exc, OSError) and args.model and not Path(args.model).expanduser().exists():
            message = (f"--model {args.model}: {message} (try a local model directory: a name that is not one is "
                       "read from the Hugging Face hub, which needs the network or the hub's cache)")
        log.error("cannot start: %s", message)
        return 2
    except RuntimeError as exc:
        if type(exc).__name__ != "OutOfMemoryError":  # torch.OutOfMemoryError; anything else is a bug: traceback
            raise
        log.error("cannot start: %s (try --dtype bfloat16, a smaller --kv-memory-fraction or --kv-cache-tokens, "
                  "or a smaller model)", one_line(exc).split(". ", 1)[0])
        return 2
    return 0


def audit_log_path(args: argparse.Namespace) -> str | None:
    """--audit-log, else <state-dir>/audit.jsonl when there is a state directory, else none."""
    if args.audit_log:
        return str(args.audit_log)
    return str(Path(args.state_dir) / "audit.jsonl") if args.state_dir else None


def _register_organism(commands: argparse._SubParsersAction) -> None:
    try:
        organism_cli = importlib.import_module("steering_server.organism.cli")
    except ModuleNotFoundError as exc:
        if exc.name not in ("steering_server.organism", "steering_server.organism.cli"):
            raise  # the organism exists but something it needs is missing: say so
        return
    organism_cli.register(commands)


def _direction_arg(value: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {value!r}")
    try:
        validate_direction_name(name, "--direction")
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return name, path


def _fraction(value: str) -> float:
    f = float(value)
    if not 0.0 < f <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {f}")
    return f


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


if __name__ == "__main__":
    sys.exit(main())
