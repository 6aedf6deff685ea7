"""How `steering-client` prints responses: text for people (per-token scores coloured with rich on a terminal,
plain otherwise) or, with --json, every field of the message (zeros and false included)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

from google.protobuf.json_format import MessageToJson
from google.protobuf.message import Message

from ._proto.steering.v1 import steering_pb2 as pb
from .durations import format_duration

__all__ = ["Printer", "score_style", "term_spec", "to_json"]

_POSITION_NAMES = {pb.ALL_POSITIONS: "", pb.PROMPT_POSITIONS: "prompt", pb.LAST_PROMPT_POSITION: "last_prompt",
                   pb.GENERATED_POSITIONS: "generated"}


def to_json(message: Message, indent: int | None = 2) -> str:
    """Every field, also those at their default (layer 0, post_intervention false): a reader must not have to
    know proto3's defaults to tell a zero from a missing value."""
    return MessageToJson(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True, indent=indent
    )


def score_style(score: float) -> str:
    """rich style for a score in z units: 1-2 sigma yellow, 2-3 red, 3 and above bold red, -1 and below cyan."""
    if score >= 3:
        return "bold red"
    if score >= 2:
        return "red"
    if score >= 1:
        return "yellow"
    if score <= -1:
        return "cyan"
    return ""


def term_spec(term: pb.SteeringTerm) -> str:
    """A term as the --steer syntax writes it (NAME:MODE:STRENGTH:LAYERS:POSITIONS), plus its condition."""
    strength = term.strength if term.HasField("strength") else 1.0
    parts = [term.direction, pb.SteeringMode.Name(term.mode).lower(), f"{strength:g}",
             ",".join(str(x) for x in term.layers), _POSITION_NAMES.get(term.positions, "")]
    while parts[-1] == "":
        parts.pop()
    spec = ":".join(parts)
    if term.HasField("condition"):
        c = term.condition
        spec += f" (when {c.direction} {pb.ConditionScope.Name(c.scope).lower()} >= {c.threshold:g})"
    return spec


class Printer:
    """Writes results to stdout and summaries to stderr (so generated text pipes cleanly). `colour`: per-token
    scores and streamed tokens coloured by score (rich), for terminals."""

    def __init__(self, as_json: bool = False, colour: bool = False, out: TextIO | None = None,
                 err: TextIO | None = None) -> None:
        self.as_json = as_json
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._consoles: dict[int, Any] = {}
        self.colour = colour
        self._progress: Any = None  # rich progress display (terminal) while a long call reports progress
        self._tasks: dict[str, Any] = {}
        self._last_line = float("-inf")

    # ---- generic
    def message(self, message: Message) -> bool:
        """Print `message` as JSON when --json; True when it did (the caller prints nothing else)."""
        if self.as_json:
            print(to_json(message), file=self.out, flush=True)
        return self.as_json

    def line(self, text: str = "", err: bool = False) -> None:
        print(text, file=self.err if err else self.out, flush=True)

    def styled(self, text: str, style: str, out: TextIO, end: str = "\n") -> None:
        if not self.colour or not style:
            print(text, end=end, file=out, flush=True)
            return
        from rich.text import Text  # imported on a terminal only: plain runs never load rich

        self._console(out).print(Text(text, style=style), end=end)

    def _console(self, out: TextIO) -> Any:
        key = id(out)
        if key not in self._consoles:
            from rich.console import Console

            self._consoles[key] = Console(file=out, force_terminal=True, highlight=False, soft_wrap=True,
                                          emoji=False, markup=False)
        return self._consoles[key]

    # ---- generation
    def generate(self, response: pb.GenerateResponse) -> None:
        if self.message(response):
            return
        self.line(response.text)
        self.summary(response, self.err)

    def stream_event(self, event: pb.GenerateStreamResponse, colour_by: str | None) -> None:
        if self.as_json:
            print(to_json(event, indent=None), file=self.out, flush=True)
            return
        if event.HasField("token"):
            token = event.token
            name = colour_by if colour_by and colour_by in token.scores else min(token.scores, default=None)
            style = score_style(token.scores[name]) if name is not None else ""
            self.styled(token.text_delta, style, self.out, end="")
            return
        self.styled(event.final.text_tail, "", self.out, end="")
        self.line()
        self.summary(event.final, self.err)

    def compare(self, response: pb.CompareResponse) -> None:
        if self.message(response):
            return
        for i, variant in enumerate(response.variants):
            if i == 0:
                where = "reference"
            elif variant.HasField("diverges_at"):
                where = f"diverges at token {variant.diverges_at}"
            else:
                where = "identical"
            self.line(f"== {variant.name} ({where}) ==")
            self.line(variant.result.text)
            self.summary(variant.result, self.out)

    def score(self, response: pb.ScoreResponse) -> None:
        if self.message(response):
            return
        self.line(f"tokens: {response.usage.prompt_tokens} prompt + {response.usage.completion_tokens} response")
        self.scores(response.monitor, self.out)

    def summary(self, response: pb.GenerateResponse, out: TextIO) -> None:
        usage = response.usage
        print(
            f"[{pb.StopReason.Name(response.stop_reason)}; {usage.prompt_tokens} prompt + {usage.completion_tokens} "
            f"generated tokens; seed {response.seed}]",
            file=out,
        )
        self.scores(response.monitor, out)
        for alert in response.alerts:
            at = f" at token {alert.token_index}" if alert.HasField("token_index") else ""
            self.styled(
                f"alert: {alert.direction} {pb.ConditionScope.Name(alert.scope).lower()} {alert.score:.3f} >= "
                f"{alert.threshold:g}{at} ({pb.AlertAction.Name(alert.action)}, {alert.source or 'policy'})",
                "bold red", out,
            )

    def scores(self, scores: Iterable[pb.DirectionScores], out: TextIO) -> None:
        for s in scores:
            parts = [f"prompt {s.prompt_score:.3f}"]
            if s.HasField("response_score"):
                parts.append(f"response {s.response_score:.3f}")
            if s.HasField("max_score"):
                parts.append(f"max {s.max_score:.3f}")
            flags = ["z" if s.calibrated else "raw"] + (["post-intervention"] if s.post_intervention else [])
            print(f"{s.direction} @ layer {s.layer}: {', '.join(parts)} ({', '.join(flags)})", file=out, flush=True)
            if s.token_scores:
                print("  tokens:", end="", file=out, flush=True)
                for x in s.token_scores:
                    self.styled(f" {x:.2f}", score_style(x) if s.calibrated else "", out, end="")
                print(file=out, flush=True)

    # ---- long calls (ComputeDirection): progress with the server's ETA on stderr
    def compute_progress(self, p: pb.ComputeProgress, every_s: float = 10.0) -> None:
        if self.colour:  # a terminal: one rich bar per stage
            if self._progress is None:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

                self._progress = Progress(TextColumn("[compute] {task.description}"), BarColumn(),
                                          MofNCompleteColumn(), TimeRemainingColumn(), console=self._console(self.err))
                self._progress.start()
            if p.stage not in self._tasks:
                self._tasks[p.stage] = self._progress.add_task(p.stage, total=p.total)
            self._progress.update(self._tasks[p.stage], completed=p.done, total=p.total)
            return
        now = time.monotonic()
        if now - self._last_line >= every_s or p.done == p.total:  # a log, not a flood of lines
            self._last_line = now
            share = f" ({100 * p.done / p.total:.0f}%)" if p.total else ""
            eta = f", ETA {format_duration(p.eta_seconds)}" if p.done < p.total else ""
            print(f"[compute] {p.stage}: {p.done}/{p.total}{share}{eta}", file=self.err, flush=True)

    def progress_done(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # ---- registry, policy, model
    def directions(self, response: pb.ListDirectionsResponse) -> None:
        if self.message(response):
            return
        if not response.directions:
            self.line("no directions registered")
        for d in response.directions:
            self.line(f"{d.name}: {_layers(d.layers)}, monitor layer {d.monitor_layer}, "
                      f"{'calibrated' if d.calibrated else 'uncalibrated'}, {d.method or 'no method'}"
                      + (f": {d.description}" if d.description else ""))

    def direction(self, d: pb.Direction) -> None:
        if self.message(d):
            return
        removal = pb.SteeringTerm(direction=d.name, mode=d.removal.mode, strength=d.removal.strength,
                                  positions=d.removal.positions, layers=d.removal.layers)
        rows = [
            ("name", d.name), ("layers", _layers(d.layers)), ("monitor layer", str(d.monitor_layer)),
            ("hidden size", str(d.hidden_size)), ("calibrated", str(d.calibrated).lower()),
            ("method", d.method), ("examples", str(d.n_examples)), ("created", d.created_at),
            ("description", d.description), ("model", d.provenance.model_id),
            ("removal", term_spec(removal) if d.removal.mode else "ablate 1"),
        ]
        for key, value in rows:
            self.line(f"{key}: {value}")
        for pooling, c in sorted(d.calibration.items()):
            threshold = f", threshold {c.threshold:g} (fpr {c.target_fpr:g})" if c.HasField("threshold") else ""
            self.line(f"calibration {pooling}: mu {c.mu:.4g}, sigma {c.sigma:.4g}, n {c.n}{threshold}")
        for v in d.vectors:
            first = ", ".join(f"{x:.4g}" for x in v.values[:4])
            self.line(f"vector layer {v.layer}: {len(v.values)} values, first {first}")

    def put(self, response: pb.PutDirectionResponse) -> None:
        if self.message(response):
            return
        self.line(f"stored {response.direction.name} ({_layers(response.direction.layers)}, monitor layer "
                  f"{response.direction.monitor_layer})")
        for warning in response.warnings:
            self.line(f"warning: {warning}", err=True)

    def policy(self, policy: pb.SteeringPolicy) -> None:
        if self.message(policy):
            return
        if not policy.terms and not policy.alerts:
            self.line("no policy (requests are not steered by default)")
            return
        self.line(f"enforced: {str(policy.enforced).lower()}")
        for term in policy.terms:
            self.line(f"steer: {term_spec(term)}")
        for rule in policy.alerts:
            threshold = f"{rule.threshold:g}" if rule.HasField("threshold") else "the calibration's"
            steering = ", ".join(term_spec(t) for t in rule.steering)
            self.line(f"alert: {rule.direction} {pb.ConditionScope.Name(rule.scope).lower()} >= {threshold}: "
                      f"{pb.AlertAction.Name(rule.action)}" + (f" {steering}" if steering else ""))

    def info(self, info: pb.ModelInfoResponse) -> None:
        if self.message(info):
            return
        s, lim = info.serving, info.limits
        for key, value in (
            ("model", info.model_id), ("architecture", info.architecture), ("layers", info.num_layers),
            ("hidden size", info.hidden_size), ("vocabulary", info.vocab_size), ("dtype", info.dtype),
            ("device", info.device), ("context", info.max_context), ("server", info.server_version),
            ("limits", f"max_new_tokens {lim.max_new_tokens}, max_prompt_tokens {lim.max_prompt_tokens}, "
                       f"max_queued {lim.max_queued}, max_variants {lim.max_variants}, max_directions "
                       f"{lim.max_directions}, red team {'allowed' if lim.allow_red_team else 'refused'}"),
            ("serving", f"kv cache {s.kv_cache_tokens} tokens ({s.num_blocks} x {s.page_size}), max_batch_tokens "
                        f"{s.max_batch_tokens}, max_requests_per_batch {s.max_requests_per_batch}, attention "
                        f"{s.attn_implementation}, compiled {str(s.compiled).lower()}, cuda graphs "
                        f"{str(s.cuda_graphs).lower()}"),
        ):
            self.line(f"{key}: {value}")

    def tokens(self, response: pb.TokenizeResponse) -> None:
        if self.message(response):
            return
        self.line(f"{len(response.token_ids)} tokens")
        for i, (token_id, text) in enumerate(zip(response.token_ids, response.tokens, strict=False)):
            self.line(f"{i:4d} {token_id:8d} {text!r}")


def _layers(layers: Iterable[int]) -> str:
    ls = sorted(layers)
    if not ls:
        return "no layers"
    if ls == list(range(ls[0], ls[-1] + 1)) and len(ls) > 2:
        return f"layers {ls[0]}-{ls[-1]}"
    return ("layer " if len(ls) == 1 else "layers ") + ",".join(map(str, ls))
