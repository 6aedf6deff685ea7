"""`steering-server direction compute`: ComputeDirection offline, on a model loaded in this process.

The same code as the RPC: the request is built and decoded exactly as a ComputeDirection call's (the client's JSONL
reader, service/compute_codec.py), and runs on an engine started in-process, through its serving capture path.
Progress goes to stderr, a JSON summary (per-layer separation, monitor layer, calibration) to stdout, the direction
to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from .config import EngineConfig
from .errors import SteeringError

if TYPE_CHECKING:  # compute_types imports torch: `steering-server --help` must not
    from .compute_types import ComputeProgress, ComputeResult

__all__ = ["OutNotWritten", "register", "run_compute_command", "summary"]


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("direction", help="work with direction files offline")
    sub = group.add_subparsers(dest="direction_command")
    c = sub.add_parser(
        "compute",
        help="compute a difference-of-means direction from labelled examples on a model (docs/directions.md)",
    )
    c.add_argument("--model", default=None, help="Hugging Face id or local directory (default: built-in model)")
    recipe = c.add_mutually_exclusive_group(required=True)
    recipe.add_argument("--examples", metavar="JSONL", help='one {"prompt"|"messages", "response", "label"} per line')
    recipe.add_argument(
        "--persona", metavar="JSON", help='{"questions": [...], "positive_systems": [...], "negative_systems": [...]}'
    )
    c.add_argument("--name", required=True, help="the direction's name")
    c.add_argument("--out", required=True, metavar="PATH", help="write the direction file (.safetensors) here")
    c.add_argument("--pooling", choices=("last_prompt", "response_mean"), default=None,
                   help="default: response_mean for --examples, last_prompt for --persona")
    c.add_argument("--layers", default="", help="comma-separated layers (default: all)")
    c.add_argument("--target-fpr", type=float, default=None, help="calibrated thresholds' false-positive rate (0.01)")
    c.add_argument("--held-out-share", type=float, default=None, help="share of each label held out (0.3)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--description", default="")
    c.add_argument("--device", default=None, help="e.g. cpu, cuda (default: cuda when available)")
    c.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))
    c.add_argument("--max-new-tokens", type=int, default=None, help="--persona: tokens generated per prompt (32)")
    c.set_defaults(run=_run)
    group.set_defaults(run=lambda args: group.error("a subcommand is required (compute)"))


class OutNotWritten(OSError):
    """--out could not be written once the direction was computed; the file went to a temporary path instead."""

    def __init__(self, message: str, result: ComputeResult) -> None:
        super().__init__(message)
        self.result = result


def _run(args: argparse.Namespace) -> int:
    progress = _StageProgress()
    try:
        result = asyncio.run(run_compute_command(args, progress=progress))
    except OutNotWritten as exc:
        progress.close()
        print(json.dumps(summary(exc.result), indent=2))
        print(f"steering-server direction compute: {exc}", file=sys.stderr)
        return 1
    except (SteeringError, OSError, ValueError) as exc:
        print(f"steering-server direction compute: {exc}", file=sys.stderr)
        return 2
    finally:
        progress.close()
    print(json.dumps(summary(result), indent=2))
    return 0


class _StageProgress:
    """One progress.Progress per stage of the computation (a bar on a terminal, rate-limited lines with the ETA
    otherwise) fed by the engine's ComputeProgress events."""

    def __init__(self) -> None:
        self._stage = ""
        self._bar: Any = None

    def __call__(self, p: ComputeProgress) -> None:
        from .progress import Progress

        if p.stage != self._stage or self._bar is None:
            self.close()
            self._stage, self._bar = p.stage, Progress(p.total, f"compute {p.stage}", unit="prefill")
        self._bar.update_to(p.done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


async def run_compute_command(args: argparse.Namespace, progress: Any = None, loaded: Any = None) -> ComputeResult:
    """Start an engine on --model (or `loaded`), run the request, write --out; returns the result. A bad flag or
    file raises ValueError (or OSError) before the engine starts; a --out that fails once the work is done raises
    OutNotWritten, holding the result, with the file saved elsewhere."""
    from steering_client import compute as client_compute

    from .compute_types import ComputeResult
    from .engine import start_engine
    from .service.compute_codec import compute_request

    client_compute.check_writable(args.out)  # before the model loads: a typo must not cost the whole run
    options = client_compute.options_from_args(args)  # the same reading as steering-client's command
    request = compute_request(client_compute.compute_direction_request(args.name, **options))
    config = replace(EngineConfig(), model=args.model, device=args.device, dtype=args.dtype)
    engine = await start_engine(config, loaded=loaded)
    try:
        result: ComputeResult | None = None
        async for event in engine.compute_direction(request):
            if isinstance(event, ComputeResult):
                result = event
            elif progress is not None:
                progress(event)
    finally:
        await engine.shutdown()
    assert result is not None
    failed = client_compute.write_direction_file(args.out, result.safetensors)
    if failed:  # the result is kept (saved elsewhere); the caller says so and exits 1
        raise OutNotWritten(failed, result)
    return result


def summary(result: ComputeResult) -> dict[str, Any]:
    """What the command prints: every number of the result but the vectors."""
    d = result.direction
    return {
        "name": d.name,
        "monitor_layer": d.monitor_layer,
        "pooling": result.pooling.value,
        "n_train": result.n_train,
        "n_held_out": result.n_held_out,
        "layers": [asdict(s) for s in result.layers],
        "calibration": {k: asdict(v) for k, v in d.calibration.items()},
        "held_out_fpr": result.held_out_fpr,
        "provenance": asdict(d.provenance),
        "method": d.method,
    }
