#!/usr/bin/env bash
# llmwizard run 'Llama-3.1-8B-Instruct-arithmetic': fsdp with torchrun on 2 nodes x 8x NVIDIA H100 80GB HBM3 (79.6 of 79.6 GiB free), NVLink, host RAM 1843 of 2048 GiB usable.
# Rerun from anywhere with `bash launch.sh`; extra arguments reach the training entry
# (`bash launch.sh --resume` continues from the last checkpoint).
# LLMWIZARD_PYTHON picks the interpreter (default: the one that exported this run, else python3).
# 2 machines: run this on each with MACHINE_RANK=0..1 and
# MAIN_PROCESS_IP set to machine 0's address (slurm.sbatch does both); MAIN_PROCESS_PORT is optional.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${LLMWIZARD_PYTHON:-}"
[ -n "$PYTHON" ] || PYTHON=python3
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# The plan's defaults, for where the environment sets no MAIN_PROCESS_PORT / MAIN_PROCESS_IP.
PLAN_MAIN_PROCESS_PORT=29500
PLAN_MAIN_PROCESS_IP=127.0.0.1
[[ "${MACHINE_RANK:-0}" =~ ^[0-9]+$ ]] || { echo "launch.sh: MACHINE_RANK must be a number from 0 to 1, not '$MACHINE_RANK'" >&2; exit 2; }
export ACCELERATE_USE_FSDP=true
export FSDP_VERSION=2
export FSDP_AUTO_WRAP_POLICY=TRANSFORMER_BASED_WRAP
export FSDP_TRANSFORMER_CLS_TO_WRAP=LlamaDecoderLayer
export FSDP_RESHARD_AFTER_FORWARD=true
export FSDP_STATE_DICT_TYPE=SHARDED_STATE_DICT
export FSDP_CPU_RAM_EFFICIENT_LOADING=true
export FSDP_OFFLOAD_PARAMS=false
export FSDP_ACTIVATION_CHECKPOINTING=false
export ACCELERATE_USE_PARALLELISM_CONFIG=true
export PARALLELISM_CONFIG_DP_REPLICATE_SIZE=2
export PARALLELISM_CONFIG_DP_SHARD_SIZE=8
exec "$PYTHON" -m torch.distributed.run --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint "${MAIN_PROCESS_IP:-$PLAN_MAIN_PROCESS_IP}:${MAIN_PROCESS_PORT:-$PLAN_MAIN_PROCESS_PORT}" --rdzv_conf "is_host=$(( ${MACHINE_RANK:-0} == 0 ))" --rdzv_id Llama-3.1-8B-Instruct-arithmetic --node_rank "${MACHINE_RANK:-0}" -m llmwizard.runner.rank.train --config sft_config.yaml --metrics-file metrics.jsonl --eval-fraction 0.05 "$@"
