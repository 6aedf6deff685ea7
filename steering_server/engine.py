"""The engine: per-request measure-and-steer inside continuous batching, behind the EngineClient interface.

Threads: the batching manager runs forwards on its own thread; everything else (admission, registry, streams)
runs on the asyncio event loop that started the engine.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import AsyncGenerator, Callable
from dataclasses import replace

import torch

from .alerts import check_replacement, check_unreferenced
from .canary import CANARY_PROMPT, plain_greedy, run_canary
from .cb_adapter import BatchingManager, Progress
from .compute_job import run_compute
from .compute_types import ComputeEvent, ComputeRequest
from .config import CPU_KV_TOKENS_PER_REQUEST, EngineConfig
from .containment import measure_residual_norms
from .directions import Direction, Provenance
from .engine_api import CompareStreams, EngineClient, collect
from .errors import (
    EngineDeadError,
    InvalidArgumentError,
    ResourceExhaustedError,
    SteeringError,
    UnavailableError,
)
from .models import LoadedModel, load_model
from .monitor_feed import MonitorFeed, current_front_end, current_rpc, request_event
from .planning import MAX_CONDITIONS, FieldTerm, MonitorTarget, PlanCache, RequestPlan, effective_terms, make_plan
from .prompts import render_prompt
from .provenance import check_provenance, config_hash, tokenizer_hash
from .registry import DirectionRegistry
from .rules import check_monitor, check_sampling, check_score_response, check_text_size, check_variants
from .runtime import GateSpec, RequestTrack, SteeringRuntime
from .state import StateDir, StateError
from .steer import GATE_NEVER
from .streams import GenerationStream, direction_scores, score_alerts
from .types import (
    AlertAction,
    AlertRule,
    CompareRequest,
    ConditionScope,
    EngineStats,
    GenerationRequest,
    GenerationResult,
    ModelInfo,
    MonitorOptions,
    Prompt,
    SamplingParams,
    ScoreRequest,
    ScoreResult,
    SteeringPolicy,
)
from .variants import default_variants, variant_ignores_policy

__all__ = ["Engine", "start_engine"]

log = logging.getLogger(__name__)


async def start_engine(config: EngineConfig, loaded: LoadedModel | None = None) -> Engine:
    """Load the model (unless given), register the configured directions, start batching and run the canary."""
    builtin = loaded is None and config.model is None
    if loaded is None:
        loaded = await asyncio.to_thread(load_model, config.model, config.device, config.dtype)
    engine = Engine(loaded, config)
    if builtin:
        engine.register_builtin_directions()
    for name, path in config.directions:
        engine.load_direction_file(name, path)
    await engine.start()
    # After the canary (which runs unsteered, and could not under a restored enforced policy) and before anyone
    # holds the engine: nothing is served without the saved policy.
    try:
        engine.restore_state()
    except BaseException:
        await engine.shutdown()
        raise
    return engine


class Engine(EngineClient):
    def __init__(self, loaded: LoadedModel, config: EngineConfig) -> None:
        self.loaded = loaded
        self.config = config
        self.limits = config.limits
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        text_config = self.model.config.get_text_config()
        self.num_layers = loaded.num_layers
        self.hidden_size = loaded.hidden_size
        self.vocab_size = int(text_config.vocab_size)
        self.max_context = int(
            getattr(text_config, "max_position_embeddings", 0) or getattr(text_config, "n_positions", 4096)
        )
        # What ModelInfo advertises is what a request can use (a 1024-token limit beside a 256-token context was not).
        self.limits = replace(
            self.limits,
            max_new_tokens=min(self.limits.max_new_tokens, self.max_context - 1),
            max_prompt_tokens=min(self.limits.max_prompt_tokens, self.max_context - 1),
        )
        self.config_hash = config_hash(self.model.config)
        self.tokenizer_hash = tokenizer_hash(self.tokenizer)
        eos = self.model.generation_config.eos_token_id if self.model.generation_config is not None else None
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else ([eos] if eos is not None else []))
        self.runtime = SteeringRuntime(
            loaded.layers,
            self.hidden_size,
            self.model.device,
            max_directions=self.limits.max_directions,
            max_slots=_SLOTS_PER_REQUEST * self.limits.max_queued,
            max_batch_tokens=config.max_batch_tokens,
            max_rows=config.max_requests_per_batch,
            max_conditions=MAX_CONDITIONS,
            max_gates=MAX_CONDITIONS * self.limits.max_queued,
        )
        # The model's residual norm per layer, the yardstick of every admission bound (containment.py); a plain
        # forward, which the hooks pass through.
        self.residual_norms = measure_residual_norms(self.model, loaded.layers, CANARY_PROMPT)
        self.registry = DirectionRegistry(self.runtime, self.num_layers, self.hidden_size, self.residual_norms)
        self._plans = PlanCache(self.registry, self.num_layers, self.limits.max_directions, self.limits.allow_red_team)
        self.manager = BatchingManager(
            self.model,
            self.runtime,
            eos_token_id=sorted(self.eos_ids) if self.eos_ids else -1,
            max_batch_tokens=config.max_batch_tokens,
            max_requests_per_batch=config.max_requests_per_batch,
            num_blocks=self._num_blocks(),
            page_size=config.page_size,
            max_queue_size=self.limits.max_queued + 16,  # admission control keeps put() from ever blocking
            on_loop_exit=self._on_loop_exit,
            attn_implementation=config.attn_implementation,
            compile_backend=config.compile,
            cuda_graphs=config.cuda_graphs,
            max_memory_percent=config.kv_memory_fraction,
        )
        self._policy = SteeringPolicy()
        self.state = StateDir(config.state_dir) if config.state_dir else None
        self._streams: dict[str, GenerationStream] = {}
        # Slot 0 is the unsteered slot; at most _SLOTS_PER_REQUEST slots per admitted request, so never short.
        self._free_slots = list(range(_SLOTS_PER_REQUEST * self.limits.max_queued, 0, -1))
        self._free_gates = list(range(MAX_CONDITIONS * self.limits.max_queued, 0, -1))  # gate 0: no condition
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._healthy = False
        self._stopping = False
        self._dead: BaseException | None = None
        self._death_callbacks: list[Callable[[BaseException], None]] = []
        self.generated_tokens = 0
        self.monitor_feed = MonitorFeed()

    def _num_blocks(self) -> int | None:
        """KV pages: the flag's, or enough for --kv-cache-tokens, or None on a GPU (sized from free memory); on the
        CPU a default that fits it. Never less than one request of the longest admitted length."""
        if self.config.num_blocks is not None:
            return self.config.num_blocks
        tokens = self.config.kv_cache_tokens
        if tokens is None:
            if self.model.device.type != "cpu":
                return None  # the manager sizes the cache from free accelerator memory (kv_memory_fraction)
            tokens = self.config.max_requests_per_batch * CPU_KV_TOKENS_PER_REQUEST
        longest = min(self.limits.max_prompt_tokens + self.limits.max_new_tokens, self.max_context)
        return max(8, math.ceil(max(tokens, longest) / self.config.page_size))

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        reference = (
            await asyncio.to_thread(plain_greedy, self.model, CANARY_PROMPT, 4, self.eos_ids)
            if self.config.run_canary
            else None
        )
        self.manager.start()
        if reference is not None:
            try:
                await run_canary(self, reference)
            except BaseException:
                await self.shutdown()
                raise
        self._healthy = True
        log.info("engine serving %s on %s (%s)", self.loaded.model_id, self.model.device, self.model.dtype)

    @property
    def healthy(self) -> bool:
        return self._healthy and self._dead is None and not self._stopping

    def add_death_callback(self, callback: Callable[[BaseException], None]) -> None:
        self._death_callbacks.append(callback)

    def _on_loop_exit(self, error: BaseException | None) -> None:
        """Batching thread exit. Unless we asked it to stop, the engine is dead: fail everything once."""
        if self._stopping:
            return
        self._dead = error or RuntimeError("the batching loop exited")
        log.error("engine died: %r", self._dead)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._fail_all)

    def _fail_all(self) -> None:
        dead = EngineDeadError(f"the engine stopped: {self._dead}")
        for stream in list(self._streams.values()):
            stream.fail(dead)
        callbacks, self._death_callbacks = self._death_callbacks, []
        for cb in callbacks:
            cb(dead)

    async def shutdown(self) -> None:
        self._stopping = True
        for stream in list(self._streams.values()):
            stream.cancel()
        await asyncio.to_thread(self.manager.stop, True, 30.0)
        self.runtime.close()

    def _check_accepting(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"the engine stopped: {self._dead}")
        if self._stopping:
            raise UnavailableError("the server is shutting down")

    # ------------------------------------------------------------------ requests
    def generate_stream(self, request: GenerationRequest) -> GenerationStream:
        if not self._healthy:
            self._check_accepting()
            raise UnavailableError("the engine is starting")
        return self._generate_internal_stream(request, rpc="GenerateStream")

    async def open_stream(self, request: GenerationRequest) -> GenerationStream:
        """generate_stream with the prompt tokenized in a worker thread: a long prompt must not hold up the event
        loop (health checks, other calls' tokens) for the 0.1-0.3 s it takes."""
        return await self._open(request, "GenerateStream")

    async def _open(self, request: GenerationRequest, rpc: str) -> GenerationStream:
        if not self._healthy:
            self._check_accepting()
            raise UnavailableError("the engine is starting")
        sampling = check_sampling(request.sampling, self.limits)
        check_monitor(request.monitor)
        prompt_ids = await asyncio.to_thread(self._render, request)
        self._check_length(prompt_ids, sampling.max_new_tokens)
        return self._generate_internal_stream(request, prompt_ids, rpc=rpc)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        return await collect(await self._open(request, "Generate"))

    async def generate_unchecked(self, request: GenerationRequest) -> GenerationResult:
        """Generate without the health check (the canary runs before the engine reports healthy)."""
        return await collect(self._generate_internal_stream(request))

    def _generate_internal_stream(
        self,
        request: GenerationRequest,
        prompt_ids: list[int] | None = None,
        prompt_len: int | None = None,
        field_prefix: str = "",
        rpc: str | None = None,
        variant: str = "",
        rules: tuple[AlertRule, ...] | None = None,
    ) -> GenerationStream:
        """Check, plan and admit one request. With `prompt_ids` the caller has rendered and checked the prompt and
        sampling (Compare, Score): errors then name only this request's own fields. With `rpc`, its result is
        published to the monitor feed under that name (the canary's and Score's prefill are not)."""
        self._check_accepting()
        sampling = request.sampling
        if prompt_ids is None:
            sampling = check_sampling(sampling, self.limits)
            check_monitor(request.monitor)
            prompt_ids = self._render(request)
            self._check_length(prompt_ids, sampling.max_new_tokens)
        else:
            check_monitor(request.monitor, field_prefix)
        terms = effective_terms(request.steering, self._policy, request.ignore_policy, f"{field_prefix}steering")
        plan = self._plans.plan(
            terms,
            request.monitor,
            field_prefix,
            # every request, ignore_policy included: alerts are monitoring
            rules=self._policy.alerts if rules is None else rules,
        )
        stream = self._admit(plan, prompt_ids, prompt_len or len(prompt_ids), sampling, request.monitor)
        if rpc is not None:
            self._publish_on_result(stream, stream.plan.terms, rpc, variant)
        return stream

    def _publish_on_result(
        self, stream: GenerationStream, terms: tuple[FieldTerm, ...], rpc: str, variant: str
    ) -> None:
        """Publish the request's monitor summary when it finishes (on the event loop; never waits on a watcher).
        The front end and policy are read now, at admission, in the caller's context."""
        front, policy, rpc = current_front_end(), self._policy, current_rpc(rpc)

        def publish(result: GenerationResult) -> None:
            event = request_event(result, rpc=rpc, front=front, variant=variant, terms=terms, policy=policy)
            self.monitor_feed.publish(event)

        stream.add_result_callback(publish)

    def _render(self, request: GenerationRequest | CompareRequest | ScoreRequest) -> list[int]:
        return render_prompt(self.tokenizer, request.prompt, self.vocab_size, "", self.limits)

    def _check_length(self, prompt_ids: list[int], max_new_tokens: int) -> None:
        if len(prompt_ids) > self.limits.max_prompt_tokens:
            raise InvalidArgumentError(
                "prompt", f"{len(prompt_ids)} tokens exceed max_prompt_tokens ({self.limits.max_prompt_tokens})"
            )
        if len(prompt_ids) + max_new_tokens > self.max_context:
            raise InvalidArgumentError(
                "sampling.max_new_tokens",
                f"prompt ({len(prompt_ids)}) + max_new_tokens ({max_new_tokens}) exceed the context "
                f"of {self.max_context}",
            )

    def _admit(
        self,
        plan: RequestPlan,
        prompt_ids: list[int],
        prompt_len: int,
        sampling: SamplingParams,
        monitor: MonitorOptions,
        capture: tuple[int, int] = (0, 0),
    ) -> GenerationStream:
        """Admission control (Engine rule 7): never let add_request block on a full queue."""
        if len(self._streams) >= self.limits.max_queued:
            raise ResourceExhaustedError(
                f"{len(self._streams)} requests in flight (limit {self.limits.max_queued}); retry later"
            )
        request_id = f"r{next(self._ids)}"
        # Distinct tables (classes steered alike share one object, planning.RequestPlan), one slot each.
        every = [*plan.tables, *(t for c in plan.conditions for t in c.tables)]
        tables = list({id(t): t for t in every if t is not None}.values())
        slot_of = {id(t): self._free_slots.pop() for t in tables}

        def slots(ts: tuple[object, object, object]) -> tuple[int, int, int]:
            a, b, c = (slot_of[id(t)] if t is not None else 0 for t in ts)
            return a, b, c

        gates = tuple(self._free_gates.pop() for _ in plan.conditions)
        watched = [(m.row, m.layer) for m in plan.monitors] + [(w.entry.monitor_row, w.layer) for w in plan.watches]
        track = RequestTrack(
            request_id=request_id,
            prompt_len=prompt_len,
            slots=slots(plan.tables),
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            seed=sampling.seed,
            monitored=tuple(dict.fromkeys(watched)),  # alert rules are read even when not reported
            capture_slot=capture[0],
            capture_from=capture[1],
            gates=gates,
            cond_slots=tuple(slots(c.tables) for c in plan.conditions),
            gate_layers=tuple(c.layer for c in plan.conditions),
        )
        if plan.conditions:
            track.gate_upload = [
                (gate, GateSpec(c.layer, c.entry.monitor_row, c.threshold_raw,
                                *_gate_positions(c.condition.scope, prompt_len)))
                for gate, c in zip(gates, plan.conditions, strict=True)
            ]
        if plan.steered or capture[0]:
            track.upload = [(slot_of[id(t)], t[0], t[1]) for t in tables]
        for entry in plan.entries:
            self.registry.acquire(entry)
        stream = GenerationStream(
            request_id,
            track,
            plan,
            self.tokenizer,
            sampling.stop,
            self.eos_ids,
            monitor.token_scores,
            self._close_stream,
        )
        self._streams[request_id] = stream
        self.runtime.tracks[request_id] = track

        def handler(output: Progress) -> None:
            if output.failed:
                if self.manager.is_dying() and not self._stopping:
                    stream.fail(EngineDeadError(f"the engine stopped: {output.error}"))
                else:
                    stream.on_output([], True, output.error or "request failed")
            else:
                stream.on_output(output.tokens, output.finished, None)

        if not self.manager.submit(request_id, prompt_ids, sampling.max_new_tokens, handler):
            self._close_stream(stream, needs_cancel=False)
            stream.done = True
            raise UnavailableError("the batching manager is not accepting requests")
        return stream

    def _close_stream(self, stream: GenerationStream, needs_cancel: bool) -> None:
        """Free everything a request held; runs exactly once per stream, on the event loop."""
        if self._streams.pop(stream.request_id, None) is None:
            return
        if needs_cancel and self._dead is None:
            self.manager.cancel_request(stream.request_id)
        self.manager.forget_handler(stream.request_id)
        self.runtime.tracks.pop(stream.request_id, None)
        self._free_slots.extend(stream.track.held_slots)
        self._free_gates.extend(stream.track.gates)
        for entry in stream.plan.entries:
            self.registry.release(entry)
        self.generated_tokens += len(stream.token_ids)

    async def open_compare(self, request: CompareRequest) -> CompareStreams:
        self._check_accepting()
        check_variants(request.variants, self.limits)
        sampling = check_sampling(request.sampling, self.limits)
        check_monitor(request.monitor)
        variants = request.variants or default_variants(self._policy, self._monitored_direction(request.monitor))
        prompt_ids = await asyncio.to_thread(self._render, request)  # tokenizing is heavy: off the event loop
        self._check_length(prompt_ids, sampling.max_new_tokens)
        streams: list[GenerationStream] = []
        try:
            # All variants are admitted before any is awaited, so they share batches; one seed means shared noise.
            for i, v in enumerate(variants):
                req = GenerationRequest(
                    request.prompt,
                    sampling,
                    v.steering,
                    request.monitor,
                    ignore_policy=variant_ignores_policy(self._policy),
                )
                streams.append(
                    self._generate_internal_stream(
                        req, prompt_ids, field_prefix=f"variants[{i}].", rpc="Compare", variant=v.name
                    )
                )
        except BaseException:
            for s in streams:
                s.cancel()
            raise
        return CompareStreams(variants, tuple(streams))

    def _monitored_direction(self, monitor: MonitorOptions) -> Direction | None:
        if monitor.directions:
            return self.registry.get(monitor.directions[0], "monitor.directions[0]").direction
        return self.registry.first()

    async def score(self, request: ScoreRequest) -> ScoreResult:
        """A prefill-only request on the same path: the scores Generate reports for these positions."""
        self._check_accepting()
        check_score_response(request, self.vocab_size)
        check_monitor(request.monitor)
        prompt_ids = await asyncio.to_thread(self._render, request)  # tokenizing is heavy: off the event loop
        if len(prompt_ids) > self.limits.max_prompt_tokens:
            raise InvalidArgumentError(
                "prompt", f"{len(prompt_ids)} tokens exceed max_prompt_tokens ({self.limits.max_prompt_tokens})"
            )
        if request.response_token_ids:
            response = list(request.response_token_ids)
        else:
            text = request.response_text or ""
            check_text_size(len(text), self.limits, "response")
            response = await asyncio.to_thread(self.tokenizer.encode, text, add_special_tokens=False)
        field = "response_token_ids" if request.response_token_ids else "response"
        if len(prompt_ids) + len(response) + 1 > self.max_context:
            raise InvalidArgumentError(
                field,
                f"prompt ({len(prompt_ids)}) + response ({len(response)}) exceed the context of {self.max_context}",
            )
        gen = GenerationRequest(
            request.prompt, SamplingParams(max_new_tokens=1), request.steering, request.monitor, request.ignore_policy
        )
        # Score only records: its alert rules watch the prefill as RECORD rules (no STEER terms run, nothing stops),
        # and each alert is reported with its rule's own action (score_alerts).
        policy, front = self._policy, current_front_end()
        watched = tuple(replace(r, action=AlertAction.RECORD, steering=()) for r in policy.alerts)
        stream = self._generate_internal_stream(gen, prompt_ids + response, prompt_len=len(prompt_ids), rules=watched)
        try:
            await collect(stream)
        finally:
            stream.cancel()
        n_scored = max(0, len(response) - 1)  # the last response token is never fed back during generation
        scores = direction_scores(stream.plan, stream.track, n_scored, request.monitor.token_scores)
        alerts = score_alerts(stream.plan, stream.track, n_scored, policy.alerts)
        self.monitor_feed.publish(
            request_event(
                None,
                rpc=current_rpc("Score"),
                request_id=stream.request_id,
                front=front,
                terms=stream.plan.terms,
                policy=policy,
                scores=scores,
                alerts=alerts,
                prompt_tokens=len(prompt_ids),
                completion_tokens=len(response),
            )
        )
        return ScoreResult(len(prompt_ids), tuple(response), scores, steered=stream.plan.applied(()), alerts=alerts)

    async def capture_means(self, prompt_ids: list[int], from_position: int) -> torch.Tensor:
        """Mean hidden state per layer over positions >= from_position of one prefill, read in the hooks before
        steering (activation accumulators for computing directions on the served model). Returns (L, hidden)."""
        self._check_accepting()
        if not 0 < from_position < len(prompt_ids) + 1:
            raise InvalidArgumentError("from_position", f"must be in 1..{len(prompt_ids)}")
        used = {s.track.capture_slot for s in self._streams.values()}
        free = [c for c in range(1, self.runtime.acc.shape[1]) if c not in used]
        if not free:
            raise ResourceExhaustedError("all activation accumulators are busy; retry later")
        plan = RequestPlan((None, None, None), [], [])
        stream = self._admit(
            plan,
            prompt_ids,
            len(prompt_ids),
            SamplingParams(max_new_tokens=1),
            _NO_MONITOR,
            capture=(free[0], from_position),
        )
        try:
            await collect(stream)
        finally:
            stream.cancel()
        return self.runtime.acc[:, free[0]].to("cpu", copy=True) / max(1, stream.track.capture_count)

    async def read_projection(
        self, vector: torch.Tensor, layer: int, ids: list[int], prompt_len: int
    ) -> tuple[float, list[float]]:
        """Raw monitor readings of an unregistered `vector` (hidden,) at `layer` for one unsteered prefill of
        prompt + response `ids`, read as Score reads a registered direction: (the last prompt token, each response
        token but the last). The vector holds a scratch row of the direction table for this one request."""
        self._check_accepting()
        entry = self.registry.put_scratch({layer: vector.float()})
        try:
            plan = RequestPlan((None, None, None), [MonitorTarget("", entry, layer, None, None, None, False)], [entry])
            stream = self._admit(plan, ids, prompt_len, SamplingParams(max_new_tokens=1), _NO_MONITOR)
            await collect(stream)
        finally:
            self.registry.release(entry)
        scores = direction_scores(plan, stream.track, max(0, len(ids) - prompt_len - 1), True)[0]
        return scores.prompt_score, list(scores.token_scores)

    async def generate_ids(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy, unsteered (no policy) answer token ids, end-of-sequence excluded (ComputeDirection's persona
        answers: the model's own)."""
        self._check_accepting()
        self._check_length(prompt_ids, max_new_tokens)
        plan = RequestPlan((None, None, None), [], [])
        stream = self._admit(plan, prompt_ids, len(prompt_ids), SamplingParams(max_new_tokens=max_new_tokens),
                             _NO_MONITOR)
        ids = list((await collect(stream)).token_ids)
        while ids and ids[-1] in self.eos_ids:
            ids.pop()
        return ids

    def compute_direction(self, request: ComputeRequest) -> AsyncGenerator[ComputeEvent, None]:
        self._check_accepting()
        return run_compute(request, self)

    def render_prompt(self, prompt: Prompt, prefix: str) -> list[int]:
        return render_prompt(self.tokenizer, prompt, self.vocab_size, prefix, self.limits)

    def encode_response(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def provenance(self) -> Provenance:
        return Provenance(self.loaded.model_id, self.config_hash, self.tokenizer_hash)

    # ------------------------------------------------------------------ registry and policy
    def list_directions(self) -> list[Direction]:
        return self.registry.list()

    def get_direction(self, name: str) -> Direction:
        return self.registry.get(name).direction

    def put_direction(self, direction: Direction, strict: bool = False) -> Direction:
        stored = self._register(direction, strict)
        if self.state is not None:
            self.state.save_direction(stored)
        return stored

    def _register(self, direction: Direction, strict: bool = False) -> Direction:
        strict = strict or self.config.strict_provenance
        checked = check_provenance(direction, self.config_hash, self.tokenizer_hash, strict)
        check_replacement(self._policy, checked)
        return self.registry.put(checked)

    def delete_direction(self, name: str) -> None:
        check_unreferenced(self._policy, name)
        self.registry.delete(name)
        if self.state is not None:
            self.state.delete_direction(name)

    def load_direction_file(self, name: str, path: str) -> Direction:
        """`path`: a file or SAE directory, optionally with `,format=...,layer=...,feature=...,numbering=...`
        (direction_imports.split_direction_spec): the one loader PutDirection and realign use too."""
        from .direction_imports import load_direction_spec

        return self._register(load_direction_spec(path, name, self.num_layers))

    def register_builtin_directions(self) -> None:
        """The shipped organism's directions (the monitored one first), when the built-in model is served."""
        try:
            from .organism.assets import builtin_directions
        except ImportError:
            return
        for name, path in builtin_directions().items():
            self.load_direction_file(name, str(path))

    def get_policy(self) -> SteeringPolicy:
        return self._policy

    def set_policy(self, policy: SteeringPolicy) -> SteeringPolicy:
        if policy.terms or policy.alerts:  # validate against the registry now, not at the next request
            make_plan(
                self.registry,
                effective_terms((), policy, False),
                MonitorOptions(enabled=False),
                self.num_layers,
                self.limits.max_directions,
                self.limits.allow_red_team,
                rules=policy.alerts,
            )
        if self.state is not None:
            self.state.save_policy(policy)
        self._policy = policy
        return policy

    def restore_state(self) -> None:
        """Apply the state directory over the start-up directions: deletions, uploads, then the policy. An enforced
        policy, or one with alert rules, that cannot be restored raises StateError: the engine must not serve
        without it (fail closed)."""
        if self.state is None:
            return
        stored = self.state.load(self.num_layers)
        for name in stored.deleted & set(self.registry.names()):
            self.registry.delete(name)
        for direction in stored.directions:
            try:
                self._register(direction)
            except SteeringError as exc:
                log.error("state: direction %s not restored: %s", direction.name, exc)
        if stored.policy is None:
            return
        try:
            self.set_policy(stored.policy)
        except SteeringError as exc:
            # Alert rules apply to every request, like an enforced policy: dropping one (a STOP rule) fails open.
            if stored.policy.enforced or stored.policy.alerts:
                what = "enforced policy" if stored.policy.enforced else "policy with alert rules"
                raise StateError(f"the saved {what} cannot be restored: {exc}") from exc
            log.error("state: the saved (not enforced) policy was not restored: %s", exc)
        log.info(
            "state restored from %s: %d directions, %d deletions, policy %s",
            self.state.path,
            len(stored.directions),
            len(stored.deleted),
            "enforced" if self._policy.enforced else ("set" if self._policy.terms or self._policy.alerts else "none"),
        )

    # ------------------------------------------------------------------ info
    def model_info(self) -> ModelInfo:
        return ModelInfo(
            model_id=self.loaded.model_id,
            architecture=str(getattr(self.model.config, "model_type", "")),
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            vocab_size=self.vocab_size,
            dtype=str(self.model.dtype).removeprefix("torch."),
            device=str(self.model.device),
            max_context=self.max_context,
            serving=self.manager.serving_settings(),
        )

    def tokenize(self, text: str) -> list[int]:
        check_text_size(len(text), self.limits, "text")
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def detokenize(self, token_ids: list[int]) -> str:
        bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidArgumentError("token_ids", f"token id {bad[0]} is outside 0..{self.vocab_size - 1}")
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=True))

    def stats(self) -> EngineStats:
        active, waiting = self.manager.scheduler_counts()
        return EngineStats(
            running=active + waiting,
            queued=len(self._streams),
            forward_passes=self.runtime.forward_passes,
            generated_tokens=self.generated_tokens,
            waiting=waiting,
        )


_NO_MONITOR = MonitorOptions(enabled=False)
# A request's slots: one per position class (RequestTrack.slots), and per condition one per class it can turn on
# (the last prompt token, generated tokens).
_SLOTS_PER_REQUEST = 3 + 2 * MAX_CONDITIONS


def _gate_positions(scope: ConditionScope, prompt_len: int) -> tuple[int, int]:
    """The absolute positions whose reading a condition latches on: PROMPT the last prompt token, RUNNING every
    fed-back generated token."""
    if scope == ConditionScope.PROMPT:
        return prompt_len - 1, prompt_len - 1
    return prompt_len, GATE_NEVER - 1
