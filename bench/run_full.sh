#!/bin/bash
# The full runs: MT-Bench (80 first turns) or HumanEval (164), 256 new tokens,
# SmolLM2-135M-Instruct. Builds the datastore the workload needs when missing, and resumes an
# interrupted run (bench --resume) when bench/out/<workload>-full[-compiled|-llamacpp] holds one.
#   bench/run_full.sh mtbench|humaneval [--compile]   transformers: six methods vs hf-greedy
#   bench/run_full.sh mtbench|humaneval --llamacpp    the Q4_1 GGUF on llama.cpp: its own greedy
#                                                     and prompt lookup vs restdecode and plain
set -euo pipefail
cd "$(dirname "$0")/.."
export RESTDECODE_HOME="${RESTDECODE_HOME:-$HOME/.cache/restdecode}"
workload="${1:?usage: bench/run_full.sh mtbench|humaneval [--compile]}"
options=(--backend transformers)
suffix=""
methods=hf-greedy,hf-prompt-lookup,rest,restdecode,plain,restdecode-memory
if [ "${2:-}" = "--compile" ]; then options+=(--compile); suffix="-compiled"; fi
if [ "${2:-}" = "--llamacpp" ]; then
  options=(--backend llamacpp); suffix="-llamacpp"
  methods=llamacpp-greedy,llamacpp-prompt-lookup,restdecode,plain
fi
case "$workload" in
  mtbench) source=sharegpt; store="$RESTDECODE_HOME/datastores/sharegpt-smollm2.rds" ;;
  humaneval) source=code:stdlib; store="$RESTDECODE_HOME/datastores/code-stdlib-smollm2.rds" ;;
  *) echo "unknown workload $workload (mtbench or humaneval)" >&2; exit 2 ;;
esac
[ -f "$store" ] || .venv/bin/restdecode build-datastore --model smollm2-135m-instruct \
  --source "$source" --out "$store"
out="bench/out/$workload-full$suffix"
resume=()
[ -f "$out/rows.partial.jsonl" ] && resume=(--resume)
exec .venv/bin/restdecode bench "$workload" --max-new-tokens 256 \
  --methods "$methods" --datastore "$store" --out "$out" "${options[@]}" "${resume[@]}"
