"""The transformers seam, named (issue 8, build item 8): every continuous-batching touchpoint cb_adapter.py relies on
(transformers pinned to 5.24), each checked on its own with a message that names it, so that an upgrade fails on the
cause and not on a token mismatch three layers away. Private ones are marked: they are the likeliest to move."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
from transformers.generation.configuration_utils import ContinuousBatchingConfig
from transformers.generation.continuous_batching.continuous_api import (
    BackgroundThreadStatus,
    ContinuousBatchingManager,
    ContinuousBatchProcessor,
)
from transformers.generation.continuous_batching.model_runner import ModelRunner
from transformers.generation.continuous_batching.requests import GenerationOutput, RequestStatus

from steering_server import cb_adapter
from steering_server.types import GenerationRequest, Prompt, SamplingParams

from .conftest import running_engine


def _params(fn: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _has(obj: object, *names: str) -> bool:
    return all(hasattr(obj, n) for n in names)


_CONFIG_FIELDS = {
    "allow_block_sharing", "use_async_batching", "max_batch_tokens", "max_requests_per_batch", "num_blocks",
    "page_size", "max_queue_size", "auto_switch_to_flash",
}

def _mask_question_is_asked() -> bool:
    """cb_adapter answers this question per thread to skip the mask's allocation; it works only while the IOs ask it
    by this module-level name."""
    import inspect

    from transformers.generation.continuous_batching import input_outputs

    source = inspect.getsource(input_outputs.ContinuousBatchingIOs._setup_static_tensors)
    return hasattr(input_outputs, "attn_mask_is_needed") and "attn_mask_is_needed(self.config)" in source


# (touchpoint, private, check): each check returns True when transformers still offers what the adapter uses.
STATIC: list[tuple[str, bool, Callable[[], bool]]] = [
    ("ContinuousBatchingManager.__init__(model, generation_config, continuous_batching_config)", False,
     lambda: _params(ContinuousBatchingManager.__init__)[:4] == ["self", "model", "generation_config",
                                                                 "continuous_batching_config"]),
    ("ContinuousBatchingConfig(allow_block_sharing, use_async_batching, max_batch_tokens, max_requests_per_batch, "
     "num_blocks, page_size, max_queue_size, auto_switch_to_flash)", False,
     lambda: _CONFIG_FIELDS <= set(_params(ContinuousBatchingConfig.__init__))),
    ("ContinuousBatchingManager._create_batch_processor() -> ContinuousBatchProcessor", True,
     lambda: _params(ContinuousBatchingManager._create_batch_processor) == ["self"]),
    ("ContinuousBatchingManager._run_generation_loop(use_inference_mode)", True,
     lambda: _params(ContinuousBatchingManager._run_generation_loop) == ["self", "use_inference_mode"]),
    ("ContinuousBatchingManager.add_request(input_ids, request_id, max_new_tokens, streaming)", False,
     lambda: {"input_ids", "request_id", "max_new_tokens", "streaming"} <= set(
         _params(ContinuousBatchingManager.add_request))),
    ("ContinuousBatchingManager.register_result_handler(request_id, callback)", False,
     lambda: len(_params(ContinuousBatchingManager.register_result_handler)) == 3),
    ("ContinuousBatchingManager.cancel_request / stop(block, timeout) / is_running", False,
     lambda: _has(ContinuousBatchingManager, "cancel_request", "stop", "is_running")
     and _params(ContinuousBatchingManager.stop)[:3] == ["self", "block", "timeout"]),
    ("ContinuousBatchProcessor.prepare_next_batch() -> bool and update_batch()", False,
     lambda: _params(ContinuousBatchProcessor.prepare_next_batch) == ["self"]
     and _params(ContinuousBatchProcessor.update_batch) == ["self"]),
    ("input_outputs.attn_mask_is_needed(config), looked up by ContinuousBatchingIOs when it allocates its buffers",
     True, lambda: _mask_question_is_asked()),
    ("ModelRunner._sample(scores, output_ids)", True,
     lambda: _params(ModelRunner._sample) == ["self", "scores", "output_ids"]),
    ("BackgroundThreadStatus.HARD_STOP is ordered (local_status >= HARD_STOP)", True,
     lambda: BackgroundThreadStatus.HARD_STOP >= BackgroundThreadStatus.HARD_STOP),
    ("GenerationOutput.status / is_finished() / generated_tokens / error; RequestStatus.FAILED", False,
     lambda: _has(GenerationOutput, "is_finished") and hasattr(RequestStatus, "FAILED")
     and {"status", "generated_tokens", "error"} <= set(getattr(GenerationOutput, "__dataclass_fields__", {}))
     | set(getattr(GenerationOutput, "__annotations__", {}))),
]


@pytest.mark.parametrize("touchpoint", STATIC, ids=[t[0][:60] for t in STATIC])
def test_static_touchpoint(touchpoint: tuple[str, bool, Callable[[], bool]]) -> None:
    name, private, check = touchpoint
    assert check(), f"transformers changed {'private ' if private else ''}touchpoint: {name} (cb_adapter.py)"


async def test_live_touchpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """Instance attributes only a running manager has, read where the adapter reads them."""
    seen: list[object] = []
    original = cb_adapter._SteeringProcessor.prepare_next_batch

    def spy(self: cb_adapter._SteeringProcessor) -> bool:
        ready = original(self)
        if ready and not seen:
            seen.extend(self.inputs_and_outputs.requests_in_batch)  # type: ignore[union-attr]
        return ready

    monkeypatch.setattr(cb_adapter._SteeringProcessor, "prepare_next_batch", spy)
    async with running_engine() as engine:
        await engine.generate(GenerationRequest(Prompt(text="Hi"), SamplingParams(max_new_tokens=2)))
        manager = engine.manager
        checks = [
            ("processor.inputs_and_outputs.requests_in_batch[i].state.request_id / .state.position_offset / "
             ".query_length / .has_new_token", True,
             bool(seen) and all(_has(fs, "state", "query_length", "has_new_token")
                                and _has(fs.state, "request_id", "position_offset") for fs in seen)),  # type: ignore[attr-defined]
            ("manager.batch_processor.scheduler.active_requests / waiting_requests", True,
             _has(manager.batch_processor.scheduler, "active_requests", "waiting_requests")),
            ("manager.batch_processor.model_runner.pad_inputs", True, _has(manager.batch_processor.model_runner,
                                                                             "pad_inputs")),
            ("manager.output_router._lock / .result_handlers", True,
             _has(manager.output_router, "_lock", "result_handlers")),
            ("manager.background_thread_status.fatal_error / .local_status / .clear()", True,
             _has(manager.background_thread_status, "fatal_error", "local_status", "clear")),
            ("manager.input_queue.qsize()", False, _has(manager.input_queue, "qsize")),
            ("manager.logit_processor.do_processing", True, _has(manager.logit_processor, "do_processing")),
            ("manager._generation_thread", True, hasattr(manager, "_generation_thread")),
        ]
    broken = [f"{'private ' if private else ''}touchpoint: {name}" for name, private, ok in checks if not ok]
    assert not broken, "transformers changed (cb_adapter.py): " + "; ".join(broken)
