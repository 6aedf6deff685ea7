#!/usr/bin/env bash
# Every GPU measurement in one script, for a session that is lent a GPU (see ../shared/gpu/README.md):
#   here:   bash ../shared/gpu/wheels.sh        (puts nnsight & co. and this transformers in .whl/)
#   device: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=420)
# 1. the engine test suite's isolation/parity checks on the GPU (bf16 would not match fp32 references, so the
#    tests run the tiny models in fp32 on cuda), 2. overhead and throughput at Qwen2.5 shapes.
set -uo pipefail
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
STEERING_TEST_DEVICE=cuda timeout 240 python3 -m pytest -q -x tests/engine/test_engine_batching.py \
  tests/engine/test_engine_reference.py 2>&1 | tail -15
for shape in qwen2.5-0.5b qwen2.5-7b; do
  timeout 300 python3 benchmarks/engine_overhead.py --shape "$shape" --concurrency 1 64 --rounds 5 2>&1 | tail -16
done
