#!/usr/bin/env bash
# llmwizard run 'Llama-3.1-8B-Instruct-arithmetic': zero2 with torchrun on 8x NVIDIA H100 80GB HBM3 (79.6 of 79.6 GiB free), NVLink, host RAM 1843 of 2048 GiB usable.
# Rerun from anywhere with `bash launch.sh`; extra arguments reach the training entry
# (`bash launch.sh --resume` continues from the last checkpoint).
# LLMWIZARD_PYTHON picks the interpreter (default: the one that exported this run, else python3).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${LLMWIZARD_PYTHON:-}"
[ -n "$PYTHON" ] || PYTHON=python3
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# The plan's defaults, for where the environment sets no MAIN_PROCESS_PORT / MAIN_PROCESS_IP.
PLAN_MAIN_PROCESS_PORT=29500
exec "$PYTHON" -m torch.distributed.run --nnodes 1 --nproc_per_node 8 --master_addr 127.0.0.1 --master_port "${MAIN_PROCESS_PORT:-$PLAN_MAIN_PROCESS_PORT}" -m llmwizard.runner.rank.train --config sft_config.yaml --metrics-file metrics.jsonl --eval-fraction 0.05 "$@"
