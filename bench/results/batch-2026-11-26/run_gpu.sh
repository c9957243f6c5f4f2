#!/bin/bash
# Issue 15's batch table on the GPU: SmolLM2-135M fp32 (de-quantized from the Q4_1 asset, carried
# in two halves), MT-Bench, a 1.4 M-token ShareGPT store (the full one does not travel).
set -eo pipefail
export PYTHONUNBUFFERED=1
DEV=${DEV:-cuda}; PY=${PY:-python3}; PART1=${PART1:-/tmp/dev/gguf.part1}
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .devcarry/gguf-0.19.0-py3-none-any.whl
export PYTHONPATH=/tmp/site:$PWD/src
export RESTDECODE_HOME=${RESTDECODE_HOME:-/tmp/rdhome}
A=$RESTDECODE_HOME/assets
mkdir -p $A/smollm2-135m-instruct $A/mtbench
cat $PART1 .devcarry/gguf.part2 > $A/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
cp .devcarry/SmolLM2-135M-Instruct.Q4_1.gguf.sha256 $A/smollm2-135m-instruct/
cp .devcarry/mtbench_question.jsonl .devcarry/mtbench_question.jsonl.sha256 $A/mtbench/
nvidia-smi --query-gpu=name,memory.total --format=csv || true
$PY -c "import torch, transformers; print(torch.__version__, transformers.__version__)"
n=0
for args in "$@"; do  # one benchmark per argument: each writes its own report
    n=$((n + 1))
    $PY bench/batch_bench.py --device $DEV --datastore .devcarry/sharegpt-sub.rds $args \
        --out ${OUT:-/tmp/out}/batch-$DEV-$n 2>&1 | grep -v -E "it/s\]|fwd/s\]|s/fwd\]|s/it\]"
done
