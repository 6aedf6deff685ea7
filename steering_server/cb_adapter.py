"""Every contact with transformers' continuous-batching internals lives here (pinned: transformers 5.24).

We keep the stock scheduler, paged KV cache and model runner, and change three things:
  - prepare_next_batch / update_batch: tell the SteeringRuntime which request owns each token of the flat batch
    before the forward, and hand it the projections after;
  - the runner's sampler: per-request keyed sampling instead of one global do_sample/RNG (Engine rule 2);
  - prefix block sharing is off, so steered and unsteered requests never share KV (Engine rule 1), and async
    batching is off (Engine rule 5);
  - on the CPU, transformers' sdpa is wrapped to attend per request, and the paged cache leaves its read to that
    attention (cpu_attention.py).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedConfig, PreTrainedModel
from transformers.generation.configuration_utils import CompileConfig, ContinuousBatchingConfig
from transformers.generation.continuous_batching import input_outputs
from transformers.generation.continuous_batching import utils as cb_utils
from transformers.generation.continuous_batching.cache import PagedAttentionCache
from transformers.generation.continuous_batching.continuous_api import (
    BackgroundThreadStatus,
    ContinuousBatchingManager,
    ContinuousBatchProcessor,
)
from transformers.generation.continuous_batching.input_outputs import ContinuousBatchingIOs
from transformers.generation.continuous_batching.model_runner import ModelRunner
from transformers.generation.continuous_batching.requests import GenerationOutput, RequestStatus
from transformers.generation.continuous_batching.utils import stream_context

from .cpu_attention import ReadInAttentionCache, install_cpu_attention, mask_free, step_plans
from .layers import SUPPORTED_ARCHITECTURES
from .runtime import SteeringRuntime
from .types import ServingSettings

__all__ = ["BatchingManager", "Progress", "choose_attn_implementation", "progress"]

log = logging.getLogger(__name__)


def choose_attn_implementation(device: torch.device) -> str:
    """The fastest attention continuous batching supports on the device: flash attention 3, then 2, on a GPU when
    the package is installed (it also enables the decode fast path and CUDA graphs without masks); sdpa otherwise
    (on the CPU it beats paged|eager)."""
    if device.type == "cuda":
        if importlib.util.find_spec("flash_attn_interface") is not None:
            return "flash_attention_3"
        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return "sdpa"


@dataclass(frozen=True)
class Progress:
    """What the engine learns about one request from the batching manager: a plain record, so no transformers type
    crosses into the engine (an upgrade that changes GenerationOutput breaks here, and the seam test names it)."""

    tokens: list[int]  # every token generated so far
    finished: bool
    failed: bool
    error: str | None


def progress(output: GenerationOutput) -> Progress:
    failed = output.status == RequestStatus.FAILED
    return Progress(output.generated_tokens, failed or output.is_finished(), failed, output.error)  # no copy


class _MaskFreeCreation(threading.local):
    on: bool = False  # this thread is creating a batch processor whose attention never reads transformers' mask


_creating_mask_free = _MaskFreeCreation()
_stock_attn_mask_is_needed = cb_utils.attn_mask_is_needed  # the definition, never a wrapper installed below


def _attn_mask_is_needed(config: PreTrainedConfig) -> bool:
    """transformers' question when it allocates a batch processor's buffers, answered "no" on a thread creating a
    mask-free engine's processor. Not building the mask spares its buffer, (max_batch_tokens, KV cache +
    max_batch_tokens) floats: 2.2 GB for the organism's evaluation engines, which `torch.empty` fills with NaN
    under `torch.use_deterministic_algorithms` (1 s at every engine start there)."""
    if _creating_mask_free.on:
        return False
    return bool(_stock_attn_mask_is_needed(config))


input_outputs.attn_mask_is_needed = _attn_mask_is_needed  # type: ignore[assignment]  # per thread, see above


class _SteeringRunner(ModelRunner):
    runtime: SteeringRuntime

    def _sample(self, scores: torch.Tensor, output_ids: torch.Tensor) -> None:
        if self.runtime.defer_sampling:  # inside a graph or compiled forward: sampled after it, in compute_batch
            self.runtime.stash_logits(scores[0])
            return
        tokens = self.runtime.sample(scores[0])  # scores (1, rows, vocab) -> (rows,)
        output_ids[0, : tokens.shape[0]].copy_(tokens)

    def compute_batch(self, model: torch.nn.Module, batch_data: dict) -> None:
        # The hooks act only inside this call (every step and warm-up forward goes through it): never on a forward
        # someone else runs on the same model between steps.
        self.runtime.serving_forward = True
        try:
            with step_plans():  # the CPU attention works out each step's groups and gathers once, for every layer
                super().compute_batch(model, batch_data)
        finally:
            self.runtime.serving_forward = False
        if self.runtime.defer_sampling and self.runtime.logits_buf is not None:
            output_ids = self.inputs_and_outputs.get_cb_kwargs()[2]
            with stream_context(self.inputs_and_outputs.compute_stream):
                tokens = self.runtime.sample(self.runtime.logits_buf)
                output_ids[0, : tokens.shape[0]].copy_(tokens)


class _SteeringProcessor(ContinuousBatchProcessor):
    runtime: SteeringRuntime

    def prepare_next_batch(self) -> bool:
        ready = super().prepare_next_batch()
        if ready:
            batch = []
            for fs in self.inputs_and_outputs.requests_in_batch:  # type: ignore[union-attr]  # async IO is off
                # position_offset was already advanced past this batch's tokens
                past = fs.state.position_offset - fs.query_length
                batch.append((fs.state.request_id, past, fs.query_length, fs.has_new_token))
            # On the compute stream, like the forward that reads them: the packed table's copy is asynchronous.
            with stream_context(self.inputs_and_outputs.compute_stream):
                self.runtime.begin_batch(batch)
        return ready

    def update_batch(self) -> None:
        self.runtime.end_batch()
        super().update_batch()


class BatchingManager(ContinuousBatchingManager):
    """The stock manager with steering hooks and per-request sampling wired into its batch processor."""

    def __init__(
        self,
        model: PreTrainedModel,
        runtime: SteeringRuntime,
        eos_token_id: int | list[int] | None,
        max_batch_tokens: int,
        max_requests_per_batch: int,
        num_blocks: int | None,
        page_size: int,
        max_queue_size: int,
        on_loop_exit: Callable[[BaseException | None], None],
        attn_implementation: str | None = None,
        compile_backend: str | None = None,
        cuda_graphs: bool | None = None,
        max_memory_percent: float | None = None,
    ) -> None:
        gen_config = GenerationConfig(do_sample=False, eos_token_id=eos_token_id, pad_token_id=None)
        attn = attn_implementation or choose_attn_implementation(model.device)
        if model.config._attn_implementation != attn:
            model.set_attn_implementation(attn)
        if attn == "sdpa" and model.device.type == "cpu":
            # Continuous batching always passes a mask, and with a mask transformers repeats the KV heads for every
            # query head (repeat_kv) instead of using sdpa's grouped-query mode: on the CPU the grouped mode gives the
            # same numbers ~5x faster (a quarter of a 32-request step here). On CUDA a masked grouped sdpa can fall
            # back to the math kernel, so this stays CPU-only. Process-wide; it only changes how sdpa is called.
            os.environ.setdefault("TRANSFORMERS_SDPA_FORCE_GQA", "1")
            install_cpu_attention()  # per-request attention, not a block-diagonal mask over every request's keys
        # Only for architectures whose attention gets exactly the tensors the cache update returned (the tested ones;
        # e.g. DiffLlama splits V in between, Gemma3n shares KV across layers): others keep the stock read.
        self._attention_reads_cache = (
            attn == "sdpa" and model.device.type == "cpu" and model.config.model_type in SUPPORTED_ARCHITECTURES
        )
        # dynamic: one compiled graph for every batch size; not fullgraph: paged attention is a graph break.
        compiled = (
            CompileConfig(backend=compile_backend, mode="default", fullgraph=False, dynamic=True)
            if compile_backend
            else None
        )
        cb_config = ContinuousBatchingConfig(
            allow_block_sharing=False,
            use_async_batching=False,
            max_batch_tokens=max_batch_tokens,
            max_requests_per_batch=max_requests_per_batch,
            num_blocks=num_blocks,
            max_memory_percent=max_memory_percent,
            page_size=page_size,
            max_queue_size=max_queue_size,
            auto_switch_to_flash=False,  # chosen above, without a download of kernels at start-up
            use_cuda_graph=cuda_graphs,
            varlen_compile_config=compiled,
            decode_compile_config=compiled if model.device.type == "cuda" else None,
        )
        super().__init__(model, gen_config, cb_config)  # type: ignore[arg-type]
        if self.logit_processor.do_processing:
            raise RuntimeError("the batching manager must not run logits processors; sampling is per request")
        self.runtime = runtime
        self._on_loop_exit = on_loop_exit

    def _create_batch_processor(self) -> ContinuousBatchProcessor:
        # The per-request attention never reads the block-diagonal mask: not building it saves its buffer, a fill
        # and a few ops per request at every step (cpu_attention's docstring).
        no_mask = self._attention_reads_cache and mask_free(self.model.config)
        _creating_mask_free.on = no_mask
        try:
            processor = super()._create_batch_processor()
        finally:
            _creating_mask_free.on = False
        if not isinstance(processor, _SteeringProcessor):
            processor.__class__ = _SteeringProcessor
            processor.model_runner.__class__ = _SteeringRunner
        if self._attention_reads_cache and type(processor.cache) is PagedAttentionCache:
            processor.cache.__class__ = ReadInAttentionCache  # decode attention reads the cache itself
        ios = processor.inputs_and_outputs
        if no_mask and isinstance(ios, ContinuousBatchingIOs) and ios.attention_mask is not None:
            raise RuntimeError("transformers built the attention mask of a mask-free engine (cb_adapter's seam)")
        processor.runtime = self.runtime  # type: ignore[attr-defined]
        processor.model_runner.runtime = self.runtime  # type: ignore[attr-defined]
        # Padded inputs mean CUDA graphs or compile: hooks must then run the same ops on every forward, and the
        # sampler (whose path depends on the batch's rows) runs after the captured forward.
        if processor.model_runner.pad_inputs:
            self.runtime.skip_idle_work = False
            if not self.runtime.defer_sampling:
                self.runtime.defer_sampling_to_replay(int(self.model.config.get_text_config().vocab_size))
        else:
            self.runtime.skip_idle_work = True
        return processor

    def start(self) -> None:
        """The stock start, on a daemon thread: an engine that was never shut down must not keep its process alive."""
        if self.is_running():
            return
        self.background_thread_status.clear()
        thread = threading.Thread(
            target=self._run_generation_loop,
            # Always inference mode (the stock start copies the caller's, which is plain no_grad from an event loop):
            # every op of the forward then skips autograd's version and view bookkeeping, ~60 us per steered layer
            # and a few percent of a whole step on the CPU. Nothing the loop creates is ever used with autograd.
            kwargs={"use_inference_mode": True},
            name="steering-batching",
            daemon=True,
        )
        self._generation_thread = thread  # type: ignore[assignment]
        thread.start()

    def _run_generation_loop(self, use_inference_mode: bool) -> None:
        error: BaseException | None = None
        try:
            super()._run_generation_loop(use_inference_mode)
            error = self.background_thread_status.fatal_error
        except BaseException as exc:  # the stock loop catches Exception; anything else still kills the engine
            error = exc
            raise
        finally:
            self._on_loop_exit(error)

    def is_dying(self) -> bool:
        """True once the loop hit a fatal error: it requests a hard stop before failing every request (and may
        already be STOPPED when the failure reaches the event loop)."""
        return self.background_thread_status.local_status >= BackgroundThreadStatus.HARD_STOP

    # ---- accounting the engine relies on ----
    def serving_settings(self) -> ServingSettings:
        """What the cache and batching actually got (after transformers rounded the cache to whole sectors)."""
        cfg = self.continuous_batching_config
        processor = self.batch_processor
        cache = processor.cache if processor is not None else None
        num_blocks = int(cache.num_blocks if cache is not None else cfg.num_blocks or 0)
        max_batch_tokens = int(cache.max_batch_tokens if cache is not None else cfg.max_batch_tokens or 0)
        return ServingSettings(
            kv_cache_tokens=num_blocks * int(cfg.page_size),
            num_blocks=num_blocks,
            page_size=int(cfg.page_size),
            max_batch_tokens=max_batch_tokens,
            max_requests_per_batch=int(cfg.max_requests_per_batch or 0),
            attn_implementation=str(self.model.config._attn_implementation),
            compiled=cfg.varlen_compile_config is not None or cfg.decode_compile_config is not None,
            cuda_graphs=any(cfg.cuda_graph_booleans),
        )

    def scheduler_counts(self) -> tuple[int, int]:
        """(active, waiting) requests inside the scheduler, plus those still in the input queue as waiting."""
        processor = self.batch_processor
        queued = self.input_queue.qsize()
        if processor is None:
            return 0, queued
        sched = processor.scheduler
        return len(sched.active_requests), len(sched.waiting_requests) + queued

    def submit(
        self, request_id: str, input_ids: list[int], max_new_tokens: int, handler: Callable[[Progress], None]
    ) -> bool:
        """Register the handler first (results go only to handlers registered before the request is added), then
        add the request. False when the manager is not accepting (Engine rule 7). The handler gets `Progress`."""
        self.register_result_handler(request_id, lambda output: handler(progress(output)))
        added = self.add_request(input_ids, request_id=request_id, max_new_tokens=max_new_tokens, streaming=True)
        if added is None:
            with self.output_router._lock:
                self.output_router.result_handlers.pop(request_id, None)
            return False
        return True

    def forget_handler(self, request_id: str) -> None:
        with self.output_router._lock:
            self.output_router.result_handlers.pop(request_id, None)
