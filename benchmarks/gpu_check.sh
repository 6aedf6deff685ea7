#!/usr/bin/env bash
# Every GPU measurement in one command of at most 8 minutes, for a session that is lent a GPU
# (see ../shared/gpu/README.md):
#   here:   bash ../shared/gpu/wheels.sh        (puts nnsight & co. and this transformers in .whl/)
#   device: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)
# Steps (their timeouts add to 450 s, under the 480 s this script promises):
#   0. wheels                                                                             <=  40 s
#   1. the engine's isolation/parity tests on the GPU, the fast-path test with CUDA graphs included (bf16 would
#      not match fp32 references, so the tests run the tiny models in fp32 on cuda)        <= 110 s
#   2. steered+monitored vs unsteered vs hooks off vs padded generate at 1 and 64 requests, CUDA graphs on:
#      Qwen2.5-0.5B shape                                                                 <= 110 s
#      Qwen2.5-7B shape (decode ms/token at 1 request vs the ~3.6 ms HBM bound)           <= 190 s
# Every heading and benchmark number is printed (only the pytest dots are cut to their last 25 lines): the run
# tool returns the last 12,000 characters.
set -uo pipefail
START=$(date +%s)
step() { echo; echo "=== $1 (t=$(( $(date +%s) - START ))s)"; }
step "environment"
if [ -d .whl ]; then
  timeout 40 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
python3 -c 'from steering_server.cb_adapter import choose_attn_implementation as c; import torch; print("attention:", c(torch.device("cuda")))'

step "1. engine tests on the GPU (fp32 tiny models)"
STEERING_TEST_DEVICE=cuda timeout 110 python3 -m pytest -q -x -p no:cacheprovider \
  tests/engine/test_engine_batching.py tests/engine/test_engine_reference.py tests/engine/test_engine_fast_paths.py \
  2>&1 | grep -v "^\s*$" | tail -25
echo "pytest exit: ${PIPESTATUS[0]}"

step "2a. Qwen2.5-0.5B shape, bf16, CUDA graphs on, 1 and 64 requests"
timeout 110 python3 benchmarks/engine_overhead.py --shape qwen2.5-0.5b --concurrency 1 64 --rounds 5 2>&1 \
  | grep -v "Warning\|warn("
echo "exit: ${PIPESTATUS[0]}"

step "2b. Qwen2.5-7B shape, bf16, CUDA graphs on, 1 and 64 requests"
timeout 190 python3 benchmarks/engine_overhead.py --shape qwen2.5-7b --concurrency 1 64 --rounds 3 2>&1 \
  | grep -v "Warning\|warn("
echo "exit: ${PIPESTATUS[0]}"

step "done"
