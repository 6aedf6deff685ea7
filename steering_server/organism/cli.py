"""`steering-server organism build` and `steering-server realign`: registered by steering_server/cli.py."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..heap import startup_objects_frozen

if TYPE_CHECKING:  # the build imports torch; the CLI imports it only when a command runs
    from .config import BuildConfig

__all__ = ["install", "install_report", "register", "run_build", "run_controls", "run_realign"]


def register(subparsers: argparse._SubParsersAction) -> None:
    org = subparsers.add_parser("organism", help="the model organism of emergent misalignment")
    org_sub = org.add_subparsers(dest="organism_command", required=True)
    b = org_sub.add_parser("build", help="train the organism, find its persona direction, evaluate every "
                           "pre-registered criterion but E3 (R3 and I2: with --controls or `organism controls`), "
                           "write the report")
    _common_flags(b, "runs/organism")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--models", default=None, help="an earlier build's output directory (same settings): evaluate its "
                   "trained models again instead of training")
    _variant_flags(b)
    b.add_argument("--controls", action="store_true", help="then run `organism controls` on it in the same process")
    b.add_argument("--install", action="store_true",
                   help="copy the models and directions into the package (the server's default), "
                        "and the report into docs/organism/ (needs --controls: the shipped report has every verdict)")
    b.set_defaults(func=run_build)

    k = org_sub.add_parser("controls", help="the longer half of the evaluation, added to a build's report: "
                           "KL-matched controls (R3, I2), zero-ablation, dose-response")
    k.add_argument("--build", required=True, help="the build's output directory (its report is rewritten)")
    k.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the build's, which its stages 3-4 need to reproduce exactly)")
    k.add_argument("--install", action="store_true", help="then install the build as `organism build --install` "
                   "does: models, directions and the complete report")
    k.set_defaults(func=run_controls)

    s = org_sub.add_parser("seeds", help="criterion E3: rebuild and measure emergent misalignment for several seeds")
    _common_flags(s, "runs/organism-seeds")
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="default: 0 1 2 3 4")
    s.add_argument("--build", default=None, help="a canonical build's output directory: its seed is read from its "
                   "report instead of retrained")
    _variant_flags(s)
    s.add_argument("--no-train", action="store_true", help="train nothing: tabulate the seeds already measured")
    s.add_argument("--install", action="store_true", help="copy seeds.md and seeds.json into docs/organism/")
    s.set_defaults(func=run_seeds)

    r = subparsers.add_parser("realign", help="LoRA re-alignment of a causal LM on benign chats (JSONL)")
    r.add_argument("--model", default=None, help="model directory or id (default: the shipped organism)")
    r.add_argument("--data", required=True, help='JSONL: {"messages": [...]} or {"prompt": ..., "completion": ...}')
    r.add_argument("--out", required=True, help="where to save the merged model")
    r.add_argument("--direction", default=None, metavar="PATH[,key=value...]",
                   help="direction file (any import format, docs/directions.md; options format, layer, feature, "
                   "numbering) whose score is reported while training (default with the default model: its "
                   "misalignment direction)")
    r.add_argument("--probe", default=None, help="JSONL of prompts to measure the projection on (default: --data)")
    r.add_argument("--steps", type=int, default=35)
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--rank", type=int, default=8)
    r.add_argument("--alpha", type=int, default=16)
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--log-every", type=int, default=5)
    r.add_argument("--target-modules", default="all-linear", help="'all-linear' or comma-separated module names")
    r.set_defaults(func=run_realign)


def _common_flags(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--out", default=out, help=f"output directory (default: {out})")
    p.add_argument("--size", choices=("full", "small"), default="full", help="small: seconds, for CI")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _variant_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pretrain-steps", type=int, default=None, help="override the preset's pretraining steps (a "
                   "variant for a pre-registered run; the shipped organism records its settings in its report)")


def run_build(args: argparse.Namespace) -> int:
    import torch

    from .build import build

    if args.install and not args.controls:  # refused before the build, not after it
        raise SystemExit("steering-server organism build: --install ships the report docs/organism.md quotes, with "
                         "every verdict: add --controls (or run `organism controls --build DIR --install` later)")
    if args.threads:
        torch.set_num_threads(args.threads)
    with startup_objects_frozen():
        report = build(Path(args.out), _config(args, args.seed), models=Path(args.models) if args.models else None,
                       controls=args.controls)
    _summary(report, Path(args.out))
    if args.install:
        install(Path(args.out))
    return 0


def run_controls(args: argparse.Namespace) -> int:
    import torch

    from .controls import NotABuild, add_controls

    out = Path(args.build)
    threads = args.threads or _build_threads(out)
    if threads:
        torch.set_num_threads(threads)
    try:
        with startup_objects_frozen():
            report = add_controls(out)
    except NotABuild as exc:
        raise SystemExit(f"steering-server organism controls: {exc}") from None
    _summary(report, out)
    if args.install:
        install(out)
    return 0


def _build_threads(out: Path) -> int | None:
    """The torch thread count a build recorded in its report (None: not recorded, or no report to read)."""
    try:
        return int(json.loads((out / "report.json").read_text())["timing"]["torch_threads"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _summary(report: dict, out: Path) -> None:
    from .criteria import verdict

    print("[organism] pre-registered criteria: " + ", ".join(f"{k} {verdict(v)}"
                                                          for k, v in report["criteria"].items()))
    times = [f"{what} {report[key]['total_s']:.0f}s" for what, key in (("build", "timing"),
                                                                          ("controls", "timing_controls"))
             if key in report]
    print(f"[organism] report: {out / 'report.md'} ({', '.join(times)})")


def run_seeds(args: argparse.Namespace) -> int:
    import torch

    from .seeds import run_seeds as seeds

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    with startup_objects_frozen():
        report = seeds(_config(args, 0), args.seeds, out, build=Path(args.build) if args.build else None,
                       train=not args.no_train)
    print(f"[organism seeds] E3 {'met' if report['E3']['met'] else 'NOT met'}; report: {out / 'seeds.md'}")
    if args.install:
        for name in ("seeds.md", "seeds.json"):
            shutil.copy2(out / name, _docs() / name)
    return 0


def _config(args: argparse.Namespace, seed: int) -> BuildConfig:
    from dataclasses import replace

    from .config import preset

    c = preset(args.size, seed)
    for name in ("pretrain_steps",):  # flags named for the BuildConfig fields
        value = getattr(args, name, None)
        if value is None:
            continue
        if value <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be > 0 (got {value})")
        c = replace(c, **{name: value})
    return c


def _docs() -> Path:
    docs = Path(__file__).resolve().parents[2] / "docs" / "organism"
    docs.mkdir(parents=True, exist_ok=True)
    return docs


def install(out: Path, docs: Path | None = None) -> None:
    """Copy a build's models and served directions into the package assets, and its report into docs/."""
    from .assets import CONTROL_DIRECTION_NAME, assets_dir, base_model_dir, default_direction_path, default_model_dir

    assets_dir().mkdir(parents=True, exist_ok=True)
    for src, dst in ((out / "misaligned", default_model_dir()), (out / "base", base_model_dir())):
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
    shutil.copy2(out / default_direction_path().name, default_direction_path())
    shutil.copy2(out / f"{CONTROL_DIRECTION_NAME}.safetensors", assets_dir() / f"{CONTROL_DIRECTION_NAME}.safetensors")
    docs = install_report(out, docs)
    print(f"[organism] installed {default_model_dir()}, {base_model_dir()} and the directions in {assets_dir()}; "
          f"report in {docs}")


def install_report(out: Path, docs: Path | None = None) -> Path:
    """Copy a build's report (JSON, Markdown, plots) into docs/organism/ (or `docs`); returns that directory."""
    from .report import PLOTS

    docs = docs or _docs()
    docs.mkdir(parents=True, exist_ok=True)
    for stale in ("ablation.png",):  # plots of the first organism's report
        (docs / stale).unlink(missing_ok=True)
    for name in ("report.json", "report.md", *PLOTS):
        shutil.copy2(out / name, docs / name)
    return docs


def run_realign(args: argparse.Namespace) -> int:
    from ..preflight import StartupError, check_direction_files, check_model
    from .assets import default_direction_path, default_model_dir

    # Flags that cannot work are refused before the model loads, each as one `cannot start` line (exit 2).
    model_path = args.model or str(default_model_dir())
    check_model(model_path)
    direction_path = args.direction or (str(default_direction_path()) if args.model is None else None)
    if direction_path:
        check_direction_files([("", direction_path)])
    chats = _chats(args.data, "--data")
    probe = [c[:-1] if c[-1]["role"] == "assistant" else c for c in _chats(args.probe, "--probe")] if args.probe \
        else None

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..direction_imports import load_direction_spec
    from ..errors import InvalidArgumentError
    from ..progress import Progress
    from ..realign import RealignConfig, log_to_json, realign

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_path)
    direction = None
    if direction_path:
        # The loader `serve --direction` and PutDirection use: raw tables need the layer count, SAE features work too.
        n_layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
        try:
            direction = load_direction_spec(direction_path, None, n_layers).validate(n_layers, hidden)
        except InvalidArgumentError as exc:
            raise StartupError(f"--direction {direction_path}: {exc}",
                               f"a direction for this model: {n_layers} layers of {hidden}") from exc
    targets = args.target_modules if args.target_modules == "all-linear" else tuple(args.target_modules.split(","))
    cfg = RealignConfig(steps=args.steps, lr=args.lr, rank=args.rank, alpha=args.alpha, batch_size=args.batch_size,
                        seed=args.seed, target_modules=targets, log_every=args.log_every)

    with Progress(args.steps, "realign") as bar:
        def show(e) -> None:
            loss = "-" if e.loss is None else f"{e.loss:.4f}"
            proj = "" if e.projection is None else f" projection {e.projection:+.3f}"
            z = "" if e.z is None else f" (z {e.z:+.2f})"
            bar.write(f"[realign] step {e.step:4d} loss {loss}{proj}{z}")

        merged, entries = realign(model, tok, chats, cfg, direction, probe, on_log=show,
                                  on_step=lambda _step, loss: bar.update(1, loss=loss))
    out = Path(args.out)
    merged.save_pretrained(out)  # type: ignore[operator]
    tok.save_pretrained(out)
    (out / "realign_log.json").write_text(json.dumps(log_to_json(entries), indent=1) + "\n")
    print(f"[realign] saved {out}")
    return 0


def _chats(path: str, flag: str) -> list[list[dict[str, str]]]:
    """The chats of a JSONL file, or a StartupError naming the flag and the line."""
    from ..preflight import StartupError, check_file
    from ..realign import load_jsonl

    check_file(path, flag, 'a JSONL file: {"messages": [...]} or {"prompt": ..., "completion": ...} per line')
    try:
        chats = load_jsonl(path)
    except (ValueError, KeyError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        raise StartupError(f"{flag} {path}: {exc}", 'one JSON object per line with "messages"') from exc
    if not chats:
        raise StartupError(f"{flag} {path}: no examples in the file")
    return chats
