"""A deterministic in-process EngineClient for service tests: no model, same contract as the real engine.

Tokens are UTF-8 bytes (ids 0-255) plus EOS (256). A generated token is a hash of (prompt, position, sampling
settings, and the net steering effect, i.e. the real planner's device coefficients, from a per-effect start
position), so steered requests diverge from unsteered ones after a few tokens, terms with the same net effect give
the same tokens, and nothing depends on batching. A score is a hash of (direction, the tokens up to the input
position, steering below the monitor layer), so Score agrees with Generate by construction here: that agreement is
tested on the real engine (test_real_engine.py). Validation, the registry, the policy and the red-team rule are
the real engine's code (rules, planning, composition, containment, variants).

Conditional steering and alert rules use the real planner too (conditions, watches); a condition is decided on the
fake's scores as the real engine decides on its readings: PROMPT at the last prompt token, RUNNING latched at the
first fed-back generated position that reaches it, and the condition's net effect joins the token hash from then on.
Watches fire and hold tokens back exactly as streams.py does (alerts.py).

Hooks for the tests: `hold()` makes every generation wait after its first token until `release()`; `kill()`
simulates the engine's death; `limits` sets the queue size.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from steering_server.alerts import Watch, check_replacement, check_unreferenced
from steering_server.composition import FieldTerm
from steering_server.compute_job import run_compute
from steering_server.compute_types import ComputeEvent, ComputeRequest
from steering_server.directions import Calibration, Direction, Provenance
from steering_server.engine_api import CompareStreams, EngineClient, RequestStream, collect
from steering_server.errors import (
    EngineDeadError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
)
from steering_server.monitor_feed import MonitorFeed, current_front_end, current_rpc, request_event
from steering_server.planning import RequestPlan, Tables, effective_terms, make_plan
from steering_server.provenance import check_provenance
from steering_server.registry import DirectionRegistry
from steering_server.rules import (
    check_monitor,
    check_prompt,
    check_sampling,
    check_score_response,
    check_text_size,
    check_variants,
)
from steering_server.runtime import SteeringRuntime
from steering_server.types import (
    Alert,
    AlertAction,
    CompareRequest,
    ConditionScope,
    DirectionScores,
    EngineLimits,
    EngineStats,
    GenerationRequest,
    GenerationResult,
    ModelInfo,
    MonitorOptions,
    Prompt,
    RequestTiming,
    SamplingParams,
    ScoreRequest,
    ScoreResult,
    SteeringPolicy,
    SteeringTerm,
    StopReason,
    TokenEvent,
)
from steering_server.variants import default_variants, variant_ignores_policy

__all__ = ["EOS", "HIDDEN", "LAYERS", "VOCAB", "FakeEngine", "make_direction"]

EOS = 256
VOCAB = 260
HIDDEN = 8
LAYERS = 4
_ALPHABET = b"abcdefghijklmnopqrstuvwxyz    .,"


def make_direction(name: str, monitor_layer: int = 2, calibrated: bool = True, seed: int = 0) -> Direction:
    gen = torch.Generator().manual_seed(seed)
    vectors = {layer: torch.randn(HIDDEN, generator=gen) for layer in range(LAYERS)}
    calibration = {"token": Calibration(mu=0.0, sigma=1.0)} if calibrated else {}
    return Direction(name, vectors, monitor_layer, calibration=calibration, method="fake")


def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


_NO_MONITOR = MonitorOptions(enabled=False)


class FakeEngine(EngineClient):
    def __init__(self, limits: EngineLimits | None = None) -> None:
        self.limits = limits or EngineLimits(max_new_tokens=64, max_prompt_tokens=512, max_queued=512, max_variants=4)
        # The real registry and request rules (planning, composition, containment, rules), over a device table of
        # LAYERS identity layers: only the token and score generation below is fake.
        self._runtime = SteeringRuntime(
            nn.ModuleList([nn.Identity() for _ in range(LAYERS)]),
            HIDDEN,
            torch.device("cpu"),
            max_directions=self.limits.max_directions,
            max_slots=1,
            max_batch_tokens=1,
            max_rows=1,
        )
        self.registry = DirectionRegistry(self._runtime, LAYERS, HIDDEN, residual_norms=[RESIDUAL_NORM] * LAYERS)
        self.registry.put(make_direction("misalignment"))
        self.policy = SteeringPolicy()
        self.active: dict[str, _FakeStream] = {}
        self.dead: BaseException | None = None
        self._callbacks: list[Callable[[BaseException], None]] = []
        self._ids = itertools.count()
        self._released = asyncio.Event()
        self._released.set()
        self.generated_tokens = 0
        self.forward_passes = 0
        self.stopping = False
        self.monitor_feed = MonitorFeed()

    # ---- test hooks
    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def kill(self, error: BaseException | None = None) -> None:
        self.dead = error or RuntimeError("simulated batching-loop crash")
        dead = EngineDeadError(f"the engine stopped: {self.dead}")
        for stream in list(self.active.values()):
            stream.fail(dead)
        for cb in self._callbacks:
            cb(dead)

    # ---- EngineClient
    @property
    def healthy(self) -> bool:
        return self.dead is None and not self.stopping

    def add_death_callback(self, callback: Callable[[BaseException], None]) -> None:
        self._callbacks.append(callback)

    def model_info(self) -> ModelInfo:
        return ModelInfo("fake/bytes", "fake", LAYERS, HIDDEN, VOCAB, "float32", "cpu", 4096)

    def tokenize(self, text: str) -> list[int]:
        return list(text.encode())

    def detokenize(self, token_ids: list[int]) -> str:
        return bytes(t for t in token_ids if t < 256).decode("utf-8", errors="replace")

    @property
    def directions(self) -> dict[str, Direction]:
        return {d.name: d for d in self.registry.list()}

    def generate_stream(self, request: GenerationRequest) -> RequestStream:
        return self._open(request, "GenerateStream")

    async def open_stream(self, request: GenerationRequest) -> RequestStream:
        return self._open(request, "GenerateStream")

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        return await collect(self._open(request, "Generate"))

    def _open(self, request: GenerationRequest, rpc: str) -> _FakeStream:
        self._check_accepting()
        sampling = check_sampling(request.sampling, self.limits)
        check_monitor(request.monitor)
        prompt = self._render(request.prompt)
        self._check_length(prompt, sampling.max_new_tokens)
        return self._admit(request, prompt, "", rpc)

    def _admit(
        self, request: GenerationRequest, prompt: list[int], prefix: str, rpc: str, variant: str = ""
    ) -> _FakeStream:
        if prefix:
            check_monitor(request.monitor, prefix)
        terms, effect, plan = self._plan(request.steering, request.ignore_policy, f"{prefix}steering",
                                         request.monitor, prefix)
        # The monitor feed, as the real engine publishes it: the terms that ran (the STEER rules' included) and the
        # policy read at admission.
        field_terms = plan.terms
        front, policy, rpc = current_front_end(), self.policy, current_rpc(rpc)
        monitored = self._monitored(request.monitor, prefix)
        if len(self.active) >= self.limits.max_queued:
            raise ResourceExhaustedError(f"{len(self.active)} requests in flight (limit {self.limits.max_queued})")
        conditions = [
            _Gate(c.entry.direction, c.condition.threshold, c.condition.scope, self._effect(plan, c.tables, f"c{i}"))
            for i, c in enumerate(plan.conditions)
        ]
        stream = _FakeStream(
            self, f"fake{next(self._ids)}", prompt, request.sampling, terms, monitored, request.monitor, effect,
            conditions, plan.watches,
        )
        stream.plan = plan
        self.active[stream.request_id] = stream

        def publish(future: asyncio.Future[GenerationResult]) -> None:
            if not future.cancelled() and future.exception() is None:
                event = request_event(
                    future.result(), rpc=rpc, front=front, variant=variant, terms=field_terms, policy=policy
                )
                self.monitor_feed.publish(event)

        stream._result.add_done_callback(publish)
        return stream

    async def open_compare(self, request: CompareRequest) -> CompareStreams:
        self._check_accepting()
        check_variants(request.variants, self.limits)
        sampling = check_sampling(request.sampling, self.limits)
        check_monitor(request.monitor)
        names = request.monitor.directions
        monitored = self.registry.get(names[0], "monitor.directions[0]").direction if names else self.registry.first()
        variants = request.variants or default_variants(self.policy, monitored)
        prompt = self._render(request.prompt)
        self._check_length(prompt, sampling.max_new_tokens)
        streams = []
        try:
            for i, v in enumerate(variants):  # admitted together, as the real engine batches them
                req = GenerationRequest(
                    request.prompt, sampling, v.steering, request.monitor, variant_ignores_policy(self.policy)
                )
                streams.append(self._admit(req, prompt, f"variants[{i}].", "Compare", v.name))
        except BaseException:
            for s in streams:
                s.cancel()
            raise
        return CompareStreams(variants, tuple(streams))

    async def score(self, request: ScoreRequest) -> ScoreResult:
        self._check_accepting()
        check_score_response(request, VOCAB)
        check_monitor(request.monitor)
        prompt = self._render(request.prompt)
        if request.response_token_ids:
            response = list(request.response_token_ids)
        else:
            check_text_size(len(request.response_text or ""), self.limits, "response")
            response = self.tokenize(request.response_text or "")
        terms, _, plan = self._plan(request.steering, request.ignore_policy, "steering")
        monitored = self._monitored(request.monitor, "")
        ids = prompt + response
        n_scored = max(0, len(response) - 1)
        scores = tuple(
            _summarise(
                d,
                [_score(d, ids, len(prompt) - 1 + i, terms) for i in range(n_scored + 1)],
                terms,
                request.monitor.token_scores,
            )
            for d in monitored
        )
        field_terms = effective_terms(request.steering, self.policy, request.ignore_policy)
        policy, front = self.policy, current_front_end()
        # Score only records: each policy rule (one watch each, in order) on these scores, with the rule's action.
        alerts: list[Alert] = []
        policy_watches = [w for w in plan.watches if w.source == "policy"]
        for w, rule in zip(policy_watches, policy.alerts, strict=True):
            at: list[tuple[int, int | None]] = [(len(prompt) - 1, None)] if w.scope == ConditionScope.PROMPT else [
                (len(prompt) + i, i) for i in range(n_scored)
            ]
            for position, index in at:
                score = _score(w.entry.direction, ids, position, terms)
                if w.fires(score):
                    alerts.append(replace(w.alert(score, index), action=rule.action))
                    break
        await asyncio.sleep(0)
        self.monitor_feed.publish(
            request_event(
                None,
                rpc=current_rpc("Score"),
                request_id=f"fake{next(self._ids)}",
                front=front,
                terms=field_terms,
                policy=policy,
                scores=scores,
                prompt_tokens=len(prompt),
                completion_tokens=len(response),
                alerts=tuple(alerts),
            )
        )
        return ScoreResult(len(prompt), tuple(response), scores, steered=plan.applied(()), alerts=tuple(alerts))

    def list_directions(self) -> list[Direction]:
        return self.registry.list()

    def get_direction(self, name: str) -> Direction:
        return self.registry.get(name).direction

    def put_direction(self, direction: Direction, strict: bool = False) -> Direction:
        checked = check_provenance(direction, CONFIG_HASH, TOKENIZER_HASH, strict)
        check_replacement(self.policy, checked)
        return self.registry.put(checked)

    def delete_direction(self, name: str) -> None:
        check_unreferenced(self.policy, name)
        self.registry.delete(name)

    def get_policy(self) -> SteeringPolicy:
        return self.policy

    def set_policy(self, policy: SteeringPolicy) -> SteeringPolicy:
        self._terms_of(effective_terms((), policy, False), rules=policy)  # the engine's check, against the registry
        self.policy = policy
        return policy

    def stats(self) -> EngineStats:
        return EngineStats(len(self.active), len(self.active), self.forward_passes, self.generated_tokens)

    async def shutdown(self) -> None:
        self.stopping = True
        for stream in list(self.active.values()):
            stream.cancel()

    # ---- ComputeDirection: the real job (compute_job.py) over fake activations (_hidden)
    num_layers = LAYERS
    hidden_size = HIDDEN
    max_context = 4096

    def compute_direction(self, request: ComputeRequest) -> AsyncGenerator[ComputeEvent, None]:
        self._check_accepting()
        return run_compute(request, self)

    def render_prompt(self, prompt: Prompt, prefix: str) -> list[int]:
        check_prompt(prompt, self.limits, VOCAB, prefix)
        return self._render(prompt)

    def encode_response(self, text: str) -> list[int]:
        return self.tokenize(text)

    def provenance(self) -> Provenance:
        return Provenance("fake/bytes", CONFIG_HASH, TOKENIZER_HASH)

    async def capture_means(self, prompt_ids: list[int], from_position: int) -> torch.Tensor:
        self._check_accepting()
        self.forward_passes += 1
        return _hidden(prompt_ids)[:, from_position:].mean(1)

    async def read_projection(
        self, vector: torch.Tensor, layer: int, ids: list[int], prompt_len: int
    ) -> tuple[float, list[float]]:
        self._check_accepting()
        self.forward_passes += 1
        proj = (_hidden(ids)[layer] @ (vector / vector.norm())).tolist()  # (positions,)
        return proj[prompt_len - 1], proj[prompt_len : len(ids) - 1]

    async def generate_ids(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        result = await self.generate(
            GenerationRequest(Prompt(token_ids=tuple(prompt_ids)), SamplingParams(max_new_tokens=max_new_tokens),
                              monitor=_NO_MONITOR, ignore_policy=not self.policy.enforced)
        )
        return [t for t in result.token_ids if t != EOS]

    # ---- internals
    def _check_accepting(self) -> None:
        if self.dead is not None:
            raise EngineDeadError(f"the engine stopped: {self.dead}")
        if self.stopping:
            raise UnavailableError("the server is shutting down")

    def _render(self, prompt: Prompt) -> list[int]:
        check_prompt(prompt, self.limits, VOCAB)
        if prompt.text is not None:
            return self.tokenize(prompt.text)
        if prompt.messages:
            return self.tokenize("".join(f"<|{m.role}|>{m.content}\n" for m in prompt.messages) + "<|assistant|>")
        return list(prompt.token_ids)

    def _check_length(self, prompt: list[int], max_new_tokens: int) -> None:
        if len(prompt) > self.limits.max_prompt_tokens:
            raise InvalidArgumentError(
                "prompt", f"{len(prompt)} tokens exceed max_prompt_tokens ({self.limits.max_prompt_tokens})"
            )

    def _plan(
        self, steering: tuple[SteeringTerm, ...], ignore_policy: bool, field: str,
        monitor: MonitorOptions = _NO_MONITOR, prefix: str = "",
    ) -> tuple[tuple[SteeringTerm, ...], tuple[object, ...], RequestPlan]:
        """The real policy rule and plan (validation, composition, red-team rule, bounds, alert rules): the terms it
        ran, their net effect (the device coefficients), which is what the fake's tokens depend on, as the real ones
        do, and the plan (conditions, watches)."""
        return self._terms_of(effective_terms(steering, self.policy, ignore_policy, field), self.policy, monitor,
                              prefix)

    def _terms_of(
        self, terms: tuple[FieldTerm, ...], rules: SteeringPolicy | None = None,
        monitor: MonitorOptions = _NO_MONITOR, prefix: str = "",
    ) -> tuple[tuple[SteeringTerm, ...], tuple[object, ...], RequestPlan]:
        plan = make_plan(
            self.registry, terms, monitor, LAYERS, self.limits.max_directions, self.limits.allow_red_team, prefix,
            rules=rules.alerts if rules is not None else (),
        )
        return tuple(ft.term for ft in terms), self._effect(plan, plan.tables), plan

    @staticmethod
    def _effect(plan: RequestPlan, tables: Tables, tag: str = "") -> tuple[object, ...]:
        effect: tuple[object, ...] = ()
        rows = {e.row: e.direction.name for e in plan.entries}  # rows are reused: key by name
        for cls, table in enumerate(tables):  # per position class (planning.RequestPlan)
            if table is None:
                continue
            alpha, beta = table
            effect += tuple(
                (tag, cls, rows[k], layer, round(float(alpha[layer, k]), 6), round(float(beta[layer, k]), 6))
                for layer, k in alpha.nonzero().tolist() + beta.nonzero().tolist()
            )
        return tuple(sorted(set(effect)))

    def _monitored(self, monitor: MonitorOptions, prefix: str) -> list[Direction]:
        if not monitor.enabled:
            return []
        named = [
            self.registry.get(n, f"{prefix}monitor.directions[{j}]").direction for j, n in enumerate(monitor.directions)
        ]
        return named or self.registry.list()


CONFIG_HASH = "fake-config"
TOKENIZER_HASH = "fake-tokenizer"
RESIDUAL_NORM = 10.0  # what the real engine measures per layer; the fake's vectors have norms near 3


_EMBED = torch.randn(VOCAB, HIDDEN, generator=torch.Generator().manual_seed(11))  # (vocab, hidden)


def _hidden(ids: list[int]) -> torch.Tensor:
    """Fake residual states (layers, positions, hidden): layer l adds (l + 1) / LAYERS of the mean embedding of
    the tokens so far to a token's own (a stand-in for attention), so a token that marks examples moves their states
    along its embedding at every layer, and the last prompt token reads the whole prompt."""
    e = _EMBED[torch.tensor(ids)]  # (positions, hidden)
    context = e.cumsum(0) / torch.arange(1, len(ids) + 1)[:, None]  # (positions, hidden)
    return torch.stack([e + (layer + 1) / LAYERS * context for layer in range(LAYERS)])


def _steer_start(terms: tuple[object, ...]) -> int:
    return 1 + _h(terms) % 3 if terms else 1 << 30


def _next_token(prompt: list[int], i: int, sampling: SamplingParams, terms: tuple[object, ...]) -> int:
    noise = (sampling.seed, sampling.temperature, sampling.top_p, sampling.top_k) if sampling.temperature > 0 else ()
    key = _h(tuple(prompt), i, noise, terms if i >= _steer_start(terms) else ())
    if i >= 3 and key % 17 == 0:
        return EOS
    return _ALPHABET[key % len(_ALPHABET)]


def _post_intervention(d: Direction, terms: tuple[SteeringTerm, ...]) -> bool:
    return any(any(layer < d.monitor_layer for layer in t.layers) for t in terms)


def _score(d: Direction, ids: list[int], position: int, terms: tuple[SteeringTerm, ...]) -> float:
    below = tuple(t for t in terms if _post_intervention(d, (t,)))
    return (_h(d.name, tuple(ids[: position + 1]), below) % 4001) / 1000 - 2.0


def _summarise(
    d: Direction, readings: list[float], terms: tuple[SteeringTerm, ...], with_tokens: bool
) -> DirectionScores:
    tokens = readings[1:]  # readings[0] is the last prompt token
    return DirectionScores(
        direction=d.name,
        layer=d.monitor_layer,
        prompt_score=readings[0],
        response_score=sum(tokens) / len(tokens) if tokens else None,
        token_scores=tuple(tokens) if with_tokens else (),
        calibrated=d.calibrated,
        post_intervention=_post_intervention(d, terms),
        max_score=max(tokens) if tokens else None,
    )


@dataclass
class _Gate:
    """One condition of a request: latched at the first position whose fake score reaches the threshold."""

    direction: Direction
    threshold: float
    scope: ConditionScope
    effect: tuple[object, ...]  # what the condition adds to the net effect once on
    fired_at: int | None = None  # absolute position

    def read(self, position: int, prompt_len: int, score: float) -> None:
        counts = position == prompt_len - 1 if self.scope == ConditionScope.PROMPT else position >= prompt_len
        if self.fired_at is None and counts and score >= self.threshold:
            self.fired_at = position


class _FakeStream(RequestStream):
    def __init__(
        self,
        engine: FakeEngine,
        request_id: str,
        prompt: list[int],
        sampling: SamplingParams,
        terms: tuple[SteeringTerm, ...],
        monitored: list[Direction],
        monitor: MonitorOptions,
        effect: tuple[object, ...] = (),
        gates: list[_Gate] | None = None,
        watches: list[Watch] | None = None,
    ) -> None:
        self.request_id = request_id
        self._effect = effect
        self._gates = gates or []
        self._watches = list(watches or [])
        self._delay = any(w.action == AlertAction.STOP and w.scope == ConditionScope.RUNNING for w in self._watches)
        self.alerts: list[Alert] = []
        self.plan: RequestPlan | None = None  # set by FakeEngine._admit
        self._text = ""  # the text of the released tokens
        self._emitted = 0  # characters of it streamed
        self._released = 0  # tokens streamed
        self._engine = engine
        self._prompt = prompt
        self._sampling = sampling
        self._terms = terms
        self._monitored = monitored
        self._monitor = monitor
        self._queue: asyncio.Queue[TokenEvent | BaseException | None] = asyncio.Queue()
        self._result: asyncio.Future[GenerationResult] = asyncio.get_running_loop().create_future()
        self.tokens: list[int] = []
        self.done = False
        self._admitted = time.monotonic()
        self._scheduled: float | None = None
        self._token_times: list[float] = []
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def __aiter__(self) -> AsyncIterator[TokenEvent]:  # type: ignore[override]
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def result(self) -> GenerationResult:
        return await asyncio.shield(self._result)

    def final(self) -> GenerationResult | None:
        if self._result.done() and self._result.exception() is None:
            return self._result.result()
        return None

    def cancel(self) -> None:
        if not self.done:
            del self.tokens[self._released :]  # a token held back (alerts.py) was never streamed
            self._finish(StopReason.CANCELLED, "")

    def fail(self, error: BaseException) -> None:
        if self.done:
            return
        self._close()
        self._result.set_exception(error)
        self._result.exception()
        self._queue.put_nowait(error)

    async def _run(self) -> None:
        for i in range(self._sampling.max_new_tokens):
            await asyncio.sleep(0)  # one "forward pass" per token; other requests interleave
            if i == 1:
                await self._engine._released.wait()
            if self.done:
                return
            if self._scheduled is None:
                self._scheduled = time.monotonic()
            self._engine.forward_passes += 1
            ids = self._prompt + self.tokens
            position = len(ids) - 1  # the input position of token i
            for gate in self._gates:
                gate.read(position, len(self._prompt), _score(gate.direction, ids, position, self._terms))
            if self._check_watches(ids, position, i):  # holds back tokens i - 1 and i (alerts.py)
                del self.tokens[self._released :]
                self._finish(StopReason.MONITOR_ALERT, self._text[self._emitted :], self._text)
                return
            effect = self._effect + tuple(
                e for g in self._gates if g.fired_at is not None and g.fired_at <= position for e in g.effect
            )
            self.tokens.append(_next_token(self._prompt, i, self._sampling, effect))
            if not self._release(i - 1 if self._delay else i):
                return
        if self._release(len(self.tokens) - 1):
            self._finish(StopReason.MAX_TOKENS, self._text[self._emitted :], self._text)

    def _check_watches(self, ids: list[int], position: int, i: int) -> bool:
        scope = ConditionScope.PROMPT if i == 0 else ConditionScope.RUNNING
        stop = False
        for w in [w for w in self._watches if w.scope == scope]:
            score = _score(w.entry.direction, ids, position, self._terms)
            if w.fires(score):
                self._watches.remove(w)
                self.alerts.append(w.alert(score, None if i == 0 else i - 1))
                stop |= w.action == AlertAction.STOP
        return stop

    def _release(self, upto: int) -> bool:
        """Stream tokens up to index `upto`; False once the request ended (EOS or a stop sequence)."""
        stops = self._sampling.stop
        while self._released <= upto:
            i = self._released
            self._released += 1
            token = self.tokens[i]
            self._token_times.append(time.monotonic())
            ids = self._prompt + self.tokens[:i]
            scores = {d.name: _score(d, ids, len(ids) - 1, self._terms) for d in self._monitored}
            if token == EOS:
                del self.tokens[i + 1 :]
                self._queue.put_nowait(TokenEvent(i, token, "", scores))
                self._finish(StopReason.EOS_TOKEN, self._text[self._emitted :], self._text)
                return False
            self._text += chr(token)
            hit = [self._text.index(s) for s in stops if s in self._text]
            if hit:
                del self.tokens[i + 1 :]
                self._text = self._text[: min(hit)]
                self._queue.put_nowait(TokenEvent(i, token, self._text[self._emitted :], scores))
                self._finish(StopReason.STOP_SEQUENCE, "", self._text)
                return False
            # Hold back a suffix that could still begin a stop sequence.
            hold = max((k for s in stops for k in range(1, len(s)) if self._text.endswith(s[:k])), default=0)
            upto_text = max(self._emitted, len(self._text) - hold)
            self._queue.put_nowait(TokenEvent(i, token, self._text[self._emitted : upto_text], scores))
            self._emitted = upto_text
        return True

    def _finish(self, reason: StopReason, tail: str, text: str | None = None) -> None:
        if text is None:
            text = self._engine.detokenize(self.tokens)
        ids = self._prompt + self.tokens
        n_scored = max(0, len(self.tokens) - 1)
        monitor = tuple(
            _summarise(
                d,
                [_score(d, ids, len(self._prompt) - 1 + i, self._terms) for i in range(n_scored + 1)],
                self._terms,
                self._monitor.token_scores,
            )
            for d in self._monitored
        )
        self._close()
        self._result.set_result(
            GenerationResult(
                text=text,
                token_ids=tuple(self.tokens),
                stop_reason=reason,
                prompt_tokens=len(self._prompt),
                monitor=monitor,
                request_id=self.request_id,
                text_tail=tail,
                alerts=tuple(self.alerts),
                steered=self.plan.applied(tuple(self.alerts)),
                timing=RequestTiming(self._admitted, self._scheduled, tuple(self._token_times), time.monotonic()),
            )
        )
        self._queue.put_nowait(None)

    def _close(self) -> None:
        self.done = True
        if self._engine.active.pop(self.request_id, None) is not None:
            self._engine.generated_tokens += len(self.tokens)
        if asyncio.current_task() is not self._task:
            self._task.cancel()
