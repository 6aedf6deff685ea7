"""Device-side steering state and the per-layer hooks (Engine rules 3-5).

Everything the hooks read is preallocated once and written in place, so addresses never change (CUDA graphs):
    unit  (L, K, H)   unit direction per layer and direction row
    alpha, beta (L, S, K)  per-request-slot coefficients (slot 0: unsteered, always zero)
    acc   (L, C, H)   per-capture-slot activation sums (slot 0: discard)
    token_slot, token_cap (T,)  request slot / capture slot of each token of the batch being run
    proj  (L, T, K)   projections read by the hooks, before steering
    row_* (R,)        per-logit-row sampling parameters
The batch buffers belong to the one batch in flight: batching runs synchronously (async batching stays off until
an isolation check passes with it on, Engine rule 5). The loop thread is the only writer of slot rows and batch
buffers. Direction rows are written by the event loop while forwards run, which is safe because a row is only ever
written while no request references it (the registry gives a replaced direction a fresh row and frees the old one
when its last request ends): the rows a batch steers or scores never change under it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .sampling import noise_key, sample_rows
from .steer import steer_contained

__all__ = ["BatchEntry", "RequestTrack", "SteeringRuntime"]


@dataclass
class RequestTrack:
    """The loop thread's view of one engine request. Readings are keyed by absolute position, and the first
    reading of a position wins, so a request that is reset and re-prefilled is never scored twice."""

    request_id: str
    prompt_len: int
    slot: int = 0  # 0: unsteered
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    monitored: tuple[tuple[int, int], ...] = ()  # (direction row, layer) pairs to read
    capture_slot: int = 0  # 0: no capture
    capture_from: int = 0  # first absolute position captured
    # Pending device writes, applied by the loop thread at its next batch: (alpha (L, K), beta (L, K)).
    upload: tuple[torch.Tensor, torch.Tensor] | None = None
    readings: dict[tuple[int, int], dict[int, float]] = field(default_factory=dict)
    capture_count: int = 0
    captured_until: int = 0
    first_token_position: int = -1
    # Containment: the first layer where a steered state of this request went non-finite (it fails alone).
    overflow_layer: int | None = None


@dataclass(frozen=True)
class BatchWork:
    """What the batch in flight needs from the hooks (host flags, decided before the forward)."""

    steer: bool
    monitor: bool
    capture: bool
    rows: int  # direction rows to compute: 0..rows-1 hold every live direction


_ALL_WORK = BatchWork(True, True, True, 0)


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
    ) -> None:
        n_layers = len(layers)
        self.device = device
        self.num_layers = n_layers
        self.max_directions = max_directions
        self.unit = torch.zeros(n_layers, max_directions, hidden_size, device=device, dtype=torch.float32)
        self.alpha = torch.zeros(n_layers, max_slots + 1, max_directions, device=device, dtype=torch.float32)
        self.beta = torch.zeros(n_layers, max_slots + 1, max_directions, device=device, dtype=torch.float32)
        self.acc = torch.zeros(n_layers, max_captures + 1, hidden_size, device=device, dtype=torch.float32)
        self.token_slot = torch.zeros(max_batch_tokens, device=device, dtype=torch.int64)
        self.token_cap = torch.zeros(max_batch_tokens, device=device, dtype=torch.int64)
        self.proj = torch.zeros(n_layers, max_batch_tokens, max_directions, device=device, dtype=torch.float32)
        # Per layer and request slot: steered tokens zeroed by containment (steer.steer_contained); reset per request.
        self.overflow = torch.zeros(n_layers, max_slots + 1, device=device, dtype=torch.int32)
        self.row_temperature = torch.zeros(max_rows, device=device, dtype=torch.float32)
        self.row_top_p = torch.ones(max_rows, device=device, dtype=torch.float32)
        self.row_top_k = torch.zeros(max_rows, device=device, dtype=torch.int64)
        self.row_key = torch.zeros(max_rows, device=device, dtype=torch.int64)
        self.max_batch_tokens = max_batch_tokens
        self.tracks: dict[str, RequestTrack] = {}  # written by the engine, read by the loop thread
        self.entries: list[BatchEntry] = []
        self.num_tokens = 0
        self.forward_passes = 0
        self.active = True  # False: hooks pass through (plain forwards while the loop is stopped)
        # Eager forwards skip the work no request of the batch needs; with CUDA graphs or compile (static shapes,
        # captured once) the adapter sets this to False and every forward runs the full branch-free step.
        self.skip_idle_work = True
        self.batch_work: BatchWork | None = None
        self.live_rows = max_directions  # 1 + the highest direction row in use (kept by the registry)
        self.lock = threading.Lock()
        self._handles = [layer.register_forward_hook(self._make_hook(i)) for i, layer in enumerate(layers)]

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # ---- hooks (loop thread, inside the forward) ----
    def _make_hook(self, layer: int) -> Callable[..., Any]:
        unit, alpha, beta, acc, proj_out, overflow = (
            self.unit[layer],
            self.alpha[layer],
            self.beta[layer],
            self.acc[layer],
            self.proj[layer],
            self.overflow[layer],
        )

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if not self.active:
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
            if work.capture:
                acc.index_add_(0, self.token_cap[:n], x.float())  # capture reads pre-steering states
            if work.steer:
                slots = self.token_slot[:n]
                steered, proj, bad = steer_contained(x, slots, unit[:k], alpha[:, :k], beta[:, :k])
                overflow.index_add_(0, slots, bad)  # slot 0's count is never read
            elif work.monitor:
                steered, proj = x, x.float() @ unit[:k].T  # (tokens, k): read only
            else:
                return None  # nobody in this batch is steered, monitored or captured: states untouched
            if work.monitor:
                proj_out[:n, :k].copy_(proj)
            new = steered.unsqueeze(0)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    # ---- batch boundaries (loop thread, around each forward) ----
    def begin_batch(self, batch: list[tuple[str, int, int, bool]]) -> None:
        """batch: (request_id, past_length, query_length, has_new_token) in the order of the flat input."""
        slots: list[int] = []
        caps: list[int] = []
        rows: list[tuple[float, int, float, int]] = []
        entries: list[BatchEntry] = []
        offset = 0
        for request_id, past, length, has_new in batch:
            track = self.tracks.get(request_id)
            entries.append(BatchEntry(track, offset, past, length, has_new))
            offset += length
            if track is None:
                slots.extend([0] * length)
                caps.extend([0] * length)
                if has_new:
                    rows.append((0.0, 0, 1.0, 0))
                continue
            if track.upload is not None:
                a, b = track.upload
                self.alpha[:, track.slot].copy_(a)
                self.beta[:, track.slot].copy_(b)
                self.overflow[:, track.slot].zero_()
                if track.capture_slot:
                    self.acc[:, track.capture_slot].zero_()
                track.upload = None
            slots.extend([track.slot] * length)
            if track.capture_slot:
                # Positions already captured (a re-prefill after a reset) are not counted twice.
                first = min(length, max(0, max(track.capture_from, track.captured_until) - past))
                caps.extend([0] * first + [track.capture_slot] * (length - first))
                track.capture_count += length - first
                track.captured_until = max(track.captured_until, past + length)
            else:
                caps.extend([0] * length)
            if has_new:
                pos = past + length  # absolute position of the token about to be sampled
                if track.first_token_position < 0:
                    track.first_token_position = pos
                rows.append((track.temperature, track.top_k, track.top_p, noise_key(track.seed, pos)))
        n = offset
        self.entries = entries
        tracked = [e.track for e in entries if e.track is not None]
        self.batch_work = (
            BatchWork(
                steer=any(t.slot for t in tracked),
                monitor=any(t.monitored for t in tracked),
                capture=any(t.capture_slot for t in tracked),
                rows=max(1, self.live_rows),
            )
            if self.skip_idle_work
            else None
        )
        self.num_tokens = n
        self.token_slot.zero_()
        self.token_cap.zero_()
        if n:
            self.token_slot[:n].copy_(torch.tensor(slots, dtype=torch.int64), non_blocking=True)
            self.token_cap[:n].copy_(torch.tensor(caps, dtype=torch.int64), non_blocking=True)
        if rows:
            t, k, p, key = zip(*rows, strict=True)
            r = len(rows)
            self.row_temperature[:r].copy_(torch.tensor(t, dtype=torch.float32))
            self.row_top_k[:r].copy_(torch.tensor(k, dtype=torch.int64))
            self.row_top_p[:r].copy_(torch.tensor(p, dtype=torch.float32))
            self.row_key[:r].copy_(torch.tensor(key, dtype=torch.int64))
        self.forward_passes += 1

    def end_batch(self) -> None:
        """Attribute the batch's projections to its requests (after the forward, before tokens are delivered)."""
        self._check_overflow()
        monitored = [e for e in self.entries if e.track is not None and e.track.monitored]
        if not monitored:
            return
        proj = self.proj[:, : self.num_tokens].to("cpu")  # (L, tokens, K): one device-to-host copy per step
        for e in monitored:
            track = e.track
            assert track is not None
            lo = max(e.past, track.prompt_len - 1)  # the last prompt token is the first scored position
            hi = e.past + e.length
            if lo >= hi:
                continue
            a, b = e.offset + lo - e.past, e.offset + hi - e.past
            for k, layer in track.monitored:
                values = proj[layer, a:b, k].tolist()
                readings = track.readings.setdefault((k, layer), {})
                for i, v in enumerate(values):
                    readings.setdefault(lo + i, v)

    def _check_overflow(self) -> None:
        """Mark the steered requests of this batch whose states containment zeroed; their streams fail alone."""
        steered = [e.track for e in self.entries if e.track is not None and e.track.slot]
        if not steered:
            return
        flags = self.overflow[:, [t.slot for t in steered]].to("cpu")  # (L, requests): one small copy per step
        for i, track in enumerate(steered):
            layers = flags[:, i].nonzero()
            if track.overflow_layer is None and layers.numel():
                track.overflow_layer = int(layers[0, 0])

    # ---- sampling (inside the forward step) ----
    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (rows, vocab) -> (rows,) token ids with each row's own parameters."""
        r = logits.shape[0]
        return sample_rows(
            logits.float(), self.row_temperature[:r], self.row_top_k[:r], self.row_top_p[:r], self.row_key[:r]
        )

    # ---- direction rows (the registry writes only rows no request references) ----
    def write_direction(self, row: int, unit_vectors: dict[int, torch.Tensor]) -> None:
        self.unit[:, row].zero_()
        for layer, v in unit_vectors.items():
            self.unit[layer, row].copy_(v.to(self.unit.device))

    def clear_direction(self, row: int) -> None:
        self.unit[:, row].zero_()
