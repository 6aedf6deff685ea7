"""Device-side steering state and the per-layer hooks (Engine rules 3-5).

Everything the hooks read is preallocated once and written in place, so addresses never change (CUDA graphs):
    unit  (L, K, H)   unit direction per layer and direction row
    alpha, beta (L, S, K)  per-request-slot coefficients (slot 0: unsteered, always zero)
    acc   (L, C, H)   per-capture-slot activation sums (slot 0: discard)
    proj  (L, K, T)   projections read by the hooks, before steering (a (layer, direction) pair is one row)
    table (2T + 5R + L*K + (1 + 2C)T,) int64, the per-batch tables packed in one buffer, one host-to-device copy
          per step:
          token_slot, token_cap (T,)   request slot / capture slot of each token of the batch being run
          row_top_k, row_key (R,)      per-logit-row sampling parameters (int64)
          row_order (R,)               rows grouped by sampling path (sampling.RowPlan)
          row_temperature, row_top_p (R,)  per-logit-row sampling parameters, fp64 bit patterns (viewed as float64)
          pair_index (L*K,)            flat (layer * K + direction) rows of `proj` some request monitors
          token_pos (T,)               absolute position of each token (conditional steering)
          token_gate, token_cslot (C, T)  per condition column: the token's gate and the slot of its conditional
                                       coefficients (0 and 0: none)
    gates (G,)        conditional steering (steer.latch_gates): per gate the condition (monitor layer, direction
                      row, raw threshold, the positions it reads) and the position it fired at, latched by the hook
                      at the condition's monitor layer; the layers at and above add the gated slot's coefficients
                      to the tokens at or after that position. Written at admission by the loop thread, like slots.
Per-batch decisions the hooks act on live in those device buffers: a request that is not steered has slot 0 (an
exact zero update), a token that is not captured has capture slot 0. Host flags (`BatchWork`) only let eager
forwards skip work; with CUDA graphs or compile every forward runs the full branch-free step.
The batch buffers belong to the one batch in flight: batching runs synchronously (async batching stays off until
an isolation check passes with it on, Engine rule 5). The loop thread is the only writer of slot rows and batch
buffers. Direction rows are written by the event loop while forwards run, which is safe because a row is only ever
written while no request references it (the registry gives a replaced direction a fresh row and frees the old one
when its last request ends): the rows a batch steers or scores never change under it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .sampling import RowPlan, is_greedy, noise_key, sample_rows
from .steer import GATE_NEVER, Gated, latch_gates, steer_contained

__all__ = ["BatchEntry", "RequestTrack", "SteeringRuntime", "position_class"]


@dataclass
class RequestTrack:
    """The loop thread's view of one engine request. Readings are keyed by absolute position, and the first
    reading of a position wins, so a request that is reset and re-prefilled is never scored twice."""

    request_id: str
    prompt_len: int
    # Request slot per position class (position_class): 0 = unsteered there. Classes steered alike share a slot.
    slots: tuple[int, int, int] = (0, 0, 0)
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    monitored: tuple[tuple[int, int], ...] = ()  # (direction row, layer) pairs to read
    capture_slot: int = 0  # 0: no capture
    capture_from: int = 0  # first absolute position captured
    # Conditional steering, per condition column c: its gate and its slot per position class (0: none there).
    gates: tuple[int, ...] = ()
    cond_slots: tuple[tuple[int, int, int], ...] = ()
    gate_layers: tuple[int, ...] = ()  # each condition's monitor layer (host copy: eager forwards skip the rest)
    # Pending device writes, applied by the loop thread at its next batch: (slot, alpha (L, K), beta (L, K)) per
    # slot the request holds (an empty list still resets its capture accumulator), and per gate its GateSpec.
    upload: list[tuple[int, torch.Tensor, torch.Tensor]] | None = None
    gate_upload: list[tuple[int, GateSpec]] | None = None
    readings: dict[tuple[int, int], dict[int, float]] = field(default_factory=dict)
    read_until: int = 0  # first absolute position not yet read
    capture_count: int = 0
    captured_until: int = 0
    first_token_position: int = -1
    scheduled_at: float | None = None  # time.monotonic() when first put into a batch (queue time, RequestTiming)
    # Containment: the first layer where a steered state of this request went non-finite (it fails alone).
    overflow_layer: int | None = None

    @property
    def held_slots(self) -> list[int]:
        """The distinct steered slots this request holds (conditional ones included)."""
        return sorted({s for s in self.slots if s} | {s for cs in self.cond_slots for s in cs if s})

    def slots_for(self, past: int, length: int) -> list[int]:
        """The slot of each of `length` tokens from absolute position `past`."""
        a, b, c = self.slots
        if a == b == c:
            return [a] * length
        return [self.slots[position_class(p, self.prompt_len)] for p in range(past, past + length)]


@dataclass(frozen=True)
class GateSpec:
    """One condition of one request, as the device reads it (steer.latch_gates)."""

    layer: int  # the condition direction's monitor layer
    row: int  # its direction row
    threshold_raw: float  # raw projection units (z converted with the scope's calibration)
    first: int  # the absolute positions whose reading counts: first..last
    last: int


def position_class(position: int, prompt_len: int) -> int:
    """0: a prompt token before the last, 1: the last prompt token, 2: a generated token (types.SteeringPositions).
    Absolute positions: a request re-prefilled after a reset keeps its classes."""
    return 0 if position < prompt_len - 1 else (1 if position == prompt_len - 1 else 2)


@dataclass(frozen=True)
class BatchWork:
    """What the batch in flight needs from the hooks: host flags that let eager forwards skip work (never read
    under CUDA graphs or compile, where the device tables decide)."""

    steer: bool
    monitor: bool
    capture: bool
    rows: int  # direction rows to compute: 0..rows-1 hold every live direction
    gates: int = 0  # condition columns some request of the batch uses (0: no conditional steering)
    latch_layers: frozenset[int] = frozenset()  # the layers some condition of the batch is read at
    monitor_layers: frozenset[int] | None = None  # the layers some request reads (None: every layer)
    token_slot: torch.Tensor | None = None  # eager: the batch's (tokens,) view of the slot table, sliced once per step
    slot: int | None = None  # eager: the one slot every token of the batch has (None: they differ)


_ALL_WORK = BatchWork(True, True, True, 0, -1)  # gates -1: every column, latched and applied at every layer


@dataclass(frozen=True)
class BatchEntry:
    track: RequestTrack | None  # None for requests the engine does not know (warm-up)
    offset: int  # first token of this request in the flat batch
    past: int  # absolute position of that token
    length: int  # tokens of this request in the batch
    has_new_token: bool


class SteeringRuntime:
    def __init__(
        self,
        layers: nn.ModuleList,
        hidden_size: int,
        device: torch.device,
        max_directions: int,
        max_slots: int,
        max_batch_tokens: int,
        max_rows: int,
        max_captures: int = 8,
        max_conditions: int = 4,
        max_gates: int = 0,
    ) -> None:
        n_layers, k, t, r, c = len(layers), max_directions, max_batch_tokens, max_rows, max_conditions
        self.device = device
        self.num_layers = n_layers
        self.max_directions = max_directions
        self.max_rows = max_rows
        self.unit = torch.zeros(n_layers, k, hidden_size, device=device, dtype=torch.float32)
        self.alpha = torch.zeros(n_layers, max_slots + 1, k, device=device, dtype=torch.float32)
        self.beta = torch.zeros(n_layers, max_slots + 1, k, device=device, dtype=torch.float32)
        self.acc = torch.zeros(n_layers, max_captures + 1, hidden_size, device=device, dtype=torch.float32)
        self.proj = torch.zeros(n_layers, k, t, device=device, dtype=torch.float32)
        # The packed per-batch tables (see the module docstring) and the host copy they are written to first:
        # pinned where a device copy is asynchronous, the device buffer itself on the CPU (no copy at all).
        self.max_conditions = c
        self.table = torch.zeros(2 * t + 5 * r + n_layers * k + (1 + 2 * c) * t, device=device, dtype=torch.int64)
        on_cpu = device.type == "cpu"
        self._host = self.table if on_cpu else torch.zeros_like(self.table, device="cpu", pin_memory=True)
        self.token_slot, self.token_cap = self.table[:t], self.table[t : 2 * t]
        rows = [self.table[2 * t + i * r : 2 * t + (i + 1) * r] for i in range(5)]
        self.row_top_k, self.row_key, self.row_order = rows[0], rows[1], rows[2]
        self.row_temperature, self.row_top_p = rows[3].view(torch.float64), rows[4].view(torch.float64)
        end = 2 * t + 5 * r + n_layers * k
        self.pair_index = self.table[2 * t + 5 * r : end]
        self.token_pos = self.table[end : end + t]
        self.token_gate = self.table[end + t : end + t + c * t].view(c, t)
        self.token_cslot = self.table[end + t + c * t :].view(c, t)
        # Host views that take a step's values in one write each (a write costs ~10-25 us on the CPU, whatever its
        # size): (2, T) slot and capture slot per token; (3, R) int64 and (2, R) fp64 sampling rows.
        self._h_tokens = self._host[: 2 * t].view(2, t)
        self._h_int_rows = self._host[2 * t : 2 * t + 3 * r].view(3, r)
        self._h_float_rows = self._host[2 * t + 3 * r : 2 * t + 5 * r].view(torch.float64).view(2, r)
        self._h_pairs = self._host[2 * t + 5 * r : end]
        self._h_pos = self._host[end : end + t]
        self._h_gate = self._host[end + t : end + t + c * t].view(c, t)
        self._h_cslot = self._host[end + t + c * t :].view(c, t)
        # Gates (steer.latch_gates); gate 0 is "no condition" and never fires (layer -1).
        g = max(1, max_gates) + 1
        self.gate_pos = torch.full((g,), GATE_NEVER, device=device, dtype=torch.int64)
        self.gate_spec = torch.zeros(g, 4, device=device, dtype=torch.int64)  # (layer, row, first, last) per gate
        self.gate_spec[:, 0] = -1
        self.gate_threshold = torch.zeros(g, device=device, dtype=torch.float32)
        # Sampling reads its logits from here when the forward runs in a captured graph (the sampler then runs
        # eagerly after the replay, with the host's row plan): (R, vocab), allocated at the first deferred step.
        self.defer_sampling = False
        self.logits_buf: torch.Tensor | None = None  # (R, vocab) fp32, see defer_sampling_to_replay
        # Per layer and token of the batch: False where containment refused the token's update (steer_contained
        # writes it at every layer of a steering forward; end_batch reads it once). (L, tokens, 1) bool.
        self.applied = torch.ones(n_layers, t, 1, device=device, dtype=torch.bool)
        self.max_batch_tokens = max_batch_tokens
        self.tracks: dict[str, RequestTrack] = {}  # written by the engine, read by the loop thread
        self.entries: list[BatchEntry] = []
        self.num_tokens = 0
        self.forward_passes = 0
        # False: batches run with every token unsteered and uncaptured and nothing read (device tables all zero),
        # as if the hooks were not there; the hooks themselves never read this flag.
        self.active = True
        # True only while the batching manager's runner computes a batch (its steps, and any graph warm-up): every
        # other forward of the model (a caller's own `generate`, the canary's reference, the norm measurement)
        # passes through the hooks untouched instead of being steered by the last step's tables. Always True inside
        # a captured or compiled forward, so freezing it there is correct. A forward on another thread during a
        # step is not told apart: the engine owns its model while it serves.
        self.serving_forward = False
        # Eager forwards skip the work no request of the batch needs; with CUDA graphs or compile (static shapes,
        # captured once) the adapter sets this to False and every forward runs the full branch-free step.
        self.skip_idle_work = True
        self.batch_work: BatchWork | None = None
        self.live_rows = max_directions  # 1 + the highest direction row in use (kept by the registry)
        self._plan = RowPlan((), 0, 0, 0, 0)
        self._pairs: dict[int, int] = {}  # flat pair (layer * K + direction) -> row of this step's readback
        self._monitored: list[BatchEntry] = []
        self.lock = threading.Lock()
        self._handles = [layer.register_forward_hook(self._make_hook(i)) for i, layer in enumerate(layers)]

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # ---- hooks (loop thread, inside the forward) ----
    def _make_hook(self, layer: int) -> Callable[..., Any]:
        unit, alpha, beta, acc, proj_out, applied = (
            self.unit[layer],
            self.alpha[layer],
            self.beta[layer],
            self.acc[layer],
            self.proj[layer],
            self.applied[layer],
        )

        # Eager forwards: the (unit, alpha, beta) views of the first k direction rows, sliced once per k instead of at
        # every step (slicing is a dispatched op, and small CPU steps pay per op), and per (k, slot) the (k,) alpha and
        # beta rows of a batch whose tokens all share that slot, a lone request's steps (no gather per layer: two
        # index_selects and a slower addcmul were a fifth of steer_contained on one token). Views of fixed buffers:
        # always valid.
        eager_views: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        slot_rows: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if not self.serving_forward:
                return None
            hidden = output[0] if isinstance(output, tuple) else output  # (1, tokens, H)
            if hidden.shape[0] != 1 or hidden.shape[1] > self.max_batch_tokens:
                return None  # not a batching-manager forward
            x = hidden[0]  # (tokens, H)
            n = x.shape[0]
            work = self.batch_work
            if work is None:  # a static graph may be captured: always run the full, branch-free step
                work = _ALL_WORK
            k = work.rows or unit.shape[0]  # eager: only the rows that hold a direction
            if work is _ALL_WORK:
                unit_k, alpha_k, beta_k = unit[:k], alpha[:, :k], beta[:, :k]
            else:
                views = eager_views.get(k)
                if views is None:
                    views = eager_views[k] = (unit[:k], alpha[:, :k], beta[:, :k])
                unit_k, alpha_k, beta_k = views
            if work.capture:
                acc.index_add_(0, self.token_cap[:n], x.float())  # capture reads pre-steering states
            if work.steer:
                if work.slot is not None and n == self.num_tokens:  # eager, one slot for every token: its rows
                    rows = slot_rows.get((k, work.slot))
                    if rows is None:
                        rows = slot_rows[(k, work.slot)] = (alpha_k[work.slot], beta_k[work.slot])
                    alpha_rows, beta_rows = rows
                else:
                    slots = work.token_slot
                    if slots is None or slots.shape[0] != n:
                        slots = self.token_slot[:n]
                    alpha_rows, beta_rows = alpha_k.index_select(0, slots), beta_k.index_select(0, slots)  # (tokens, k)
                gated, proj = None, None
                # Eager: only batches with conditional steering, from the first layer a condition is read at (the
                # conditional coefficients are zero below it); static graphs: always, at every layer.
                if work.gates and (work.gates < 0 or layer >= min(work.latch_layers)):
                    c = work.gates if work.gates > 0 else self.max_conditions
                    token_gate = self.token_gate[:c, :n]  # (c, tokens)
                    if work.gates < 0 or layer in work.latch_layers:
                        proj = x.float() @ unit_k.T  # (tokens, k), read before steering
                        on = latch_gates(proj, layer, self.token_pos[:n], token_gate, self.gate_pos, self.gate_spec,
                                         self.gate_threshold)
                    else:  # eager, above the latch layers: the gates as latched
                        on = self.token_pos[:n].unsqueeze(0) >= self.gate_pos[token_gate]  # (c, tokens)
                    gated = Gated(self.token_cslot[:c, :n], on, alpha_k, beta_k)
                steered, proj = steer_contained(x, unit_k, alpha_rows, beta_rows, applied[:n], gated, proj)
            elif work.monitor and (work.monitor_layers is None or layer in work.monitor_layers):
                steered, proj = x, x.float() @ unit_k.T  # (tokens, k): read only
            else:
                return None  # nobody in this batch is steered, monitored or captured: states untouched
            if work.monitor and (work.monitor_layers is None or layer in work.monitor_layers):
                proj_out[:k, :n].copy_(proj.T)  # (k, tokens); eager: only the layers some request reads
            new = steered.unsqueeze(0)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    # ---- batch boundaries (loop thread, around each forward) ----
    def begin_batch(self, batch: list[tuple[str, int, int, bool]]) -> None:
        """batch: (request_id, past_length, query_length, has_new_token) in the order of the flat input.

        Fills the packed host table and copies it to the device once; nothing here waits for the device."""
        slots: list[int] = []
        caps: list[int] = []
        temps: list[float] = []
        top_ks: list[int] = []
        top_ps: list[float] = []
        keys: list[int] = []
        entries: list[BatchEntry] = []
        monitored: list[BatchEntry] = []
        pairs: dict[int, int] = {}
        steer = capture = False
        gated: list[tuple[BatchEntry, RequestTrack]] = []
        n_dirs = self.max_directions
        offset = 0
        for request_id, past, length, has_new in batch:
            track = self.tracks.get(request_id)
            if track is not None and track.scheduled_at is None:
                track.scheduled_at = time.monotonic()
            entry = BatchEntry(track, offset, past, length, has_new)
            entries.append(entry)
            offset += length
            if has_new:  # the token about to be sampled is at absolute position past + length
                if track is not None and track.first_token_position < 0:
                    track.first_token_position = past + length
                t, k, p, key = (
                    (0.0, 0, 1.0, 0)
                    if track is None
                    else (
                        track.temperature,
                        track.top_k,
                        track.top_p,
                        # a greedy row (temperature 0) draws no noise: its key would go unread (hashing it in Python
                        # costs ~15 us per request and step)
                        0 if is_greedy(track.temperature) else noise_key(track.seed, past + length),
                    )
                )
                temps.append(t)
                top_ks.append(k)
                top_ps.append(p)
                keys.append(key)
            if track is None or not self.active:
                slots.extend([0] * length)
                caps.extend([0] * length)
                continue
            if track.upload is not None:
                for slot, a, b in track.upload:
                    self.alpha[:, slot].copy_(a)
                    self.beta[:, slot].copy_(b)
                if track.capture_slot:
                    self.acc[:, track.capture_slot].zero_()
                track.upload = None
            if track.gate_upload is not None:
                for gate, spec in track.gate_upload:
                    self.gate_pos[gate] = GATE_NEVER
                    self.gate_spec[gate] = torch.tensor((spec.layer, spec.row, spec.first, spec.last))
                    self.gate_threshold[gate] = spec.threshold_raw
                track.gate_upload = None
            if track.gates:
                gated.append((entry, track))
            mine = track.slots_for(past, length)
            steer |= any(mine) or bool(track.gates)  # a gate latches in the steering pass, even where none steers
            slots.extend(mine)
            if track.capture_slot:
                capture = True
                # Positions already captured (a re-prefill after a reset) are not counted twice.
                first = min(length, max(0, max(track.capture_from, track.captured_until) - past))
                caps.extend([0] * first + [track.capture_slot] * (length - first))
                track.capture_count += length - first
                track.captured_until = max(track.captured_until, past + length)
            else:
                caps.extend([0] * length)
            if track.monitored:
                monitored.append(entry)
                for k, layer in track.monitored:
                    pairs.setdefault(layer * n_dirs + k, len(pairs))
        n = offset
        self.entries = entries
        self._monitored = monitored
        self._pairs = pairs
        n_gates = max((len(t.gates) for _, t in gated), default=0)
        self.batch_work = (
            BatchWork(
                steer=steer, monitor=bool(monitored), capture=capture, rows=max(1, self.live_rows), gates=n_gates,
                latch_layers=frozenset(layer for _, t in gated for layer in t.gate_layers),
                monitor_layers=frozenset(pair // n_dirs for pair in pairs),
                token_slot=self.token_slot[:n],
                slot=slots[0] if n and slots.count(slots[0]) == n else None,
            )
            if self.skip_idle_work
            else None
        )
        self.num_tokens = n
        self._plan = plan = RowPlan.from_params(temps, top_ks, top_ps)
        r = len(temps)
        self._h_tokens.zero_()
        if n:
            self._h_tokens[:, :n] = torch.tensor((slots, caps), dtype=torch.int64)
        if r:
            self._h_int_rows[:, :r] = torch.tensor((top_ks, keys, plan.order), dtype=torch.int64)
            self._h_float_rows[:, :r] = torch.tensor((temps, top_ps), dtype=torch.float64)
        if pairs:
            self._h_pairs[: len(pairs)] = torch.tensor(list(pairs), dtype=torch.int64)
        self._fill_gates(gated)
        if self._host is not self.table:
            self.table.copy_(self._host, non_blocking=True)  # one copy, from pinned memory: truly asynchronous
        self.forward_passes += 1

    def _fill_gates(self, gated: list[tuple[BatchEntry, RequestTrack]]) -> None:
        """The per-token condition columns of this batch (host copy): each gated request's tokens get their gate
        and the slot of their position class's conditional coefficients; every other token gets 0 (none)."""
        self._h_gate.zero_()
        self._h_cslot.zero_()
        for e, track in gated:
            lo, hi = e.offset, e.offset + e.length
            self._h_pos[lo:hi] = torch.arange(e.past, e.past + e.length, dtype=torch.int64)
            classes = [position_class(p, track.prompt_len) for p in range(e.past, e.past + e.length)]
            for c, (gate, slots) in enumerate(zip(track.gates, track.cond_slots, strict=True)):
                # Every token carries the gate (the positions whose reading counts are the gate's own); the slot is
                # 0 where the condition steers nothing (its coefficients are zero).
                self._h_cslot[c, lo:hi] = torch.tensor([slots[k] for k in classes], dtype=torch.int64)
                self._h_gate[c, lo:hi] = gate

    def end_batch(self) -> None:
        """Attribute the batch's projections to its requests (after the forward, before tokens are delivered).

        One device-to-host copy of the monitored (layer, direction) rows over the batch's tokens, then each
        request takes its slice of each row; a position already read (a re-prefill after a reset) is not read
        again."""
        self._check_overflow()
        if not self._monitored:
            return
        n = self.num_tokens
        flat = self.proj.view(-1, self.proj.shape[-1])[:, :n]  # (L * K, tokens)
        values = flat.index_select(0, self.pair_index[: len(self._pairs)]).to("cpu").tolist()  # (pairs, tokens)
        n_dirs = self.max_directions
        for e in self._monitored:
            track = e.track
            assert track is not None
            lo = max(e.past, track.prompt_len - 1, track.read_until)  # the last prompt token is the first scored
            hi = e.past + e.length
            if lo >= hi:
                continue
            a, b = e.offset + lo - e.past, e.offset + hi - e.past
            positions = range(lo, hi)
            for k, layer in track.monitored:
                row = values[self._pairs[layer * n_dirs + k]]
                track.readings.setdefault((k, layer), {}).update(zip(positions, row[a:b], strict=True))
            track.read_until = hi

    def _check_overflow(self) -> None:
        """Mark the steered requests of this batch whose update containment refused at some layer; their streams
        fail alone."""
        work = self.batch_work
        if work is not None and not work.steer:
            return  # the hooks steered nothing: `applied` still holds an earlier batch's
        steered = [e for e in self.entries if e.track is not None and e.track.held_slots]
        if not steered:
            return
        applied = self.applied[:, : self.num_tokens, 0]  # (L, tokens)
        if bool(applied.all()):  # the usual step: nothing refused (one small device read per step)
            return
        # Only steered tokens count (a slot or a conditional slot of their own, from the host copy of the tables):
        # an unsteered token's flag means its own state is out of range, which no steering of it caused.
        n = self.num_tokens
        steered_token = (self._h_tokens[0, :n] != 0) | (self._h_cslot[:, :n] != 0).any(dim=0)  # (tokens,)
        refused = (~applied).to("cpu") & steered_token
        for e in steered:
            assert e.track is not None
            layers = refused[:, e.offset : e.offset + e.length].any(dim=1).nonzero()  # (refused layers, 1)
            if e.track.overflow_layer is None and layers.numel():
                e.track.overflow_layer = int(layers[0, 0])

    # ---- sampling (inside the forward step, or right after a graph replay) ----
    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (rows, vocab) -> (rows',) token ids with each row's own parameters, rows' = the batch's
        requests that take a new token (the first rows of the logits; any further rows are padding)."""
        r = len(self._plan.order)
        if self._plan.all_greedy:  # sample_rows would take the argmax without reading the parameter rows below
            return logits[:r].float().argmax(dim=-1)
        return sample_rows(
            logits[:r].float(),
            self.row_temperature[:r].float(),
            self.row_top_k[:r],
            self.row_top_p[:r].float(),
            self.row_key[:r],
            self._plan,
            self.row_order[:r],
        )

    def defer_sampling_to_replay(self, vocab: int) -> None:
        """With CUDA graphs or compile: the captured forward only stores its logits (`stash_logits`), and the
        sampler runs eagerly after it with this batch's row plan (a plan frozen into a graph, or guarded on by a
        compiled function, would be wrong or recompile at every new mix of rows)."""
        self.logits_buf = torch.zeros(self.max_rows, vocab, device=self.device, dtype=torch.float32)
        self.defer_sampling = True

    def stash_logits(self, logits: torch.Tensor) -> None:
        """Inside a captured forward: keep the logits (rows, vocab) at a fixed address for `sample` after it."""
        assert self.logits_buf is not None
        self.logits_buf[: logits.shape[0]].copy_(logits)

    # ---- direction rows (the registry writes only rows no request references) ----
    def write_direction(self, row: int, unit_vectors: dict[int, torch.Tensor]) -> None:
        self.unit[:, row].zero_()
        for layer, v in unit_vectors.items():
            self.unit[layer, row].copy_(v.to(self.unit.device))

    def clear_direction(self, row: int) -> None:
        self.unit[:, row].zero_()
