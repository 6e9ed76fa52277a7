#!/usr/bin/env bash
# The GPU check on a lent GPU machine, in one command (bench/gpu_check.py's docstring says how to
# fetch the wheels it carries in .whl/ first). Installs the wheels the machine lacks, puts this
# checkout on the path as the installed llmwizard namespace, runs the check within 8 minutes and
# leaves in $OUT: the results table, the log, every probe record and the calibration store it fed.
#
#   bash bench/gpu_check.sh [--only NAME ...]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results}"
mkdir -p "$out"
if ! compgen -G ".whl/*.whl" >/dev/null; then
    echo "no wheels in .whl/: fetch them first (bench/gpu_check.py, its docstring)" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
# The namespace as a wheel lays it out: llmwizard/{autotune,runner,wizard,presets}.
mkdir -p /tmp/layout/llmwizard
for part in autotune runner wizard presets; do
    ln -sfn "$PWD/$part" "/tmp/layout/llmwizard/$part"
done
export PYTHONPATH="/tmp/layout:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export LLMWIZARD_CACHE=/tmp/llmwizard-cache LLMWIZARD_CALIBRATION_DIR="$out/calibration"
export LLMWIZARD_PYTHON=python3
# 470 s: the script starts no case after 420 s; a case hung past that is cut here, and every line
# written before it stays in the table.
timeout 470 python3 bench/gpu_check.py --out-dir "$out" --work /tmp/gpu-check "$@" 2>&1 | tee "$out/gpu_check.log"
code=${PIPESTATUS[0]}
cat /tmp/gpu-check/runs/*/probe.jsonl > "$out/probes.jsonl" 2>/dev/null
exit "$code"
