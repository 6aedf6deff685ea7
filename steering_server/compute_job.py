"""ComputeDirection as a job over an engine's own capture path: check the request, read every example through the
engine, compute (compute_direction.py), calibrate, store. Engine-agnostic: an `ActivationSource` provides the
readings (the real engine's serving hooks, or the service tests' fake).

Readings, per example, all unsteered (no policy, no request steering: a direction is computed on the model itself):
- pooled activations at every layer: one prefill with an activation accumulator (Engine.capture_means), at the
  last prompt token (LAST_PROMPT) or averaged over the response tokens Generate would score, i.e. all but the last
  (RESPONSE_MEAN);
- for the held-out benign examples, the monitor readings of the new direction at its monitor layer (a prefill on
  the Score path): the last prompt token, every scored response token and their mean, the three calibrations.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import functools
import math
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .compute_direction import MIN_PER_LABEL, calibrate_held_out, choose_monitor_layer, held_out_split
from .compute_direction import layer_separation as separate
from .compute_types import (
    ComputeEvent,
    ComputeProgress,
    ComputeRequest,
    ComputeResult,
    Pooling,
)
from .direction_files import direction_to_bytes
from .directions import Direction, Provenance, validate_direction_name
from .errors import InvalidArgumentError, ResourceExhaustedError
from .rules import CHAT_ROLES, check_text_size
from .types import ChatMessage, EngineLimits, Prompt

__all__ = ["MAX_EXAMPLES", "ActivationSource", "check_compute_request", "run_compute"]

MAX_EXAMPLES = 20000  # examples (persona: questions) per request
MAX_PERSONA_TOKENS = 512
CONCURRENCY = 4  # prefills in flight per job: batched with live traffic, never more than half the accumulators
RETRIES = 30  # a prefill refused for a full queue is retried (backing off to 1 s) before the job fails


class ActivationSource(Protocol):
    """What a job needs from an engine. Every reading goes through the engine's serving forward path."""

    num_layers: int
    hidden_size: int
    max_context: int
    limits: EngineLimits

    def render_prompt(self, prompt: Prompt, prefix: str) -> list[int]:
        """Token ids of a prompt (chat template for messages); errors name `prefix` + the prompt field."""

    def encode_response(self, text: str) -> list[int]:
        """Token ids of a response, as Generate's output would tokenize (no special tokens added)."""

    def provenance(self) -> Provenance: ...

    async def capture_means(self, prompt_ids: list[int], from_position: int) -> torch.Tensor:
        """(num_layers, hidden) mean hidden state over positions >= from_position of one unsteered prefill."""

    async def read_projection(
        self, vector: torch.Tensor, layer: int, ids: list[int], prompt_len: int
    ) -> tuple[float, list[float]]:
        """Raw monitor readings of `vector` (hidden,) at `layer` for prompt + response `ids`: (the last prompt
        token, each scored response token, i.e. all but the last)."""

    async def generate_ids(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy, unsteered answer token ids (end-of-sequence excluded)."""

    def put_direction(self, direction: Direction, strict: bool = False) -> Direction: ...


@dataclass
class _Item:
    """One example as token ids. For persona prompts `response` is filled by generation when it is read."""

    prompt: list[int]
    response: list[int]
    positive: bool
    where: str  # the request field it came from, for errors
    means: torch.Tensor | None = None  # (len(layers), hidden) pooled activations, kept for held-out examples
    benign: dict[str, torch.Tensor] = field(default_factory=dict)  # pooling -> raw monitor scores


def check_compute_request(request: ComputeRequest, num_layers: int, limits: EngineLimits) -> None:
    """Every rule on a ComputeDirection request's plain fields (the texts are checked as they are rendered)."""
    validate_direction_name(request.name, "name")
    if bool(request.examples) == (request.persona is not None):
        raise InvalidArgumentError("examples", "set exactly one of examples and persona")
    for i, layer in enumerate(request.layers):
        if not 0 <= layer < num_layers:
            raise InvalidArgumentError(f"layers[{i}]", f"layer {layer} is outside 0..{num_layers - 1}")
        if layer in request.layers[:i]:
            raise InvalidArgumentError(f"layers[{i}]", f"layer {layer} appears twice")
    if not (math.isfinite(request.target_fpr) and 0 < request.target_fpr <= 0.5):
        raise InvalidArgumentError("target_fpr", "must be in (0, 0.5]")
    if not (math.isfinite(request.held_out_share) and 0 < request.held_out_share < 1):
        raise InvalidArgumentError("held_out_share", "must be in (0, 1)")
    if not 100 <= request.bootstrap_resamples <= 10000:
        raise InvalidArgumentError("bootstrap_resamples", "must be in 100..10000")
    if len(request.description) > 4096:
        raise InvalidArgumentError("description", "at most 4096 characters")
    if request.persona is not None:
        p = request.persona
        if len(p.questions) > MAX_EXAMPLES:
            raise InvalidArgumentError("persona.questions", f"at most {MAX_EXAMPLES} questions")
        if len(p.questions) < MIN_PER_LABEL:
            raise InvalidArgumentError(
                "persona.questions", f"{len(p.questions)} questions; at least {MIN_PER_LABEL} are needed"
            )
        for name, texts in (("questions", p.questions), ("positive_systems", p.positive_systems),
                            ("negative_systems", p.negative_systems)):
            if not texts:
                raise InvalidArgumentError(f"persona.{name}", "is empty")
            for i, text in enumerate(texts):
                if not text.strip():
                    raise InvalidArgumentError(f"persona.{name}[{i}]", "is empty")
                check_text_size(len(text), limits, f"persona.{name}[{i}]")
        if not 1 <= p.max_new_tokens <= min(MAX_PERSONA_TOKENS, limits.max_new_tokens):
            raise InvalidArgumentError(
                "persona.max_new_tokens", f"must be in 1..{min(MAX_PERSONA_TOKENS, limits.max_new_tokens)}"
            )
        return
    if len(request.examples) > MAX_EXAMPLES:
        raise InvalidArgumentError("examples", f"at most {MAX_EXAMPLES} examples")
    n_pos = sum(e.positive for e in request.examples)
    n_neg = len(request.examples) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise InvalidArgumentError(
            "examples", f"needs both positive and negative examples (got {n_pos} positive, {n_neg} negative)"
        )
    if min(n_pos, n_neg) < MIN_PER_LABEL:
        raise InvalidArgumentError(
            "examples",
            f"{n_pos} positive and {n_neg} negative examples; at least {MIN_PER_LABEL} of each are needed",
        )
    response_mean = request.resolved_pooling is Pooling.RESPONSE_MEAN
    for i, e in enumerate(request.examples):
        if response_mean and not e.response.strip():
            raise InvalidArgumentError(f"examples[{i}].response", "is empty (RESPONSE_MEAN pooling reads it)")
        check_text_size(len(e.response), limits, f"examples[{i}].response")


async def run_compute(request: ComputeRequest, source: ActivationSource) -> AsyncGenerator[ComputeEvent, None]:
    """Progress events, then one ComputeResult. Raises InvalidArgumentError (naming the field) for bad input."""
    check_compute_request(request, source.num_layers, source.limits)
    pooling = request.resolved_pooling
    layers = sorted(request.layers) if request.layers else list(range(source.num_layers))
    items, train, held = await asyncio.to_thread(_items, request, source)  # tokenizing is heavy: off the loop
    held_neg = [i for i in held if not items[i].positive]

    if request.persona is not None:  # answers the model gives: read by RESPONSE_MEAN, calibrating for both
        todo = list(range(len(items))) if pooling is Pooling.RESPONSE_MEAN else held_neg
        n_new = request.persona.max_new_tokens

        async def answer(i: int) -> None:
            items[i].response = await source.generate_ids(items[i].prompt, n_new)

        async for event in _stage("generate", [functools.partial(answer, i) for i in todo]):
            yield event

    # Held-out examples keep their pooled activations (for the projections); train examples only add to their
    # label's sum, so memory grows with the held-out share alone: (len(layers), hidden) fp32 per held-out example.
    index = torch.tensor(layers)
    is_held = [False] * len(items)
    for i in held:
        is_held[i] = True
    sums = {True: torch.zeros(len(layers), source.hidden_size), False: torch.zeros(len(layers), source.hidden_size)}

    async def capture(i: int) -> None:
        item = items[i]
        if pooling is Pooling.LAST_PROMPT:
            means = await source.capture_means(item.prompt, len(item.prompt) - 1)
        else:
            if len(item.response) < 2:
                raise InvalidArgumentError(
                    f"{item.where}.response", "has fewer than 2 tokens (RESPONSE_MEAN reads all but the last)"
                )
            means = await source.capture_means(item.prompt + item.response[:-1], len(item.prompt))
        means = means.index_select(0, index).float()  # (len(layers), hidden)
        if is_held[i]:
            item.means = means
        else:
            sums[item.positive] += means

    async for event in _stage("capture", [functools.partial(capture, i) for i in range(len(items))]):
        yield event

    def train_mean(positive: bool) -> dict[int, torch.Tensor]:
        n = sum(1 for i in train if items[i].positive == positive)
        return {layer: (sums[positive][k] / n)[None] for k, layer in enumerate(layers)}  # layer -> (1, hidden)

    def stacked(positive: bool) -> dict[int, torch.Tensor]:
        rows = torch.stack([items[i].means for i in held if items[i].positive == positive])  # type: ignore[misc]
        return {layer: rows[:, k] for k, layer in enumerate(layers)}  # layer -> (n, hidden)

    vectors, stats = await asyncio.to_thread(
        separate,
        train_mean(True),
        train_mean(False),
        stacked(True),
        stacked(False),
        request.bootstrap_resamples,
        request.seed,
    )
    if all(s.norm == 0 for s in stats):
        raise InvalidArgumentError(
            "persona" if request.persona is not None else "examples",
            "the positive and negative examples read the same at every layer: there is no direction between them",
        )
    monitor_layer = choose_monitor_layer(stats)
    vector = vectors[monitor_layer]

    async def read(item: _Item) -> None:
        prompt_score, tokens = await source.read_projection(
            vector, monitor_layer, item.prompt + item.response, len(item.prompt)
        )
        item.benign["last_prompt"] = torch.tensor([prompt_score], dtype=torch.float64)
        if tokens:
            scores = torch.tensor(tokens, dtype=torch.float64)
            item.benign["token"] = scores
            item.benign["response_mean"] = scores.mean().reshape(1)

    async for event in _stage("calibrate", [functools.partial(read, items[i]) for i in held_neg]):
        yield event

    benign = {p: [items[i].benign[p] for i in held_neg if p in items[i].benign]
              for p in ("token", "response_mean", "last_prompt")}
    calibration, fpr = calibrate_held_out(benign, request.target_fpr, request.seed)
    recipe = "persona" if request.persona is not None else "contrastive"
    direction = Direction(
        name=request.name,
        vectors={layer: v.float().contiguous() for layer, v in vectors.items() if float(v.norm()) > 0},
        monitor_layer=monitor_layer,
        calibration=calibration,
        provenance=source.provenance(),
        method=f"{recipe}:diff_of_means:{pooling.value}",
        n_examples=len(train),
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        description=request.description,
    ).validate(source.num_layers, source.hidden_size)
    stored = False
    if request.store:
        direction = source.put_direction(direction)
        stored = True
    yield ComputeResult(
        direction=direction,
        layers=tuple(stats),
        pooling=pooling,
        n_train=len(train),
        n_held_out=len(held),
        held_out_fpr=fpr,
        stored=stored,
        safetensors=direction_to_bytes(direction) if request.return_file else b"",
    )


def _items(request: ComputeRequest, source: ActivationSource) -> tuple[list[_Item], list[int], list[int]]:
    """Every example rendered, and the (train, held-out) split of their indices."""
    if request.persona is None:
        items = []
        for i, e in enumerate(request.examples):
            where = f"examples[{i}]"
            prompt = source.render_prompt(e.prompt, f"{where}.")
            response = source.encode_response(e.response) if e.response else []
            if request.resolved_pooling is Pooling.RESPONSE_MEAN and len(response) < 2:
                raise InvalidArgumentError(
                    f"{where}.response", "has fewer than 2 tokens (RESPONSE_MEAN reads all but the last)"
                )
            _check_length(source, prompt, len(response) + 1, where)
            items.append(_Item(prompt, response, e.positive, where))
        groups = [tuple(it.prompt) for it in items]  # one prompt's examples stay on one side
        train, held = held_out_split([it.positive for it in items], groups, request.held_out_share, request.seed)
        return items, train, held
    p = request.persona
    rng = random.Random(request.seed)
    items = []
    for i, q in enumerate(p.questions):  # item 2i: the question under a trait prompt, 2i + 1: under a neutral one
        for positive, systems in ((True, p.positive_systems), (False, p.negative_systems)):
            messages = (ChatMessage("system", rng.choice(systems)), ChatMessage("user", q))
            assert all(m.role in CHAT_ROLES for m in messages)
            prompt = source.render_prompt(Prompt(messages=messages), f"persona.questions[{i}].")
            _check_length(source, prompt, p.max_new_tokens, f"persona.questions[{i}]")
            items.append(_Item(prompt, [], positive, f"persona.questions[{i}]"))
    # By question: a question's prompts (and a repeated question's) fall on one side: held-out questions are unseen.
    labels = [it.positive for it in items]
    train, held = held_out_split(labels, [p.questions[i // 2] for i in range(len(items))], request.held_out_share,
                                 request.seed)
    return items, train, held


def _check_length(source: ActivationSource, prompt: list[int], more: int, where: str) -> None:
    """The prompt, and the prompt with `more` tokens after it, fit the server's limits."""
    if len(prompt) > source.limits.max_prompt_tokens:
        raise InvalidArgumentError(
            where, f"the prompt's {len(prompt)} tokens exceed max_prompt_tokens ({source.limits.max_prompt_tokens})"
        )
    if len(prompt) + more > source.max_context:
        raise InvalidArgumentError(
            where, f"prompt ({len(prompt)} tokens) + response ({more}) exceed the context of {source.max_context}"
        )


async def _stage(name: str, jobs: list[Callable[[], Awaitable[None]]]) -> AsyncIterator[ComputeProgress]:
    """Run `jobs` at most CONCURRENCY at a time, retrying one the engine refused for capacity; progress about every
    2% (and at the end). Leaving early (the caller cancelled) cancels what is still running, which frees its engine
    requests."""
    if not jobs:
        return
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            for attempt in range(RETRIES + 1):
                try:
                    await job()
                    return
                except ResourceExhaustedError:  # a full queue or no free accumulator: live traffic comes first
                    if attempt == RETRIES:
                        raise
                    await asyncio.sleep(min(1.0, 0.05 * 2**attempt))

    tasks = [asyncio.ensure_future(one(job)) for job in jobs]
    started = time.monotonic()
    step = max(1, len(jobs) // 50)
    try:
        for done, finished in enumerate(asyncio.as_completed(tasks), 1):
            await finished
            if done % step == 0 or done == len(jobs):
                elapsed = time.monotonic() - started
                yield ComputeProgress(name, done, len(jobs), elapsed / done * (len(jobs) - done))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
