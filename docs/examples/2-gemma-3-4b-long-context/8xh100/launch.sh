#!/usr/bin/env bash
# llmwizard run 'gemma-3-4b-it-arithmetic': ddp with accelerate on 8x NVIDIA H100 80GB HBM3 (79.6 of 79.6 GiB free), NVLink, host RAM 1843 of 2048 GiB usable.
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
exec "$PYTHON" -m accelerate.commands.launch --config_file accelerate_config.yaml --main_process_port "${MAIN_PROCESS_PORT:-$PLAN_MAIN_PROCESS_PORT}" -m llmwizard.runner.rank.train --config sft_config.yaml --metrics-file metrics.jsonl --eval-fraction 0.1 "$@"
