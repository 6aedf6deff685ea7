"""ModelInfo carries the serving settings (KV cache, batching, fast paths) over the wire."""

from __future__ import annotations

from steering_server.service import encode
from steering_server.types import EngineLimits, ModelInfo, ServingSettings


def test_model_info_reports_the_serving_settings() -> None:
    serving = ServingSettings(
        kv_cache_tokens=8192,
        num_blocks=256,
        page_size=32,
        max_batch_tokens=256,
        max_requests_per_batch=32,
        attn_implementation="sdpa",
        compiled=True,
        cuda_graphs=False,
    )
    info = ModelInfo("m", "llama", 8, 512, 32000, "float32", "cpu", 4096, serving=serving)
    msg = encode.model_info(info, EngineLimits())
    got = msg.serving
    assert (got.kv_cache_tokens, got.num_blocks, got.page_size) == (8192, 256, 32)
    assert (got.max_batch_tokens, got.max_requests_per_batch) == (256, 32)
    assert (got.attn_implementation, got.compiled, got.cuda_graphs) == ("sdpa", True, False)
