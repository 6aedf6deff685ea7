"""`steering-client direction compute`: ComputeDirection from the shell (self-contained: the CLI adds its arguments
to a parser and calls `run`).

Progress goes to stderr; the result (per-layer separation, monitor layer, calibration) to stdout as a table, or
the whole result message as JSON with --json; --out writes the direction file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, TextIO

from . import compute
from ._proto.steering.v1 import steering_pb2 as pb
from ._render import Printer, to_json
from .sync import SteeringClient

__all__ = ["add_arguments", "options_from_args", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the direction's name")
    recipe = parser.add_mutually_exclusive_group(required=True)
    recipe.add_argument("--examples", metavar="JSONL", help='one {"prompt"|"messages", "response", "label"} per line')
    recipe.add_argument(
        "--persona", metavar="JSON", help='{"questions": [...], "positive_systems": [...], "negative_systems": [...]}'
    )
    parser.add_argument("--pooling", choices=tuple(compute.POOLINGS), default=None,
                        help="default: response_mean for --examples, last_prompt for --persona")
    parser.add_argument("--layers", default="", help="comma-separated layers (default: all)")
    parser.add_argument("--target-fpr", type=float, default=None, help="thresholds' false-positive rate (0.01)")
    parser.add_argument("--held-out-share", type=float, default=None, help="share of each label held out (0.3)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="--persona: tokens generated per prompt")
    parser.add_argument("--description", default="")
    parser.add_argument("--store", action="store_true", help="register it on the server (administrators)")
    parser.add_argument("--out", default=None, metavar="PATH", help="write the direction file (.safetensors) here")


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """ComputeOptions from the parsed arguments (compute.options_from_args, shared with `steering-server
    direction compute`), after checking --out can be written; raises ValueError for a bad file, path or value."""
    if args.out is not None:
        compute.check_writable(args.out)
    return dict(compute.options_from_args(args))


def run(
    client: SteeringClient,
    args: argparse.Namespace,
    as_json: bool,
    out: TextIO = sys.stdout,
    options: dict[str, Any] | None = None,
    progress: Callable[[pb.ComputeProgress], None] | None = None,
) -> int:
    """Call ComputeDirection and print; grpc errors propagate to the caller (which prints them). `options`: what
    options_from_args(args) returned (read here when None). `progress`: shows each progress event (default: a
    plain Printer's rate-limited lines on stderr; the command passes its own Printer's). A --out that cannot be
    written after all is one line on stderr, the file saved elsewhere, and exit status 1."""
    options = options_from_args(args) if options is None else options
    result = client.compute_direction(args.name, progress or Printer().compute_progress, **options)
    code = 0
    if args.out is not None:
        failed = compute.write_direction_file(args.out, result.safetensors)
        if failed:
            print(f"error: {failed}", file=sys.stderr)
            code = 1
    if as_json:
        shown = pb.ComputeDirectionResult()
        shown.CopyFrom(result)
        shown.ClearField("safetensors")  # the file, when asked for, went to --out
        print(to_json(shown), file=out)  # every field, zeros and false included
        return code
    print(f"{result.direction.name}: monitor layer {result.monitor_layer}, "
          f"{result.n_train} train / {result.n_held_out} held-out examples"
          + (", stored" if result.stored else ""), file=out)
    print("layer  auroc  [95% CI]        cohens_d  norm", file=out)
    for s in result.layers:
        mark = " *" if s.layer == result.monitor_layer else ""
        ci = f"[{s.auroc_lo:.3f}, {s.auroc_hi:.3f}]"
        print(f"{s.layer:5d}  {s.auroc:.3f}  {ci}  {s.cohens_d:8.2f}  {s.norm:.4g}{mark}", file=out)
    for pooling, cal in sorted(result.direction.calibration.items()):
        fpr = result.held_out_fpr.get(pooling)
        print(f"{pooling}: mu {cal.mu:.4g}, sigma {cal.sigma:.4g}, threshold z {cal.threshold:.3f} for FPR "
              f"{cal.target_fpr:g}" + (f" (held-out FPR {fpr:.3f})" if fpr is not None else ""), file=out)
    return code
